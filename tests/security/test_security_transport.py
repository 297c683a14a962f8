"""Transport downgrades (issue 7, item 4): a STARTTLS stripped by a proxy in the middle, and an AS2
server that offers only TLS 1.1 or 1.0.

- SMTP: a small asyncio TCP proxy between the gateway's SMTP sender and the private Postfix removes
  STARTTLS from the EHLO answer (what a hostile network middlebox does). The gateway, running in full,
  must send nothing — no AUTH (the relay password), no MAIL, no DATA — and hold the message with a
  STARTTLS reason. The control runs the same proxy passing STARTTLS through: the message is delivered,
  so the proxy itself is transparent and the hold is the stripping's doing.
- AS2: a TLS server limited to TLS 1.1 (and one to TLS 1.0). OpenSSL 3 refuses TLS < 1.2 at its default
  security level even on the server side, so the server lowers it (@SECLEVEL=0); the control is a
  client that also allows TLS 1.0 at level 0 and does complete the handshake, showing the server really
  speaks the old version. The gateway's `As2Client` must refuse with As2Security, and no HTTP byte may
  reach the server."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))  # as2_helpers (basenames are unique)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # e2e_gateway

from adapters.as2 import As2Client, As2Security  # noqa: E402
from as2_helpers import HOST, TlsPki  # noqa: E402
from dropped import example, with_new_id  # noqa: E402
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states  # noqa: E402
from gateway.store import State  # noqa: E402
from mailservers import MailServers, dev_mail_users, free_port  # noqa: E402

GEMEENTE = "nazorg@gemeente-0599.example.nl"


USERS = dev_mail_users()


@pytest.fixture(scope="module")
def servers():
    with MailServers.temporary(USERS, sorted({a.split("@", 1)[1] for a in USERS})) as s:
        yield s


class StrippingProxy:
    """A TCP proxy to `upstream`; with `strip`, STARTTLS is removed from the EHLO answers. Records the
    client's command lines as long as they are readable (until a STARTTLS passes through)."""

    def __init__(self, upstream: int, *, strip: bool):
        self.upstream, self.strip = upstream, strip
        self.commands: list[str] = []
        self.stripped = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._session, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter):
        u_reader, u_writer = await asyncio.open_connection(HOST, self.upstream)
        state = {"last": "", "tls": False}
        await asyncio.gather(self._from_client(c_reader, u_writer, state),
                             self._from_server(u_reader, c_writer, state), return_exceptions=True)
        for w in (c_writer, u_writer):
            w.close()

    async def _from_client(self, reader, writer, state):
        while True:
            if state["tls"]:  # encrypted from here on: bytes as they are
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                continue
            line = await reader.readline()
            if not line:
                break
            command = line.decode("latin-1").strip()
            self.commands.append(command.split(" ", 1)[0].upper())
            state["last"] = command.split(" ", 1)[0].upper()
            writer.write(line)
            await writer.drain()
        writer.close()

    async def _from_server(self, reader, writer, state):
        answer: list[bytes] = []
        while True:
            if state["tls"]:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                continue
            line = await reader.readline()
            if not line:
                break
            answer.append(line)
            if line[3:4] == b"-":  # more lines of this answer follow
                continue
            if self.strip and state["last"] in ("EHLO", "HELO"):
                kept = [a for a in answer if b"STARTTLS" not in a.upper()]
                self.stripped += len(answer) - len(kept)
                kept = [a[:3] + b"-" + a[4:] for a in kept[:-1]] + [kept[-1][:3] + b" " + kept[-1][4:]]
                answer = kept
            writer.write(b"".join(answer))
            await writer.drain()
            if state["last"] == "STARTTLS" and answer[-1].startswith(b"220"):
                state["tls"] = True
            answer = []
        writer.close()


async def _send_through(tmp_path: Path, servers: MailServers, proxy: StrippingProxy, expect: State):
    cfg = open_config(make_setup(tmp_path / "gw", servers, USERS, smtp_port=proxy.port))
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    before = len(servers.messages(GEMEENTE, folder=None))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [expect], timeout=60)
        record = await gateway.store.get(mid)
    arrived = [m for m in servers.messages(GEMEENTE, folder=None)[before:] if mid.encode() in m]
    return record, arrived


