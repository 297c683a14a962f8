"""CMS parsing helpers for opening: DER or BER in, checked structures and named algorithms out.

DESCRIPTION
	Loads a CMS ContentInfo (RFC 5652) from DER or BER (indefinite lengths and
	chunked OCTET STRINGs, as `openssl cms -stream` and gpgsm write them) with
	asn1crypto, and answers the few questions that opening asks of it: which
	digest, signature, key-transport and content-encryption algorithm an
	AlgorithmIdentifier names (as `cryptography` objects; for ECDH key
	agreement also its X9.63 KDF SharedInfo), what the DER of an
	attribute SET is (what a signature or a GCM tag covers), which single value
	an attribute carries. asn1crypto parses lazily, so every accessor here
	forces what it reads and turns a parse error into MalformedMessage.

	Also the one home of what asn1crypto 1.5 lacks, for sealing (`cms`) and
	opening alike: the RFC 5084 GCMParameters and the RFC 5753 ECDH schemes,
	registered with asn1crypto once, at first import of this module, adding
	only missing entries (see `register_asn1crypto_extensions`).

SECURITY
	Input is hostile. Nothing here decides trust: it only names and decodes.
	Weak algorithms (MD5, SHA-1 as a signature digest, DES, 3DES, RC2, RC4) are
	named as such (WeakAlgorithm); anything else not implemented is
	UnsupportedAlgorithm naming the OID. RSA-OAEP's own SHA-1 (hash and MGF1)
	is not a weakness and is accepted.

DIAGNOSTICS
	MalformedMessage, WeakAlgorithm, UnsupportedAlgorithm; messages name the
	structure or OID, never content or key material.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from asn1crypto import algos, cms, core, parser
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from gateway.crypto.errors import MalformedMessage, UnsupportedAlgorithm, WeakAlgorithm

T = TypeVar("T")

#: hashes accepted as a signature's digest (RFC 8551 MUST/SHOULD set)
SIGNATURE_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
#: hashes refused as a signature's digest, by name
WEAK_DIGESTS = {"md2", "md5", "sha1"}
#: hashes accepted inside RSA-OAEP (hash and MGF1): SHA-1 is fine there
OAEP_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, **SIGNATURE_DIGESTS}

#: content-encryption algorithms we decrypt: name → (key bytes, mode)
CONTENT_CIPHERS: dict[str, tuple[int, str]] = {
    "aes128_cbc": (16, "cbc"), "aes192_cbc": (24, "cbc"), "aes256_cbc": (32, "cbc"),
    "aes128_gcm": (16, "gcm"), "aes192_gcm": (24, "gcm"), "aes256_gcm": (32, "gcm")}
#: content-encryption algorithms refused as weak, with the name an operator knows
WEAK_CIPHERS = {"des": "DES", "tripledes_3key": "3DES", "rc2": "RC2", "rc4": "RC4", "rc5": "RC5"}

OID_DATA = "data"
OID_SIGNED_DATA = "signed_data"
OID_ENVELOPED_DATA = "enveloped_data"
OID_AUTH_ENVELOPED_DATA = "authenticated_enveloped_data"


# -- what asn1crypto 1.5 lacks -------------------------------------------------------------------
#
# The one place that extends asn1crypto's global OID → parameters registries, for both sides: sealing
# (`gateway.crypto.cms` imports this module) and opening. `register_asn1crypto_extensions()` runs
# once, when this module is first imported, so the registries are the same whichever of `cms`,
# `open`, `seal` (or anything else importing this module) comes first. It only adds entries that are
# missing (dict.setdefault): an entry asn1crypto itself defines, or one another module put there
# first, is never replaced; calling it again changes nothing. What it adds:
#
#   EncryptionAlgorithm: aes128_gcm, aes192_gcm, aes256_gcm → GCMParameters (RFC 5084), so that the
#       parameters of AuthEnvelopedData's content algorithm parse as a structure;
#   KeyEncryptionAlgorithm: dhSinglePass-stdDH-sha{256,384,512}kdf-scheme (RFC 5753; asn1crypto has
#       no name for them, so they are keyed by dotted OID) → KeyEncryptionAlgorithm, the key-wrap
#       algorithm their parameters name.
#
# Opening does not rely on which class is registered: `content_cipher` and `key_agreement` re-load
# the parameters from their DER with our classes, so it reads the same even if some other module
# registered its own class for these OIDs first.


class GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen AES-GCM-ICVlen DEFAULT 12 }:
    the nonce and the tag length (12 when absent). The one definition: `cms` writes it, opening reads it."""

    _fields = [
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


#: RFC 5753 / SEC 1 dhSinglePass-stdDH-sha*kdf-scheme (what the sealer writes for an EC sender's own copy)
ECDH_SHA256_KDF = "1.3.132.1.11.1"
ECDH_SHA384_KDF = "1.3.132.1.11.2"
ECDH_SHA512_KDF = "1.3.132.1.11.3"

#: (asn1crypto class whose `_oid_specs` is extended, OID name or dotted form, parameters class)
ASN1CRYPTO_EXTENSIONS: tuple[tuple[type, str, type], ...] = (
    *((algos.EncryptionAlgorithm, name, GCMParameters) for name in ("aes128_gcm", "aes192_gcm", "aes256_gcm")),
    *((cms.KeyEncryptionAlgorithm, oid, cms.KeyEncryptionAlgorithm)
      for oid in (ECDH_SHA256_KDF, ECDH_SHA384_KDF, ECDH_SHA512_KDF)),
)


def register_asn1crypto_extensions() -> None:
    """Add `ASN1CRYPTO_EXTENSIONS` to asn1crypto's registries where the OID has no entry yet (idempotent;
    runs at import of this module, see the comment above)."""
    for owner, oid, spec in ASN1CRYPTO_EXTENSIONS:
        owner._oid_specs.setdefault(oid, spec)


register_asn1crypto_extensions()


def forced(what: str, fn: Callable[[], T]) -> T:
    """Run an accessor on lazily parsed input; any parse error becomes MalformedMessage naming `what`."""
    try:
        return fn()
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as e:
        raise MalformedMessage(f"malformed {what}: {type(e).__name__}") from None


def encoding_key(value: Any) -> tuple | None:
    """A hashable key for a parsed value that stands for its encoding as received: (class, contents) of a
    structure or primitive nothing has changed, (class, alternative, key of the chosen value) of a CHOICE;
    None when there is none (a value changed in memory, VOID, over 16 KB, a CHOICE that does not parse).
    Never raises, and takes nothing from the value that the caller would not take itself (no
    re-encoding: asn1crypto keeps the contents it parsed)."""
    try:
        if isinstance(value, core.Choice):
            inner = encoding_key(value.chosen)
            return None if inner is None else (type(value), value.name, inner)
        if isinstance(value, (core.Sequence, core.SequenceOf)):
            if value._is_mutated():
                return None
        elif not isinstance(value, core.Primitive):
            return None
        contents = value.contents
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError):
        return None
    return (type(value), contents) if isinstance(contents, bytes) and len(contents) <= 16384 else None


