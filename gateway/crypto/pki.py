"""A development PKI: everything a local set-up and the tests need, never for production.

Makes a root CA, an issuing CA, a CRL, and one S/MIME identity (key,
certificate, chain) per party — PIs, municipalities, the platform — plus an
expired and a revoked certificate for negative tests. Certificates follow the
S/MIME profile that `openssl verify -purpose smimesign|smimeencrypt` accepts:
CA with BasicConstraints(ca) critical and keyCertSign+cRLSign; leaf with
digitalSignature (+nonRepudiation; +keyEncipherment for RSA, +keyAgreement for
EC, which the sealer uses for an EC sender's own copy, RFC 5753), EKU
emailProtection, SAN rfc822Name, and the party code in the subject's
serialNumber (as PKIoverheid carries the OIN).

Trusts: nothing; writes only below the folder it is given, and refuses to
write into a folder that already holds anything (keys are never overwritten).
Private keys are written with mode 0600, unencrypted: development only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class DevParty:
    code: str  #: PI code, municipality code, or "PLATFORM"
    name: str
    email: str
    key: str = "rsa2048"  #: rsa2048 | rsa3072 | ec256


#: the parties of the development set-up: a few PIs, a few municipalities, the platform
DEV_PARTIES: tuple[DevParty, ...] = (
    DevParty("PI-VUGHT", "PI Vught", "nazorg@pi-vught.example.nl"),
    DevParty("PI-HAAGLANDEN", "PI Haaglanden", "nazorg@pi-haaglanden.example.nl", "rsa3072"),
    DevParty("PI-ZWOLLE", "PI Zwolle", "nazorg@pi-zwolle.example.nl", "ec256"),
    DevParty("0599", "Gemeente Rotterdam", "nazorg@gemeente-0599.example.nl"),
    DevParty("0344", "Gemeente Utrecht", "nazorg@gemeente-0344.example.nl"),
    DevParty("0363", "Gemeente Amsterdam", "nazorg@gemeente-0363.example.nl"),
    DevParty("0518", "Gemeente 's-Gravenhage", "nazorg@gemeente-0518.example.nl"),
    # the shipped example messages are addressed to these two as well
    DevParty("0772", "Gemeente Eindhoven", "nazorg@gemeente-0772.example.nl"),
    DevParty("0014", "Gemeente Groningen", "nazorg@gemeente-0014.example.nl"),
    DevParty("PLATFORM", "Digitaal Platform Aansluiting Nazorg", "as2@platform.example.nl"),
)
#: certificates that exist to be refused
EXPIRED = DevParty("TEST-EXPIRED", "Verlopen certificaat", "expired@test.example.nl")
REVOKED = DevParty("TEST-REVOKED", "Ingetrokken certificaat", "revoked@test.example.nl")


class PkiError(Exception):
    """The development PKI could not be written (for example: the folder is not empty)."""


def new_key(kind: str) -> PrivateKey:
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key kind {kind!r}: use rsa2048, rsa3072 or ec256")


def _name(common_name: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Nazorg gateway ontwikkel-PKI"),
             x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _ca_cert(subject: x509.Name, key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey,
             not_before: datetime, days: int, path_length: int | None) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def issue_smime_certificate(party: DevParty, key: PrivateKey, issuer: x509.Certificate, issuer_key: PrivateKey,
                            not_before: datetime, days: int = 825) -> x509.Certificate:
    """An S/MIME end-entity certificate for one party, signed by `issuer`."""
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return (x509.CertificateBuilder()
            .subject_name(_name(party.name, party.code)).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=is_rsa,
                                         data_encipherment=False, key_agreement=not is_rsa, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(party.email)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def issue_tls_certificate(party: DevParty, key: PrivateKey, issuer: x509.Certificate, issuer_key: PrivateKey,
                          not_before: datetime, days: int = 825) -> x509.Certificate:
    """A TLS certificate for one party's AS2 endpoint and client side (mutual TLS): serverAuth and
    clientAuth, the party code in serialNumber (how a peer ties the connection to a partner), and
    localhost / 127.0.0.1 / the party's AS2 host name as names. Separate from the S/MIME certificate,
    as PKIoverheid issues them."""
    host = f"as2.{party.email.split('@', 1)[1]}"
    return (x509.CertificateBuilder()
            .subject_name(_name(party.name + " AS2", party.code)).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName(host),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Create `path` exclusively (never overwrite), fsynced; private files mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_dev_pki(folder: str | os.PathLike, *, now: datetime | None = None) -> dict[str, Path]:
    """Write a complete development PKI into `folder` (which must be missing or empty).

    Layout: ``ca/root.pem``, ``ca/issuing.pem`` (+ ``*-key.pem``), ``ca/issuing.crl.pem``,
    ``trust.pem`` (root + issuing), and per party ``parties/<code>/{key,cert,chain}.pem``
    (chain = cert + issuing CA) and, for the TLS of the platform route, ``tls-key.pem`` and
    ``tls-chain.pem``. Returns {party code: party folder}.
    """
    root_dir = Path(folder)
    if root_dir.exists() and any(root_dir.iterdir()):
        raise PkiError(f"{root_dir} is not empty: a development PKI is only written into an empty folder "
                       "(existing keys are never overwritten)")
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    start = now - timedelta(hours=1)  # tolerate small clock differences between hosts

    root_key, issuing_key = new_key("rsa3072"), new_key("rsa3072")
    root_name = _name("Nazorg ontwikkel Root CA")
    root = _ca_cert(root_name, root_key, root_name, root_key, start, 3650, None)
    issuing = _ca_cert(_name("Nazorg ontwikkel Issuing CA"), issuing_key, root.subject, root_key, start, 1825, 0)

    parties: dict[str, Path] = {}
    revoked_serial = None
    for party in (*DEV_PARTIES, EXPIRED, REVOKED):
        key = new_key(party.key)
        if party is EXPIRED:
            cert = issue_smime_certificate(party, key, issuing, issuing_key, start - timedelta(days=400), days=365)
        else:
            cert = issue_smime_certificate(party, key, issuing, issuing_key, start)
        if party is REVOKED:
            revoked_serial = cert.serial_number
        folder_of = root_dir / "parties" / party.code
        _write(folder_of / "key.pem", _key_pem(key), private=True)
        _write(folder_of / "cert.pem", _pem(cert))
        _write(folder_of / "chain.pem", _pem(cert) + _pem(issuing))
        if party in DEV_PARTIES:  # mutual TLS for the platform route (AS2)
            tls_key = new_key("ec256")
            tls = issue_tls_certificate(party, tls_key, issuing, issuing_key, start)
            _write(folder_of / "tls-key.pem", _key_pem(tls_key), private=True)
            _write(folder_of / "tls-chain.pem", _pem(tls) + _pem(issuing))
        parties[party.code] = folder_of

    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(issuing.subject).last_update(start).next_update(now + timedelta(days=30))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked_serial).revocation_date(start)
                                    .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                                    .build())
           .add_extension(x509.CRLNumber(1), critical=False)
           .sign(issuing_key, hashes.SHA256()))

    _write(root_dir / "ca" / "root.pem", _pem(root))
    _write(root_dir / "ca" / "root-key.pem", _key_pem(root_key), private=True)
    _write(root_dir / "ca" / "issuing.pem", _pem(issuing))
    _write(root_dir / "ca" / "issuing-key.pem", _key_pem(issuing_key), private=True)
    _write(root_dir / "ca" / "issuing.crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    _write(root_dir / "trust.pem", _pem(root) + _pem(issuing))
    return parties
