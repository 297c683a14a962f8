"""The index names children by their place in the XSD's sequence instead of by their tags
(``rules._Placement``), and reads some scanned fields at their fixed place (``rules._Plan.fixed``).
These tests hold both to what the tags say, on every valid example and on variants of them with
loose (optional or repeated) children taken out or repeated, each variant schema-valid."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree

from gateway.messages.catalogue import BY_ROOT_TAG, sequence_layouts
from gateway.messages.rules import _SCANNED, MessageIndex, _Plan
from gateway.messages.validate import Validator
from gateway.routing.parties import Parties

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "valid").rglob("*.xml"))


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(Parties.load())


def by_tags(parent: etree._Element) -> dict[str, etree._Element]:
    n = parent.tag.index("}") + 1
    return {child.tag[n:]: child for child in parent}


def variants(root: etree._Element, validator: Validator) -> list[etree._Element]:
    """The message itself, and for each element with a layout, a copy with one loose child removed, and a
    copy with one repeatable child repeated: those of them the schema accepts."""
    version = BY_ROOT_TAG[root.tag]
    layouts = sequence_layouts(version)
    n = len(version.namespace) + 2
    found = [root]
    for path_index, el in enumerate(root.iter()):
        layout = layouts.get(el.tag[n:]) if isinstance(el.tag, str) else None
        if not layout:
            continue
        loose = {name: repeats for name, is_loose, repeats in layout if is_loose}
        for i, child in enumerate(el):
            name = child.tag[n:]
            if name not in loose:
                continue
            for repeat in (False, True) if loose[name] else (False,):
                other = copy.deepcopy(root)
                twin = next(e for k, e in enumerate(other.iter()) if k == path_index)
                if repeat:
                    twin.insert(i, copy.deepcopy(twin[i]))
                else:
                    del twin[i]
                if validator.schema(version).validate(other):
                    found.append(other)
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_placement_names_every_child_as_its_tag_does(path, validator):
    root = etree.fromstring(path.read_bytes(), etree.XMLParser(remove_blank_text=True))
    version = BY_ROOT_TAG[root.tag]
    plan = _Plan(version)
    layouts = sequence_layouts(version)
    n = len(plan.ns)
    checked = 0
    for message in variants(root, validator):
        for el in message.iter():
            name = el.tag[n:]
            if name in layouts:
                assert plan.children(el, name) == by_tags(el), f"{path.name}: children of {name}"
                checked += 1
    assert checked >= 2  # the root and its header at least


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_fixed_places_and_the_scan_find_every_scanned_element(path, validator):
    """Every element of a scanned name is checked exactly once, whether read at its fixed place or found
    by the scan."""
    root = etree.fromstring(path.read_bytes(), etree.XMLParser(remove_blank_text=True))
    version = BY_ROOT_TAG[root.tag]
    n = len(version.namespace) + 2
    for message in variants(root, validator):
        tree = message.getroottree()
        expected = sorted((_SCANNED[el.tag[n:]], tree.getpath(el)) for el in message.iter() if el.tag[n:] in _SCANNED)
        doc = MessageIndex(message, version)
        assert sorted((kind, tree.getpath(el)) for kind, el in doc.scan) == expected, path.name


def test_a_future_date_at_a_fixed_place_is_still_refused(validator):
    """meldingsbericht/datum is read at its place, not scanned: a date after the message's creation is refused."""
    data = (Path(__file__).resolve().parents[2] / "examples" / "valid" / "meldingsbericht-veroordeeld-executie.xml").read_bytes()
    root = etree.fromstring(data)
    ns = root.tag[: root.tag.index("}") + 1]
    assert ("datum" not in {t[4:] for t in _Plan(BY_ROOT_TAG[root.tag]).scan_tags}), "the test needs datum at a fixed place"
    root.find(ns + "datum").text = "2999-01-01"
    verdict = validator.validate_bytes(etree.tostring(root))
    assert [p.code for p in verdict.problems] == ["date-order"]
    assert verdict.problems[0].path.endswith("meldingsbericht/datum")