class Remembered:
    """Answers of a pure function of parsed values, remembered by `encoding_key` of those values.

    For the parts of a message that repeat from one message to the next (algorithm identifiers, the
    certificates a signer embeds, recipient and signer identifiers): asn1crypto builds every value in
    Python (~5-10 µs per field read), so working them out again each time is most of what opening costs
    besides the cryptography. Only answers are kept: a function that raises is called, and raises, again
    every time, so the order and kind of errors are those of the function itself. Bounded: when `limit`
    answers are kept, they are all dropped. The answers are shared: they must be immutable or never
    changed by the caller. Thread-safe as far as dict operations are (a race only computes twice)."""

    def __init__(self, limit: int = 256):
        self.limit, self._answers = limit, {}

    def answer(self, value: Any, fn: Callable[..., T], *args: Any, extra: Any = None) -> T:
        """fn(*args), remembered by the encoding of `value` (and `extra`, which must be hashable)."""
        key = encoding_key(value)
        if key is None:
            return fn(*args)
        key = (key, extra)
        known = self._answers.get(key, _MISSING)
        if known is not _MISSING:
            return known
        result = fn(*args)
        if len(self._answers) >= self.limit:
            self._answers.clear()
        self._answers[key] = result
        return result

    def clear(self) -> None:
        self._answers.clear()


