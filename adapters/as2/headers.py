"""AS2 headers (RFC 4130): names, Message-IDs, receipt options, and the sealed entity split for HTTP.

AS2 names (AS2-From, AS2-To, RFC 4130 §6.2) are 1-128 printable ASCII characters, compared
case-sensitively. Written: bare (AS2-atomic-name: printable ASCII but space, '"' and '\\') when
possible, else as AS2-quoted-name with a backslash before '"' and '\\'. Read: a quoted string is
unquoted; anything else is taken as it stands (peers send names with spaces unquoted too).

The AS2 Message-ID is derived from the gateway's message id, ``<message id@AS2-From as a host-like
name>``, so every retry and every resend carries the same one and the receiver can drop duplicates.

The sealed entity (``gateway.crypto.seal``: Content-* headers, an empty line, a base64 body) travels
as HTTP Content-Type + body: `split_sealed` takes it apart, `entity_of` puts a received one back
together for ``open_sealed``. Every value written into a header is checked here, so no caller value
can end a header or smuggle in another one (``ValueError`` otherwise; the value is never echoed).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

AS2_VERSION = "1.2"
DISPOSITION_OPTIONS = "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"
NAME_MAX = 128

_AS2_TEXT = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+\Z")  # RFC 4130 §6.2 AS2-text
_PRINTABLE = re.compile(r"[\x20-\x7e]+\Z")
# a message id we write between '<' and '@': RFC 5322 dot-atom-text, bounded
_ID_LEFT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_NOT_HOST = re.compile(r"[^a-z0-9.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+\Z")
_MICALG = {"sha-256": "sha-256", "sha256": "sha-256", "sha-384": "sha-384", "sha384": "sha-384",
           "sha-512": "sha-512", "sha512": "sha-512", "sha1": "sha1", "sha-1": "sha1", "md5": "md5"}
_PKCS7_MIME = ("application/pkcs7-mime", "application/x-pkcs7-mime")


# -- AS2 names ------------------------------------------------------------------------------------

def check_name(name: str, what: str = "AS2 name") -> str:
    """`name` when it is 1-128 printable ASCII characters, else ValueError (the value is not echoed)."""
    if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX or not _PRINTABLE.match(name):
        raise ValueError(f"{what} must be 1-{NAME_MAX} printable ASCII characters")
    return name


def quote_name(name: str) -> str:
    """The header value for an AS2 name: bare when it is all AS2-text, else quoted (RFC 4130 §6.2)."""
    check_name(name)
    if _AS2_TEXT.match(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_name(value: str | None) -> str | None:
    """The AS2 name in a header value (quoted or not, surrounding white space ignored); None when unusable."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    try:
        return check_name(value)
    except ValueError:
        return None


# -- Message-ID -----------------------------------------------------------------------------------

def id_domain(as2_from: str) -> str:
    """A host-like right-hand side for Message-IDs from an AS2 name: lower case, [a-z0-9.-] only."""
    host = _NOT_HOST.sub("-", check_name(as2_from, "AS2-From").lower())
    host = re.sub(r"\.{2,}", ".", host).strip(".-")
    return host[:63] or "as2"


def as2_message_id(message_id: str, as2_from: str) -> str:
    """``<message_id@host-like AS2-From>``: the same for every attempt at sending `message_id`."""
    if not isinstance(message_id, str) or len(message_id) > 200 or not _ID_LEFT.match(message_id):
        raise ValueError("message id must be RFC 5322 dot-atom text of at most 200 characters")
    return f"<{message_id}@{id_domain(as2_from)}>"


def bare_message_id(value: str | None) -> str | None:
    """A received Message-ID without white space and one pair of angle brackets; None when unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not value or len(value) > 998 or not _PRINTABLE.match(value):
        return None
    return value


def check_text(value: str, what: str, limit: int = 200) -> str:
    """`value` when it is printable ASCII of at most `limit` characters (fit for a header), else ValueError."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _PRINTABLE.match(value):
        raise ValueError(f"{what} must be 1-{limit} printable ASCII characters")
    return value


