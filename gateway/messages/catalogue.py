"""The message catalogue: which message types exist, in which versions, and
where their schemas are.

A message is identified by its root element: the local name is the message
type, the namespace carries the version (``urn:nl:nazorg:xsd:<type>:<version>``).
Adding a version means adding an XSD file and a line here; older versions stay
readable as long as they are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def declared_element_names(version: SchemaVersion, xsd_dir: Path = XSD_DIR) -> frozenset[str]:
    """The local names of every element a message of this version can hold, root included.

    Read from the XSD (and what it includes) by following element types, sequences, choices and
    extensions from the root: the rules use it to look, in each message, only for the names its
    type can contain. Our own trusted files, parsed plainly; the XSDs use no refs, groups or
    substitution groups (tests/messages/test_rule_locations.py holds this walk to xmlschema's).
    """
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

    names: set[str] = set()
    walked: set[str] = set()

    def walk(node: etree._Element) -> None:
        for el in node.iter(_XS + "element", _XS + "extension"):
            if el.tag == _XS + "element":
                names.add(el.get("name"))
            type_name = el.get("type") if el.tag == _XS + "element" else el.get("base")
            if type_name in types and type_name not in walked:
                walked.add(type_name)
                walk(types[type_name])

    walk(roots[version.type.value])
    return frozenset(names)