_MISSING = object()


def load_content_info(data: bytes, what: str = "CMS structure") -> cms.ContentInfo:
    """A ContentInfo from DER or BER; only line breaks or spaces may follow it."""
    if not data or data[0] != 0x30:
        raise MalformedMessage(f"{what} is not an ASN.1 SEQUENCE")
    try:
        _, _, _, header, contents, trailer = parser.parse(data, strict=False)
    except (ValueError, TypeError, OverflowError):
        raise MalformedMessage(f"{what} is not valid DER/BER") from None
    used = len(header) + len(contents) + len(trailer)
    if data[used:].strip(b" \t\r\n"):
        raise MalformedMessage(f"{what} is followed by {len(data) - used} bytes of unexpected data")
    ci = forced(what, lambda: cms.ContentInfo.load(data[:used]))
    forced(what, lambda: ci["content_type"].native)
    return ci


def content_type(ci: cms.ContentInfo) -> str:
    return forced("ContentInfo", lambda: ci["content_type"].native)


def content_of(ci: cms.ContentInfo, expected: type[T], what: str) -> T:
    """The parsed inner structure, checked to be of the expected class (EnvelopedData, SignedData …)."""
    inner = forced(what, lambda: ci["content"])
    if not isinstance(inner, expected):
        raise MalformedMessage(f"expected {what}, found {content_type(ci)}")
    return inner


def octets(value: Any, what: str) -> bytes:
    """The bytes of an OCTET STRING, primitive or constructed (BER chunks are joined)."""
    data = forced(what, lambda: value.native)
    if not isinstance(data, bytes):
        raise MalformedMessage(f"{what} is not an OCTET STRING")
    return data


def der_set_of(attrs: cms.CMSAttributes) -> list[bytes]:
    """Encodings of an implicitly tagged attribute SET with the universal SET OF tag (0x31), as
    signatures (RFC 5652 §5.4) and GCM's AAD (RFC 5083 §2.1) cover them.

    First the bytes as received with only the tag changed (what the signer hashed if it encoded DER,
    as it must), then the canonical DER re-encoding (for a signer that sent BER or an unsorted SET).
    Both describe the same attribute values, so accepting either proves the same thing."""
    return der_set_of_contents(forced("attributes", lambda: attrs.contents))


def der_set_of_contents(contents: bytes) -> list[bytes]:
    """`der_set_of` of the attribute SET whose contents (as received, without tag and length) are given."""
    as_received = b"\x31" + _der_length(len(contents)) + contents
    canonical = forced("attributes", lambda: _canonical_set_of(contents))
    return [as_received] if canonical == as_received else [as_received, canonical]


def _canonical_set_of(contents: bytes) -> bytes:
    """`cms.CMSAttributes.load(0x31 + length + contents).dump(force=True)`, the same bytes and the same
    exceptions, computed per attribute with a cache.

    asn1crypto re-encodes a SET OF by splitting its contents into elements (asn1crypto.parser), building
    each as a CMSAttribute and re-encoding it (`dump(force=True)`), sorting those encodings and joining
    them under a DER header; that is done here in the same order, with the re-encoding of one attribute
    cached by its bytes: the attributes a sender repeats in every message (contentType,
    smimeCapabilities) cost a dictionary look-up instead of ~0.25 ms of asn1crypto parsing. Errors are
    never cached (lru_cache keeps returns only), so a malformed attribute raises on every message."""
    _forget_if_attribute_types_changed()
    size, pointer, elements = len(contents), 0, []
    while pointer < size:  # like SequenceOf._parse_children: every element split off before any is built
        _, _, _, header, body, trailer = parser.parse(contents[pointer:])
        end = pointer + len(header) + len(body) + len(trailer)
        elements.append(contents[pointer:end])
        pointer = end
    encoded = b"".join(sorted([_canonical_attribute(e) for e in elements]))
    return b"\x31" + _der_length(len(encoded)) + encoded


