"""The catalogue (docs/catalogue.md) and the message XSDs cover each other.

One direction: every form question in the catalogue that is modelled names an
element path that exists in the XSD of its root. The other: every element the
six message XSDs declare is documented in the catalogue, so there are no
fields nobody can trace back to a form (or to the header, a building block, or
one of the structural rules below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import xmlschema

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "catalogue.md"
XSD_DIR = ROOT / "xsd"

MESSAGE_TYPES = (
    "meldingsbericht",
    "gemeenteblad",
    "basisdocument",
    "overdrachtsdocument",
    "ontslagbericht",
    "spoedontslagbericht",
)

NOT_MODELLED = "—"

#: the forms of Instrumenten 1 that must each have at least one row
REQUIRED_FORMS = (
    ["meldingsblad", "gemeenteblad"]
    + [f"basisdocument tab {n}" for n in range(3, 13)]
    + ["MI basis", "MI ontslag"]
    + [f"overdrachtsdocument tab {n}" for n in range(1, 11)]
)

#: values allowed in the `form` column: the forms, plus the message types for
#: rows that are not a form question (ontslag-/spoedontslagbericht, additions)
KNOWN_FORMS = set(REQUIRED_FORMS) | set(MESSAGE_TYPES)

# Structural-only elements, documented by rule rather than by a row:
#
# * `berichtkop` and everything below it: documented in the "Header" section,
#   which is parsed and checked separately (test_header_section_matches_berichtkop).
# * any element on the way to a documented path (e.g. `ja` in
#   `…/heeftSchulden/ja/schatting`): the row names it, as a wrapper.
# * children of an element whose type is listed under "Building blocks"
#   (Adres, Contactpersoon, …): documented once in that table.
# * EMPTY_TYPES below: an empty choice alternative under a documented question
#   (`nee`, `onbekend`, `nietVanToepassing`, …) is an answer value of that
#   question, not a field of its own.
EMPTY_TYPES = {"Leeg"}  # <xs:complexType name="Leeg"><xs:sequence/></xs:complexType>
HEADER_ELEMENT = "berichtkop"


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Row:
    form: str
    question: str
    path: str  # without backticks; NOT_MODELLED if not modelled

    @property
    def root(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def id(self) -> str:
        text = f"{self.form}: {self.question}"
        return text if len(text) <= 70 else text[:67] + "..."


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell.strip().strip("`").strip()


@cache
def _tables() -> list[tuple[str, list[str], list[list[str]]]]:
    """All markdown tables as (section heading ##, header cells, body rows)."""
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        is_header = (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|(\s*:?-{3,}:?\s*\|)+\s*", lines[i + 1])
        )
        if is_header:
            header = _cells(line)
            body: list[list[str]] = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(header), f"catalogue line {i + 1}: {len(cells)} cells, want {len(header)}"
                body.append(cells)
                i += 1
            tables.append((section, header, body))
            continue
        i += 1
    return tables


def _tables_with(header: list[str], section: str | None = None) -> list[list[str]]:
    rows: list[list[str]] = []
    for sec, head, body in _tables():
        if head == header and (section is None or sec == section):
            rows.extend(body)
    return rows


@cache
def catalogue_rows() -> tuple[Row, ...]:
    return tuple(Row(f, q, _unquote(p)) for f, q, p in _tables_with(["form", "question", "element path"]))


def modelled_rows() -> list[Row]:
    return [r for r in catalogue_rows() if r.path != NOT_MODELLED]


@cache
def building_blocks() -> dict[str, frozenset[str]]:
    blocks: dict[str, set[str]] = {}
    for type_name, element, _meaning in _tables_with(["type", "element", "meaning"], "Building blocks"):
        blocks.setdefault(type_name, set()).add(_unquote(element))
    return {k: frozenset(v) for k, v in blocks.items()}


@cache
def header_paths() -> frozenset[str]:
    return frozenset(_unquote(r[0]) for r in _tables_with(["element", "type", "occurs", "meaning"], "Header"))


@cache
def code_lists() -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for name, _form_list, values in _tables_with(["code list", "form list", "values"], "Code lists"):
        result[_unquote(name)] = re.findall(r"`([^`]+)`", values)
    return result


# ------------------------------------------------------------------ schemas


@cache
def schema(message_type: str) -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(XSD_DIR / f"{message_type}-1.0.xsd"))


def child_elements(element) -> list:
    """Element declarations directly below `element`, through sequences, choices
    and complexContent extensions; none for simple types and simple content."""
    xsd_type = element.type
    if xsd_type.is_simple() or not xsd_type.has_complex_content():
        return []
    return list(xsd_type.content.iter_elements())


def type_local_name(element) -> str | None:
    name = element.type.name
    return None if name is None else name.rsplit("}", 1)[-1]


def resolve(path: str):
    """The element declaration at a slash path of local names, or None."""
    root_name, *steps = path.split("/")
    if root_name not in MESSAGE_TYPES:
        return None
    element = schema(root_name).elements.get(root_name)
    for step in steps:
        if element is None:
            return None
        element = next((c for c in child_elements(element) if c.local_name == step), None)
    return element


