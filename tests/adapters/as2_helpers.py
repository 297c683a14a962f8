"""Helpers for the AS2 tests: throw-away TLS certificates and a server started in the test's loop.

The development PKI's party certificates are S/MIME certificates (EKU emailProtection, no DNS or IP
names), which OpenSSL refuses for TLS; `TlsPki` makes TLS ones with `cryptography` (EC P-256, fast):
a CA, a server certificate for 127.0.0.1 and localhost (serverAuth), a client certificate
(clientAuth), a server certificate that names another host, and a foreign CA with its own client
and server certificates. `write()` puts them in files for curl and openssl.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.as2 import As2Partner, As2Settings, make_app, serve
from adapters.as2.headers import DISPOSITION_OPTIONS
from adapters.as2.tls import client_context

HOST = "127.0.0.1"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(**on) -> x509.KeyUsage:
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
    flags.update(on)
    return x509.KeyUsage(**flags)


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    issuer: x509.Certificate

    @property
    def chain_pem(self) -> bytes:
        return _pem(self.cert) + _pem(self.issuer)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


class Ca:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc) - timedelta(hours=1)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now).not_valid_after(now + timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)

    def issue(self, cn: str, *, server: bool = False, names: list[x509.GeneralName] | None = None,
              serial: str | None = None, not_after: datetime | None = None) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc) - timedelta(hours=1)
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if serial:
            attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
        b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(not_after or now + timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(_usage(digital_signature=True), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Leaf(b.sign(self.key, hashes.SHA256()), key, self.cert)


LOOPBACK_NAMES = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]


class TlsPki:
    def __init__(self):
        self.ca = Ca("AS2 test CA")
        self.server = self.ca.issue("as2 server", server=True, names=LOOPBACK_NAMES)
        self.client = self.ca.issue("PI-VUGHT as2 client", serial="PI-VUGHT")
        self.other_host = self.ca.issue("elsewhere", server=True, names=[x509.DNSName("elsewhere.example")])
        self.foreign = Ca("Foreign CA")
        self.foreign_client = self.foreign.issue("intruder client", serial="PI-VUGHT")
        self.foreign_server = self.foreign.issue("intruder server", server=True, names=LOOPBACK_NAMES)

    def write(self, folder: Path) -> dict[str, Path]:
        """PEM files for the command-line tools: ca, client chain/key, server chain/key."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {"ca": self.ca.pem, "client": self.client.chain_pem, "client_key": self.client.key_pem,
                 "server": self.server.chain_pem, "server_key": self.server.key_pem}
        paths = {}
        for name, data in files.items():
            paths[name] = folder / f"{name}.pem"
            paths[name].write_bytes(data)
            paths[name].chmod(0o600)
        return paths

    def settings(self, *, client: Leaf | None = None, **kw) -> As2Settings:
        client = client or self.client
        kw.setdefault("as2_from", "PI-VUGHT")
        kw.setdefault("receipt_to", "as2@pi-vught.example.nl")
        return As2Settings(client_cert_chain_pem=client.chain_pem, client_key_pem=client.key_pem, **kw)

    def partner(self, url: str, *, trust: bytes | None = None, as2_to: str = "PLATFORM") -> As2Partner:
        return As2Partner(url=url, as2_to=as2_to, server_trust_pem=trust if trust is not None else self.ca.pem)


@contextlib.asynccontextmanager
async def running(pki: TlsPki, handler, *, server: Leaf | None = None, client_ca: bytes | None = None, **app_kw):
    """An AS2 server on 127.0.0.1 (free port) in this event loop, stopped on exit."""
    server = server or pki.server
    runner = await serve(make_app(handler, **app_kw), host=HOST, port=0, server_cert_chain_pem=server.chain_pem,
                         server_key_pem=server.key_pem, client_ca_pem=client_ca or pki.ca.pem)
    try:
        yield runner
    finally:
        await runner.close()


#: the headers of a minimal valid AS2 request (for requests written by hand)
AS2_HEADERS = {"AS2-Version": "1.2", "AS2-From": "PI-VUGHT", "AS2-To": "PLATFORM", "Message-ID": "<raw-1@pi-vught>",
               "Content-Type": "application/pkcs7-mime; smime-type=enveloped-data",
               "Disposition-Notification-To": "as2@pi-vught.example.nl",
               "Disposition-Notification-Options": DISPOSITION_OPTIONS}


async def raw_post(url: str, pki: TlsPki, *, headers: dict[str, str], data=b"", method: str = "POST",
                   client: Leaf | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request written by hand (not through As2Client), with a client certificate: (status, headers, body)."""
    client = client or pki.client
    ctx = client_context(server_trust_pem=pki.ca.pem, client_cert_chain_pem=client.chain_pem,
                         client_key_pem=client.key_pem)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.request(method, url, data=data, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()