@lru_cache(maxsize=256)
def _canonical_attribute(element: bytes) -> bytes:
    return cms.CMSAttribute.load(element).dump(force=True)


#: asn1crypto's attribute type registries as they were when `_canonical_attribute` last filled its cache;
#: how an attribute re-encodes depends on them, so a module that registers an attribute type later (the
#: registries are process-wide) empties the cache
_attribute_types_seen: tuple[dict, dict] = ({}, {})


def _forget_if_attribute_types_changed() -> None:
    global _attribute_types_seen
    specs, names = cms.CMSAttribute._oid_specs, cms.CMSAttributeType._map
    if _attribute_types_seen[0] != specs or _attribute_types_seen[1] != names:
        _canonical_attribute.cache_clear()
        _attribute_types_seen = (dict(specs), dict(names))


def der_element(data: bytes, pos: int, end: int) -> tuple[int, int, int] | None:
    """(identifier octet, contents start, contents end) of the element at `pos`, which must end by `end`;
    None unless it has a low tag number and a definite length (what DER has): a quick reader to find
    where things are, never to decide what they mean (asn1crypto does that)."""
    if pos + 2 > end or data[pos] & 0x1F == 0x1F:
        return None
    n = data[pos + 1]
    if n < 0x80:
        start, length = pos + 2, n
    elif 0x81 <= n <= 0x84:
        start = pos + 2 + (n & 0x7F)
        length = int.from_bytes(data[pos + 2:start], "big")
    else:
        return None
    return (data[pos], start, start + length) if start + length <= end else None


def der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """[(element start, identifier octet, contents start, contents end)] of the elements filling
    data[start:end] (see `der_element`), or None."""
    found, pos = [], start
    while pos < end:
        el = der_element(data, pos, end)
        if el is None:
            return None
        found.append((pos, *el))
        pos = el[2]
    return found


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def single_attribute(attrs: cms.CMSAttributes | None, name: str) -> Any | None:
    """The one value of attribute `name` (asn1crypto's name), None when absent; several → MalformedMessage."""
    if attrs is None:
        return None
    found = [a for a in forced("attributes", lambda: list(attrs))
             if forced("attribute", lambda a=a: a["type"].native) == name]
    if not found:
        return None
    values = forced(f"{name} attribute", lambda: list(found[0]["values"]))
    if len(found) != 1 or len(values) != 1:
        raise MalformedMessage(f"the {name} attribute must occur once with one value")
    return values[0]


def algorithm_name(alg: core.Sequence, what: str) -> str:
    """asn1crypto's name of an AlgorithmIdentifier, or its dotted OID when asn1crypto has no name."""
    return forced(what, lambda: alg["algorithm"].native)


def digest_for_signature(alg: algos.DigestAlgorithm) -> hashes.HashAlgorithm:
    """The hash of a SignerInfo's digestAlgorithm: SHA-256/384/512; MD5/SHA-1 are weak (remembered, see
    `Remembered`)."""
    return _DIGESTS.answer(alg, _digest_for_signature, alg)


def _digest_for_signature(alg: algos.DigestAlgorithm) -> hashes.HashAlgorithm:
    name = algorithm_name(alg, "digest algorithm")
    return _signature_hash(name, "signature digest algorithm")


def _signature_hash(name: str, what: str) -> hashes.HashAlgorithm:
    if name in SIGNATURE_DIGESTS:
        return SIGNATURE_DIGESTS[name]()
    if name in WEAK_DIGESTS:
        raise WeakAlgorithm(f"{what} {name.upper().replace('SHA1', 'SHA-1')} is refused as weak")
    raise UnsupportedAlgorithm(f"{what} {_oid_text(name)} is not supported (use SHA-256, SHA-384 or SHA-512)")


