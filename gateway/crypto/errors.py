"""Typed failures of sealing and opening, one class per thing an operator must be told.

Each carries a stable ``code`` (for logs, metrics and receipts' reason codes)
and a message naming what was wrong; none ever carries message content, key
material or personal data.
"""

from __future__ import annotations


class CryptoError(Exception):
    code = "crypto-error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class MalformedMessage(CryptoError):
    code = "malformed"  #: not S/MIME, broken MIME or ASN.1


class NotForUs(CryptoError):
    code = "not-for-us"  #: no recipient info matches our certificate, or our key cannot unwrap it


class UnsupportedAlgorithm(CryptoError):
    code = "unsupported-algorithm"  #: the message names an algorithm we do not implement (named in the message)


class WeakAlgorithm(CryptoError):
    code = "weak-algorithm"  #: SHA-1/MD5 signature digests, 3DES, RC2, RSA keys under 2048 bits


class DecryptionFailed(CryptoError):
    code = "decryption-failed"  #: ciphertext altered (GCM tag, CBC padding) or wrong key


class SignatureInvalid(CryptoError):
    code = "signature-invalid"  #: the signature does not verify over the signed attributes


class ContentAltered(CryptoError):
    code = "content-altered"  #: the signed content's digest differs from the signed messageDigest


class SignerNotTrusted(CryptoError):
    code = "signer-not-trusted"  #: the chain does not end at a configured trust anchor


class ChainBroken(CryptoError):
    code = "chain-broken"  #: an intermediate is missing or does not verify


class CertificateExpired(CryptoError):
    code = "certificate-expired"


class CertificateNotYetValid(CryptoError):
    code = "certificate-not-yet-valid"


class CertificateRevoked(CryptoError):
    code = "certificate-revoked"


class RevocationUnknown(CryptoError):
    code = "revocation-unknown"  #: no CRL for the issuer, or the CRL is stale (when that is configured as a hard failure)


class CertificatePolicy(CryptoError):
    code = "certificate-policy"  #: wrong key usage / extended key usage for S/MIME


class WrongSender(CryptoError):
    code = "wrong-sender"  #: the signer is not the party the message must come from
