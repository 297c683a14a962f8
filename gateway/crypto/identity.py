"""A party's own identity: its private key and certificate chain, loaded once.

Loads PEM (key + certificate + optional chain file) or PKCS#12 (PKIoverheid
deliveries often come as .p12). Trusts: the operator's files. Refuses a
private key file that others can read (group or world bits set): such a key
must be treated as compromised. Key material and passphrases never appear in
exceptions, reprs or logs; an ``Identity`` shows only the subject and
fingerprint.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class IdentityError(Exception):
    """The identity could not be loaded; the message names the file and the reason, never key material."""


@dataclass(frozen=True, slots=True)
class Identity:
    key: PrivateKey = field(repr=False)
    cert: x509.Certificate = field(repr=False)
    #: intermediates (not the root), to embed in signatures
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def __repr__(self) -> str:
        return f"<Identity {self.subject} sha256={self.fingerprint[:16]}…>"


def _read_private(path: Path) -> bytes:
    try:
        st = os.stat(path)
    except OSError as e:
        raise IdentityError(f"cannot read private key {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"private key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise IdentityError(f"private key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                            "restrict it to the gateway's user (chmod 600) and consider it compromised")
    return path.read_bytes()


def _certs_from_pem(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise IdentityError(f"cannot read certificates from {path}: {getattr(e, 'strerror', None) or 'not PEM certificates'}") from None


def load_pem_identity(key_path: str | os.PathLike, cert_path: str | os.PathLike,
                      chain_path: str | os.PathLike | None = None, passphrase: bytes | None = None) -> Identity:
    """Key + certificate (the first in `cert_path`; further ones there count as chain) + optional chain file."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    try:
        key = serialization.load_pem_private_key(_read_private(key_path), password=passphrase)
    except (ValueError, TypeError):
        raise IdentityError(f"cannot load private key {key_path}: not a PEM key, or wrong or missing passphrase") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise IdentityError(f"private key {key_path} is neither RSA nor EC")
    certs = _certs_from_pem(cert_path)
    chain = certs[1:] + (_certs_from_pem(Path(chain_path)) if chain_path else [])
    return _checked(key, certs[0], chain, str(cert_path))


def load_pkcs12_identity(path: str | os.PathLike, passphrase: bytes | None) -> Identity:
    path = Path(path)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(_read_private(path), passphrase)
    except ValueError:
        raise IdentityError(f"cannot load PKCS#12 {path}: not PKCS#12, or wrong passphrase") from None
    if key is None or cert is None:
        raise IdentityError(f"PKCS#12 {path} lacks a private key or a certificate")
    return _checked(key, cert, list(extra or []), str(path))


def _checked(key, cert: x509.Certificate, chain: list[x509.Certificate], where: str) -> Identity:
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise IdentityError(f"the private key does not belong to the certificate in {where}")
    chain = [c for c in chain if c != cert and c.subject != c.issuer]  # intermediates only; roots are trust, not chain
    return Identity(key, cert, tuple(chain))