#: signature algorithms that name their hash: name → (key family, hash name)
_HASHED_SIGNATURES = {
    "sha256_rsa": ("rsa", "sha256"), "sha384_rsa": ("rsa", "sha384"), "sha512_rsa": ("rsa", "sha512"),
    "sha224_rsa": ("rsa", "sha224"), "sha1_rsa": ("rsa", "sha1"), "md5_rsa": ("rsa", "md5"), "md2_rsa": ("rsa", "md2"),
    "sha256_ecdsa": ("ec", "sha256"), "sha384_ecdsa": ("ec", "sha384"), "sha512_ecdsa": ("ec", "sha512"),
    "sha224_ecdsa": ("ec", "sha224"), "sha1_ecdsa": ("ec", "sha1"),
}


def signature_scheme(alg: algos.SignedDigestAlgorithm, digest: hashes.HashAlgorithm
                     ) -> tuple[str, padding.AsymmetricPadding | None, hashes.HashAlgorithm]:
    """(key family "rsa"/"ec", RSA padding or None, hash) for a SignerInfo's signatureAlgorithm.

    rsaEncryption and id-ecPublicKey (as some signers write it) take the digest algorithm's hash; a
    signature algorithm naming its own hash must agree with the digest algorithm; RSASSA-PSS takes
    hash, MGF1 hash and salt length from its parameters. Remembered (see `Remembered`) by the encoding
    of `alg` and the digest's name."""
    return _SIGNATURE_SCHEMES.answer(alg, _signature_scheme, alg, digest, extra=digest.name)


def _signature_scheme(alg: algos.SignedDigestAlgorithm, digest: hashes.HashAlgorithm
                      ) -> tuple[str, padding.AsymmetricPadding | None, hashes.HashAlgorithm]:
    name = algorithm_name(alg, "signature algorithm")
    if name == "rsassa_pkcs1v15":
        return "rsa", padding.PKCS1v15(), digest
    if name in ("ecdsa", "1.2.840.10045.2.1"):
        return "ec", None, digest
    if name in _HASHED_SIGNATURES:
        family, hash_name = _HASHED_SIGNATURES[name]
        h = _signature_hash(hash_name, "signature algorithm hash")
        if h.name != digest.name:
            raise MalformedMessage(f"signature algorithm {name} disagrees with digest algorithm {digest.name}")
        return family, (padding.PKCS1v15() if family == "rsa" else None), h
    if name == "rsassa_pss":
        params = forced("RSASSA-PSS parameters", lambda: alg["parameters"])
        h = _signature_hash(forced("PSS hash", lambda: params["hash_algorithm"]["algorithm"].native), "RSASSA-PSS hash")
        mgf = forced("PSS MGF", lambda: params["mask_gen_algorithm"])
        if forced("PSS MGF", lambda: mgf["algorithm"].native) != "mgf1":
            raise UnsupportedAlgorithm(f"RSASSA-PSS mask generation {_oid_text(mgf['algorithm'].native)} "
                                       "is not supported")
        mgf_hash = _signature_hash(forced("PSS MGF1 hash", lambda: mgf["parameters"]["algorithm"].native),
                                   "RSASSA-PSS MGF1 hash")
        salt = forced("PSS salt length", lambda: params["salt_length"].native)
        if forced("PSS trailer", lambda: params["trailer_field"].native) != "trailer_field_bc":
            raise UnsupportedAlgorithm("RSASSA-PSS trailer field other than 1 is not supported")
        if h.name != digest.name:
            raise MalformedMessage(f"RSASSA-PSS hash {h.name} disagrees with digest algorithm {digest.name}")
        return "rsa", padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=salt), h
    raise UnsupportedAlgorithm(f"signature algorithm {_oid_text(name)} is not supported "
                               "(RSA PKCS#1 v1.5, RSASSA-PSS and ECDSA are)")


def key_transport(alg: cms.KeyEncryptionAlgorithm) -> tuple[str, padding.AsymmetricPadding]:
    """(label, RSA padding) of a KeyTransRecipientInfo's algorithm: PKCS#1 v1.5 or OAEP as its parameters say.

    Labels follow `gateway.crypto.profiles.KeyTransport` (rsa-pkcs1v15, rsa-oaep-sha256 …); an OAEP
    whose MGF1 hash differs from its hash is labelled rsa-oaep-<hash>-mgf1-<hash>.

    Answers are remembered by the identifier's encoding (see `Remembered`): reading OAEP parameters
    with asn1crypto costs ~0.2 ms, and a sender writes the same identifier in every message."""
    return _KEY_TRANSPORTS.answer(alg, _key_transport, alg)


