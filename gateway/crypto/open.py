"""Open a sealed message: decrypt it, verify its signature and signer, and hand out the XML.

DESCRIPTION
	`open_sealed(entity, own, trust, at=…, expected_sender=…)` takes what
	arrived and returns an `Opened` (the XML, the signer and its validated
	chain, the AS2 MIC, the digest of the signed entity, the algorithms used,
	the signing time) only when every check below passes; otherwise it raises
	one typed error from `gateway.crypto.errors`.

	Accepted input: a MIME entity `application/pkcs7-mime` (or
	`application/x-pkcs7-mime`), smime-type enveloped-data or
	authEnveloped-data (or none: the CMS content type decides), parameters
	quoted or not, body base64 or binary (no Content-Transfer-Encoding: binary
	if it starts like DER, else base64), CRLF or LF line ends, any other
	headers (From, AS2-To …) ignored; or the bare DER/BER (what gpgsm and some
	AS2 peers send); or PEM (`-----BEGIN CMS-----`, `PKCS7`).

	1. Decrypt. EnvelopedData (AES-128/192/256-CBC) or AuthEnvelopedData
	   (AES-128/192/256-GCM, RFC 5083/5084; authAttrs are the AAD). Our
	   recipient is the recipient info naming our certificate by
	   issuerAndSerialNumber or subjectKeyIdentifier. With an RSA key: a
	   KeyTransRecipientInfo, unwrapped with RSA PKCS#1 v1.5 or RSA-OAEP (hash,
	   MGF1 hash and label as the parameters say). With an EC key: a
	   KeyAgreeRecipientInfo, ephemeral-static ECDH (RFC 5753, standard or
	   cofactor, X9.63 KDF with SHA-1/224/256/384/512, AES key wrap): what the
	   sealer writes for an EC sender's own copy. BER with indefinite lengths
	   is parsed directly (asn1crypto).
	2. The decrypted entity must be signed: `multipart/signed` with a detached
	   `application/(x-)pkcs7-signature` (micalg is not read: the SignerInfo
	   says), or opaque `application/(x-)pkcs7-mime; smime-type=signed-data`,
	   or a bare DER/BER SignedData (gpgsm).
	3. Verify the CMS SignedData here (cryptography has no CMS verification):
	   exactly one SignerInfo; its certificate among those embedded, found by
	   issuerAndSerialNumber or subjectKeyIdentifier; digest SHA-256/384/512;
	   signed attributes present, with contentType id-data and a messageDigest
	   equal to the digest of the signed content; the signature (RSA PKCS#1
	   v1.5, RSASSA-PSS, ECDSA) over the DER of the signed-attributes SET.
	4. The signer through `TrustStore.check(…, usage="sign",
	   party=expected_sender)`, at `at` (default: now).
	5. Decode the signed part's body per its Content-Transfer-Encoding
	   (base64, quoted-printable, 7bit/8bit/binary): the XML bytes.

	The signed content of a detached signature is the first part of the
	multipart/signed exactly as it stands between the boundaries (RFC 2046: the
	line break before a boundary belongs to the boundary). When those bytes do
	not match the messageDigest and contain bare LFs, their canonical form
	(every bare LF made CRLF, RFC 8551 §3.1.1) is tried: a copy that passed
	through a Unix file still verifies. The bytes that matched are the ones
	the MIC is computed over and the XML is decoded from.

	`Opened.mic` = base64 of SHA-256 over those signed bytes (MIME headers +
	body of the signed part, canonical CRLF): the AS2 Received-Content-MIC
	(RFC 4130 §7.3.1), whatever digest the signer used. For an opaque
	signature it is over the encapsulated content. `signed_entity_sha256` is
	the hex SHA-256 of the whole decrypted entity as it came out of the
	decryption.

SECURITY
	Input is hostile. Trusts the operator's own identity and TrustStore only;
	certificates in the message are path candidates, never trust. Nothing is
	returned before every check has passed. Exceptions name structures,
	algorithms and certificates (see `trust.describe`), never content or key
	material; `Opened`'s repr leaves the XML out. The caller bounds the input
	size.

PERFORMANCE
	What opening must cost: one RSA private-key operation, AES over the
	ciphertext, one signature verification, SHA-256 of the signed part and of
	the decrypted entity, base64 of the envelope and of the XML, the chain and
	CRL check. asn1crypto builds every field it reads in Python (~5-10 µs
	each), which came to more than all of that together; most of it is
	avoided, without changing any result or error (same checks, same order,
	same messages):
	- what a sender repeats is remembered by its encoding (`asn1.Remembered`):
	  algorithm identifiers, the embedded certificates (so TrustStore.check
	  sees the same certificate objects, with what `cryptography` caches in
	  them), which certificate an identifier names; the DER re-encoding of a
	  signed attribute (`asn1.der_set_of`) is cached per attribute;
	- a signature or envelope laid out like an earlier one, byte for byte but
	  for the values that change per message, is not parsed again: see
	  `_Layout` (the section "the same layout as an earlier message");
	- the MIC reuses the SHA-256 computed for messageDigest; base64 line
	  breaks are removed with bytes.replace; CBC padding is checked on the
	  last block without copying the plaintext twice.
	`bench/crypto_open.py` measures it against the bare primitives.

DIAGNOSTICS (first failing check wins)
	MalformedMessage: not S/MIME, broken MIME, base64 or ASN.1, not encrypted,
	not signed, signed attributes missing, signer certificate not embedded.
	WeakAlgorithm: DES/3DES/RC2/RC4 content encryption, MD5/SHA-1 signature
	digest (and weak certificates, from the trust check).
	UnsupportedAlgorithm: any other algorithm we do not implement (the OID is
	named).
	NotForUs: no recipient info of our key's kind names our certificate, or
	OAEP unwrapping / AES key unwrapping with our key fails.
	DecryptionFailed: GCM tag mismatch; CBC padding invalid; unwrapped key of
	the wrong size (RSA PKCS#1 v1.5 unwrapping with implicit rejection yields a
	random key on failure, so a wrong key or altered encrypted key shows here).
	CBC has no integrity of its own: a flipped ciphertext byte in the last
	block breaks the padding (DecryptionFailed); elsewhere it garbles a block,
	and the check that trips first names it: the MIME structure
	(MalformedMessage), the signed content (ContentAltered) or the signature
	(SignatureInvalid / MalformedMessage). Nothing altered is ever returned.
	ContentAltered: messageDigest differs from the signed content.
	SignatureInvalid: the signature does not verify, or does not fit the key.
	Trust errors as `gateway.crypto.trust` raises them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.exceptions import UnsupportedAlgorithm as UnknownToCryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.crypto import asn1
from gateway.crypto.errors import (ContentAltered, DecryptionFailed, MalformedMessage, NotForUs, SignatureInvalid,
                                   UnsupportedAlgorithm)
from gateway.crypto.identity import Identity
from gateway.crypto.trust import PartyBinding, TrustStore

PKCS7_MIME = ("application/pkcs7-mime", "application/x-pkcs7-mime")
PKCS7_SIGNATURE = ("application/pkcs7-signature", "application/x-pkcs7-signature")
ENCRYPTED_SMIME_TYPES = ("enveloped-data", "authenveloped-data")


#: what a certificate that loads but is broken inside raises when a field is first read (found by fuzzing)
BROKEN_CERTIFICATE = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, x509.InvalidVersion,
                      x509.DuplicateExtension, UnknownToCryptography)


@dataclass(frozen=True)
class Opened:
    """What a sealed message held, after every check passed."""

    xml: bytes = field(repr=False)
    signer: x509.Certificate
    chain: list[x509.Certificate] = field(repr=False)
    #: base64 SHA-256 of the signed part (MIME headers + body, canonical CRLF): the AS2 MIC
    mic: str
    #: hex SHA-256 of the whole decrypted (multipart/signed or signed-data) entity as received
    signed_entity_sha256: str
    content_cipher: str  #: e.g. "aes256-gcm", "aes256-cbc" (as `profiles.ContentCipher`)
    #: e.g. "rsa-oaep-sha256", "rsa-pkcs1v15" (as `profiles.KeyTransport`); "ecdh-sha256kdf-aes256wrap" for EC
    key_transport: str
    signing_time: datetime | None


def open_sealed(entity: bytes, own: Identity, trust: TrustStore, *, at: datetime | None = None,
                expected_sender: PartyBinding | None = None) -> Opened:
    """Decrypt and verify `entity` (see the module); return its XML only when every check passes."""
    at = at or datetime.now(timezone.utc)
    try:
        der = _envelope_der(bytes(entity))
        key = _envelope_key(der, own) if isinstance(own.key, rsa.RSAPrivateKey) else None
        laid_out = _ENVELOPE_LAYOUTS.find(key, der) if key is not None else None
        if laid_out is not None:  # the layout of an earlier message to us: see _Layout
            plain, cipher_label, kt_label = _decrypt_laid_out(*laid_out, der, own)
        else:
            envelope = asn1.load_content_info(der, "the encrypted message")
            plain, cipher_label, kt_label = decrypt(envelope, own)
            if key is not None:
                _ENVELOPE_LAYOUTS.learn(key, lambda: _envelope_layout(der, envelope, own))
        entity_digest = hashlib.sha256(plain).hexdigest()
        der, what, detached = _signed_der(plain)
        laid_out = _SIGNATURE_LAYOUTS.find(len(der), der) if detached is not None else None
        if laid_out is not None:  # the layout of an earlier signature: see _Layout
            signed, content_sha256 = _verify_laid_out(*laid_out, der, detached)
        else:
            signed, content_sha256, static = _verify(asn1.load_content_info(der, what), detached)
            if detached is not None:
                _SIGNATURE_LAYOUTS.learn(len(der), lambda: _signature_layout(der, static))
    except BROKEN_CERTIFICATE as e:
        # asn1crypto parses lazily: a structure broken where no accessor above expected it ends here; so do
        # certificates cryptography loaded but reads field by field (an unknown key type, a duplicate extension)
        raise MalformedMessage(f"malformed message structure ({type(e).__name__})") from None
    try:
        chain = trust.check(signed.signer, signed.other_certs, at, usage="sign", party=expected_sender)
    except BROKEN_CERTIFICATE as e:
        # a certificate that loads but is broken inside (cryptography parses names etc. on first access)
        raise MalformedMessage(f"an embedded certificate is malformed ({type(e).__name__})") from None
    return Opened(xml=_xml_of(signed.content, "the signed part"), signer=signed.signer, chain=chain,
                  mic=base64.b64encode(content_sha256 or hashlib.sha256(signed.content).digest()).decode("ascii"),
                  signed_entity_sha256=entity_digest, content_cipher=cipher_label, key_transport=kt_label,
                  signing_time=signed.signing_time)


# -- MIME ---------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(rb"[!-9;-~]+")
#: RFC 5322 2.1.1: a line is at most 998 characters (CRLF not counted); a longer one is refused, not read
MAX_HEADER_LINE = 998
#: all header lines of one entity together (Postfix's header_size_limit is 100 KiB per header)
MAX_HEADER_BYTES = 64 * 1024
_PARAM = re.compile(r'\s*;\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_BARE_LF = re.compile(rb"(?<!\r)\n")
_PEM = re.compile(rb"-----BEGIN (?:CMS|PKCS7|PKCS #7 SIGNED DATA)-----(.+?)-----END [A-Z0-9 #]+-----", re.S)


def _shown(text: str) -> str:
    """A header value fit for an error message: printable ASCII, at most 60 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= 60 else text[:57] + "..."


