"""Fixtures shared by the crypto tests: one development PKI for the whole session."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.crypto.pki import init_dev_pki


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory):
    """(folder, {party code: party folder}) of a development PKI made once per test session."""
    folder = tmp_path_factory.mktemp("dev-pki")
    return folder, init_dev_pki(folder)


# -- for the opening and trust tests (test_open.py, test_trust.py) ------------------------------

_SMIME_SIGN_ENCRYPT = dict(digital_signature=True, content_commitment=True, key_encipherment=True)


def _make_cert(cn: str, *, issuer=None, key=None, serial: str | None = None, email: str | None = None,
               not_before: datetime | None = None, days: int = 365, ca: bool = False,
               key_usage: dict | None = None, eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,),
               hash_alg=None, key_bits: int = 2048):
    """(key, certificate) for a test: self-signed when `issuer` is None, else signed by `issuer` = (cert, key).

    Defaults follow the dev PKI's S/MIME leaf profile; `ca=True` makes a CA (keyCertSign, cRLSign, no EKU);
    `key_usage` replaces the usage flags, `eku=None` leaves extendedKeyUsage out."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    nb = (not_before or datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=0)
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    name = x509.Name(attrs)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
    flags.update(key_usage if key_usage is not None else
                 (dict(key_cert_sign=True, crl_sign=True) if ca else _SMIME_SIGN_ENCRYPT))
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(nb + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(**flags), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return key, b.sign(issuer_key, hash_alg or hashes.SHA256())


@pytest.fixture(scope="session")
def make_cert():
    """The certificate factory `_make_cert` (see its docstring)."""
    return _make_cert


@pytest.fixture(scope="session")
def oracles():
    """openssl and gpgsm, the independent implementations the tests check against: missing is a failure."""
    missing = [tool for tool in ("openssl", "gpgsm", "gpgconf") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"test oracles missing: {', '.join(missing)} (Debian packages openssl, gpgsm; `make install`)")
    return {tool: shutil.which(tool) for tool in ("openssl", "gpgsm", "gpgconf")}