def _key_transport(alg: cms.KeyEncryptionAlgorithm) -> tuple[str, padding.AsymmetricPadding]:
    name = algorithm_name(alg, "key encryption algorithm")
    if name == "rsaes_pkcs1v15":
        return "rsa-pkcs1v15", padding.PKCS1v15()
    if name != "rsaes_oaep":
        raise UnsupportedAlgorithm(f"key transport {_oid_text(name)} is not supported "
                                   "(RSA PKCS#1 v1.5 and RSA-OAEP are)")
    params = forced("RSA-OAEP parameters", lambda: alg["parameters"])
    if params is None or isinstance(params, core.Null) or forced("RSA-OAEP parameters", lambda: params.native) is None:
        params = algos.RSAESOAEPParams({})  # all defaults: SHA-1, MGF1-SHA-1, empty label
    h_name = forced("OAEP hash", lambda: params["hash_algorithm"]["algorithm"].native)
    mgf = forced("OAEP MGF", lambda: params["mask_gen_algorithm"])
    if forced("OAEP MGF", lambda: mgf["algorithm"].native) != "mgf1":
        raise UnsupportedAlgorithm(f"RSA-OAEP mask generation {_oid_text(mgf['algorithm'].native)} is not supported")
    mgf_name = forced("OAEP MGF1 hash", lambda: mgf["parameters"]["algorithm"].native)
    source = forced("OAEP label", lambda: params["p_source_algorithm"])
    if forced("OAEP label", lambda: source["algorithm"].native) != "p_specified":
        raise UnsupportedAlgorithm("RSA-OAEP label source other than pSpecified is not supported")
    label = forced("OAEP label", lambda: source["parameters"].native) or None
    for n in (h_name, mgf_name):
        if n not in OAEP_DIGESTS:
            raise UnsupportedAlgorithm(f"RSA-OAEP hash {_oid_text(n)} is not supported "
                                       "(SHA-1, SHA-256, SHA-384, SHA-512 are)")
    tag = f"rsa-oaep-{h_name}" + ("" if mgf_name == h_name else f"-mgf1-{mgf_name}")
    return tag, padding.OAEP(mgf=padding.MGF1(OAEP_DIGESTS[mgf_name]()), algorithm=OAEP_DIGESTS[h_name](), label=label)


#: RFC 5753 / SEC 1 ECDH key-agreement schemes (standard and cofactor DH are one for the NIST curves) → KDF hash
ECDH_SCHEMES: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.133.16.840.63.0.2": hashes.SHA1, "1.3.132.1.11.0": hashes.SHA224, "1.3.132.1.11.1": hashes.SHA256,
    "1.3.132.1.11.2": hashes.SHA384, "1.3.132.1.11.3": hashes.SHA512,
    "1.3.133.16.840.63.0.3": hashes.SHA1, "1.3.132.1.14.0": hashes.SHA224, "1.3.132.1.14.1": hashes.SHA256,
    "1.3.132.1.14.2": hashes.SHA384, "1.3.132.1.14.3": hashes.SHA512,
}
#: AES key wrap (RFC 3394) algorithms → key-encryption key bytes
KEY_WRAPS = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}


def key_agreement(alg: cms.KeyEncryptionAlgorithm) -> tuple[str, hashes.HashAlgorithm, bytes, int]:
    """(label, KDF hash, DER of the key-wrap AlgorithmIdentifier, KEK bytes) of a KeyAgreeRecipientInfo's
    algorithm: ECDH (ephemeral-static, RFC 5753) with the X9.63 KDF and AES key wrap."""
    oid = forced("key agreement algorithm", lambda: alg["algorithm"].dotted)
    if oid not in ECDH_SCHEMES:
        raise UnsupportedAlgorithm(f"key agreement {_oid_text(oid)} is not supported (ECDH with the X9.63 KDF is)")
    wrap_der = forced("key wrap algorithm", lambda: alg["parameters"].dump())
    wrap = forced("key wrap algorithm", lambda: cms.KeyEncryptionAlgorithm.load(wrap_der))
    wrap_name = forced("key wrap algorithm", lambda: wrap["algorithm"].native)
    if wrap_name not in KEY_WRAPS:
        raise UnsupportedAlgorithm(f"key wrap {_oid_text(wrap_name)} is not supported (AES key wrap is)")
    h = ECDH_SCHEMES[oid]()
    return f"ecdh-{h.name.replace('-', '')}kdf-{wrap_name.replace('_', '')}", h, wrap_der, KEY_WRAPS[wrap_name]


