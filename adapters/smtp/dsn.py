"""Reading delivery status notifications (RFC 3464) that come back to the sender's mailbox.

A DSN is a ``multipart/report; report-type=delivery-status`` with a ``message/delivery-status``
part (one block of per-message fields, then one block per recipient) and, usually, the returned
headers (``text/rfc822-headers``, what Postfix sends for ``RET=HDRS``) or the whole returned mail
(``message/rfc822``, what Exim and Exchange send). From it comes: the envelope id we gave
(``ENVID`` = our message id), the Message-ID of the returned mail, and per recipient the action
(delivered, failed, delayed, relayed, expanded), the status code and the diagnostic.

A mail that is not such a report gives None (it is something else: an MDN, an answer, spam).
A mail that claims to be one but cannot be read gives ``DsnError`` with the reason; nothing else
is raised. The stdlib ``email`` package (compat32) splits the MIME; the fields are read here.
Sizes are bounded (mail, recipients, field text) and all text that leaves this module has had its
control characters removed.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.policy
import quopri
import re
from dataclasses import dataclass
from email.message import Message

MAX_MAIL = 16 * 1024 * 1024
MAX_RECIPIENTS = 1000
MAX_DIAGNOSTIC = 300
_MAX_FIELD = 2000
_ACTIONS = frozenset({"delivered", "failed", "delayed", "relayed", "expanded"})
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_FOLD = re.compile(r"\r?\n[ \t]*|\r")
_FIELD = re.compile(r"([!-9;-~]+)[ \t]*:(.*)\Z", re.S)  # RFC 5322 field name: printable except ':'
_MSGID = re.compile(r"<[^<>\s]{1,994}>")
_REPORT_PARTS = ("message/delivery-status", "message/global-delivery-status")  # the latter: RFC 6533
_RETURNED_HEADERS = ("text/rfc822-headers", "message/global-headers")
_RETURNED_MAIL = ("message/rfc822", "message/global")
_REPEATED = "\0repeated"


class DsnError(ValueError):
    """A mail that says it is a DSN but cannot be read as one; the message says why."""


@dataclass(frozen=True)
class DsnRecipient:
    final_recipient: str | None
    original_recipient: str | None
    #: delivered | failed | delayed | relayed | expanded
    action: str
    #: the enhanced status code, e.g. "2.0.0" or "5.1.1"; None when absent or unreadable
    status: str | None
    #: the Diagnostic-Code text (without its type), at most 300 characters, no control characters
    diagnostic: str | None
    remote_mta: str | None


@dataclass(frozen=True)
class Dsn:
    #: Original-Envelope-Id, xtext decoded: the ENVID the sender gave (our message id)
    envid: str | None
    #: Message-ID of the returned mail (headers or whole mail), with its angle brackets
    original_message_id: str | None
    reporting_mta: str | None
    recipients: tuple[DsnRecipient, ...]


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: '+XX' (two upper-case hex digits) is the character XX."""
    return _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)


def parse_dsn(mail: bytes) -> Dsn | None:
    """The DSN in `mail`, None when `mail` is not ``multipart/report; report-type=delivery-status``.

    Raises DsnError when it is one but is malformed (no delivery-status part, no recipient block,
    a recipient without Final-Recipient or Action, an unknown action, too large)."""
    if not isinstance(mail, (bytes, bytearray, memoryview)):
        raise DsnError("a DSN is read from bytes")
    if len(mail) > MAX_MAIL:
        raise DsnError(f"mail of {len(mail)} bytes is over the {MAX_MAIL}-byte limit")
    try:
        msg = email.message_from_bytes(bytes(mail), policy=email.policy.compat32)
        is_report = (msg.get_content_type() == "multipart/report"
                     and _text(msg.get_param("report-type", "", header="content-type")).lower() == "delivery-status")
        if not is_report:
            return None
        parts = msg.get_payload()
    except (email.errors.MessageError, RecursionError, LookupError, ValueError, TypeError,
            AttributeError, IndexError, UnicodeError) as exc:  # the email package's failures on broken input
        raise DsnError(f"unreadable mail: {type(exc).__name__}") from None
    if not isinstance(parts, list) or not parts:
        raise DsnError("the report has no parts")
    status_parts = [p for p in parts if isinstance(p, Message) and p.get_content_type() in _REPORT_PARTS]
    if len(status_parts) != 1:
        raise DsnError(f"the report has {len(status_parts)} delivery-status parts, expected 1")
    blocks = _blocks(_status_text(status_parts[0]))
    if len(blocks) < 2:
        raise DsnError("the delivery-status part has no per-recipient block")
    if len(blocks) - 1 > MAX_RECIPIENTS:
        raise DsnError(f"the delivery-status part has more than {MAX_RECIPIENTS} recipient blocks")
    per_message = blocks[0]
    envid = per_message.get("original-envelope-id")
    return Dsn(
        envid=(_clean(xtext_decode(envid)) or None) if envid is not None else None,
        original_message_id=_returned_message_id(parts),
        reporting_mta=_typed_value(per_message.get("reporting-mta")),
        recipients=tuple(_recipient(block, n) for n, block in enumerate(blocks[1:], 1)),
    )


# -- the delivery-status part ---------------------------------------------------------------------

