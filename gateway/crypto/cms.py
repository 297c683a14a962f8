"""CMS (RFC 5652) building blocks for sealing: detached SignedData, EnvelopedData, AuthEnvelopedData.

What it does: turns bytes into DER-encoded CMS ``ContentInfo`` structures with
`cryptography` primitives (RSA and ECDSA signatures, RSA key transport,
ECDH key agreement, AES-CBC and AES-GCM):

- :func:`sign_detached`: SignedData without encapsulated content, SHA-256,
  signed attributes contentType, signingTime, messageDigest and
  smimeCapabilities, the signer's certificate and its intermediates embedded;
  RSA signers PKCS#1 v1.5 (``rsaEncryption``), EC signers ``ecdsa-with-SHA256``.
- :func:`envelope`: EnvelopedData (AES-CBC) or AuthEnvelopedData (RFC 5083,
  AES-GCM with RFC 5084 parameters: 12-byte nonce, 16-byte ICV, no
  authenticated attributes) to one or more certificates, each identified by
  issuerAndSerialNumber. RSA certificates get a KeyTransRecipientInfo
  (PKCS#1 v1.5, or RSAES-OAEP with SHA-1/256/512 and MGF1 with the same hash,
  RFC 4055 parameters written out); an EC certificate, allowed only for the
  sender's own copy, gets a KeyAgreeRecipientInfo (RFC 5753 ephemeral-static
  ECDH, dhSinglePass-stdDH-sha256kdf-scheme, AES key wrap).

How it is built: every part that is the same for many messages (algorithm
identifiers, issuerAndSerialNumber, the certificate set, the
smimeCapabilities attribute, the key-agreement recipient info) is built
with `asn1crypto` structures, once per certificate or profile (cached).
The per-message shell around the variable values (digest, signing time,
signature, encrypted keys, IV/nonce, ciphertext, tag) is assembled with the
few DER rules below (definite lengths, SET OF sorted): building it with
`asn1crypto` objects cost ~1.5 ms per message, three times the RSA signature
itself. The tests check that `asn1crypto` re-encodes our output to the same
bytes (so it is DER as asn1crypto writes it; the one exception is the order
of RecipientInfos: recipient first, see :func:`_recipient_infos`) and that
`openssl cms` and `gpgsm` read it.

What asn1crypto 1.5 lacks so that it can also *parse* what we write (the RFC
5084 ``GCMParameters`` as the parameters of id-aes{128,192,256}-GCM, and the
RFC 5753 key-agreement schemes, whose parameters name the key-wrap algorithm)
is defined and registered in one place, :mod:`gateway.crypto.asn1`, which the
opening side uses too: once, when that module is first imported (this module
imports it), additive only, never replacing an existing entry. asn1crypto
knows AuthEnvelopedData, the authEnvelopedData content type and RSAES-OAEP
parameters already.

What it trusts: the caller. It checks that keys are of a kind and size it
will use (RSA >= 2048 bits, EC P-256/384/521) and raises
:class:`~gateway.crypto.errors.UnsupportedAlgorithm` or
:class:`~gateway.crypto.errors.WeakAlgorithm` otherwise; it does not check
validity dates, revocation or key usage (that is ``trust.py``'s job, before).

How it fails: only with those two exceptions (and ``ValueError`` for a naive
signing time), naming the certificate's subject and serial number and the
algorithm; never with key material.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from functools import lru_cache

from asn1crypto import algos, core
from asn1crypto import cms as acms
from asn1crypto import keys as akeys
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from gateway.crypto.asn1 import ECDH_SHA256_KDF, ECDH_SHA384_KDF, ECDH_SHA512_KDF, GCMParameters  # noqa: F401
from gateway.crypto.errors import UnsupportedAlgorithm, WeakAlgorithm
from gateway.crypto.profiles import ContentCipher, KeyTransport

MIN_RSA_BITS = 2048
GCM_NONCE_BYTES = 12
GCM_ICV_BYTES = 16


# ---------------------------------------------------------------------------------------------------------------
# What asn1crypto 1.5 lacks: GCMParameters and the ECDH schemes are defined and registered with asn1crypto by
# gateway.crypto.asn1 (imported above, so registered before anything here runs); re-exported under these names


class EccCmsSharedInfo(core.Sequence):
    """RFC 5753 ECC-CMS-SharedInfo: the KDF's SharedInfo for ECDH key agreement."""

    _fields = [
        ("key_info", acms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Minimal DER: what the per-message shell needs


def _hdr(tag: int, length: int) -> bytes:
    """A DER tag and definite length."""
    if length < 0x80:
        return bytes((tag, length))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets


def _tlv(tag: int, body: bytes) -> bytes:
    """One DER element: tag, definite length, contents."""
    return _hdr(tag, len(body)) + body


class _Around:
    """An element being built around large values (the ciphertext) without copying them at every
    level: `head` + `big` pieces + `tail`, joined once at the end."""

    __slots__ = ("head", "big", "size", "tail")

    def __init__(self, head: bytes, big: tuple, tail: bytes = b"", size: int | None = None):
        self.head, self.big, self.tail = head, big, tail
        self.size = sum(len(b) for b in big) if size is None else size

    def wrap(self, tag: int, before: bytes = b"", after: bytes = b"") -> _Around:
        """Enclose in a constructed element `tag` holding `before`, this element, `after`."""
        head, tail = before + self.head, self.tail + after
        return _Around(_hdr(tag, len(head) + self.size + len(tail)) + head, self.big, tail, self.size)

    def join(self) -> bytes:
        return b"".join((self.head, *self.big, self.tail))


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _set_of(*parts: bytes) -> bytes:
    # DER (X.690 11.6): members in ascending order of their encodings (none here is a prefix of another)
    return _tlv(0x31, b"".join(sorted(parts)))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _implicit(tag: int, der: bytes) -> bytes:
    """Re-tag an encoded element [n] IMPLICIT, keeping its constructed bit."""
    return bytes((tag | (der[0] & 0x20),)) + der[1:]


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


_INT = {v: core.Integer(v).dump() for v in (0, 1, 2, 3)}
_INT_ICV = core.Integer(GCM_ICV_BYTES).dump()
_OID_DATA = _oid("1.2.840.113549.1.7.1")
_OID_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
_OID_ENVELOPED_DATA = _oid("1.2.840.113549.1.7.3")
_OID_AUTH_ENVELOPED_DATA = _oid("1.2.840.113549.1.9.16.1.23")
_OID_SIGNING_TIME = _oid("1.2.840.113549.1.9.5")
_OID_MESSAGE_DIGEST = _oid("1.2.840.113549.1.9.4")


# ---------------------------------------------------------------------------------------------------------------
# Keys we accept


def check_rsa_recipient(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """The certificate's key, if it is an RSA key we encrypt to; raises otherwise."""
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm(f"cannot encrypt to {_who(cert)}: its key is {_kind(key)}; "
                                   "only RSA keys (key transport) are supported for recipients")
    if key.key_size < MIN_RSA_BITS:
        raise WeakAlgorithm(f"refusing to encrypt to {_who(cert)}: RSA key of {key.key_size} bits "
                            f"(minimum {MIN_RSA_BITS})")
    return key


def check_signing_key(cert: x509.Certificate) -> None:
    """Raises unless the certificate's key is RSA >= 2048 bits or EC on P-256/384/521."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakAlgorithm(f"refusing to sign with {_who(cert)}: RSA key of {key.key_size} bits "
                                f"(minimum {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        _check_curve(key, cert)
    else:
        raise UnsupportedAlgorithm(f"cannot sign with {_who(cert)}: its key is {_kind(key)}")


_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _check_curve(key: ec.EllipticCurvePublicKey, cert: x509.Certificate) -> None:
    if key.curve.name not in _CURVES:
        raise UnsupportedAlgorithm(f"{_who(cert)}: EC curve {key.curve.name} is not supported "
                                   "(P-256, P-384 and P-521 are)")


def _who(cert: x509.Certificate) -> str:
    return f"certificate {cert.subject.rfc4514_string()} (serial {cert.serial_number:x})"


def _kind(key) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "") or "an unknown kind"


# ---------------------------------------------------------------------------------------------------------------
# Per-certificate material, built with asn1crypto once


@lru_cache(maxsize=512)
def _cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@lru_cache(maxsize=512)
def _issuer_and_serial(cert: x509.Certificate) -> bytes:
    """DER IssuerAndSerialNumber of `cert`, the issuer Name copied as the certificate encodes it."""
    tbs = ax509.Certificate.load(_cert_der(cert))["tbs_certificate"]
    return acms.IssuerAndSerialNumber({"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]}).dump()


# ---------------------------------------------------------------------------------------------------------------
# SignedData (detached)

#: what we can read, strongest first (RFC 8551 2.5.2); mail clients use it to choose how to answer
_SMIME_CAPABILITIES_ATTR = acms.CMSAttribute({
    "type": "smime_capabilities",
    "values": [[
        {"capability_id": "aes256_gcm"}, {"capability_id": "aes128_gcm"},
        {"capability_id": "aes256_cbc"}, {"capability_id": "aes192_cbc"}, {"capability_id": "aes128_cbc"},
    ]],
}).dump()
_CONTENT_TYPE_ATTR = acms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump()
_SHA256_ALG = algos.DigestAlgorithm({"algorithm": "sha256"}).dump()  # parameters NULL, as asn1crypto writes it
_RSA_SIG_ALG = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}).dump()  # rsaEncryption, NULL
_ECDSA_SIG_ALG = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}).dump()  # parameters absent


@lru_cache(maxsize=64)
def _signer_static(cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> tuple[bytes, bytes, bytes, bool]:
    """(certificates [0] IMPLICIT, sid, signatureAlgorithm, is_rsa) of one signer: the same for every message."""
    check_signing_key(cert)
    certs = acms.CertificateSet([acms.CertificateChoices({"certificate": ax509.Certificate.load(_cert_der(c))})
                                 for c in (cert, *chain)]).dump()
    is_rsa = isinstance(cert.public_key(), rsa.RSAPublicKey)
    return _implicit(0xA0, certs), _issuer_and_serial(cert), _RSA_SIG_ALG if is_rsa else _ECDSA_SIG_ALG, is_rsa


def _signing_time(when: datetime) -> bytes:
    if when.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    when = when.astimezone(timezone.utc)
    # RFC 5652 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise; seconds, Z
    if 1950 <= when.year <= 2049:
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, f"{when.year:04d}{when:%m%d%H%M%S}Z".encode())


def sign_detached(content: bytes, key, cert: x509.Certificate, chain: tuple[x509.Certificate, ...] = (),
                  signing_time: datetime | None = None) -> tuple[bytes, bytes]:
    """A detached SignedData ContentInfo over `content`; returns (DER, SHA-256 digest of `content`)."""
    certs, sid, sig_alg, is_rsa = _signer_static(cert, tuple(chain))
    digest = hashlib.sha256(content).digest()
    attrs = _set_of(  # the DER SET OF that the signature covers; [0] IMPLICIT in the SignerInfo
        _CONTENT_TYPE_ATTR,
        _seq(_OID_SIGNING_TIME, _tlv(0x31, _signing_time(signing_time or datetime.now(timezone.utc)))),
        _seq(_OID_MESSAGE_DIGEST, _tlv(0x31, _octets(digest))),
        _SMIME_CAPABILITIES_ATTR,
    )
    if is_rsa:
        signature = key.sign(attrs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(attrs, ec.ECDSA(hashes.SHA256()))
    signer_info = _seq(_INT[1], sid, _SHA256_ALG, _implicit(0xA0, attrs), sig_alg, _octets(signature))
    signed_data = _seq(
        _INT[1],
        _tlv(0x31, _SHA256_ALG),  # digestAlgorithms
        _seq(_OID_DATA),  # encapContentInfo without eContent: detached
        certs,
        _tlv(0x31, signer_info),
    )
    return _seq(_OID_SIGNED_DATA, _tlv(0xA0, signed_data)), digest


# ---------------------------------------------------------------------------------------------------------------
# Key transport / key agreement

_OAEP_HASH = {
    KeyTransport.RSA_OAEP_SHA1: (hashes.SHA1, "sha1"),
    KeyTransport.RSA_OAEP_SHA256: (hashes.SHA256, "sha256"),
    KeyTransport.RSA_OAEP_SHA512: (hashes.SHA512, "sha512"),
}


@lru_cache(maxsize=8)
def key_encryption_algorithm(transport: KeyTransport) -> bytes:
    """DER AlgorithmIdentifier of a key transport: rsaEncryption, or id-RSAES-OAEP with RFC 4055 parameters."""
    if transport is KeyTransport.RSA_PKCS1V15:
        return acms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump()  # rsaEncryption, NULL
    _, name = _OAEP_HASH[transport]
    # hashFunc and maskGenFunc written out (for SHA-1 they equal the DEFAULT, which DER omits: params
    # become an empty SEQUENCE); pSourceFunc is the default (empty label), so absent
    params = algos.RSAESOAEPParams({
        "hash_algorithm": {"algorithm": name},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": name}},
    })
    return acms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": params}).dump()


def _rsa_padding(transport: KeyTransport) -> padding.AsymmetricPadding:
    if transport is KeyTransport.RSA_PKCS1V15:
        return padding.PKCS1v15()
    h, _ = _OAEP_HASH[transport]
    return padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None)


def _ktri(cert: x509.Certificate, cek: bytes, transport: KeyTransport) -> bytes:
    """KeyTransRecipientInfo (version 0, issuerAndSerialNumber), DER."""
    key = check_rsa_recipient(cert)
    return _seq(_INT[0], _issuer_and_serial(cert), key_encryption_algorithm(transport),
                _octets(key.encrypt(cek, _rsa_padding(transport))))


_WRAP_BY_CEK = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}


def _kari(cert: x509.Certificate, cek: bytes) -> bytes:
    """[1] KeyAgreeRecipientInfo, RFC 5753 ephemeral-static ECDH: dhSinglePass-stdDH-sha256kdf-scheme,
    AES key wrap of the content key's size, ECC-CMS-SharedInfo without ukm. DER."""
    peer = cert.public_key()
    _check_curve(peer, cert)
    ephemeral = ec.generate_private_key(peer.curve)
    shared = ephemeral.exchange(ec.ECDH(), peer)
    wrap_alg = acms.KeyEncryptionAlgorithm({"algorithm": _WRAP_BY_CEK[len(cek)]})  # parameters absent
    shared_info = EccCmsSharedInfo({"key_info": wrap_alg,
                                    "supp_pub_info": (len(cek) * 8).to_bytes(4, "big")}).dump()
    kek = X963KDF(algorithm=hashes.SHA256(), length=len(cek), sharedinfo=shared_info).derive(shared)
    originator = akeys.PublicKeyInfo.load(ephemeral.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return acms.RecipientInfo({"kari": {
        "version": "v3",
        "originator": {"originator_key": originator},
        "key_encryption_algorithm": {"algorithm": ECDH_SHA256_KDF, "parameters": wrap_alg},
        "recipient_encrypted_keys": [{
            "rid": {"issuer_and_serial_number": acms.IssuerAndSerialNumber.load(_issuer_and_serial(cert))},
            "encrypted_key": aes_key_wrap(kek, cek),
        }],
    }}).dump()


# ---------------------------------------------------------------------------------------------------------------
# EnvelopedData / AuthEnvelopedData

_CIPHER_OID = {
    ContentCipher.AES128_CBC: ("2.16.840.1.101.3.4.1.2", 16),
    ContentCipher.AES192_CBC: ("2.16.840.1.101.3.4.1.22", 24),
    ContentCipher.AES256_CBC: ("2.16.840.1.101.3.4.1.42", 32),
    ContentCipher.AES128_GCM: ("2.16.840.1.101.3.4.1.6", 16),
    ContentCipher.AES256_GCM: ("2.16.840.1.101.3.4.1.46", 32),
}
_CIPHER_OID_DER = {c: _oid(oid) for c, (oid, _) in _CIPHER_OID.items()}


def _recipient_infos(infos: list[bytes]) -> bytes:
    """RecipientInfos in the order given: the recipient first, the sender's copy last.

    Deliberately not sorted as DER would sort a SET OF (RFC 5652 asks DER only of signed attributes;
    EnvelopedData may be BER, and openssl and `cryptography` also keep the order given): gpgsm 2.2
    tries RecipientInfos in order and, when the first names a certificate it does not have, logs
    "failed to find the certificate" and exits 2 even though it then decrypts with the next one.
    With the recipient first, the recipient's client finds its own key at once."""
    return _tlv(0x31, b"".join(infos))


def envelope(content: bytes, recipients: list[x509.Certificate], transport: KeyTransport,
             cipher: ContentCipher, *, self_copy: x509.Certificate | None = None) -> bytes:
    """An EnvelopedData (CBC) or AuthEnvelopedData (GCM) ContentInfo, DER, readable by each recipient.

    `recipients` must hold RSA keys of >= 2048 bits (key transport with `transport`). `self_copy`, the
    sender's own certificate, may also be EC (key agreement), since a signing identity can be EC.
    """
    cek = os.urandom(_CIPHER_OID[cipher][1])
    infos = [_ktri(c, cek, transport) for c in recipients]
    if self_copy is not None and self_copy not in recipients:
        if isinstance(self_copy.public_key(), ec.EllipticCurvePublicKey):
            infos.append(_kari(self_copy, cek))
        else:
            infos.append(_ktri(self_copy, cek, transport))
    if cipher.authenticated:
        nonce = os.urandom(GCM_NONCE_BYTES)
        sealed = AESGCM(cek).encrypt(nonce, content, None)  # no authAttrs, so no AAD (RFC 5083 2.1)
        ciphertext, mac = memoryview(sealed)[:-GCM_ICV_BYTES], sealed[-GCM_ICV_BYTES:]  # view: no copy
        alg = _seq(_CIPHER_OID_DER[cipher], _seq(_octets(nonce), _INT_ICV))
        return (_Around(_hdr(0x80, len(ciphertext)), (ciphertext,))  # [0] IMPLICIT encryptedContent
                .wrap(0x30, _OID_DATA + alg)  # authEncryptedContentInfo
                .wrap(0x30, _INT[0] + _recipient_infos(infos), _octets(mac))  # AuthEnvelopedData: version 0
                .wrap(0xA0)
                .wrap(0x30, _OID_AUTH_ENVELOPED_DATA)  # ContentInfo
                .join())
    iv = os.urandom(16)
    pad = 16 - len(content) % 16
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = (encryptor.update(content), encryptor.update(bytes((pad,)) * pad) + encryptor.finalize())
    # RFC 5652 6.1: version 0 when every RecipientInfo is version 0 (ktri with issuerAndSerialNumber);
    # a kari (version 3) makes it 2
    version = _INT[0] if all(i[0] == 0x30 for i in infos) else _INT[2]
    alg = _seq(_CIPHER_OID_DER[cipher], _octets(iv))
    return (_Around(_hdr(0x80, len(ciphertext[0]) + len(ciphertext[1])), ciphertext)  # [0] IMPLICIT
            .wrap(0x30, _OID_DATA + alg)  # encryptedContentInfo
            .wrap(0x30, version + _recipient_infos(infos))  # EnvelopedData
            .wrap(0xA0)
            .wrap(0x30, _OID_ENVELOPED_DATA)  # ContentInfo
            .join())
