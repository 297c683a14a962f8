"""pyas2lib 1.4.4 as an AS2 peer over real HTTPS with mutual TLS: the harness around a library that
only builds and parses messages (it has no HTTP of its own).

- `peer_org` / `peer_partner`: pyas2lib's Organization (own keys) and Partner (the other side's
  certificates and settings) from a development PKI folder (``keys/`` of a local set-up).
- `send`: POST a built pyas2lib Message the way django-pyas2 does it (its headers as HTTP headers,
  ``Message.content`` as the body) over an ``ssl`` context of our own making (no adapter code), and
  return the answer as pyas2lib's ``Mdn.parse`` wants it (HTTP headers, an empty line, the body).
- `PeerServer`: an aiohttp endpoint with a plain ``ssl`` server context (client certificate
  required) that hands every request to ``pyas2lib.as2.Message.parse`` and answers its MDN
  synchronously (``Mdn.headers`` as HTTP headers, ``Mdn.content`` as the body), as django-pyas2 does.

Workarounds applied to the peer (see README.md): `oscrypto_hook` before the first pyas2lib import;
a fixed ``domain`` on every Organization (otherwise each Message-ID costs a ``socket.getfqdn()``).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

import oscrypto_hook

oscrypto_hook.install()

from pyas2lib import as2  # noqa: E402  (after the hook: oscrypto cannot read OpenSSL 3.0.1x without it)

HOST = "127.0.0.1"


def _read(keys: Path, code: str, name: str) -> bytes:
    return (keys / "parties" / code / name).read_bytes()


def peer_org(keys: Path, code: str, *, as2_name: str | None = None) -> as2.Organization:
    """pyas2lib's own side: `code`'s S/MIME key signs (messages and MDNs) and decrypts."""
    pair = _read(keys, code, "key.pem") + _read(keys, code, "cert.pem")
    return as2.Organization(as2_name=as2_name or code, sign_key=pair, decrypt_key=pair,
                            domain=f"{code.lower()}.pyas2lib.example")


def peer_partner(keys: Path, code: str, *, as2_name: str | None = None, **settings) -> as2.Partner:
    """pyas2lib's view of the other side `code`: its certificate for verifying and encrypting, the
    development trust bundle as CA; `settings` are pyas2lib Partner options (sign, encrypt, enc_alg …)."""
    cert, trust = _read(keys, code, "cert.pem"), (keys / "trust.pem").read_bytes()
    return as2.Partner(as2_name=as2_name or code, verify_cert=cert, verify_cert_ca=trust, encrypt_cert=cert,
                       encrypt_cert_ca=trust, **settings)


def client_tls(keys: Path, code: str) -> ssl.SSLContext:
    """The peer's TLS client side: `code`'s TLS certificate, the development CAs as the only trust."""
    ctx = ssl.create_default_context(cafile=str(keys / "trust.pem"))
    ctx.load_cert_chain(keys / "parties" / code / "tls-chain.pem", keys / "parties" / code / "tls-key.pem")
    return ctx


def server_tls(keys: Path, code: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(keys / "parties" / code / "tls-chain.pem", keys / "parties" / code / "tls-key.pem")
    ctx.load_verify_locations(keys / "trust.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _raw(headers, body: bytes) -> bytes:
    """HTTP headers and body as one MIME entity: what pyas2lib's parse functions read."""
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()) + b"\r\n" + body


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def raw(self) -> bytes:
        return _raw(self.headers, self.body)


async def send(url: str, message: as2.Message, tls: ssl.SSLContext) -> Answer:
    """POST a built pyas2lib message (headers and body exactly as pyas2lib made them)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        async with session.post(url, data=message.content, headers=message.headers) as resp:
            body = await resp.read()
            headers = {k: v for k, v in resp.headers.items()
                       if k.lower() not in ("content-length", "date", "server", "transfer-encoding")}
            return Answer(resp.status, headers, body)


@dataclass
class Received:
    """What pyas2lib made of one request: (status, exception, payload bytes, MIC it computed)."""

    status: str
    error: BaseException | None
    payload: bytes | None
    mic: str | None
    message_id: str | None
    headers: dict[str, str] = field(repr=False)
    #: the serialNumber in the subject of the TLS client certificate (the party code, in the dev PKI)
    tls_client: str | None = None


class PeerServer:
    """pyas2lib as the receiving AS2 server on loopback (mutual TLS), answering synchronous MDNs."""

    def __init__(self, keys: Path, org: as2.Organization, partners: dict[str, as2.Partner], *, code: str):
        self.keys, self.org, self.partners, self.code = keys, org, partners, code
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self) -> str:
        return f"https://{HOST}:{self.port}/pyas2"

    async def _receive(self, request: web.Request) -> web.Response:
        raw = _raw(request.headers, await request.read())
        peer = request.transport.get_extra_info("ssl_object").getpeercert()
        serial = dict(x[0] for x in peer["subject"]).get("serialNumber")
        msg = as2.Message()
        status, (error, _trace), mdn = await asyncio.to_thread(
            msg.parse, raw, find_org_cb=lambda name: self.org if name == self.org.as2_name else None,
            find_partner_cb=self.partners.get)
        payload = msg.payload.get_payload(decode=True) if error is None and msg.payload is not None else None
        self.received.append(Received(status, error, payload, msg.mic.decode() if msg.mic else None,
                                      msg.message_id, dict(request.headers), serial))
        if mdn is None:
            return web.Response(status=200)
        return web.Response(body=mdn.content, headers=mdn.headers)

    async def __aenter__(self) -> PeerServer:
        app = web.Application()
        app.router.add_post("/pyas2", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0, ssl_context=server_tls(self.keys, self.code))
        await site.start()
        self.port = site.port
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
