"""A recording SMTP peer for the sender tests: aiosmtpd in the test's own event loop, with real TLS.

`Peer` listens on 127.0.0.1 (random port) and writes down every command it receives, as sent
(verb, arguments, connection number, whether TLS was up), and every mail it accepts. Knobs on the
instance decide what it offers (STARTTLS, implicit TLS, DSN, AUTH) and how it answers (a given
reply at STARTTLS, AUTH, MAIL, RCPT, DATA or RSET; closing the connection at DATA; dropping idle
connections).

aiosmtpd knows no DSN: with ``dsn=True`` the peer advertises it and strips the RFC 3461
parameters before aiosmtpd checks them (having recorded them untouched); with ``dsn=False`` the
parameters reach aiosmtpd, which refuses them with 555, like a real server without DSN.

`TlsMaterial` makes a throw-away CA and server certificates with `cryptography` (EC P-256, fast).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
_DSN_MAIL = {"RET", "ENVID"}
_DSN_RCPT = {"NOTIFY", "ORCPT"}


# -- certificates ---------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc) - timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[x509.GeneralName]):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc) - timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(_name("relay")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_pair(folder: Path, stem: str, key, cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsMaterial:
    """A trusted CA with a server certificate for 127.0.0.1 and localhost, a certificate for the
    wrong name from the same CA, and a server certificate from a CA nobody trusts."""

    def __init__(self, folder: Path):
        self.folder = folder
        trusted, stranger = _ca("nazorg test relay CA"), _ca("untrusted CA")
        self.ca_path, _ = _write_pair(folder, "ca", *trusted)
        right = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
        self.server = _write_pair(folder, "server", *_leaf(trusted, right))
        self.wrong_name = _write_pair(folder, "wrong-name", *_leaf(trusted, [x509.DNSName("elsewhere.test")]))
        self.untrusted = _write_pair(folder, "untrusted", *_leaf(stranger, right))

    def client_context(self) -> ssl.SSLContext:
        """What the gateway would configure: verify the chain and the host name against our CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def server_context(self, which: str = "server") -> ssl.SSLContext:
        cert, key = getattr(self, which)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


# -- the peer -------------------------------------------------------------------------------------

@dataclass
class Command:
    connection: int
    verb: str
    arg: str
    tls: bool


@dataclass
class Received:
    connection: int
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


def _strip_params(arg: str, names: set[str]) -> str:
    """`arg` without the ESMTP parameters named in `names` (the path itself is kept)."""
    head, *params = arg.split(" ")
    return " ".join([head] + [p for p in params if p.split("=", 1)[0].upper() not in names])


class _RecordingSMTP(SMTP):
    def __init__(self, peer: Peer, number: int, **kwargs):
        self._peer, self._number = peer, number
        super().__init__(_Handler(peer, number), **kwargs)

    def _record(self, verb: str, arg: str) -> None:
        self._peer.commands.append(Command(self._number, verb, arg, self._peer._tls_up(self)))

    async def smtp_EHLO(self, hostname: str):
        self._record("EHLO", hostname)
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg: str):
        self._record("STARTTLS", arg)
        if self._peer.starttls_reply:
            await self.push(self._peer.starttls_reply)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str):
        self._record("AUTH", arg.split(" ")[0])  # the mechanism only: the rest is a secret
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str):
        self._record("MAIL", arg)
        await super().smtp_MAIL(_strip_params(arg, _DSN_MAIL) if self._peer.dsn else arg)

    async def smtp_RCPT(self, arg: str):
        self._record("RCPT", arg)
        await super().smtp_RCPT(_strip_params(arg, _DSN_RCPT) if self._peer.dsn else arg)

    async def smtp_DATA(self, arg: str):
        self._record("DATA", arg)
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str):
        self._record("RSET", arg)
        if self._peer.rset_reply:
            await self.push(self._peer.rset_reply)
            if self._peer.rset_reply.startswith("421"):
                self.transport.close()
            return
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str):
        self._record("QUIT", arg)
        await super().smtp_QUIT(arg)


class _Handler:
    def __init__(self, peer: Peer, number: int):
        self._peer, self._number = peer, number

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self._peer.auth_offered:
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        if self._peer.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_MAIL(self, server, session, envelope: Envelope, address, mail_options):
        if self._peer.mail_reply:
            return self._peer.mail_reply
        envelope.mail_from, envelope.mail_options = address, mail_options
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope: Envelope, address, rcpt_options):
        reply = self._peer.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope: Envelope):
        if self._peer.close_at_data:
            server.transport.close()
            return "250 never seen"
        if self._peer.data_reply:
            return self._peer.data_reply
        self._peer.received.append(Received(self._number, envelope.mail_from, list(envelope.rcpt_tos),
                                            envelope.original_content))
        return f"250 2.0.0 Ok: queued as Q{len(self._peer.received)}"


@dataclass
class Peer:
    """Start with ``await peer.start()``, stop with ``await peer.stop()``; `port` is set once started."""

    tls: TlsMaterial | None = None
    #: "starttls", "implicit" or "none" (plain SMTP, no STARTTLS offered)
    mode: str = "starttls"
    #: which server certificate: "server", "wrong_name" or "untrusted"
    certificate: str = "server"
    dsn: bool = True
    #: (user, password) accepted by AUTH; None: AUTH refuses everyone
    credentials: tuple[str, str] | None = None
    auth_offered: bool = True
    #: the answer to failed AUTH (None: aiosmtpd's "535 5.7.8 ...")
    auth_reply: str | None = None
    #: the answer to STARTTLS instead of starting TLS
    starttls_reply: str | None = None
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    rset_reply: str | None = None
    close_at_data: bool = False
    commands: list[Command] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self):
        self._server: asyncio.AbstractServer | None = None
        self._protocols: list[_RecordingSMTP] = []

    def verbs(self, *wanted: str) -> list[str]:
        return [c.verb for c in self.commands if not wanted or c.verb in wanted]

    def _tls_up(self, proto: _RecordingSMTP) -> bool:
        return self.mode == "implicit" or proto._tls_protocol is not None

    def _authenticate(self, server, session: Session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self.credentials is not None
              and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials)
        # handled=False: aiosmtpd answers itself, with `auth_reply` or 535
        return AuthResult(success=ok, handled=False, message=None if ok else self.auth_reply)

    def _factory(self) -> _RecordingSMTP:
        self.connections += 1
        server_ctx = self.tls.server_context(self.certificate) if self.tls and self.mode == "starttls" else None
        proto = _RecordingSMTP(self, self.connections, hostname="relay.test", tls_context=server_ctx,
                               authenticator=self._authenticate, auth_require_tls=True,
                               loop=asyncio.get_running_loop())
        self._protocols.append(proto)
        return proto

    async def start(self) -> Peer:
        ssl_ctx = self.tls.server_context(self.certificate) if self.mode == "implicit" else None
        self._server = await asyncio.get_running_loop().create_server(self._factory, HOST, 0, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Close every open connection from the server side, as a relay does after an idle timeout."""
        for proto in self._protocols:
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.close()

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.sleep(0)
