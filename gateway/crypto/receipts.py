"""Receipts: signed MDNs (RFC 8098) as AS2 uses them (RFC 4130 §7.4), built, parsed and matched.

DESCRIPTION
	`build_mdn(...)` writes the receipt a receiving gateway sends back: a
	`multipart/report; report-type=disposition-notification` with two parts,
	signed detached (`multipart/signed; protocol="application/pkcs7-signature";
	micalg=sha-256`, SHA-256, the signer's certificate and intermediates
	embedded; see `gateway.crypto.cms.sign_detached`) with the signer's
	Identity. Every line ends in CRLF, headers are never folded, and the
	report part is signed exactly as it is sent::

	    Content-Type: multipart/report; report-type=disposition-notification; boundary="<R>"
	    <empty line>
	    --<R>
	    Content-Type: text/plain; charset=us-ascii
	    Content-Transfer-Encoding: 7bit
	    <empty line>
	    <fixed wording: the message id, the disposition, the reason code; optional human_text>
	    <empty line>
	    --<R>
	    Content-Type: message/disposition-notification
	    Content-Transfer-Encoding: 7bit
	    <empty line>
	    Reporting-UA: nazorg-gateway
	    Original-Recipient: rfc822; <original recipient>
	    Final-Recipient: rfc822; <final recipient>
	    Original-Message-ID: <<message id>>
	    Disposition: automatic-action/MDN-sent-automatically; processed[/error: <reason-code>]
	    Received-Content-MIC: <base64 SHA-256>, sha-256      (only when a MIC is given)
	    <empty line>
	    --<R>--

	It returns a `BuiltMdn` = (entity, content_type): the multipart/signed
	entity with its Content-Type header (what a mail carries, what
	`parse_mdn` and `openssl cms -verify` read), and that header's value (what
	an AS2 server puts in the HTTP Content-Type; `BuiltMdn.body` is the HTTP
	body).

	`parse_mdn(entity, trust, ...)` takes a received MDN (a MIME entity, or
	with `content_type=` an HTTP body and its Content-Type header value),
	verifies the detached CMS signature over the report part as received
	(`gateway.crypto.open.verify_signed_data`, the same code that verifies
	messages: one SignerInfo, SHA-256/384/512, signed attributes, RSA PKCS#1
	v1.5, RSA-PSS or ECDSA), the signer through `TrustStore.check(...,
	usage="sign", party=expected_signer)` at `at` (default now), and only then
	reads the report's fields into a `Receipt`.

	`check_receipt(receipt, message_id=..., sealed_mic=...)` says whether the
	receipt proves that our message (the one sealed with `Sealed.mic`) was
	received intact and processed: a `ReceiptCheck` (verdict + reason). Only
	`ReceiptVerdict.MATCH` is proof. The rules, in this order (first wins):
	UNSIGNED (no signer: an unsigned MDN proves nothing), WRONG_MESSAGE
	(Original-Message-ID differs from `message_id`; angle brackets and
	surrounding white space ignored, otherwise exact), NOT_PROCESSED (any
	disposition but plain "processed": processed/error, processed/warning,
	failed/..., RFC 8098's displayed/deleted/...; the reason names the
	disposition and modifier), MISSING (no Received-Content-MIC), MISMATCH
	(the MIC's algorithm is not SHA-256, or its value is not base64 of 32
	bytes, or it differs from `sealed_mic`).

	Decisions
	- MIC algorithm. We only ever send SHA-256 MICs (`Sealed.mic`), so only a
	  SHA-256 MIC can match. Parsing accepts any spelling: "sha-256" (AS2 /
	  RFC 5751 micalg), "sha256" and case variants are normalised to
	  "sha-256"; "sha1"/"sha-1" to "sha1"; anything else is kept in lower case.
	  A MIC in another algorithm is MISMATCH with a reason that says so (not
	  MISSING: the peer did compute a digest, just not one we can compare).
	- Reason codes are slugs matching ``^[a-z0-9-]{1,64}$`` (the `code` of
	  `gateway.crypto.errors` classes, e.g. decryption-failed, not-for-us, and
	  schema-invalid, not-entitled, duplicate; see REASON_CODES). Anything
	  else is refused with ValueError at build time, so no free text and no
	  personal data can enter a receipt through them. Plain "processed" takes
	  no reason code; error, warning and failure require one.
	- The human-readable part has fixed wording (English and Dutch) naming
	  only the message id, the disposition and the reason code. `human_text`
	  is appended verbatim: it MUST NOT contain personal data (this cannot be
	  checked); it is limited to printable ASCII and line breaks, 900
	  characters.
	- An unsigned MDN (a bare multipart/report) is MalformedMessage ("the MDN
	  is not signed") unless `allow_unsigned=True`; then the Receipt has
	  `signer=None` and `check_receipt` says UNSIGNED. `allow_unsigned` never
	  excuses a signature that is present but bad: a signed MDN is verified
	  whatever the flag says.
	- A report altered after signing (e.g. the Disposition changed) no longer
	  matches the signed messageDigest: ContentAltered (the signature over the
	  signed attributes is still intact, so it is not SignatureInvalid). An
	  altered signature value is SignatureInvalid.
	- Only multipart/signed MDNs are read (what RFC 4130 §7.3 prescribes), not
	  opaque application/pkcs7-mime ones.

SECURITY
	Input is hostile. Trusts only the TrustStore and the caller's
	expected_signer; certificates in the MDN are path candidates, never trust.
	Nothing is returned before the signature, the signer and the report
	structure have all passed. Field values taken from a received MDN are
	checked to be free of control characters and at most 998 characters, so
	they are safe to log; a foreign peer's free-text modifier is kept as sent
	(it is the peer's words, not message content). Receipts we build carry no
	message content and no personal data: only ids, party names, a
	disposition, a reason slug and a digest.

DIAGNOSTICS
	build_mdn: ValueError for a bad reason code, message id, recipient,
	Reporting-UA, MIC (not base64 of a SHA-256 digest) or human_text, a
	reason code with plain "processed", or none with error/warning/failure.
	Signing errors of `cms.sign_detached` (unsupported or weak own key) pass
	through.
	parse_mdn (first failing check wins): MalformedMessage for broken MIME,
	not a multipart/signed or multipart/report, not signed (without
	allow_unsigned), a broken signature structure, a missing
	disposition-notification part, missing or repeated required fields
	(Final-Recipient, Original-Message-ID, Disposition), an unreadable
	Disposition or Received-Content-MIC; WeakAlgorithm / UnsupportedAlgorithm
	for the signature's digest or scheme; ContentAltered; SignatureInvalid;
	then the trust errors as `TrustStore.check` raises them (SignerNotTrusted,
	ChainBroken, CertificateExpired, CertificateRevoked, ..., WrongSender).
	check_receipt: ValueError when `sealed_mic` is not the base64 of a
	SHA-256 digest (a caller's mistake, not a verdict).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import NamedTuple

from cryptography import x509

from gateway.crypto import asn1, cms, smime
from gateway.crypto.errors import MalformedMessage
from gateway.crypto.identity import Identity
from gateway.crypto.open import (BROKEN_CERTIFICATE, decode_body, split_entity, split_multipart, split_signed,
                                 verify_signed_data)
from gateway.crypto.open import content_type as _content_type
from gateway.crypto.trust import PartyBinding, TrustStore

MIC_ALGORITHM = "sha-256"
DISPOSITION_MODE = "automatic-action/MDN-sent-automatically"
REPORTING_UA = "nazorg-gateway"

#: the reason codes the gateway itself uses; any slug matching REASON_CODE is accepted
REASON_CODES = ("decryption-failed", "not-for-us", "malformed", "signature-invalid", "content-altered",
                "signer-not-trusted", "wrong-sender", "weak-algorithm", "unsupported-algorithm",
                "schema-invalid", "not-entitled", "duplicate")
REASON_CODE = re.compile(r"[a-z0-9-]{1,64}\Z")

_MESSAGE_ID = re.compile(r"[!-;=?-~]{1,250}\Z")  # printable ASCII without space, < and >
_ADDRESS = re.compile(r"[!-~](?:[ -~]{0,126}[!-~])?\Z")  # printable ASCII, no leading/trailing space, <= 128
_HUMAN_TEXT = re.compile(r"[ -~\n]{0,900}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")
_DISPOSITION = re.compile(r"([^;]*);\s*([A-Za-z0-9-]+)\s*(?:/\s*(.*?))?\s*\Z", re.S)
_MODIFIER_NAME = re.compile(r"[^\s,]*")
_MAX_FIELD = 998


class Disposition(StrEnum):
    """What the receiver did with the message (RFC 4130 §7.4.3 disposition-type[/modifier])."""

    PROCESSED = "processed"
    ERROR = "processed/error"
    WARNING = "processed/warning"
    FAILED = "failed/failure"


class ReceiptVerdict(StrEnum):
    """What a receipt proves about one message we sent. Only MATCH is proof of intact, processed delivery."""

    MATCH = "match"
    MISMATCH = "mismatch"  #: the MIC is of other content, or in an algorithm other than SHA-256
    MISSING = "missing"  #: no Received-Content-MIC
    NOT_PROCESSED = "not-processed"  #: the disposition is not plain "processed"
    WRONG_MESSAGE = "wrong-message"  #: the receipt is for another message id
    UNSIGNED = "unsigned"  #: the MDN was not signed (accepted only with allow_unsigned=True): proves nothing


@dataclass(frozen=True)
class Receipt:
    """What a parsed (and, unless signer is None, verified) MDN says."""

    original_message_id: str  #: without angle brackets
    final_recipient: str  #: the address after the address type ("rfc822; 0599" -> "0599")
    disposition: str  #: type[/first modifier name], lower case: "processed", "processed/error", "failed/failure"
    modifier: str | None  #: the whole modifier as sent, name in lower case: "error: decryption-failed"; None if none
    mic: str | None  #: the Received-Content-MIC value (base64) as sent, None when absent
    mic_algorithm: str | None  #: "sha-256", "sha1", or the sent name in lower case; None when absent
    reporting_ua: str | None
    signer: x509.Certificate | None  #: the verified signer; None only for an unsigned MDN (allow_unsigned=True)
    original_recipient: str | None = None
    #: the validated chain, signer first, anchor last; () for an unsigned MDN
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False)

    @property
    def reason_code(self) -> str | None:
        """The text after the modifier name ("error: decryption-failed" -> "decryption-failed"), if any."""
        if self.modifier is None or ":" not in self.modifier:
            return None
        return self.modifier.split(":", 1)[1].strip() or None


@dataclass(frozen=True)
class ReceiptCheck:
    """The verdict of `check_receipt` and why (ids, dispositions, algorithms; never content)."""

    verdict: ReceiptVerdict
    reason: str

    @property
    def ok(self) -> bool:
        """True only for MATCH: a signed receipt for this message, processed, with our MIC."""
        return self.verdict is ReceiptVerdict.MATCH


class BuiltMdn(NamedTuple):
    """(entity, content_type) of a signed MDN."""

    #: the multipart/signed entity: its Content-Type header line, an empty line, the body (CRLF throughout)
    entity: bytes
    #: the value of that Content-Type header (multipart/signed; protocol=...; micalg=sha-256; boundary="...")
    content_type: bytes

    @property
    def body(self) -> bytes:
        """The entity without its header: the HTTP body of an AS2 MDN sent with `content_type`."""
        return self.entity.split(b"\r\n\r\n", 1)[1]


# -- building -------------------------------------------------------------------------------------

def _bare_id(message_id: str) -> str:
    """A message id without surrounding white space and one pair of angle brackets."""
    text = message_id.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def _checked(value: str, pattern: re.Pattern, what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{what} must be {rule}")
    return value


def check_reason_code(code: str) -> str:
    """`code` when it is a reason slug (^[a-z0-9-]{1,64}$), else ValueError (the value is not echoed)."""
    return _checked(code, REASON_CODE, "a reason code", "1-64 characters of a-z 0-9 - (a stable slug, no free text)")


def _disposition_line(disposition: Disposition, reason_code: str | None) -> str:
    if disposition is Disposition.PROCESSED:
        if reason_code is not None:
            raise ValueError("a plain 'processed' receipt takes no reason code")
        return disposition.value
    if reason_code is None:
        raise ValueError(f"a '{disposition.value}' receipt needs a reason code")
    return f"{disposition.value}: {check_reason_code(reason_code)}"


_WORDING = {
    Disposition.PROCESSED: ("The message {id} has been received and processed.",
                            "Het bericht {id} is ontvangen en verwerkt."),
    Disposition.ERROR: ("The message {id} has been received but could not be processed (reason: {reason}).",
                        "Het bericht {id} is ontvangen maar kon niet worden verwerkt (reden: {reason})."),
    Disposition.WARNING: ("The message {id} has been received and processed with a warning (reason: {reason}).",
                          "Het bericht {id} is ontvangen en verwerkt, met een waarschuwing (reden: {reason})."),
    Disposition.FAILED: ("The message {id} could not be processed (reason: {reason}).",
                         "Het bericht {id} kon niet worden verwerkt (reden: {reason})."),
}


def _human_part(message_id: str, disposition: Disposition, reason_code: str | None, human_text: str | None) -> bytes:
    lines = [w.format(id=f"<{message_id}>", reason=reason_code) for w in _WORDING[disposition]]
    lines.append(f"Disposition: {disposition.value}" + (f"; reason code: {reason_code}" if reason_code else ""))
    lines.append("This receipt contains no message content. / Deze bevestiging bevat geen berichtinhoud.")
    if human_text:
        lines += [""] + human_text.rstrip("\n").split("\n")
    return ("Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode("ascii")


def build_mdn(*, original_message_id: str, original_recipient: str, final_recipient: str,
              disposition: Disposition, reason_code: str | None, mic: str | None, signer: Identity,
              reporting_ua: str = REPORTING_UA, human_text: str | None = None,
              signing_time: datetime | None = None) -> BuiltMdn:
    """A signed MDN for the message `original_message_id` (with or without angle brackets).

    `mic` is the base64 SHA-256 MIC of the received message (`Opened.mic`), or None when it could not be
    computed (then no Received-Content-MIC is written). `reason_code` is a slug (see REASON_CODES) for
    error/warning/failure, None for processed. `human_text` is added to the human-readable part as it
    is and MUST NOT contain personal data. Returns (entity, content_type); see the module docstring."""
    disposition = Disposition(disposition)
    message_id = _checked(_bare_id(original_message_id) if isinstance(original_message_id, str) else None,
                          _MESSAGE_ID, "the original message id", "1-250 printable ASCII characters without "
                          "spaces or angle brackets (inside one optional pair of angle brackets)")
    for value, what in ((original_recipient, "original_recipient"), (final_recipient, "final_recipient"),
                        (reporting_ua, "reporting_ua")):
        _checked(value, _ADDRESS, what, "1-128 printable ASCII characters, no leading or trailing space")
    disposition_text = _disposition_line(disposition, reason_code)
    if mic is not None:
        try:
            digest = base64.b64decode(mic, validate=True) if isinstance(mic, str) else b""
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise ValueError("mic must be the base64 of a SHA-256 digest (as Opened.mic)")
    if human_text is not None:
        _checked(human_text, _HUMAN_TEXT, "human_text", "at most 900 characters of printable ASCII and line breaks")

    fields = [f"Reporting-UA: {reporting_ua}",
              f"Original-Recipient: rfc822; {original_recipient}",
              f"Final-Recipient: rfc822; {final_recipient}",
              f"Original-Message-ID: <{message_id}>",
              f"Disposition: {DISPOSITION_MODE}; {disposition_text}"]
    if mic is not None:
        fields.append(f"Received-Content-MIC: {mic}, {MIC_ALGORITHM}")
    notification = ("Content-Type: message/disposition-notification\r\n"
                    "Content-Transfer-Encoding: 7bit\r\n\r\n" + "\r\n".join(fields) + "\r\n").encode("ascii")
    b = smime.new_boundary()
    report = b"".join((
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="', b, b'"\r\n\r\n',
        b"--", b, b"\r\n", _human_part(message_id, disposition, reason_code, human_text),
        b"\r\n--", b, b"\r\n", notification,
        b"\r\n--", b, b"--\r\n",
    ))
    signature, _ = cms.sign_detached(report, signer.key, signer.cert, signer.chain, signing_time)
    entity = smime.multipart_signed(report, signature)
    head = entity[:entity.index(b"\r\n")]
    assert head.startswith(b"Content-Type: ")
    return BuiltMdn(entity, head[len(b"Content-Type: "):])


# -- parsing --------------------------------------------------------------------------------------

def parse_mdn(entity: bytes, trust: TrustStore, *, at: datetime | None = None,
              expected_signer: PartyBinding | None = None, allow_unsigned: bool = False,
              content_type: str | bytes | None = None) -> Receipt:
    """Verify and read a received MDN (see the module for what is checked and raised).

    `entity` is a MIME entity (headers, empty line, body; CRLF or LF); with `content_type` (the HTTP
    Content-Type header value of an AS2 response) it is the body alone. `expected_signer` should name the
    party the original message went to: without it any signer the trust store accepts is taken. An unsigned
    MDN is refused (MalformedMessage) unless `allow_unsigned`; then its Receipt has signer=None."""
    at = at or datetime.now(timezone.utc)
    data = bytes(entity)
    if content_type is not None:
        ctype = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
        if "\n" in ctype or "\r" in ctype:
            raise MalformedMessage("the Content-Type header value spans several lines")
        data = b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + data
    if not data.strip():
        raise MalformedMessage("the MDN is empty")
    headers, body = split_entity(data, "the MDN")
    mtype, params = _content_type(headers.get("content-type"))
    signer, chain = None, []
    if mtype == "multipart/report":
        if not allow_unsigned:
            raise MalformedMessage("the MDN is not signed (a bare multipart/report)")
        report = data
    elif mtype == "multipart/signed":
        try:
            der, signed_part = split_signed(body, 0, params)
            signed = verify_signed_data(asn1.load_content_info(der, "the signature"), signed_part)
        except BROKEN_CERTIFICATE as e:
            # asn1crypto parses lazily: a structure broken where no accessor expected it ends here
            raise MalformedMessage(f"malformed MDN signature ({type(e).__name__})") from None
        try:
            chain = trust.check(signed.signer, signed.other_certs, at, usage="sign", party=expected_signer)
        except BROKEN_CERTIFICATE as e:  # a certificate broken inside, read on first access
            raise MalformedMessage(f"an embedded certificate is malformed ({type(e).__name__})") from None
        signer, report = signed.signer, signed.content
    else:
        raise MalformedMessage(f"not an MDN: Content-Type is {_shown(mtype)!r}, "
                               "expected multipart/signed (or multipart/report)")
    fields = _notification_fields(report)
    return _receipt(fields, signer, chain)


def _shown(text: str) -> str:
    """A value fit for an error message: printable ASCII, at most 60 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= 60 else text[:57] + "..."