def all_element_paths(message_type: str) -> list[tuple[str, object, object]]:
    """(path, element, parent element) for every element below the root, depth first."""
    found: list[tuple[str, object, object]] = []

    def walk(element, path: str, depth: int) -> None:
        assert depth < 30, f"recursion in {path}"
        for child in child_elements(element):
            child_path = f"{path}/{child.local_name}"
            found.append((child_path, child, element))
            walk(child, child_path, depth + 1)

    walk(schema(message_type).elements[message_type], message_type, 0)
    return found


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("row", modelled_rows(), ids=lambda r: r.id)
def test_row_path_resolves_in_xsd(row: Row) -> None:
    """The element path of a catalogue row is an element declaration in the XSD
    of its root, reached through sequences, choices and extensions."""
    assert row.root in MESSAGE_TYPES, f"{row.path}: root is not a message type"
    assert resolve(row.path) is not None, f"{row.path} does not resolve in xsd/{row.root}-1.0.xsd"


@pytest.mark.parametrize("row", modelled_rows()[::25], ids=lambda r: r.id)
def test_resolver_agrees_with_xmlschema_find(row: Row) -> None:
    """Cross-check of the path walker on every 25th row (all roots, through
    choices and extensions): xmlschema's own XPath `find` on the schema finds
    the same declaration."""
    ns = schema(row.root).target_namespace
    xpath = "/".join(f"ns:{step}" for step in row.path.split("/"))
    assert schema(row.root).find(xpath, namespaces={"ns": ns}) is resolve(row.path)


def test_catalogue_is_well_formed() -> None:
    """Every row names a known form, has a question, and a path (or —); the
    parser found the form tables, building blocks, header and code lists."""
    rows = catalogue_rows()
    assert len(rows) > 300
    for row in rows:
        assert row.form in KNOWN_FORMS, f"unknown form {row.form!r}"
        assert row.question, f"{row.form}: empty question"
        assert row.path == NOT_MODELLED or "/" in row.path or row.path in MESSAGE_TYPES, row
    assert building_blocks() and header_paths() and code_lists()


@pytest.mark.parametrize("form", REQUIRED_FORMS)
def test_every_form_has_rows(form: str) -> None:
    """The catalogue has at least one row for each form and tab of Instrumenten 1."""
    assert any(r.form == form for r in catalogue_rows()), f"no row for {form}"


def test_not_modelled_rows_are_explained() -> None:
    """The rows with path — are exactly the entries of the "Not modelled" section,
    each with a reason."""
    dashed = {(r.form, r.question) for r in catalogue_rows() if r.path == NOT_MODELLED}
    explained = _tables_with(["form", "question", "why not modelled"], "Not modelled")
    assert all(why.strip() for _f, _q, why in explained)
    assert {(f, q) for f, q, _why in explained} == dashed


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_every_xsd_element_is_documented(message_type: str) -> None:
    """Every element declared below the root of a message XSD appears in the
    catalogue: on a row's path, in the Header section, as a field of a building
    block, or as an empty answer alternative of a documented question."""
    documented_paths = {r.path for r in modelled_rows() if r.root == message_type}
    on_a_path = set()
    for p in documented_paths:
        parts = p.split("/")
        on_a_path.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    blocks = building_blocks()
    header = header_paths()

    documented: set[str] = {message_type}
    missing: list[str] = []
    for path, element, parent in all_element_paths(message_type):
        parent_path = path.rsplit("/", 1)[0]
        relative = path.split("/", 1)[1]
        if relative == HEADER_ELEMENT:
            ok = True
        elif relative.startswith(HEADER_ELEMENT + "/"):
            ok = relative[len(HEADER_ELEMENT) + 1 :] in header
        elif path in on_a_path:
            ok = True
        elif parent_path in documented and element.local_name in blocks.get(type_local_name(parent) or "", ()):
            ok = True
        elif parent_path in documented and type_local_name(element) in EMPTY_TYPES:
            ok = True
        else:
            ok = False
        if ok:
            documented.add(path)
        else:
            missing.append(path)
    assert not missing, f"{len(missing)} undocumented element(s) in {message_type}:\n" + "\n".join(missing)


def test_building_blocks_match_their_types() -> None:
    """Each building block lists exactly the child elements of that complex type."""
    types = schema("basisdocument").types  # a view of the target namespace, keyed by local name
    for type_name, listed in building_blocks().items():
        xsd_type = types.get(type_name)
        assert xsd_type is not None, f"building block {type_name} is not a type"
        declared = {e.local_name for e in xsd_type.content.iter_elements()}
        assert listed == declared, f"{type_name}: listed {sorted(listed)}, declared {sorted(declared)}"


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_header_section_matches_berichtkop(message_type: str) -> None:
    """The Header section lists exactly the elements below berichtkop."""
    prefix = f"{message_type}/{HEADER_ELEMENT}/"
    declared = {p[len(prefix) :] for p, _e, _parent in all_element_paths(message_type) if p.startswith(prefix)}
    assert declared == header_paths()


def test_code_lists_match_enumerations() -> None:
    """The code-list table has every enumeration of the XSDs with exactly its
    values: named simple types by name, anonymous ones by path below the root."""
    in_xsd: dict[str, list[str]] = {}
    for message_type in MESSAGE_TYPES:
        for qname, xsd_type in schema(message_type).types.items():
            if xsd_type.is_simple() and getattr(xsd_type, "enumeration", None):
                in_xsd[qname.rsplit("}", 1)[-1]] = list(xsd_type.enumeration)
        for path, element, _parent in all_element_paths(message_type):
            xsd_type = element.type
            if xsd_type.name is None and xsd_type.is_simple() and getattr(xsd_type, "enumeration", None):
                in_xsd[path.split("/", 1)[1]] = list(xsd_type.enumeration)
    assert code_lists() == in_xsd