def ecc_cms_shared_info(wrap_der: bytes, ukm: bytes | None, kek_bytes: int) -> bytes:
    """DER of ECC-CMS-SharedInfo (RFC 5753 §7.2): the key-wrap AlgorithmIdentifier as sent, [0] the
    user keying material if any, [2] the KEK length in bits as a 4-byte OCTET STRING."""
    def explicit(tag: int, octets: bytes) -> bytes:
        inner = b"\x04" + _der_length(len(octets)) + octets
        return bytes([0xA0 | tag]) + _der_length(len(inner)) + inner
    body = wrap_der + (explicit(0, ukm) if ukm else b"") + explicit(2, (kek_bytes * 8).to_bytes(4, "big"))
    return b"\x30" + _der_length(len(body)) + body


def content_cipher(alg: algos.EncryptionAlgorithm) -> tuple[str, int, str, bytes, int]:
    """(label, key bytes, mode "cbc"/"gcm", IV or nonce, GCM tag length) of a content-encryption algorithm.

    Labels follow `gateway.crypto.profiles.ContentCipher` (aes256-cbc, aes256-gcm …)."""
    name = algorithm_name(alg, "content encryption algorithm")
    if name in WEAK_CIPHERS:
        raise WeakAlgorithm(f"content encryption {WEAK_CIPHERS[name]} is refused as weak (use AES)")
    if name not in CONTENT_CIPHERS:
        raise UnsupportedAlgorithm(f"content encryption {_oid_text(name)} is not supported "
                                   "(AES-128/192/256-CBC and AES-128/192/256-GCM are)")
    size, mode = CONTENT_CIPHERS[name]
    label = name.replace("_", "-")
    raw = forced("content encryption parameters", lambda: alg["parameters"])
    if mode == "cbc":
        iv = octets(core.OctetString.load(forced("CBC IV", lambda: raw.dump())), "CBC IV")
        if len(iv) != 16:
            raise MalformedMessage(f"AES-CBC IV is {len(iv)} bytes, expected 16")
        return label, size, mode, iv, 0
    # re-loaded from its DER: the same whichever class is registered for the OID (see the top of the module)
    gcm = forced("GCM parameters", lambda: GCMParameters.load(raw.dump()))
    nonce = octets(gcm["aes_nonce"], "GCM nonce")
    icvlen = forced("GCM parameters", lambda: gcm["aes_icvlen"].native)
    if not 12 <= icvlen <= 16 or not 8 <= len(nonce) <= 64:
        raise MalformedMessage(f"AES-GCM parameters out of range (nonce {len(nonce)} bytes, tag {icvlen} bytes)")
    return label, size, mode, nonce, icvlen


#: the remembered answers of the functions above: per sender profile, a handful of entries each.
#: Pure functions of the encoding: asn1crypto's names for these algorithms are its own, never replaced.
_KEY_TRANSPORTS = Remembered(64)
_DIGESTS = Remembered(64)
_SIGNATURE_SCHEMES = Remembered(64)


def _oid_text(name: str) -> str:
    """asn1crypto's name with its OID, or the OID alone."""
    if name[:1].isdigit():
        return name
    for oid_class in (algos.EncryptionAlgorithmId, algos.DigestAlgorithmId, algos.SignedDigestAlgorithmId,
                      cms.KeyEncryptionAlgorithmId, algos.MaskGenAlgorithmId):
        try:
            return f"{name} ({oid_class.unmap(name)})"
        except ValueError:
            continue
    return name