def _notification_fields(report: bytes) -> dict[str, str]:
    """The fields of the message/disposition-notification part of a multipart/report entity."""
    headers, body = split_entity(report, "the signed report")
    mtype, params = _content_type(headers.get("content-type"))
    if mtype != "multipart/report":
        raise MalformedMessage(f"the signed part is {_shown(mtype)!r}, expected multipart/report")
    if params.get("report-type", "").lower() != "disposition-notification":
        raise MalformedMessage(f"the report type is {_shown(params.get('report-type', ''))!r}, "
                               "expected disposition-notification")
    try:
        parts = split_multipart(body, params.get("boundary", ""))
    except MalformedMessage as e:
        raise MalformedMessage(f"the multipart/report is broken ({e.message})") from None
    found = []
    for part in parts:
        part_headers, part_body = split_entity(part, "a part of the report")
        if _content_type(part_headers.get("content-type"))[0] == "message/disposition-notification":
            found.append(decode_body(part_body, part_headers.get("content-transfer-encoding"),
                                     "the disposition notification"))
    if len(found) != 1:
        raise MalformedMessage(f"the report has {len(found)} message/disposition-notification parts, expected 1")
    return _fields(found[0])


#: fields that must not occur twice (the receipt would be ambiguous)
_SINGLE = ("reporting-ua", "original-recipient", "final-recipient", "original-message-id", "disposition",
           "received-content-mic")