def split_entity(data: bytes, what: str) -> tuple[dict[str, str], bytes]:
    """Headers (lower-case name → unfolded value) and body of a MIME entity, CRLF or LF.

    Repeated Content-Type or Content-Transfer-Encoding headers are refused (ambiguous)."""
    headers, pos = _split_entity_at(data, what)
    return headers, data[pos:]


def _split_entity_at(data: bytes, what: str) -> tuple[dict[str, str], int]:
    """`split_entity`, with where the body starts instead of a copy of it (bodies are the large part)."""
    headers: dict[str, str] = {}
    pos, last = 0, None
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise MalformedMessage(f"{what} is not a MIME entity (no blank line after the headers)")
        line = data[pos:end - 1] if end > pos and data[end - 1] == 0x0D else data[pos:end]
        if len(line) > MAX_HEADER_LINE:
            raise MalformedMessage(f"{what} has a header line of {len(line)} characters (at most {MAX_HEADER_LINE})")
        pos = end + 1
        if pos > MAX_HEADER_BYTES and line:
            raise MalformedMessage(f"{what} has more than {MAX_HEADER_BYTES} bytes of headers")
        if not line:
            return headers, pos
        if line[:1] in (b" ", b"\t"):
            if last is None:
                raise MalformedMessage(f"{what} is not a MIME entity (starts with a continuation line)")
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise MalformedMessage(f"{what} is not a MIME entity (line {len(headers) + 1} is not a header)")
        last = name.decode("ascii").lower()
        if last in headers:
            if last in ("content-type", "content-transfer-encoding"):
                raise MalformedMessage(f"{what} has more than one {last} header")
            last = f"{last}\0{pos}"  # keep later duplicates of other headers apart
        headers[last] = value.strip().decode("latin-1")


def content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """(type/subtype in lower case, parameters with lower-case names); quoted or bare values."""
    if not value:
        return "text/plain", {}
    mtype, _, rest = value.partition(";")
    params = {}
    for m in _PARAM.finditer(";" + rest):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[m.group(1).lower()] = v
    return mtype.strip().lower(), params


def _base64(body: bytes, what: str) -> bytes:
    return _base64_at(body, 0, what)


_WHITESPACE = b" \t\r\n\v\f"