def _text(value: object) -> str:
    """A header value as str: raw bytes that were not ASCII become U+FFFD, never an exception."""
    if isinstance(value, tuple):  # an RFC 2231 parameter: (charset, language, value)
        value = value[2] if len(value) == 3 else ""
    if not isinstance(value, str):
        value = str(value) if value is not None else ""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _clean(value: str, limit: int = _MAX_FIELD) -> str:
    """One line, no control characters, at most `limit` characters."""
    value = _CONTROL.sub(" ", _FOLD.sub(" ", value)).strip()
    return value if len(value) <= limit else value[:limit - 3].rstrip() + "..."


def _status_text(part: Message) -> str:
    """The text of the delivery-status part as it was sent, decoded if it was base64 or QP.

    The email package parses this part into one header-only message per block; it is put back
    together here, so the fields are read the same way however the part was encoded."""
    payload = part.get_payload()
    if isinstance(payload, str):
        text = payload
    elif isinstance(payload, list):
        chunks = []
        for block in payload:
            if not isinstance(block, Message):
                continue
            lines = [f"{name}: {value}" for name, value in block.raw_items()]
            rest = block.get_payload()
            if isinstance(rest, str) and rest:
                lines.append(rest)
            chunks.append("\n".join(lines))
        text = "\n\n".join(chunks)
    else:
        raise DsnError("the delivery-status part has no text")
    text = _text(text)
    encoding = _text(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        raw = text.encode("ascii", "replace")
        try:
            data = base64.b64decode(raw) if encoding == "base64" else quopri.decodestring(raw)
        except (binascii.Error, ValueError):
            raise DsnError(f"the delivery-status part is not valid {encoding}") from None
        text = data.decode("utf-8", "replace")
    return text


def _blocks(text: str) -> list[dict[str, str]]:
    """The field blocks of a delivery-status body: blank-line separated, folded lines unfolded,
    names lower-cased; the first occurrence of a repeated field wins."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in re.split(r"\r\n|\n|\r", text):
        if not line.strip():
            if current:
                blocks.append(current)
                if len(blocks) > MAX_RECIPIENTS + 1:
                    return blocks
            current, last = {}, None
            continue
        if line[0] in " \t":
            if last is None:
                raise DsnError("the delivery-status part starts a block with a continuation line")
            if last is not _REPEATED and len(current[last]) < _MAX_FIELD:
                current[last] += " " + line.strip()
            continue
        m = _FIELD.match(line)
        if not m:
            raise DsnError("the delivery-status part has a line that is not a field")
        name = m.group(1).lower()
        if name in current:
            last = _REPEATED  # its continuation lines go nowhere
            continue
        current[name], last = m.group(2).strip(), name
    if current:
        blocks.append(current)
    return blocks


def _typed_value(value: str | None) -> str | None:
    """The value part of 'type; value' (Reporting-MTA, Remote-MTA, Final-Recipient, ...)."""
    if value is None:
        return None
    _, sep, rest = value.partition(";")
    out = _clean(rest if sep else value)
    return out or None


def _recipient(block: dict[str, str], n: int) -> DsnRecipient:
    if "final-recipient" not in block:
        raise DsnError(f"recipient block {n} has no Final-Recipient")
    if "action" not in block:
        raise DsnError(f"recipient block {n} has no Action")
    action = _clean(block["action"], 40).lower().split(" ", 1)[0]  # "failed (bad address)": a comment
    if action not in _ACTIONS:
        raise DsnError(f"recipient block {n} has an unknown Action {action[:20]!r}")
    status = _STATUS.match(block.get("status", "").strip())
    diagnostic = _typed_value(block.get("diagnostic-code"))
    original = _typed_value(block.get("original-recipient"))
    return DsnRecipient(
        final_recipient=_typed_value(block["final-recipient"]),
        original_recipient=_clean(xtext_decode(original)) if original else None,
        action=action,
        status=status.group(0) if status else None,
        diagnostic=_clean(diagnostic, MAX_DIAGNOSTIC) if diagnostic else None,
        remote_mta=_typed_value(block.get("remote-mta")),
    )


# -- the returned mail ----------------------------------------------------------------------------

def _returned_message_id(parts: list) -> str | None:
    """Message-ID of the returned headers or mail (the third part, by RFC 3462), with <>."""
    for part in parts:
        if not isinstance(part, Message):
            continue
        kind = part.get_content_type()
        if kind in _RETURNED_HEADERS:
            payload = part.get_payload()
            if isinstance(payload, str):
                return _message_id_in(_header_block(payload))
        elif kind in _RETURNED_MAIL:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                for name, value in inner.raw_items():
                    if name.lower() == "message-id":
                        return _message_id_in(_text(value))
            return None
    return None


def _header_block(text: str) -> str:
    """The Message-ID field value in a block of header lines (unfolded), or ''."""
    value: str | None = None
    for line in re.split(r"\r\n|\n|\r", _text(text)):
        if not line.strip():
            break
        if line[0] in " \t":
            if value is not None:
                value += " " + line.strip()
            continue
        if value is not None:
            break
        name, sep, rest = line.partition(":")
        if sep and name.strip().lower() == "message-id":
            value = rest.strip()
    return value or ""


def _message_id_in(value: str) -> str | None:
    m = _MSGID.search(_clean(value))
    return m.group(0) if m else None
