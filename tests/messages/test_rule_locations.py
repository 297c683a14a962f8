"""The rules read some fields at a fixed place instead of searching the tree (it is
cheaper, and they run on every message). These tests hold the XSDs to those places,
so that a schema change that moves a field breaks here, not silently in production."""

from __future__ import annotations

import pytest

from gateway.messages.catalogue import MessageType
from gateway.messages.rules import _MUNICIPALITY, _SCANNED
from test_catalogue_coverage import all_element_paths, child_elements, schema, type_local_name

TYPES = [t.value for t in MessageType]


def _root(message_type: str):
    return schema(message_type).elements[message_type]


@pytest.mark.parametrize("message_type", TYPES)
def test_fixed_places_of_the_root(message_type):
    """berichtkop, penitentiaireInrichting (code first) and persoon (BSN first, birth date last) open every message."""
    first, second, third = child_elements(_root(message_type))[:3]
    assert (first.local_name, second.local_name, third.local_name) == ("berichtkop", "penitentiaireInrichting", "persoon")
    assert child_elements(second)[0].local_name == "code"
    persoon = [c.local_name for c in child_elements(third)]
    assert persoon[0] == "burgerservicenummer" and persoon[-1] == "geboortedatum"
    assert child_elements(first)[3].local_name == "aanmaaktijdstip"


@pytest.mark.parametrize("message_type", TYPES)
def test_party_codes_only_in_the_header(message_type):
    """piCode and gemeentecode occur only in berichtkop/afzender and berichtkop/ontvanger; the BSN only in persoon."""
    for path, element, _ in all_element_paths(message_type):
        if element.local_name in ("piCode", "gemeentecode"):
            assert path.rsplit("/", 1)[0] in (f"{message_type}/berichtkop/afzender", f"{message_type}/berichtkop/ontvanger"), path
        if element.local_name == "burgerservicenummer":
            assert path == f"{message_type}/persoon/burgerservicenummer", path


@pytest.mark.parametrize("message_type", TYPES)
def test_every_municipality_code_is_checked(message_type):
    """Every element typed Gemeentecode is either scanned as a municipality or a header party code."""
    scanned = {name for name, kind in _SCANNED.items() if kind == _MUNICIPALITY}
    for path, element, _ in all_element_paths(message_type):
        if type_local_name(element) == "Gemeentecode":
            assert element.local_name in scanned | {"gemeentecode"}, path


@pytest.mark.parametrize("message_type", TYPES)
def test_every_iban_is_scanned(message_type):
    """Every element typed Iban carries the name the scan looks for."""
    for path, element, _ in all_element_paths(message_type):
        if type_local_name(element) == "Iban":
            assert element.local_name in _SCANNED, path


def test_child_count_reads_the_count_first():
    """dagelijkseZorgMinderjarigeKinderen/ja holds aantalKinderen first, then only geboortedatumKind."""
    for path, element, _ in all_element_paths("basisdocument"):
        if path.endswith("dagelijkseZorgMinderjarigeKinderen/ja"):
            names = [c.local_name for c in child_elements(element)]
            assert names == ["aantalKinderen", "geboortedatumKind"]
            break
    else:
        pytest.fail("basisdocument has no dagelijkseZorgMinderjarigeKinderen/ja")


@pytest.mark.parametrize("message_type", TYPES)
def test_declared_names_are_what_the_schema_allows(message_type):
    """The catalogue's own XSD walk (which decides what the rules scan for) finds exactly the element
    names xmlschema finds: a name it missed would leave that field unchecked."""
    from gateway.messages.catalogue import BY_ROOT_TAG, declared_element_names

    version = next(v for v in BY_ROOT_TAG.values() if v.type.value == message_type)
    expected = {element.local_name for _, element, _ in all_element_paths(message_type)} | {message_type}
    assert declared_element_names(version) == expected