def _fields(block: bytes) -> dict[str, str]:
    """Name (lower case) -> unfolded value of the notification's fields (RFC 8098 §3.1), CRLF or LF."""
    fields: dict[str, str] = {}
    last = None
    for number, raw in enumerate(block.replace(b"\r\n", b"\n").split(b"\n"), 1):
        if not raw.strip():
            last = None  # RFC 3464-style groups are separated by empty lines; MDNs have one group
            continue
        if raw[:1] in (b" ", b"\t"):
            if last is None:
                raise MalformedMessage(f"disposition notification line {number} continues no field")
            fields[last] += " " + _text(raw.strip(), last)
            continue
        name, sep, value = raw.partition(b":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise MalformedMessage(f"disposition notification line {number} is not a field")
        last = name.decode("ascii").lower()
        if last in fields:
            if last in _SINGLE:
                raise MalformedMessage(f"the disposition notification has more than one {_shown(last)} field")
            last = f"{last}\0{number}"
        fields[last] = _text(value.strip(), last)
    for name, value in fields.items():
        if len(value) > _MAX_FIELD:
            raise MalformedMessage(f"the {_shown(name)} field is longer than {_MAX_FIELD} characters")
    return fields


def _text(value: bytes, name: str) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"the {_shown(name)} field is not UTF-8") from None
    if _CONTROL.search(text):
        raise MalformedMessage(f"the {_shown(name)} field holds control characters")
    return text


