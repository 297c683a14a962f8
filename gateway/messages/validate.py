"""Validation of one message: read (hardened) → parse → XSD → domain rules.

The verdict is either a ``Message`` (the facts later rooms need: type,
version, id, sender, recipient, dossier) or a list of ``Problem``s. It never
raises on bad input: whatever a file holds, the caller gets a verdict.

Schemas are our own, trusted files, compiled once per version on first use.
An ``XMLSchema`` object is not safe to share between threads; use one
``Validator`` per thread (or per worker process).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import NamedTuple
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from lxml import etree

from .catalogue import BY_ROOT_TAG, XSD_DIR, MessageType, SchemaVersion, known_namespaces
from .entitlement import RECIPIENT_FIELDS, Party, PartyKind
from .problems import Problem
from .rules import MessageIndex, PartyChecks, check_rules, element_path
from .safe_parse import (MAX_MESSAGE_BYTES, InputRejected, depth_rejection, load_trusted_schema, parse_message_bytes,
                         read_message_file)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Message(NamedTuple):
    """A message that passed every check, with the facts the gateway routes on (immutable, cheap to make)."""

    type: MessageType
    version: str
    message_id: str
    created: datetime
    sender: Party
    recipient: Party
    dossier: str
    replies_to: str | None
    supersedes: str | None
    root: etree._Element


class Verdict(NamedTuple):
    source: str
    message: Message | None
    problems: tuple[Problem, ...] = ()
    #: what the file claims to be, when that could be read (also for invalid messages)
    declared_type: str | None = None
    declared_id: str | None = None

    @property
    def valid(self) -> bool:
        return self.message is not None and not self.problems

    def as_dict(self) -> dict:
        m = self.message
        return {
            "file": self.source,
            "valid": self.valid,
            "type": m.type.value if m else self.declared_type,
            "version": m.version if m else None,
            "message_id": m.message_id if m else self.declared_id,
            "sender": str(m.sender) if m else None,
            "recipient": str(m.recipient) if m else None,
            "problems": [p.as_dict() for p in self.problems],
        }


class Validator:
    def __init__(self, parties: PartyChecks, *, xsd_dir: Path = XSD_DIR, max_bytes: int = MAX_MESSAGE_BYTES,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self._parties = parties
        self._xsd_dir = Path(xsd_dir)
        self._max_bytes = max_bytes
        self._clock = clock
        self._schemas: dict[str, etree.XMLSchema] = {}
        self._day: tuple[datetime, datetime, date] = (_EPOCH, _EPOCH, _EPOCH.date())  #: from, until, date

    def validate_file(self, path: str | os.PathLike) -> Verdict:
        source = os.fspath(path)
        try:
            data = read_message_file(path, max_bytes=self._max_bytes)
        except InputRejected as e:
            return Verdict(source, None, (Problem(e.code, e.message, e.line),))
        return self.validate_bytes(data, source)

    def validate_bytes(self, data: bytes, source: str = "<bytes>") -> Verdict:
        try:
            # depth is checked below only for documents the schema refuses: a valid one is shallow
            tree = parse_message_bytes(data, max_bytes=self._max_bytes, check_depth=False)
        except InputRejected as e:
            return Verdict(source, None, (Problem(e.code, e.message, e.line),))
        root = tree.getroot()
        version = BY_ROOT_TAG.get(root.tag)  # the one read of the root's tag: the index takes it from the version
        schema = self.schema(version) if version is not None else None
        if schema is None or not schema.validate(tree):
            too_deep = depth_rejection(tree)
            if too_deep is not None:
                return Verdict(source, None, (Problem(too_deep.code, too_deep.message, too_deep.line),))
            if schema is None:
                return Verdict(source, None, (_unknown_type(root),), *_declared(root))
            problems = tuple(_schema_problem(e, tree) for e in schema.error_log)
            return Verdict(source, None, problems, *_declared(root))

        now = self._clock()
        doc = MessageIndex(root, version)
        problems = check_rules(version, doc, self._parties, self._dutch_date(now), now)
        if problems:
            return Verdict(source, None, tuple(problems), *_declared(root))
        message = _message(version, doc)
        return Verdict(source, message, (), version.type.value, message.message_id)

    def _dutch_date(self, now: datetime) -> date:
        """The date in the Netherlands at ``now``, worked out once a day: the time zone's conversion costs
        ~1 µs alone and several after an XSD check (its tables no longer in the CPU's caches)."""
        since, until, today = self._day
        if not since <= now < until:
            today = now.astimezone(AMSTERDAM).date()
            since = datetime.combine(today, time(), AMSTERDAM).astimezone(timezone.utc)
            until = datetime.combine(today + timedelta(days=1), time(), AMSTERDAM).astimezone(timezone.utc)
            self._day = (since, until, today)
        return today

    def schema(self, version: SchemaVersion) -> etree.XMLSchema:
        schema = self._schemas.get(version.namespace)
        if schema is None:
            schema = self._schemas[version.namespace] = load_trusted_schema(self._xsd_dir / version.xsd_file)
        return schema


def _message(version: SchemaVersion, doc: MessageIndex) -> Message:
    def text(name: str) -> str | None:
        value = doc.header_text(name)
        return value.strip() if value is not None else None

    _, sender_is_pi, sender_code = doc.party("afzender")
    sender_kind = PartyKind.INSTITUTION if sender_is_pi else PartyKind.MUNICIPALITY
    return Message(
        type=version.type,
        version=version.version,
        message_id=text("berichtId"),
        created=doc.created,
        sender=Party(sender_kind, sender_code.strip()),
        recipient=Party(RECIPIENT_FIELDS[version.type].kind, doc.recipient_field(version.type)[0].text.strip()),
        dossier=text("dossierreferentie"),
        replies_to=text("antwoordOp"),
        supersedes=text("vervangt"),
        root=doc.root,
    )


def _declared(root: etree._Element) -> tuple[str | None, str | None]:
    """Type and id as the document states them, best effort, for reports on invalid input."""
    local = etree.QName(root).localname
    msg_id = None
    kop = root[0] if len(root) and isinstance(root[0].tag, str) and root[0].tag.endswith("berichtkop") else None
    if kop is not None and len(kop) and isinstance(kop[0].tag, str) and kop[0].tag.endswith("berichtId") and kop[0].text:
        msg_id = kop[0].text.strip()[:64]
    return local[:64], msg_id


def _unknown_type(root: etree._Element) -> Problem:
    q = etree.QName(root)
    return Problem(
        "unknown-message-type",
        f"'{q.localname}' in namespace '{q.namespace or '(none)'}' is not a message type this gateway knows; "
        f"known: {', '.join(known_namespaces())}",
        root.sourceline, q.localname,
    )


# ---- XSD error log → operator words -------------------------------------------------------

_NS = re.compile(r"\{[a-z][a-z0-9+.\-]*:[^}]*\}")  # "{urn:…}" / "{http://…}"; never a pattern's "{9}"
_ELEMENT_PREFIX = re.compile(r"^Element '[^']*': ")
#: libxml2 message → operator words; the third item is the group holding the offending value, if any
_REWRITES: tuple[tuple[re.Pattern, str, int | None], ...] = tuple((re.compile(a), b, g) for a, b, g in (
    (r"^\[facet 'pattern'\] The value '(.*)' is not accepted by the pattern '(.*)'\.$",
     r"'\1' does not have the required form (\2)", 1),
    (r"^\[facet 'enumeration'\] The value '(.*)' is not an element of the set \{(.*)\}\.$",
     r"'\1' is not one of the allowed values: \2", 1),
    (r"^'(.*)' is not a valid value of the (?:local |)atomic type '(?:xs:)?(.*)'\.$", r"'\1' is not a valid \2", 1),
    (r"^\[facet '(?:min|max)(?:In|Ex)clusive'\] The value '(.*)' is (less|greater) than the (minimum|maximum) value allowed \('(.*)'\)\.$",
     r"'\1' is \2 than the \3 allowed (\4)", 1),
    (r"^\[facet '(?:maxLength|minLength|length)'\] The value(?: '(.*)')? has a length of '(\d+)'; this (?:exceeds|underruns|differs from) the allowed (.*) length of '(\d+)'\.$",
     r"the text is \2 characters long; the \3 length is \4", 1),
    (r"^\[facet '(?:totalDigits|fractionDigits)'\] The value '(.*)' has more (digits|fractional digits) than are allowed \('(\d+)'\)\.$",
     r"'\1' has more \2 than allowed (\3)", 1),
    (r"^Missing child element\(s\)\. Expected is (?:one of )?\( (.*) \)\.$", r"a required element is missing here; expected next: \1", None),
    (r"^This element is not expected\. Expected is (?:one of )?\( (.*) \)\.$", r"this element is not allowed here; expected: \1", None),
    (r"^This element is not expected\.$", r"this element is not allowed here (nothing more may follow)", None),
    (r"^Character content other than whitespace is not allowed because the content type is 'element-only'\.$",
     r"text is not allowed directly inside this element", None),
))
#: the forms of our own simple types, said in words
_PATTERN_WORDS = {
    "[0-9]{9}": "a burgerservicenummer is exactly 9 digits",
    "[0-9]{4}": "a municipality code is 4 digits, e.g. 0363",
    "PI-[A-Z0-9]{2,12}": "a PI code looks like PI-VUGHT",
    "[0-9]{4}-[0-9]{2}-[0-9]{2}": "a date is written YYYY-MM-DD, without a time zone",
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}": "a message id is a UUID in lower case",
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+\-][0-9]{2}:[0-9]{2})":
        "a moment is written YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2026-03-02T09:30:00+01:00",
}


def _schema_problem(entry, tree: etree._ElementTree) -> Problem:
    el = None
    try:
        found = tree.xpath(entry.path) if entry.path else []
        el = found[0] if len(found) == 1 and isinstance(found[0], etree._Element) else None
    except etree.XPathError:
        pass
    text = _ELEMENT_PREFIX.sub("", _NS.sub("", entry.message.strip()))
    value = None
    for pattern, replacement, value_group in _REWRITES:
        m = pattern.match(text)
        if m:
            value = m.group(value_group) if value_group else None
            text = m.expand(replacement)
            break
    for form, words in _PATTERN_WORDS.items():
        if f"({form})" in text:
            text = text.replace(f"({form})", f"({words})")
    path = element_path(el) if el is not None else ""
    return Problem("schema", text, entry.line or None, path, value)
