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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
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
        envelope = _envelope(bytes(entity))
        plain, cipher_label, kt_label = decrypt(envelope, own)
        entity_digest = hashlib.sha256(plain).hexdigest()
        signature, detached = _signed_entity(plain)
        signed = verify_signed_data(signature, detached)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as e:
        # asn1crypto parses lazily: a structure broken where no accessor above expected it ends here
        raise MalformedMessage(f"malformed message structure ({type(e).__name__})") from None
    chain = trust.check(signed.signer, signed.other_certs, at, usage="sign", party=expected_sender)
    return Opened(xml=_xml_of(signed.content, "the signed part"), signer=signed.signer, chain=chain,
                  mic=base64.b64encode(hashlib.sha256(signed.content).digest()).decode("ascii"),
                  signed_entity_sha256=entity_digest, content_cipher=cipher_label, key_transport=kt_label,
                  signing_time=signed.signing_time)


# -- MIME ---------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(rb"[!-9;-~]+")
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
    headers: dict[str, str] = {}
    pos, last = 0, None
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise MalformedMessage(f"{what} is not a MIME entity (no blank line after the headers)")
        line = data[pos:end - 1] if end > pos and data[end - 1] == 0x0D else data[pos:end]
        pos = end + 1
        if not line:
            return headers, data[pos:]
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
    try:
        data = base64.b64decode(body.translate(None, b" \t\r\n\v\f"), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage(f"{what}: broken base64") from None
    if not data:
        raise MalformedMessage(f"{what} is empty")
    return data


def decode_body(body: bytes, cte: str | None, what: str) -> bytes:
    """A body decoded per its Content-Transfer-Encoding."""
    enc = (cte or "7bit").strip().lower()
    if enc == "base64":
        return _base64(body, what)
    if enc == "quoted-printable":
        return binascii.a2b_qp(body)
    if enc in ("7bit", "8bit", "binary"):
        return body
    raise MalformedMessage(f"{what} has an unknown Content-Transfer-Encoding {_shown(enc)!r}")


def _envelope(entity: bytes) -> cms.ContentInfo:
    """The encrypted ContentInfo from a MIME entity, PEM or bare DER/BER."""
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
        headers, body = split_entity(entity, "the message")
        mtype, params = content_type(headers.get("content-type"))
        if mtype not in PKCS7_MIME:
            raise MalformedMessage(f"not an S/MIME encrypted message: Content-Type is {_shown(mtype)!r}, "
                                   "expected application/pkcs7-mime")
        smime_type = params.get("smime-type", "").lower()
        if smime_type and smime_type not in ENCRYPTED_SMIME_TYPES:
            raise MalformedMessage(f"not encrypted: smime-type is {_shown(smime_type)!r}")
        cte = headers.get("content-transfer-encoding")
        if cte is None:  # AS2 over HTTP often sends binary without saying so; mail sends base64
            der = body if body[:1] == b"\x30" else _base64(body, "the message body")
        else:
            der = decode_body(body, cte, "the message body")
    return asn1.load_content_info(der, "the encrypted message")


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, each exactly as between its delimiters (RFC 2046 §5.1.1).

    A delimiter is "--" boundary at the start of the body or after a line break (CRLF, or a bare LF),
    followed by optional spaces or tabs and a line break or the end; "--" after the boundary closes.
    The line break before a delimiter belongs to the delimiter, not to the part."""
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise MalformedMessage("multipart boundary missing or invalid")
    dash = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    start = None
    at = body.find(dash)
    while at >= 0:
        if at == 0 or body[at - 1] == 0x0A:
            end = at - 1 if at else 0
            if end and body[end - 1] == 0x0D:
                end -= 1
            after = at + len(dash)
            closing = body[after:after + 2] == b"--"
            rest = after + 2 if closing else after
            while body[rest:rest + 1] in (b" ", b"\t"):
                rest += 1
            if rest == len(body) or body[rest:rest + 1] == b"\n" or body[rest:rest + 2] == b"\r\n":
                if start is not None:
                    parts.append(body[start:end])
                if closing:
                    return parts
                start = rest + (2 if body[rest:rest + 1] == b"\r" else 1)
        at = body.find(dash, at + 1)
    raise MalformedMessage("multipart/signed has no closing boundary" if start is not None
                           else "multipart/signed: the boundary does not occur in the body")


def _signed_entity(plain: bytes) -> tuple[cms.ContentInfo, bytes | None]:
    """(SignedData ContentInfo, the first part of a multipart/signed as it stands, or None when opaque)."""
    if plain[:1] == b"\x30":
        return asn1.load_content_info(plain, "the decrypted content"), None
    headers, body = split_entity(plain, "the decrypted content")
    mtype, params = content_type(headers.get("content-type"))
    if mtype in PKCS7_MIME:
        smime_type = params.get("smime-type", "signed-data").lower()
        if smime_type != "signed-data":
            raise MalformedMessage(f"the decrypted content is not signed (smime-type {_shown(smime_type)!r})")
        der = decode_body(body, headers.get("content-transfer-encoding") or "base64", "the opaque signature")
        return asn1.load_content_info(der, "the opaque signature"), None
    if mtype != "multipart/signed":
        raise MalformedMessage(f"the decrypted content is not signed: Content-Type is {_shown(mtype)!r}")
    protocol = params.get("protocol", "").lower()
    if protocol and protocol not in PKCS7_SIGNATURE:
        raise MalformedMessage(f"multipart/signed protocol {_shown(protocol)!r} is not S/MIME")
    parts = _split_multipart(body, params.get("boundary", ""))
    if len(parts) != 2:
        raise MalformedMessage(f"multipart/signed has {len(parts)} parts, expected 2")
    sig_headers, sig_body = split_entity(parts[1], "the signature part")
    sig_type, _ = content_type(sig_headers.get("content-type"))
    if sig_type not in PKCS7_SIGNATURE:
        raise MalformedMessage(f"the second part is {_shown(sig_type)!r}, expected application/pkcs7-signature")
    der = decode_body(sig_body, sig_headers.get("content-transfer-encoding"), "the signature part")
    return asn1.load_content_info(der, "the signature"), parts[0]


def _xml_of(signed: bytes, what: str) -> bytes:
    """The payload of the signed entity: its body decoded per Content-Transfer-Encoding.

    A bare XML document (no MIME headers, as a gpgsm opaque signature may hold) is taken as it is."""
    if signed.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        return signed
    headers, body = split_entity(signed, what)
    mtype, _ = content_type(headers.get("content-type"))
    if mtype.startswith(("multipart/", "message/")):
        raise MalformedMessage(f"{what} is {_shown(mtype)!r}, expected a single XML document")
    return decode_body(body, headers.get("content-transfer-encoding"), what)


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
    if len(cek) != size:
        raise DecryptionFailed(f"the unwrapped key does not fit {label} (wrong key, or the encrypted key was altered)")
    encrypted = asn1.forced("encrypted content", lambda: eci["encrypted_content"])
    if encrypted is None or isinstance(encrypted, core.Void):
        raise MalformedMessage("the encrypted content is absent (detached ciphertext is not supported)")
    ciphertext = asn1.octets(encrypted, "encrypted content")
    if mode == "cbc":
        return _cbc(cek, iv, ciphertext, label), label, kt_label
    tag = asn1.octets(asn1.forced("AuthEnvelopedData mac", lambda: env["mac"]), "mac")
    if len(tag) != icvlen:
        raise MalformedMessage(f"the GCM tag is {len(tag)} bytes, the parameters say {icvlen}")
    auth_attrs = asn1.forced("authAttrs", lambda: env["auth_attrs"])
    aads = asn1.der_set_of(auth_attrs) if auth_attrs is not None and not isinstance(auth_attrs, core.Void) else [b""]
    for aad in aads:
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
            if not _names(ktri["rid"], own.cert):
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
                if not _names(rek["rid"], own.cert):
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
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionFailed(f"{label}: invalid padding (altered, or wrong key)") from None


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
    if asn1.content_type(ci) != asn1.OID_SIGNED_DATA:
        raise MalformedMessage(f"expected a signature, found CMS {_shown(str(asn1.content_type(ci)))}")
    sd = asn1.content_of(ci, cms.SignedData, "SignedData")
    encap = asn1.forced("encapContentInfo", lambda: sd["encap_content_info"])
    if asn1.forced("encapContentInfo", lambda: encap["content_type"].native) != asn1.OID_DATA:
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
    pairs = []
    for choice in asn1.forced("certificates", lambda: list(sd["certificates"] or [])):
        if choice.name == "certificate":
            try:
                pairs.append((choice.chosen, x509.load_der_x509_certificate(choice.chosen.dump())))
            except ValueError:
                raise MalformedMessage("an embedded certificate cannot be read") from None
    sid = asn1.forced("signer identifier", lambda: si["sid"])
    signer = next((c for _, c in pairs if asn1.forced("signer identifier", lambda c=c: _names(sid, c))), None)
    if signer is None:
        raise MalformedMessage("the signer's certificate is not embedded in the signature")

    digest = asn1.digest_for_signature(asn1.forced("digest algorithm", lambda: si["digest_algorithm"]))
    family, pad, sig_hash = asn1.signature_scheme(asn1.forced("signature algorithm", lambda: si["signature_algorithm"]),
                                                  digest)
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
    content = detached
    if not hmac.compare_digest(_hash(digest, content), md_value):
        canonical = _BARE_LF.sub(b"\r\n", content)
        if canonical == content or not hmac.compare_digest(_hash(digest, canonical), md_value):
            raise ContentAltered("the signed content does not match the signed messageDigest")
        content = canonical
    st = asn1.single_attribute(attrs, "signing_time")
    signing_time = asn1.forced("signingTime attribute", lambda: st.native) if st is not None else None

    signature = asn1.octets(asn1.forced("signature", lambda: si["signature"]), "signature")
    key = signer.public_key()
    if not isinstance(key, {"rsa": rsa.RSAPublicKey, "ec": ec.EllipticCurvePublicKey}[family]):
        raise SignatureInvalid("the signature algorithm does not fit the signer's key")
    for encoded in asn1.der_set_of(attrs):
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
    others = [c for _, c in pairs if c is not signer]
    return Signed(signer, others, content, signing_time)


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()