def shorten(text: bytes | str | None, limit: int = 200) -> str | None:
    """A peer's words fit for a log line or an exception: control characters removed, white space
    collapsed, at most `limit` characters; None when nothing is left."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return (text[: limit - 1] + "…" if len(text) > limit else text) or None


# -- receipt options ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReceiptRequest:
    """What a sender asked for: an MDN at all, signed or not, with which MIC, delivered where."""

    wanted: bool
    signed: bool
    mic_algorithm: str | None
    async_url: str | None


def _parameters(value: str) -> dict[str, list[str]]:
    """Disposition-Notification-Options (RFC 4130 §7.3): attribute=importance, value, value; ..."""
    found: dict[str, list[str]] = {}
    for item in value.split(";"):
        name, sep, rest = item.partition("=")
        if not sep:
            continue
        values = [v.strip().strip('"').lower() for v in rest.split(",")]
        found[name.strip().lower()] = [v for v in values[1:] if v]  # values[0] is the importance
    return found


def parse_receipt_request(headers) -> ReceiptRequest:
    """The receipt a request asks for, from its Disposition-Notification-* and Receipt-Delivery-Option headers."""
    wanted = bool((headers.get("Disposition-Notification-To") or "").strip())
    options = _parameters(headers.get("Disposition-Notification-Options") or "")
    signed = "pkcs7-signature" in options.get("signed-receipt-protocol", [])
    mic = None
    for name in options.get("signed-receipt-micalg", []):
        if name in _MICALG:
            mic = _MICALG[name]
            break
    url = (headers.get("Receipt-Delivery-Option") or "").strip() or None
    return ReceiptRequest(wanted=wanted, signed=wanted and signed, mic_algorithm=mic if wanted else None,
                          async_url=url if wanted else None)


# -- MIME entities --------------------------------------------------------------------------------

def content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """(type/subtype in lower case, parameters with lower-case names, values unquoted); ("", {}) when unusable."""
    if not value:
        return "", {}
    main, _, rest = value.partition(";")
    main = main.strip().lower()
    if not _MIME_TYPE.match(main):
        return "", {}
    params: dict[str, str] = {}
    for m in re.finditer(r';?\s*([A-Za-z0-9!#$&^_.+-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', ";" + rest):
        v = m.group(2)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith('"') else v
    return main, params


def is_pkcs7_mime(value: str | None) -> bool:
    return content_type(value)[0] in _PKCS7_MIME


def split_entity(entity: bytes) -> tuple[dict[str, str], bytes]:
    """(headers: lower-case name → unfolded value, body) of a MIME entity with CRLF or LF line ends."""
    if not isinstance(entity, (bytes, bytearray)):
        raise ValueError("a MIME entity must be bytes")
    entity = bytes(entity)
    crlf = entity.find(b"\r\n\r\n")
    lf = entity.find(b"\n\n")
    if crlf < 0 and lf < 0:
        raise ValueError("the entity has no header section ended by an empty line")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        head, body = entity[:crlf], entity[crlf + 4:]
    else:
        head, body = entity[:lf], entity[lf + 2:]
    headers: dict[str, str] = {}
    last = None
    for raw in head.replace(b"\r\n", b"\n").split(b"\n"):
        line = raw.decode("ascii", "replace")
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError("the entity has a malformed header line")
        last = name.strip().lower()
        if last in headers and last.startswith("content-"):
            raise ValueError("the entity repeats a Content-* header")
        headers[last] = value.strip()
    return headers, body


def split_sealed(entity: bytes) -> tuple[str, bytes, str | None]:
    """(Content-Type value, body, Content-Transfer-Encoding in lower case or None) of a sealed entity."""
    headers, body = split_entity(entity)
    ctype = headers.get("content-type")
    if not ctype or not content_type(ctype)[0]:
        raise ValueError("the sealed entity has no usable Content-Type header")
    check_text(ctype, "the sealed entity's Content-Type", 998)
    if not body:
        raise ValueError("the sealed entity has an empty body")
    cte = headers.get("content-transfer-encoding")
    return ctype, body, cte.strip().lower() if cte else None


def strict_base64(data: bytes) -> bytes:
    """Decode base64 whose only white space is line breaks, spaces and tabs; ValueError otherwise."""
    squeezed = data.replace(b"\r\n", b"").replace(b"\n", b"")
    try:
        return base64.b64decode(squeezed, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.b64decode(squeezed.translate(None, b" \t\r"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the body is not valid base64") from None


def encode_base64(data: bytes) -> bytes:
    """base64 in CRLF lines of 76 characters, as MIME writes it."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t")


def decoded_body(body: bytes, ctype: str, cte: str | None) -> bytes:
    """The body as binary: base64 decoded when its Content-Transfer-Encoding says so, or when an
    application/(x-)pkcs7-mime body has no such header but is base64 text (peers send that too).

    A DER/BER envelope starts with 0x30 and soon holds bytes base64 never has; base64 text of a CMS
    structure starts with "MI" or "MA". Raises ValueError for a body that claims base64 and is not."""
    if cte == "base64":
        return strict_base64(body)
    if cte in (None, "binary", "8bit", "7bit") and is_pkcs7_mime(ctype) and body[:1] == b"M" \
            and _B64_ALPHABET.issuperset(body[:256]):
        try:
            return strict_base64(body)
        except ValueError:
            return body
    return body


def entity_of(ctype: str, body: bytes) -> bytes:
    """A binary MIME entity for ``open_sealed``/``parse_mdn``: one Content-Type line, an empty line, the body."""
    return b"Content-Type: " + ctype.encode("ascii", "replace") + b"\r\n\r\n" + body