def _address(value: str | None) -> str | None:
    """The address of "address-type; address" (RFC 8098 §3.2.3/4), or the value when it names no type."""
    if value is None:
        return None
    kind, sep, address = value.partition(";")
    return (address if sep else kind).strip()


_MIC_NAMES = {"sha-256": "sha-256", "sha256": "sha-256", "sha1": "sha1", "sha-1": "sha1"}


def _receipt(fields: dict[str, str], signer: x509.Certificate | None, chain: list[x509.Certificate]) -> Receipt:
    for required in ("final-recipient", "original-message-id", "disposition"):
        if not fields.get(required, "").strip():
            raise MalformedMessage(f"the disposition notification has no {required} field")
    m = _DISPOSITION.match(fields["disposition"].strip())
    if not m or not m.group(1).strip():
        raise MalformedMessage("the Disposition field is not 'mode; type[/modifier]'")
    kind = m.group(2).lower()
    modifier = m.group(3) or None
    disposition = kind
    if modifier is not None:
        name, sep, rest = modifier.partition(":")
        name = name.strip().lower()
        modifier = name + (": " + rest.strip() if sep else "")
        first = _MODIFIER_NAME.match(name).group(0)
        disposition = f"{kind}/{first}" if first else kind
    mic = mic_algorithm = None
    if "received-content-mic" in fields:
        value, sep, algorithm = fields["received-content-mic"].rpartition(",")
        if not sep or not value.strip() or not algorithm.strip():
            raise MalformedMessage("the Received-Content-MIC field is not 'base64, algorithm'")
        mic = value.strip()
        algorithm = algorithm.strip().lower()
        mic_algorithm = _MIC_NAMES.get(algorithm, algorithm)
    return Receipt(original_message_id=_bare_id(fields["original-message-id"]),
                   final_recipient=_address(fields["final-recipient"]),
                   disposition=disposition, modifier=modifier, mic=mic, mic_algorithm=mic_algorithm,
                   reporting_ua=fields.get("reporting-ua"), signer=signer,
                   original_recipient=_address(fields.get("original-recipient")), chain=tuple(chain))


