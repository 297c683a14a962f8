"""The mail around a sealed entity: RFC 5322 headers written by hand, the entity appended unchanged.

Layout (CRLF line ends, no folding, every line at most 998 octets)::

    From: <from_address>
    To: <to_address>
    Date: <RFC 5322 date>
    Subject: nazorg <label> <message_id>
    Message-ID: <<message_id>@<id_domain>>
    MIME-Version: 1.0
    Disposition-Notification-To: <<receipt_to>>
    Disposition-Notification-Options: signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=…
    X-Nazorg-Message-Id: <message_id>
    <the sealed entity's Content-* header lines>
    <empty line>
    <the sealed entity's body>

Every caller-given value is checked against a strict pattern before it is written (``ValueError``
otherwise), so no value can end a header or start another. The Message-ID is derived from the
message id, so every resend of a message carries the same one and the receiver can drop duplicates.
The subject carries only the label and the id: never personal data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

CRLF = b"\r\n"
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
#: the bytes a 7-bit mail may carry, for bytes.translate (a C pass; the regex below only names the offset)
_SEVEN_BIT = bytes([9, 10, 13, *range(0x20, 0x7F)])

DISPOSITION_OPTIONS = (
    "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"
)

_TOKEN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?\Z")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+\Z")
# a bare addr-spec: dot-atom local part (no quoted strings, no comments), '@', a dotted host name
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+\Z")
# header names a sealed entity may carry; anything else would smuggle a header into the mail
_ENTITY_HEADER = re.compile(rb"(?i)(content-[a-z0-9-]+|mime-version):")
_BAD_BYTES = re.compile(rb"[^\t\x20-\x7e\r\n]|\r(?!\n)|(?<!\r)\n")


@dataclass(frozen=True)
class ComposedMail:
    #: "<id@domain>" exactly as written in the Message-ID header
    mail_message_id: str
    #: the whole RFC 5322 message, CRLF line ends
    data: bytes

    def __repr__(self) -> str:  # never the content
        return f"<ComposedMail {self.mail_message_id} {len(self.data)} bytes>"


def check_token(value: str, what: str) -> str:
    """`value` if it is a plain token (lower-case letters, digits, inner hyphens), else ValueError."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{what} must be a plain token [a-z0-9-], 1-128 characters")
    return value


def check_address(value: str, what: str) -> str:
    """`value` if it is one bare ASCII addr-spec (no display name, brackets, spaces, CR/LF), else ValueError."""
    if not isinstance(value, str) or len(value) > 254 or not _ADDRESS.match(value):
        raise ValueError(f"{what} must be a single plain e-mail address (local@domain)")
    if len(value.partition("@")[0]) > 64:
        raise ValueError(f"{what} has a local part longer than 64 characters")
    return value


def check_domain(value: str, what: str) -> str:
    """`value` if it is a dotted host name, else ValueError."""
    if not isinstance(value, str) or len(value) > 253 or not _DOMAIN.match(value):
        raise ValueError(f"{what} must be a dotted host name")
    return value


def split_entity(entity: bytes) -> tuple[list[bytes], bytes]:
    """(header lines without MIME-Version, body) of a sealed MIME entity, after checking its form.

    The mail writes its own MIME-Version, so the entity's (``seal`` writes one) is left out; any
    header other than Content-* is refused, as is anything that is not 7-bit text in CRLF lines of
    at most 998 octets.
    """
    if not isinstance(entity, (bytes, bytearray)):
        raise ValueError("the sealed entity must be bytes")
    entity = bytes(entity)
    if entity.translate(None, _SEVEN_BIT) or not entity.count(b"\r") == entity.count(b"\n") == entity.count(CRLF):
        bad = _BAD_BYTES.search(entity)
        raise ValueError(f"the sealed entity has a byte that cannot travel in a 7-bit mail at offset {bad.start()}")
    head, sep, body = entity.partition(b"\r\n\r\n")
    if not sep or not head:
        raise ValueError("the sealed entity has no header section ended by an empty line")
    if body and not body.endswith(CRLF):
        body += CRLF
    if max(map(len, entity.split(CRLF))) > MAX_LINE:
        raise ValueError(f"the sealed entity has a line longer than {MAX_LINE} octets")
    lines = head.split(CRLF)
    if lines[0][:1] in (b" ", b"\t"):
        raise ValueError("the sealed entity starts with a continuation line")
    kept: list[bytes] = []
    seen_type = keep = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the header before it
            if keep:
                kept.append(line)
            continue
        if not _ENTITY_HEADER.match(line):
            raise ValueError("the sealed entity carries a header that is not Content-* or MIME-Version")
        keep = line[:13].lower() != b"mime-version:"
        if keep:
            seen_type = seen_type or line[:13].lower() == b"content-type:"
            kept.append(line)
    if not seen_type:
        raise ValueError("the sealed entity has no Content-Type header")
    return kept, body


def compose_mail(*, sealed_entity: bytes, message_id: str, label: str, from_address: str, to_address: str,
                 receipt_to: str, date: datetime, id_domain: str) -> ComposedMail:
    """The mail that carries `sealed_entity` from `from_address` to `to_address`.

    `label` (e.g. the message type) and `message_id` are written into the subject, so they must be
    plain tokens; `date` must be timezone-aware. Raises ValueError for anything that does not fit.
    """
    check_token(label, "label")
    check_token(message_id, "message id")
    check_address(from_address, "from address")
    check_address(to_address, "to address")
    check_address(receipt_to, "receipt address")
    check_domain(id_domain, "id domain")
    if not isinstance(date, datetime) or date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be a timezone-aware datetime")
    entity_headers, body = split_entity(sealed_entity)
    mail_message_id = f"<{message_id}@{id_domain}>"
    headers = [
        f"From: {from_address}",
        f"To: {to_address}",
        f"Date: {format_datetime(date)}",
        f"Subject: nazorg {label} {message_id}",
        f"Message-ID: {mail_message_id}",
        "MIME-Version: 1.0",
        f"Disposition-Notification-To: <{receipt_to}>",
        f"Disposition-Notification-Options: {DISPOSITION_OPTIONS}",
        f"X-Nazorg-Message-Id: {message_id}",
    ]
    data = CRLF.join([h.encode("ascii") for h in headers] + entity_headers) + CRLF + CRLF + body
    return ComposedMail(mail_message_id=mail_message_id, data=data)