def _base64_at(data: bytes, pos: int, what: str) -> bytes:
    """`_base64(data[pos:], what)` without copying data[pos:] first.

    Strict base64 once all whitespace is gone. Line breaks are the only whitespace in base64 as mail and AS2
    write it: two single-byte replaces remove them (~0.4 ns/byte; bytes.translate takes ~1 ns/byte), over the
    whole of `data`, and decoding starts where the body starts in what is left (removing bytes commutes
    with cutting). When that decodes, no whitespace was left (the strict decoder refuses any), so it is
    exactly the string translate makes of data[pos:]; otherwise the general path decides."""
    try:
        compact = data.replace(b"\n", b"").replace(b"\r", b"")
        skip = pos - data.count(b"\n", 0, pos) - data.count(b"\r", 0, pos)
        decoded = binascii.a2b_base64(memoryview(compact)[skip:], strict_mode=True)
    except (binascii.Error, ValueError, TypeError):
        try:
            decoded = base64.b64decode(data[pos:].translate(None, _WHITESPACE), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage(f"{what}: broken base64") from None
    if not decoded:
        raise MalformedMessage(f"{what} is empty")
    return decoded


def decode_body(body: bytes, cte: str | None, what: str) -> bytes:
    """A body decoded per its Content-Transfer-Encoding."""
    return _decode_body_at(body, 0, cte, what)


def _decode_body_at(data: bytes, pos: int, cte: str | None, what: str) -> bytes:
    """`decode_body(data[pos:], cte, what)`; base64 without copying data[pos:] first."""
    enc = (cte or "7bit").strip().lower()
    if enc == "base64":
        return _base64_at(data, pos, what)
    if enc == "quoted-printable":
        return binascii.a2b_qp(data[pos:])
    if enc in ("7bit", "8bit", "binary"):
        return data[pos:]
    raise MalformedMessage(f"{what} has an unknown Content-Transfer-Encoding {_shown(enc)!r}")


def _envelope(entity: bytes) -> cms.ContentInfo:
    """The encrypted ContentInfo from a MIME entity, PEM or bare DER/BER."""
    return asn1.load_content_info(_envelope_der(entity), "the encrypted message")


def _envelope_der(entity: bytes) -> bytes:
    """`_envelope` before the ContentInfo is loaded: its DER/BER."""
    if not entity.strip():
        raise MalformedMessage("the message is empty")
    if entity[0] == 0x30:
        der = entity
    elif entity.lstrip().startswith(b"-----BEGIN"):
        m = _PEM.search(entity)
        if not m:
            raise MalformedMessage("PEM input without a CMS/PKCS7 block")
        der = _base64(m.group(1), "the PEM block")
    else:
        headers, pos = _split_entity_at(entity, "the message")
        mtype, params = content_type(headers.get("content-type"))
        if mtype not in PKCS7_MIME:
            raise MalformedMessage(f"not an S/MIME encrypted message: Content-Type is {_shown(mtype)!r}, "
                                   "expected application/pkcs7-mime")
        smime_type = params.get("smime-type", "").lower()
        if smime_type and smime_type not in ENCRYPTED_SMIME_TYPES:
            raise MalformedMessage(f"not encrypted: smime-type is {_shown(smime_type)!r}")
        cte = headers.get("content-transfer-encoding")
        if cte is None:  # AS2 over HTTP often sends binary without saying so; mail sends base64
            der = entity[pos:] if entity[pos:pos + 1] == b"\x30" else _base64_at(entity, pos, "the message body")
        else:
            der = _decode_body_at(entity, pos, cte, "the message body")
    return der


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, each exactly as between its delimiters (RFC 2046 §5.1.1).

    A delimiter is "--" boundary at the start of the body or after a line break (CRLF, or a bare LF),
    followed by optional spaces or tabs and a line break or the end; "--" after the boundary closes.
    The line break before a delimiter belongs to the delimiter, not to the part."""
    return _split_multipart_at(body, 0, boundary)


def _split_multipart_at(data: bytes, body: int, boundary: str) -> list[bytes]:
    """`split_multipart(data[body:], boundary)`, without copying the body first."""
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise MalformedMessage("multipart boundary missing or invalid")
    dash = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    start = None
    at = data.find(dash, body)
    while at >= 0:
        if at == body or data[at - 1] == 0x0A:
            end = at - 1 if at > body else body
            if end > body and data[end - 1] == 0x0D:
                end -= 1
            after = at + len(dash)
            closing = data[after:after + 2] == b"--"
            rest = after + 2 if closing else after
            while data[rest:rest + 1] in (b" ", b"\t"):
                rest += 1
            if rest == len(data) or data[rest:rest + 1] == b"\n" or data[rest:rest + 2] == b"\r\n":
                if start is not None:
                    parts.append(data[start:end])
                if closing:
                    return parts
                start = rest + (2 if data[rest:rest + 1] == b"\r" else 1)
        at = data.find(dash, at + 1)
    raise MalformedMessage("multipart/signed has no closing boundary" if start is not None
                           else "multipart/signed: the boundary does not occur in the body")


def _signed_entity(plain: bytes) -> tuple[cms.ContentInfo, bytes | None]:
    """(SignedData ContentInfo, the first part of a multipart/signed as it stands, or None when opaque)."""
    der, what, detached = _signed_der(plain)
    return asn1.load_content_info(der, what), detached


def _signed_der(plain: bytes) -> tuple[bytes, str, bytes | None]:
    """`_signed_entity` before the ContentInfo is loaded: (its DER/BER, what to call it in errors, detached)."""
    if plain[:1] == b"\x30":
        return plain, "the decrypted content", None
    headers, body = _split_entity_at(plain, "the decrypted content")
    mtype, params = content_type(headers.get("content-type"))
    if mtype in PKCS7_MIME:
        smime_type = params.get("smime-type", "signed-data").lower()
        if smime_type != "signed-data":
            raise MalformedMessage(f"the decrypted content is not signed (smime-type {_shown(smime_type)!r})")
        der = _decode_body_at(plain, body, headers.get("content-transfer-encoding") or "base64", "the opaque signature")
        return der, "the opaque signature", None
    if mtype != "multipart/signed":
        raise MalformedMessage(f"the decrypted content is not signed: Content-Type is {_shown(mtype)!r}")
    der, signed_part = split_signed(plain, body, params)
    return der, "the signature", signed_part


def split_signed(data: bytes, body: int, params: dict[str, str]) -> tuple[bytes, bytes]:
    """(signature DER, the signed first part as it stands) of a multipart/signed whose body is
    data[body:] and whose Content-Type parameters are `params` (shared with receipts)."""
    protocol = params.get("protocol", "").lower()
    if protocol and protocol not in PKCS7_SIGNATURE:
        raise MalformedMessage(f"multipart/signed protocol {_shown(protocol)!r} is not S/MIME")
    parts = _split_multipart_at(data, body, params.get("boundary", ""))
    if len(parts) != 2:
        raise MalformedMessage(f"multipart/signed has {len(parts)} parts, expected 2")
    sig_headers, sig_body = split_entity(parts[1], "the signature part")
    sig_type, _ = content_type(sig_headers.get("content-type"))
    if sig_type not in PKCS7_SIGNATURE:
        raise MalformedMessage(f"the second part is {_shown(sig_type)!r}, expected application/pkcs7-signature")
    return decode_body(sig_body, sig_headers.get("content-transfer-encoding"), "the signature part"), parts[0]


def _xml_of(signed: bytes, what: str) -> bytes:
    """The payload of the signed entity: its body decoded per Content-Transfer-Encoding.

    A bare XML document (no MIME headers, as a gpgsm opaque signature may hold) is taken as it is."""
    if signed.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        return signed
    headers, body = _split_entity_at(signed, what)
    mtype, params = content_type(headers.get("content-type"))
    if mtype.startswith(("multipart/", "message/")):
        raise MalformedMessage(f"{what} is {_shown(mtype)!r}, expected a single XML document")
    if mtype in PKCS7_MIME and params.get("smime-type", "").lower() == "compressed-data":
        # RFC 5402 compression (some AS2 peers offer it): not decompressed here, refused by name
        raise UnsupportedAlgorithm(f"{what} is compressed (RFC 5402 compressed-data): send it uncompressed")
    return _decode_body_at(signed, body, headers.get("content-transfer-encoding"), what)


# -- decryption ---------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _as_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def _names(rid: cms.RecipientIdentifier, cert: x509.Certificate) -> bool:
    """Whether a recipient (or signer) identifier names `cert`."""
    mine = _as_asn1(cert)
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        if ias["serial_number"].native != cert.serial_number:
            return False
        issuer = ias["issuer"]  # byte-equal DER first: the RFC 5280 name comparison (stringprep) is slow
        return issuer.dump() == mine.issuer.dump() or issuer == mine.issuer
    if rid.name in ("subject_key_identifier", "r_key_id"):
        ski = rid.chosen.native if rid.name == "subject_key_identifier" else rid.chosen["subject_key_identifier"].native
        computed = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        return ski in (mine.key_identifier, computed)
    return False


#: `_names` answers, by the identifier's encoding and the certificate: our own certificate is named the
#: same way in every message (see `asn1.Remembered`)
_NAMED = asn1.Remembered(1024)


def _names_remembered(rid: cms.RecipientIdentifier, cert: x509.Certificate) -> bool:
    return _NAMED.answer(rid, _names, rid, cert, extra=cert)


def decrypt(ci: cms.ContentInfo, own: Identity) -> tuple[bytes, str, str]:
    """(plaintext, content cipher label, key transport label) of an EnvelopedData or AuthEnvelopedData."""
    kind = asn1.content_type(ci)
    if kind == asn1.OID_ENVELOPED_DATA:
        env = asn1.content_of(ci, cms.EnvelopedData, "EnvelopedData")
        eci = asn1.forced("EnvelopedData", lambda: env["encrypted_content_info"])
    elif kind == asn1.OID_AUTH_ENVELOPED_DATA:
        env = asn1.content_of(ci, cms.AuthEnvelopedData, "AuthEnvelopedData")
        eci = asn1.forced("AuthEnvelopedData", lambda: env["auth_encrypted_content_info"])
    elif kind == asn1.OID_SIGNED_DATA:
        raise MalformedMessage("the message is signed but not encrypted")
    else:
        raise MalformedMessage(f"the message is CMS {_shown(str(kind))}, not an encrypted message")
    label, size, mode, iv, icvlen = asn1.content_cipher(asn1.forced("content algorithm",
                                                                    lambda: eci["content_encryption_algorithm"]))
    if (mode == "gcm") != (kind == asn1.OID_AUTH_ENVELOPED_DATA):
        raise MalformedMessage(f"{label} does not belong in {kind}")
    if asn1.forced("encrypted content type", lambda: eci["content_type"].native) != asn1.OID_DATA:
        raise MalformedMessage("the encrypted content type is not id-data")

    recipients = asn1.forced("recipient infos", lambda: list(env["recipient_infos"]))
    cek, kt_label = _unwrap(recipients, own)

    def ciphertext() -> bytes:
        encrypted = asn1.forced("encrypted content", lambda: eci["encrypted_content"])
        if encrypted is None or isinstance(encrypted, core.Void):
            raise MalformedMessage("the encrypted content is absent (detached ciphertext is not supported)")
        return asn1.octets(encrypted, "encrypted content")

    return _decrypt_content(cek, kt_label, label, size, mode, iv, icvlen, ciphertext,
                            lambda: asn1.octets(asn1.forced("AuthEnvelopedData mac", lambda: env["mac"]), "mac"),
                            lambda: _aads(env))


def _aads(env: cms.AuthEnvelopedData) -> list[bytes]:
    """The additional authenticated data GCM may have covered: none, or the encodings of authAttrs."""
    auth_attrs = asn1.forced("authAttrs", lambda: env["auth_attrs"])
    return asn1.der_set_of(auth_attrs) if auth_attrs is not None and not isinstance(auth_attrs, core.Void) else [b""]


def _decrypt_content(cek: bytes, kt_label: str, label: str, size: int, mode: str, iv: bytes, icvlen: int,
                     ciphertext_of: Callable[[], bytes], mac_of: Callable[[], bytes],
                     aads_of: Callable[[], list[bytes]]) -> tuple[bytes, str, str]:
    """The rest of `decrypt` once the content key is unwrapped (also `_decrypt_laid_out`), in this order: the
    key's size, the ciphertext, CBC with its padding, or GCM with its tag and AAD."""
    if len(cek) != size:
        raise DecryptionFailed(f"the unwrapped key does not fit {label} (wrong key, or the encrypted key was altered)")
    ciphertext = ciphertext_of()
    if mode == "cbc":
        return _cbc(cek, iv, ciphertext, label), label, kt_label
    tag = mac_of()
    if len(tag) != icvlen:
        raise MalformedMessage(f"the GCM tag is {len(tag)} bytes, the parameters say {icvlen}")
    for aad in aads_of():
        try:
            decryptor = Cipher(algorithms.AES(cek), modes.GCM(iv, tag, min_tag_length=icvlen)).decryptor()
            decryptor.authenticate_additional_data(aad)
            return decryptor.update(ciphertext) + decryptor.finalize(), label, kt_label
        except InvalidTag:
            continue
    raise DecryptionFailed(f"{label}: the authentication tag does not match (altered, or wrong key)")


def _unwrap(recipients: list[cms.RecipientInfo], own: Identity) -> tuple[bytes, str]:
    """(content-encryption key, key transport label) from the recipient info that names our certificate:
    key transport for an RSA key, ECDH key agreement (RFC 5753) for an EC key."""
    key, named = own.key, 0
    for ri in recipients:
        kind = asn1.forced("recipient info", lambda ri=ri: ri.name)
        if kind == "ktri" and isinstance(key, rsa.RSAPrivateKey):
            ktri = ri.chosen
            if not _names_remembered(ktri["rid"], own.cert):
                continue
            named += 1
            label, pad = asn1.key_transport(ktri["key_encryption_algorithm"])
            try:
                return key.decrypt(asn1.octets(ktri["encrypted_key"], "encrypted key"), pad), label
            except ValueError:
                continue
        elif kind == "kari" and isinstance(key, ec.EllipticCurvePrivateKey):
            kari = ri.chosen
            for rek in kari["recipient_encrypted_keys"]:
                if not _names_remembered(rek["rid"], own.cert):
                    continue
                named += 1
                try:
                    return _ecdh_unwrap(kari, asn1.octets(rek["encrypted_key"], "encrypted key"), key)
                except (InvalidUnwrap, ValueError):
                    continue
    if not named:
        raise NotForUs(f"none of the {len(recipients)} recipient infos names our certificate"
                       + ("" if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
                          else " (our key is neither RSA nor EC)"))
    raise NotForUs("our recipient info does not unwrap with our key")


def _ecdh_unwrap(kari: cms.KeyAgreeRecipientInfo, wrapped: bytes, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, str]:
    """The content-encryption key of an ephemeral-static ECDH recipient: X9.63 KDF, then AES key unwrap."""
    label, kdf_hash, wrap_der, kek_bytes = asn1.key_agreement(kari["key_encryption_algorithm"])
    originator = kari["originator"]
    if originator.name != "originator_key":
        raise UnsupportedAlgorithm("key agreement with a static originator key is not supported (RFC 5753 "
                                   "ephemeral-static ECDH is)")
    point = originator.chosen["public_key"].native
    peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
    ukm = kari["ukm"]
    ukm_bytes = asn1.octets(ukm, "ukm") if ukm is not None and not isinstance(ukm, core.Void) else None
    kek = X963KDF(algorithm=kdf_hash, length=kek_bytes,
                  sharedinfo=asn1.ecc_cms_shared_info(wrap_der, ukm_bytes, kek_bytes)).derive(
        key.exchange(ec.ECDH(), peer))
    return aes_key_unwrap(kek, wrapped), label


def _cbc(key: bytes, iv: bytes, ciphertext: bytes, label: str) -> bytes:
    if not ciphertext or len(ciphertext) % 16:
        raise DecryptionFailed(f"{label}: the ciphertext is not a whole number of blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    # the padding is in the last block: the unpadder checks that block alone (as it would if it were given
    # everything: it keeps the last block back), and the plaintext is joined once, without a second copy
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        head = unpadder.update(padded[-16:])
        last = unpadder.finalize()
    except ValueError:
        raise DecryptionFailed(f"{label}: invalid padding (altered, or wrong key)") from None
    return b"".join((memoryview(padded)[:-16], head, last))


# -- signature ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signed:
    """A verified CMS signature: who signed which bytes (trust not yet checked)."""

    signer: x509.Certificate
    other_certs: list[x509.Certificate]
    content: bytes = field(repr=False)
    signing_time: datetime | None


def verify_signed_data(ci: cms.ContentInfo, detached: bytes | None) -> Signed:
    """Verify one SignerInfo over `detached` (the signed content as received; when it does not match and
    holds bare LFs, its canonical CRLF form) or over the encapsulated content when None."""
    return _verify(ci, detached)[0]


@dataclass(frozen=True, slots=True)
class _SignerStatic:
    """What verifying a SignedData establishes before it reads the values of the signed attributes: the
    same for every message a signer sends with the same certificates, identifier and algorithms."""

    signer: x509.Certificate
    certs: tuple[x509.Certificate, ...]  #: the embedded certificates, the signer among them
    digest: hashes.HashAlgorithm
    family: str  #: "rsa" or "ec"
    pad: object  #: RSA padding (None for EC)
    sig_hash: hashes.HashAlgorithm


def _verify(ci: cms.ContentInfo, detached: bytes | None) -> tuple[Signed, bytes | None, _SignerStatic]:
    """`verify_signed_data`; also the SHA-256 of the signed content when the signer's digest is SHA-256 (it
    was computed to compare with messageDigest: open_sealed's MIC need not hash the content again), and
    what was established about the signer (what a learnt signature layout keeps, see `_Layout`)."""
    if asn1.content_type(ci) != asn1.OID_SIGNED_DATA:
        raise MalformedMessage(f"expected a signature, found CMS {_shown(str(asn1.content_type(ci)))}")
    sd = asn1.content_of(ci, cms.SignedData, "SignedData")
    encap = asn1.forced("encapContentInfo", lambda: sd["encap_content_info"])
    if _ENCAP_TYPES.answer(encap, asn1.forced, "encapContentInfo", lambda: encap["content_type"].native) \
            != asn1.OID_DATA:
        raise MalformedMessage("the signed content type is not id-data")
    econtent = asn1.forced("encapContentInfo", lambda: encap["content"])
    has_content = econtent is not None and not isinstance(econtent, core.Void)
    if detached is None:
        if not has_content:
            raise MalformedMessage("the opaque signature carries no content")
        detached = asn1.octets(econtent, "signed content")
    elif has_content:
        raise MalformedMessage("the detached signature carries content of its own")

    signer_infos = asn1.forced("signerInfos", lambda: list(sd["signer_infos"]))
    if len(signer_infos) != 1:
        raise MalformedMessage(f"expected exactly one signer, found {len(signer_infos)}")
    si = signer_infos[0]
    embedded = asn1.forced("certificates", lambda: sd["certificates"])
    certs = _EMBEDDED.answer(embedded, _embedded_certificates, embedded)
    sid = asn1.forced("signer identifier", lambda: si["sid"])
    index = _SIGNER_INDEX.answer(sid, _signer_index, sid, certs, extra=certs)
    if index is None:
        raise MalformedMessage("the signer's certificate is not embedded in the signature")
    signer = certs[index]

    digest = asn1.digest_for_signature(asn1.forced("digest algorithm", lambda: si["digest_algorithm"]))
    family, pad, sig_hash = asn1.signature_scheme(asn1.forced("signature algorithm", lambda: si["signature_algorithm"]),
                                                  digest)
    static = _SignerStatic(signer, certs, digest, family, pad, sig_hash)
    attrs = asn1.forced("signed attributes", lambda: si["signed_attrs"])
    if attrs is None or isinstance(attrs, core.Void) or not len(attrs):
        raise MalformedMessage("the signature has no signed attributes (contentType and messageDigest are required)")
    ctype = asn1.single_attribute(attrs, "content_type")
    if ctype is None or asn1.forced("contentType attribute", lambda: ctype.native) != asn1.OID_DATA:
        raise MalformedMessage("the signed contentType attribute is missing or not id-data")
    md = asn1.single_attribute(attrs, "message_digest")
    if md is None:
        raise MalformedMessage("the signed messageDigest attribute is missing")
    md_value = asn1.forced("messageDigest attribute", lambda: md.native)

    def signing_time() -> datetime | None:
        st = asn1.single_attribute(attrs, "signing_time")
        return asn1.forced("signingTime attribute", lambda: st.native) if st is not None else None

    signed, content_sha256 = _check_signature(
        static, detached, md_value, signing_time,
        lambda: asn1.octets(asn1.forced("signature", lambda: si["signature"]), "signature"),
        lambda: asn1.der_set_of(attrs))
    return signed, content_sha256, static


def _check_signature(static: _SignerStatic, detached: bytes, md_value: bytes,
                     signing_time_of: Callable[[], datetime | None], signature_of: Callable[[], bytes],
                     encodings_of: Callable[[], list[bytes]]) -> tuple[Signed, bytes | None]:
    """The rest of verification, once messageDigest is read (`_verify` and `_verify_laid_out`), in this
    order: messageDigest against the content, signingTime, the signature against the signer's key over
    each encoding of the signed attributes."""
    digest = static.digest
    content = detached
    content_digest = _hash(digest, content)
    if not hmac.compare_digest(content_digest, md_value):
        canonical = _BARE_LF.sub(b"\r\n", content)
        if canonical == content:
            raise ContentAltered("the signed content does not match the signed messageDigest")
        content_digest = _hash(digest, canonical)
        if not hmac.compare_digest(content_digest, md_value):
            raise ContentAltered("the signed content does not match the signed messageDigest")
        content = canonical
    signing_time = signing_time_of()

    signature = signature_of()
    signer, family, pad, sig_hash = static.signer, static.family, static.pad, static.sig_hash
    key = signer.public_key()
    if not isinstance(key, {"rsa": rsa.RSAPublicKey, "ec": ec.EllipticCurvePublicKey}[family]):
        raise SignatureInvalid("the signature algorithm does not fit the signer's key")
    for encoded in encodings_of():
        try:
            if family == "rsa":
                key.verify(signature, encoded, pad, sig_hash)
            else:
                key.verify(signature, encoded, ec.ECDSA(sig_hash))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureInvalid("the signature does not verify over the signed attributes")
    others = [c for c in static.certs if c is not signer]
    return Signed(signer, others, content, signing_time), (content_digest if digest.name == "sha256" else None)


# -- the same layout as an earlier message ---------------------------------------------------------
#
# Messages from one sender to one recipient are byte for byte alike but for a few places: in the
# signature the messageDigest value, the signingTime value and the signature value; in the envelope the
# encrypted content keys, the IV or nonce, the GCM tag (each the contents of a primitive element of fixed
# size), the ECDH key agreement of an EC sender's own copy (whose contents an RSA recipient never reads),
# and the ciphertext, whose length changes the lengths of the elements around it. Reading the rest
# with asn1crypto costs ~0.3 ms for each of the two structures, and cannot come out differently: every
# check on it is a function of those bytes. So after a structure was read and checked the usual way, its
# layout is kept (`_Layout`): the bytes that must be equal, the holes, and the elements around the
# ciphertext, whose lengths may differ (checked for consistency: each must end where its last element
# ends), with what the usual way established. A later message that fits the layout has the same tree of
# elements with the same contents outside the holes, so every check outside them passes as it did; what
# depends on the holes is read from the new bytes and checked by the same code, in the same order
# (`_check_signature`, `_decrypt_content`). What does not fit goes the usual way, and is learnt.
#
# A layout is only kept when it is plain DER (definite lengths, primitive values where the holes are),
# and after a check that the holes are exactly where asn1crypto reads: a copy with every hole altered is
# read the usual way and must yield the altered bytes. No check reads the lengths around the ciphertext
# but to find where elements end. Learning never raises and never changes a result. Always the usual
# way: envelopes to an EC key, opaque signatures, BER, and whatever else the two `_..._layout`
# functions below do not recognise.


class _Layout:
    """A structure's bytes as a program: ("eq", bytes) the same bytes; ("hole", name, size) any bytes;
    ("open", tag) an element around the variable one, any definite length; ("close",) where it must end;
    ("var", name, tag) the variable element, any definite length; ("mark", name) a position."""

    __slots__ = ("ops",)

    def __init__(self, ops: list[tuple]):
        self.ops = tuple(ops)

    def match(self, der: bytes) -> dict[str, tuple[int, int] | int] | None:
        """Where the holes, the variable element and the marks are in `der`, or None when it does not fit."""
        pos, end, ends, found = 0, len(der), [], {}
        for op in self.ops:
            kind = op[0]
            if kind == "eq":
                nxt = pos + len(op[1])
                if der[pos:nxt] != op[1]:
                    return None
                pos = nxt
            elif kind == "hole":
                found[op[1]] = (pos, pos + op[2])
                pos += op[2]
            elif kind == "mark":
                found[op[1]] = pos
            elif kind == "close":
                if pos != ends.pop():
                    return None
            else:  # open, var
                el = asn1.der_element(der, pos, ends[-1] if ends else end)
                if el is None or el[0] != op[-1]:
                    return None
                if kind == "open":
                    ends.append(el[2])
                    pos = el[1]
                else:
                    found[op[1]] = (el[1], el[2])
                    pos = el[2]
        return found if pos == end else None


def _layout(der: bytes, holes: dict[str, tuple[int, int]], marks: dict[str, int] = {},
            var: tuple[str, tuple[int, int, int, int], list[tuple[int, int, int, int]]] | None = None) -> _Layout:
    """The `_Layout` of `der` with these holes (contents ranges) and marks, and optionally a variable
    element (name, (start, tag, contents start, end), [its enclosing elements, outermost first])."""
    assert not holes.keys() & marks.keys(), "a hole and a mark of the same name"

    def flat(a: int, b: int) -> list[tuple]:
        events = sorted([(h[0], 1, name, h[1]) for name, h in holes.items() if a <= h[0] < b]
                        + [(m, 0, name, m) for name, m in marks.items() if a <= m < b])
        ops, pos = [], a
        for at, is_hole, name, until in events:
            assert pos <= at and until <= b, "holes and marks must not overlap or cross an element's end"
            if at > pos:
                ops.append(("eq", der[pos:at]))
            ops.append(("hole", name, until - at) if is_hole else ("mark", name))
            pos = until
        if b > pos:
            ops.append(("eq", der[pos:b]))
        return ops

    if var is None:
        return _Layout(flat(0, len(der)))
    name, (v_start, v_tag, _, v_end), around = var
    ops, pos = [], 0
    for start, tag, c_start, _ in around:
        ops += flat(pos, start) + [("open", tag)]
        pos = c_start
    ops += flat(pos, v_start) + [("var", name, v_tag)]
    pos = v_end
    for _, _, _, c_end in reversed(around):
        ops += flat(pos, c_end) + [("close",)]
        pos = c_end
    return _Layout(ops + flat(pos, len(der)))


class _Layouts:
    """Layouts learnt, with what the usual way established, under a key that narrows the search (a length;
    the recipient certificate and the recipient infos): least recently used keys are dropped when more than
    `limit` layouts are kept, and a key keeps its `per_key` latest.

    Learning costs ~0.5 ms (the check parses the structure twice more), paid back by the first message that
    fits. Traffic that never fits (a sender whose every message differs outside the holes) must not pay
    it every time: learning spends credit, which fits earn (one each) and misses regain slowly (1/8 each),
    so such traffic learns from at most one message in eight."""

    def __init__(self, limit: int = 512, per_key: int = 8):
        self.limit, self.per_key, self._by_key, self._count = limit, per_key, OrderedDict(), 0
        self._credit = 16.0

    def find(self, key: object, der: bytes) -> tuple[object, dict] | None:
        for layout, known in self._by_key.get(key, ()):
            found = layout.match(der)
            if found is not None:
                self._by_key.move_to_end(key)
                self._credit = min(self._credit + 1, 64.0)
                return known, found
        return None

    def learn(self, key: object, make: Callable[[], tuple[_Layout, object] | None]) -> None:
        """Keep what `make` returns (None: nothing to keep) when there is credit; never raises."""
        if self._credit < 1:
            self._credit += 0.125
            return
        self._credit -= 1
        try:
            made = make()
            if made is None:
                return
            kept = self._by_key.setdefault(key, [])
            self._by_key.move_to_end(key)
            kept.append(made)
            self._count += 1
            if len(kept) > self.per_key:
                del kept[0]
                self._count -= 1
            while self._count > self.limit:
                self._count -= len(self._by_key.popitem(last=False)[1])
        except Exception:  # learning is an optimisation: whatever goes wrong, the usual way stays
            return


_SIGNATURE_LAYOUTS = _Layouts()
_ENVELOPE_LAYOUTS = _Layouts()

_OID_MESSAGE_DIGEST = bytes.fromhex("06092a864886f70d010904")
_OID_SIGNING_TIME = bytes.fromhex("06092a864886f70d010905")


_FLIP = bytes(x ^ 0x5A for x in range(256))


def _altered(der: bytes, ranges) -> bytes:
    """`der` with every byte in these ranges changed (for the check that holes are where asn1crypto reads)."""
    probe = bytearray(der)
    for a, b in ranges:
        probe[a:b] = probe[a:b].translate(_FLIP)
    return bytes(probe)


# - the signature (detached SignedData)

def _signature_layout(der: bytes, static: _SignerStatic) -> tuple[_Layout, _SignerStatic] | None:
    """The layout of a detached SignedData that verified the usual way: holes md, time, signature."""
    kids = asn1.der_children
    top = kids(der, 0, len(der))
    if not top or top[0][1] != 0x30 or der[top[0][3]:].strip(b" \t\r\n"):
        return None
    ci = kids(der, top[0][2], top[0][3])  # contentType, [0] content
    if ci is None or len(ci) != 2 or ci[1][1] != 0xA0:
        return None
    sd = kids(der, ci[1][2], ci[1][3])
    if sd is None or len(sd) != 1 or sd[0][1] != 0x30:
        return None
    sd = kids(der, sd[0][2], sd[0][3])  # version, digestAlgorithms, encapContentInfo, [0], [1], signerInfos
    if sd is None or sd[-1][1] != 0x31:
        return None
    sis = kids(der, sd[-1][2], sd[-1][3])
    if sis is None or len(sis) != 1 or sis[0][1] != 0x30:
        return None
    si = kids(der, sis[0][2], sis[0][3])  # version, sid, digestAlgorithm, [0] signedAttrs, sigAlg, signature
    if si is None or len(si) < 6 or si[3][1] != 0xA0 or si[5][1] != 0x04:
        return None
    holes, marks = {"signature": (si[5][2], si[5][3])}, {"attrs_at": si[3][2], "attrs_end": si[3][3]}
    for a in kids(der, si[3][2], si[3][3]) or ():
        parts = kids(der, a[2], a[3]) if a[1] == 0x30 else None
        if parts is None or len(parts) != 2 or parts[1][1] != 0x31:
            return None
        oid = der[parts[0][0]:parts[0][3]]
        name = {_OID_MESSAGE_DIGEST: "md", _OID_SIGNING_TIME: "time"}.get(oid)
        if name is None:
            continue
        values = kids(der, parts[1][2], parts[1][3])
        if name in holes or values is None or len(values) != 1 \
                or values[0][1] not in ((0x04,) if name == "md" else (0x17, 0x18)):
            return None
        holes[name] = values[0][2:]
        if name == "time":
            marks["time_at"], marks["time_end"] = values[0][0], values[0][3]
    if "md" not in holes:
        return None
    layout = _layout(der, holes, marks)
    # the check: asn1crypto reads the altered holes where they are
    probe = _altered(der, holes.values())
    si = asn1.content_of(asn1.load_content_info(probe), cms.SignedData, "SignedData")["signer_infos"][0]
    attrs = si["signed_attrs"]
    md, st = asn1.single_attribute(attrs, "message_digest"), asn1.single_attribute(attrs, "signing_time")
    if (attrs.contents != probe[marks["attrs_at"]:marks["attrs_end"]] or md.native != probe[slice(*holes["md"])]
            or si["signature"].native != probe[slice(*holes["signature"])] or (st is None) != ("time" not in holes)):
        return None
    if st is not None:
        time = slice(marks["time_at"], marks["time_end"])
        original = asn1.content_of(asn1.load_content_info(der), cms.SignedData, "SignedData")["signer_infos"][0]
        if st.dump() != probe[time] or cms.Time.load(der[time]).native \
                != asn1.single_attribute(original["signed_attrs"], "signing_time").native:
            return None
    return layout, static


def _verify_laid_out(static: _SignerStatic, at: dict, der: bytes, detached: bytes) -> tuple[Signed, bytes | None]:
    """`_verify` of a signature that fits a learnt layout (see the section comment)."""
    def signing_time() -> datetime | None:
        if "time" not in at:
            return None
        return asn1.forced("signingTime attribute", lambda: cms.Time.load(der[at["time_at"]:at["time_end"]]).native)

    return _check_signature(static, detached, der[slice(*at["md"])], signing_time,
                            lambda: der[slice(*at["signature"])],
                            lambda: asn1.der_set_of_contents(der[at["attrs_at"]:at["attrs_end"]]))


# - the envelope (EnvelopedData, AuthEnvelopedData) to an RSA key

@dataclass(frozen=True, slots=True)
class _EnvelopeKnown:
    """What `decrypt` established about an envelope, but for what is in the holes."""

    label: str
    size: int
    mode: str
    icvlen: int
    #: the recipient infos that name our certificate, in order: (hole of the encrypted key, label, padding)
    ours: tuple[tuple[str, str, object], ...]
    aads: tuple[bytes, ...]


def _envelope_layout(der: bytes, ci: cms.ContentInfo, own: Identity) -> tuple[_Layout, _EnvelopeKnown] | None:
    """The layout of an envelope that `decrypt` opened the usual way with an RSA key."""
    if not isinstance(own.key, rsa.RSAPrivateKey):
        return None
    kids = asn1.der_children
    top = kids(der, 0, len(der))
    if not top or top[0][1] != 0x30 or der[top[0][3]:].strip(b" \t\r\n"):
        return None
    ci_kids = kids(der, top[0][2], top[0][3])
    if ci_kids is None or len(ci_kids) != 2 or ci_kids[1][1] != 0xA0:
        return None
    inner = kids(der, ci_kids[1][2], ci_kids[1][3])
    if inner is None or len(inner) != 1 or inner[0][1] != 0x30:
        return None
    env = kids(der, inner[0][2], inner[0][3])
    authenticated = asn1.content_type(ci) == asn1.OID_AUTH_ENVELOPED_DATA
    if env is None or len(env) < 3 or env[0][1] != 0x02:
        return None
    i = 2 if env[1][1] == 0xA0 else 1  # [0] originatorInfo
    if len(env) < i + 2 or env[i][1] != 0x31 or env[i + 1][1] != 0x30:
        return None
    rest = [e[1] for e in env[i + 2:]]
    if rest not in (([0x04], [0xA1, 0x04], [0x04, 0xA2], [0xA1, 0x04, 0xA2]) if authenticated else ([], [0xA1])):
        return None
    eci = kids(der, env[i + 1][2], env[i + 1][3])
    if eci is None or len(eci) != 3 or eci[1][1] != 0x30 or eci[2][1] != 0x80:
        return None
    alg = kids(der, eci[1][2], eci[1][3])
    if alg is None or len(alg) != 2:
        return None
    if authenticated:
        params = kids(der, alg[1][2], alg[1][3]) if alg[1][1] == 0x30 else None
        if not params or params[0][1] != 0x04:
            return None
        holes = {"iv": params[0][2:], "mac": env[-2 if rest[-1] == 0xA2 else -1][2:]}
    elif alg[1][1] == 0x04:
        holes = {"iv": alg[1][2:]}
    else:
        return None
    infos = kids(der, env[i][2], env[i][3]) or ()
    for n, info in enumerate(infos):
        if info[1] == 0x30:  # ktri: version, rid, keyEncryptionAlgorithm, encryptedKey
            ktri = kids(der, info[2], info[3])
            if ktri is None or len(ktri) != 4 or ktri[3][1] != 0x04:
                return None
            holes[f"key{n}"] = ktri[3][2:]
        elif info[1] == 0xA1:  # kari: never read with an RSA key
            holes[f"kari{n}"] = info[2:]
        else:
            return None
    around = [top[0], ci_kids[1], inner[0], env[i + 1]]
    layout = _layout(der, holes, var=("ciphertext", eci[2], around))

    # what decrypt established, from the structure it read
    env_value = ci["content"]
    eci_value = env_value["auth_encrypted_content_info" if authenticated else "encrypted_content_info"]
    label, size, mode, _, icvlen = asn1.content_cipher(eci_value["content_encryption_algorithm"])
    recipients = list(env_value["recipient_infos"])
    if len(recipients) != len(infos):
        return None
    ours = []
    for n, ri in enumerate(recipients):
        if ri.name != ("ktri" if infos[n][1] == 0x30 else "kari"):
            return None
        if ri.name == "ktri" and _names_remembered(ri.chosen["rid"], own.cert):
            kt_label, pad = asn1.key_transport(ri.chosen["key_encryption_algorithm"])
            ours.append((f"key{n}", kt_label, pad))
    if not ours:
        return None
    known = _EnvelopeKnown(label, size, mode, icvlen, tuple(ours), tuple(_aads(env_value)) if authenticated else ())

    # the check: asn1crypto reads the altered holes and ciphertext where they are
    probe = _altered(der, [*holes.values(), eci[2][2:]])
    env_value = asn1.load_content_info(probe)["content"]
    eci_value = env_value["auth_encrypted_content_info" if authenticated else "encrypted_content_info"]
    if asn1.content_cipher(eci_value["content_encryption_algorithm"])[3] != probe[slice(*holes["iv"])] \
            or asn1.octets(eci_value["encrypted_content"], "") != probe[eci[2][2]:eci[2][3]] \
            or (authenticated and env_value["mac"].native != probe[slice(*holes["mac"])]):
        return None
    for n, ri in enumerate(env_value["recipient_infos"]):
        if ri.name == "ktri" and ri.chosen["encrypted_key"].native != probe[slice(*holes[f"key{n}"])]:
            return None
    return layout, known


def _envelope_key(der: bytes, own: Identity) -> tuple | None:
    """Where to look for the layout of an envelope: our certificate and the recipient infos as sent but for
    their encrypted keys (which sender and profile); None when that is not found in plain DER."""
    kids = asn1.der_children
    top = kids(der, 0, len(der))
    ci = kids(der, top[0][2], top[0][3]) if top and top[0][1] == 0x30 else None
    inner = kids(der, ci[-1][2], ci[-1][3]) if ci and ci[-1][1] == 0xA0 else None
    if not inner or inner[0][1] != 0x30:
        return None
    pos, end = inner[0][2], inner[0][3]
    for _ in range(3):  # version, [0] originatorInfo, recipientInfos
        el = asn1.der_element(der, pos, end)
        if el is None:
            return None
        if el[0] == 0x31:
            parts = []
            for info in kids(der, el[1], el[2]) or ():
                ktri = kids(der, info[2], info[3]) if info[1] == 0x30 else None
                parts.append(der[info[0]:ktri[-1][0]] if ktri else der[info[0]:info[0] + 1])
            return own.cert, b"".join(parts)
        pos = el[2]
    return None


def _decrypt_laid_out(known: _EnvelopeKnown, at: dict, der: bytes, own: Identity) -> tuple[bytes, str, str]:
    """`decrypt` of an envelope that fits a learnt layout (see the section comment): `_unwrap` over the
    recipient infos that name us, then `_decrypt_content`."""
    for hole, kt_label, pad in known.ours:
        try:
            cek = own.key.decrypt(der[slice(*at[hole])], pad)
            break
        except ValueError:
            continue
    else:
        raise NotForUs("our recipient info does not unwrap with our key")
    ciphertext = memoryview(der)[slice(*at["ciphertext"])]  # no copy of the largest part
    return _decrypt_content(cek, kt_label, known.label, known.size, known.mode, der[slice(*at["iv"])], known.icvlen,
                            lambda: ciphertext, lambda: der[slice(*at["mac"])], lambda: list(known.aads))


def _embedded_certificates(embedded: cms.CertificateSet | core.Void) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates among a SignedData's certificates, in their order (other kinds skipped)."""
    certs = []
    for choice in asn1.forced("certificates", lambda: list(embedded or [])):
        if choice.name == "certificate":
            try:
                certs.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError (found by fuzzing)
                raise MalformedMessage("an embedded certificate cannot be read") from None
    return tuple(certs)


def _signer_index(sid: cms.SignerIdentifier, certs: tuple[x509.Certificate, ...]) -> int | None:
    """The position of the first certificate `sid` names, or None."""
    return next((i for i, c in enumerate(certs) if asn1.forced("signer identifier", lambda c=c: _names(sid, c))),
                None)


#: What a signer sends the same in every message, remembered by its encoding (see `asn1.Remembered`): the
#: type of the encapsulated content, the embedded certificates (so also the certificate objects that
#: TrustStore.check sees are the same from message to message, with what `cryptography` caches in them),
#: which of them the signer identifier names.
_ENCAP_TYPES = asn1.Remembered(64)
_EMBEDDED = asn1.Remembered(512)
_SIGNER_INDEX = asn1.Remembered(512)


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()