# -- matching -------------------------------------------------------------------------------------

def check_receipt(receipt: Receipt, *, message_id: str, sealed_mic: str) -> ReceiptCheck:
    """Whether `receipt` proves that the message `message_id`, sealed with MIC `sealed_mic` (`Sealed.mic`),
    arrived intact and was processed. Only verdict MATCH (`.ok`) is proof; see the module for the order."""
    try:
        ours = base64.b64decode(sealed_mic, validate=True)
    except (binascii.Error, ValueError, TypeError):
        ours = b""
    if len(ours) != 32:
        raise ValueError("sealed_mic must be the base64 of a SHA-256 digest (as Sealed.mic)")
    if receipt.signer is None:
        return ReceiptCheck(ReceiptVerdict.UNSIGNED, "the MDN is not signed: it proves nothing")
    wanted = _bare_id(message_id)
    if receipt.original_message_id != wanted:
        return ReceiptCheck(ReceiptVerdict.WRONG_MESSAGE,
                            f"the receipt is for message <{_shown(receipt.original_message_id)}>, "
                            f"not <{_shown(wanted)}>")
    if receipt.disposition != Disposition.PROCESSED.value or receipt.modifier is not None:
        said = receipt.disposition if receipt.modifier is None else \
            f"{receipt.disposition.split('/')[0]}/{receipt.modifier}"
        return ReceiptCheck(ReceiptVerdict.NOT_PROCESSED, f"the receiver did not process the message: {_shown(said)}")
    if receipt.mic is None:
        return ReceiptCheck(ReceiptVerdict.MISSING, "the receipt carries no Received-Content-MIC")
    if receipt.mic_algorithm != MIC_ALGORITHM:
        return ReceiptCheck(ReceiptVerdict.MISMATCH,
                            f"the receipt's MIC is {_shown(receipt.mic_algorithm or '')}, not sha-256: we only send "
                            "sha-256 MICs, so it cannot be compared")
    try:
        theirs = base64.b64decode(receipt.mic, validate=True)
    except (binascii.Error, ValueError):
        return ReceiptCheck(ReceiptVerdict.MISMATCH, "the receipt's MIC is not base64")
    if not hmac.compare_digest(theirs, ours):
        return ReceiptCheck(ReceiptVerdict.MISMATCH, "the receipt's MIC differs from the MIC of the sealed message")
    return ReceiptCheck(ReceiptVerdict.MATCH, "signed receipt: processed, MIC matches")