async def test_control_the_proxy_passing_starttls_through_delivers(tmp_path, servers):
    async with StrippingProxy(servers.smtp_port, strip=False) as proxy:
        record, arrived = await _send_through(tmp_path, servers, proxy, State.DELIVERED)
    assert len(arrived) == 1
    assert "STARTTLS" in proxy.commands and proxy.stripped == 0
    # after STARTTLS nothing is readable to the proxy: AUTH, MAIL and DATA went encrypted
    assert not {"AUTH", "MAIL", "RCPT", "DATA"} & set(proxy.commands)


async def test_a_stripped_starttls_sends_nothing_and_holds_the_message(tmp_path, servers):
    async with StrippingProxy(servers.smtp_port, strip=True) as proxy:
        record, arrived = await _send_through(tmp_path, servers, proxy, State.HELD)
    assert proxy.stripped >= 1, "the proxy never saw an EHLO answer to strip"
    assert "STARTTLS" in record.reason, record.reason
    assert arrived == []
    # the session never got past EHLO in the clear: no password, no envelope, no content
    assert set(proxy.commands) <= {"EHLO", "QUIT", "RSET", "NOOP"}, proxy.commands
    assert "EHLO" in proxy.commands


# -- AS2 over TLS below 1.2 -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_pki() -> TlsPki:
    return TlsPki()


def _old_tls_context(tls_pki: TlsPki, purpose: int, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A context limited to `version` (TLS 1.1 or 1.0), at OpenSSL security level 0 (else OpenSSL 3 refuses
    those versions outright). The deprecation warnings of the old versions are the point here."""
    ctx = ssl.SSLContext(purpose)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


class OldTlsServer:
    """`openssl s_server` speaking only one old TLS version (a real TLS stack: it answers a client hello
    it cannot serve with a protocol_version alert), printing what it receives after a handshake."""

    def __init__(self, tls_pki: TlsPki, version: str, folder: Path):
        self.files = tls_pki.write(folder)
        self.flag = {"TLSv1_1": "-tls1_1", "TLSv1": "-tls1"}[version]
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.out = folder / "s_server.out"

    async def __aenter__(self):
        openssl = shutil.which("openssl")
        assert openssl, "openssl is missing (Debian package openssl)"
        self._out = self.out.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            openssl, "s_server", "-accept", f"{HOST}:{self.port}", "-cert", str(self.files["server"]),
            "-key", str(self.files["server_key"]), self.flag, "-cipher", "DEFAULT:@SECLEVEL=0",
            stdin=asyncio.subprocess.PIPE, stdout=self._out, stderr=asyncio.subprocess.STDOUT)
        for _ in range(250):
            if b"ACCEPT" in self.out.read_bytes():
                return self
            await asyncio.sleep(0.02)
        raise AssertionError(f"openssl s_server did not start: {self.out.read_bytes()[-500:]!r}")

    async def __aexit__(self, *exc):
        self.proc.kill()
        await self.proc.wait()
        self._out.close()

    def output(self) -> bytes:
        return self.out.read_bytes()


@pytest.mark.parametrize("version", ["TLSv1_1", "TLSv1"])
async def test_an_as2_server_offering_only_old_tls_is_refused(tls_pki, tmp_path, version):
    v = getattr(ssl.TLSVersion, version)
    async with OldTlsServer(tls_pki, version, tmp_path) as server:
        # control: a client that allows the old version completes the handshake (the server is real)
        ctx = _old_tls_context(tls_pki, ssl.PROTOCOL_TLS_CLIENT, v)
        ctx.load_verify_locations(cadata=tls_pki.ca.pem.decode())
        reader, writer = await asyncio.open_connection(HOST, server.port, ssl=ctx, server_hostname=HOST)
        assert writer.get_extra_info("ssl_object").version() == {"TLSv1_1": "TLSv1.1", "TLSv1": "TLSv1"}[version]
        writer.write(b"control-ping\n")
        await writer.drain()
        for _ in range(250):
            if b"control-ping" in server.output():
                break
            await asyncio.sleep(0.02)
        assert b"control-ping" in server.output()
        writer.close()

        # the gateway's client: refused in the handshake, as a security failure; not a byte of HTTP sent
        client = As2Client(tls_pki.settings(), tls_pki.partner(f"https://{HOST}:{server.port}/as2"))
        try:
            with pytest.raises(As2Security, match="TLS"):
                await client.post(message_id="m-1", body=b"\x30\x03\x02\x01\x00",
                                  content_type="application/pkcs7-mime; smime-type=enveloped-data",
                                  subject="nazorg test", transfer_encoding="binary")
        finally:
            await client.close()
        await asyncio.sleep(0.2)
        assert b"POST" not in server.output() and b"AS2-" not in server.output()
