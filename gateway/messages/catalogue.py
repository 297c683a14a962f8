"""The message catalogue: which message types exist, in which versions, and
where their schemas are.

A message is identified by its root element: the local name is the message
type, the namespace carries the version (``urn:nl:nazorg:xsd:<type>:<version>``).
Adding a version means adding an XSD file and a line here; older versions stay
readable as long as they are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from enum import StrEnum
from pathlib import Path

NAMESPACE_PREFIX = "urn:nl:nazorg:xsd:"


class MessageType(StrEnum):
    MELDINGSBERICHT = "meldingsbericht"  #: PI → gemeente van herkomst, 2 working days after intake
    GEMEENTEBLAD = "gemeenteblad"  #: gemeente → PI of the dossier, within 5 days of the melding
    BASISDOCUMENT = "basisdocument"  #: PI → gemeente van herkomst, 10 working days after the melding
    OVERDRACHTSDOCUMENT = "overdrachtsdocument"  #: PI → gemeente van vestiging, 8 weeks before release (long-stay)
    ONTSLAGBERICHT = "ontslagbericht"  #: PI → gemeente van vestiging, on the day of release
    SPOEDONTSLAGBERICHT = "spoedontslagbericht"  #: PI → gemeente, at once on an unexpected immediate release


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    type: MessageType
    version: str
    xsd_file: str
    # derived once: both are read for every message
    namespace: str = field(init=False)
    root_tag: str = field(init=False)

    def __post_init__(self) -> None:
        namespace = f"{NAMESPACE_PREFIX}{self.type.value}:{self.version}"
        object.__setattr__(self, "namespace", namespace)
        object.__setattr__(self, "root_tag", f"{{{namespace}}}{self.type.value}")


XSD_DIR = Path(__file__).resolve().parents[2] / "xsd"

VERSIONS: tuple[SchemaVersion, ...] = tuple(
    SchemaVersion(t, "1.0", f"{t.value}-1.0.xsd") for t in MessageType
)

#: root tag ("{namespace}localname") → schema version: the one lookup at intake
BY_ROOT_TAG: dict[str, SchemaVersion] = {v.root_tag: v for v in VERSIONS}


def known_namespaces() -> list[str]:
    return sorted(v.namespace for v in VERSIONS)


_XS = "{http://www.w3.org/2001/XMLSchema}"


@lru_cache(maxsize=None)
def _schema_nodes(version: SchemaVersion, xsd_dir: Path) -> tuple[dict, dict]:
    """The named complex types and the top-level elements of a version's XSD and what it includes; read
    once per process (three walks use them when the rules first meet a version), never to be changed."""
    from lxml import etree  # only here: the catalogue itself is imported by rooms that never parse

    types: dict[str, etree._Element] = {}
    roots: dict[str, etree._Element] = {}
    pending, seen_files = [xsd_dir / version.xsd_file], set()
    while pending:
        path = pending.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        schema = etree.parse(str(path)).getroot()
        for node in schema:
            if node.tag == _XS + "include":
                pending.append(path.parent / node.get("schemaLocation"))
            elif node.tag == _XS + "complexType":
                types[node.get("name")] = node
            elif node.tag == _XS + "element":
                roots[node.get("name")] = node
    return types, roots


def declared_element_names(version: SchemaVersion, xsd_dir: Path = XSD_DIR) -> frozenset[str]:
    """The local names of every element a message of this version can hold, root included.

    Read from the XSD (and what it includes) by following element types, sequences, choices and
    extensions from the root: the rules use it to look, in each message, only for the names its
    type can contain. Our own trusted files, parsed plainly; the XSDs use no refs, groups or
    substitution groups (tests/messages/test_rule_locations.py holds this walk to xmlschema's).
    """
    return frozenset(element_parents(version, xsd_dir)) | {version.type.value}


#: an element's children as its type declares them, in order: (local name, loose, repeats); a loose child
#: (minOccurs 0) may be missing, and one that repeats (maxOccurs > 1) may come more than once
Layout = tuple[tuple[str, bool, bool], ...]


def sequence_layouts(version: SchemaVersion, xsd_dir: Path = XSD_DIR) -> dict[str, Layout]:
    """Element name -> the layout of its children, for every element of this version whose type is a plain
    sequence: only xs:element children, each either exactly once or with minOccurs 0. In a schema-valid
    message such an element's children follow the layout, so a reader knows which child is which from its
    position, and needs a child's name only where a loose child may be missing or repeated (see
    ``rules.Children``). A name declared with two different types is left out, and so is any other content
    model (choices, nested groups, a required repeat): those are read by name.
    """
    types, roots = _schema_nodes(version, xsd_dir)
    declared: dict[str, set] = {}  # element name -> the (named or anonymous) complex types it is declared with
    walked: set[str] = set()

    def walk(node) -> None:
        for el in node.iter(_XS + "element", _XS + "extension"):
            type_name = el.get("type") if el.tag == _XS + "element" else el.get("base")
            if el.tag == _XS + "element":
                inline = el.find(_XS + "complexType")
                declared.setdefault(el.get("name"), set()).add(type_name if inline is None else inline)
            if type_name in types and type_name not in walked:
                walked.add(type_name)
                walk(types[type_name])

    root = roots[version.type.value]
    declared[version.type.value] = {root.find(_XS + "complexType")}
    walk(root)
    layouts: dict[str, Layout] = {}
    for name, kinds in declared.items():
        if len(kinds) != 1:
            continue
        (kind,) = kinds
        node = types.get(kind) if isinstance(kind, str) else kind
        layout = _plain_sequence(node) if node is not None else None
        if layout is not None:
            layouts[name] = layout
    return layouts


def _plain_sequence(complex_type) -> Layout | None:
    """The layout of ``complex_type`` if it is a plain sequence (see ``sequence_layouts``), else None."""
    parts = [n for n in complex_type if isinstance(n.tag, str) and n.tag != _XS + "annotation"]  # not comments
    if len(parts) != 1 or parts[0].tag != _XS + "sequence" or parts[0].get("minOccurs") or parts[0].get("maxOccurs"):
        return None
    layout = []
    for particle in parts[0]:
        if not isinstance(particle.tag, str) or particle.tag == _XS + "annotation":
            continue
        least, most = particle.get("minOccurs", "1"), particle.get("maxOccurs", "1")
        if particle.tag != _XS + "element" or (least, most) != ("1", "1") and least != "0":
            return None
        layout.append((particle.get("name"), least == "0", most != "1"))
    return tuple(layout)


def element_parents(version: SchemaVersion, xsd_dir: Path = XSD_DIR) -> dict[str, frozenset[tuple[str, ...]]]:
    """Local name -> the paths (below the root, the root's own children at ``()``) of the elements that
    hold an element of that name. The rules read a field at its fixed place instead of searching the whole
    message when every element of that name sits there."""
    types, roots = _schema_nodes(version, xsd_dir)
    found: dict[str, set[tuple[str, ...]]] = {}
    groups = {_XS + "sequence", _XS + "choice", _XS + "all", _XS + "complexContent", _XS + "extension"}

    def children_of(node):
        """The element declarations directly inside a complex type (through groups and extensions)."""
        for part in node:
            if part.tag == _XS + "element":
                yield part
            elif part.tag in groups:
                if part.tag == _XS + "extension" and part.get("base") in types:
                    yield from children_of(types[part.get("base")])
                yield from children_of(part)

    def walk(element, path: tuple[str, ...]) -> None:
        kind = element.find(_XS + "complexType")
        if kind is None:
            kind = types.get(element.get("type"))
        if kind is None or len(path) > 30:  # a simple type; (and a guard against a recursive schema)
            return
        for child in children_of(kind):
            found.setdefault(child.get("name"), set()).add(path)
            walk(child, path + (child.get("name"),))

    walk(roots[version.type.value], ())
    return {name: frozenset(paths) for name, paths in found.items()}
