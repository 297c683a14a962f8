"""The AS2 endpoint (RFC 4130): HTTPS with mutual TLS, one POST per message, MDNs sync or async.

``make_app(handler)`` is an aiohttp application with one route (``path``, default ``/as2``);
``serve(app, …)`` listens with TLS that requires a client certificate chaining to the client CAs.
What a request must carry, and what a sender gets back when it does not (short reasons, never
content, no personal data; every refusal logged with the reason):

==========================================================  ===========================================
method other than POST                                      405 (Allow: POST)
Content-Length above ``max_body``, or more body bytes       413
Content-Encoding other than identity (no decompression      415
bombs: AS2 compresses inside S/MIME, not in HTTP)
no AS2-From / AS2-To, or one that is not 1-128 printable    400
ASCII characters; AS2-To not among ``own_names`` (if given)
no Content-Type, or an empty body; base64 that is not       400
no body byte for ``body_idle_timeout`` s, or the body not   408 (connection closed)
complete after ``body_total_timeout`` s
the handler raised                                          500 (logged by exception type)
==========================================================  ===========================================

Slow clients: the TLS handshake must finish within ``handshake_timeout`` and the request headers
arrive within ``header_timeout`` of the connection (or of the previous answer on a kept-alive
connection), else the connection is closed (aiohttp's keep-alive timer covers an idle or half-sent
request head).

What peers send, all accepted: base64 bodies (``Content-Transfer-Encoding: base64``, or none but
base64 text) and binary ones; chunked requests; ``application/pkcs7-mime`` or
``application/x-pkcs7-mime``, parameters quoted or not; AS2 names quoted or not. The handler gets
``As2Request.body`` as a binary MIME entity, ``Content-Type: …`` + CRLF CRLF + the decoded body,
which is what ``gateway.crypto.open.open_sealed`` reads; the same bytes whatever the encoding was.

The peer's identity: ``As2Request.peer_certificate`` is the TLS client certificate OpenSSL verified
(CERT_REQUIRED against ``client_ca_pem``), ``peer_chain`` the verified chain up to the anchor. The
handler binds it to the AS2-From partner; this module does not know partners.

Receipts:
- synchronous: the handler's ``As2Reply.mdn_entity`` goes back as the HTTP 200 answer (its
  Content-Type header as the HTTP Content-Type, its body as the HTTP body).
- asynchronous (``Receipt-Delivery-Option: https://…``, with ``async_mdn`` configured): the handler
  runs first (so what was answered 200 has been taken in by the handler), the sender gets an empty
  200 at once, and the MDN is POSTed to the URL afterwards over HTTPS with our client certificate,
  the URL's server certificate checked against ``AsyncMdnSettings.trust_pem`` (so a request cannot
  make us post to an arbitrary server), retried after each of ``retry_delays`` on 5xx, timeouts and
  connection failures. A non-https URL, or no ``async_mdn`` configured: the MDN is answered
  synchronously instead (RFC 4130 §7.3 lets a receiver do that), and logged.
- an MDN POSTed to us (content multipart/report, or multipart/signed around one, and no receipt
  asked for) goes to ``mdn_handler`` with ``As2Request.is_mdn``; 200 when it returns; 415 without one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509

from . import headers as h
from .tls import client_context, server_context

log = structlog.get_logger(__name__)

_ENCODING_DER = 2  # _ssl.ENCODING_DER: the private chain getter returns _ssl.Certificate objects


@dataclass(frozen=True)
class As2Request:
    #: the sender's Message-ID without angle brackets (None when absent or unusable)
    message_id: str | None
    as2_from: str
    as2_to: str
    content_type: str
    #: "Content-Type: …" CRLF CRLF + the decoded (binary) body: what open_sealed / parse_mdn read
    body: bytes = field(repr=False)
    peer_certificate: x509.Certificate = field(repr=False)
    peer_chain: list[x509.Certificate] = field(repr=False)
    #: a receipt was asked for at all (Disposition-Notification-To present)
    wants_mdn: bool
    wants_signed_mdn: bool
    mic_algorithm: str | None
    async_mdn_url: str | None
    headers: Mapping[str, str] = field(repr=False)
    #: this request carries an MDN (an asynchronous receipt for something we sent), not a message
    is_mdn: bool = False


@dataclass(frozen=True)
class As2Reply:
    #: a signed MDN MIME entity (gateway.crypto.receipts.build_mdn(...).entity) for the answer
    mdn_entity: bytes | None = field(default=None, repr=False)
    #: 200 with the MDN (or without, when none was asked for); 4xx/5xx with `text` for protocol errors
    status: int = 200
    #: a short reason for a 4xx/5xx (no personal data)
    text: str | None = None


Handler = Callable[[As2Request], Awaitable[As2Reply]]
MdnHandler = Callable[[As2Request], Awaitable[None]]


@dataclass(frozen=True)
class AsyncMdnSettings:
    """How asynchronous MDNs are delivered: our TLS client identity and whom we trust as receipt servers."""

    client_cert_chain_pem: bytes = field(repr=False)
    client_key_pem: bytes = field(repr=False)
    trust_pem: bytes = field(repr=False)
    retry_delays: tuple[float, ...] = (2.0, 10.0, 60.0)
    timeout: float = 30.0


class _Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


_HANDLER = web.AppKey("as2_handler", object)
_MDN_HANDLER = web.AppKey("as2_mdn_handler", object)
_SETTINGS = web.AppKey("as2_settings", object)
_DELIVERY = web.AppKey("as2_mdn_delivery", object)


@dataclass(frozen=True)
class _Settings:
    max_body: int
    body_idle_timeout: float
    body_total_timeout: float
    own_names: frozenset[str] | None


def make_app(handler: Handler, *, max_body: int = 10 << 20, path: str = "/as2", mdn_handler: MdnHandler | None = None,
             async_mdn: AsyncMdnSettings | None = None, own_names: Collection[str] | None = None,
             body_idle_timeout: float = 30.0, body_total_timeout: float = 300.0) -> web.Application:
    """The AS2 application: POST `path` → `handler` (see the module for everything it checks first)."""
    if max_body <= 0 or body_idle_timeout <= 0 or body_total_timeout <= 0:
        raise ValueError("max_body and the timeouts must be positive")
    app = web.Application(client_max_size=max_body)
    app[_HANDLER] = handler
    app[_MDN_HANDLER] = mdn_handler
    app[_SETTINGS] = _Settings(max_body, body_idle_timeout, body_total_timeout,
                               frozenset(own_names) if own_names is not None else None)
    app[_DELIVERY] = _MdnDelivery(async_mdn) if async_mdn else None
    app.router.add_route("*", path, _endpoint)
    app.on_response_prepare.append(_server_header)
    app.on_cleanup.append(_cleanup)
    return app


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "nazorg-gateway-as2"  # not aiohttp's, which names Python's and its own versions


async def _cleanup(app: web.Application) -> None:
    delivery = app[_DELIVERY]
    if delivery is not None:
        await delivery.close()


# -- the endpoint ---------------------------------------------------------------------------------

def _plain(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")


async def _endpoint(request: web.Request) -> web.StreamResponse:
    settings: _Settings = request.app[_SETTINGS]
    started = time.perf_counter()
    try:
        req = await _as2_request(request, settings)
    except _Refused as e:
        log.info("as2.refused", status=e.status, reason=e.reason,
                 message_id=h.bare_message_id(request.headers.get("Message-ID")),
                 as2_from=h.parse_name(request.headers.get("AS2-From")))
        resp = _plain(e.status, e.reason)
        if e.status == 405:
            resp.headers["Allow"] = "POST"
        if e.status in (408, 413):
            resp.force_close()
        return resp
    if req.is_mdn:
        return await _take_mdn(request, req, started)
    try:
        reply = await request.app[_HANDLER](req)
        return _answer(request, req, reply, started)
    except Exception as e:  # the handler's fault, not the sender's: 500, and the sender retries later
        log.error("as2.handler_failed", message_id=req.message_id, as2_from=req.as2_from, error=type(e).__name__)
        return _plain(500, "internal error")


async def _take_mdn(request: web.Request, req: As2Request, started: float) -> web.StreamResponse:
    mdn_handler = request.app[_MDN_HANDLER]
    if mdn_handler is None:
        log.info("as2.refused", status=415, reason="receipts not accepted here", as2_from=req.as2_from)
        return _plain(415, "receipts are not accepted at this URL")
    try:
        await mdn_handler(req)
    except Exception as e:
        log.error("as2.mdn_handler_failed", message_id=req.message_id, as2_from=req.as2_from, error=type(e).__name__)
        return _plain(500, "internal error")
    log.info("as2.mdn_received", message_id=req.message_id, as2_from=req.as2_from,
             ms=round((time.perf_counter() - started) * 1000, 1))
    return web.Response(status=200)


def _answer(request: web.Request, req: As2Request, reply: As2Reply, started: float) -> web.StreamResponse:
    if not isinstance(reply, As2Reply) or not 200 <= reply.status <= 599:
        log.error("as2.handler_failed", message_id=req.message_id, error="bad reply")
        return _plain(500, "internal error")
    if reply.status >= 300:
        reason = h.shorten(reply.text, 200) or "refused"
        log.info("as2.answered", message_id=req.message_id, as2_from=req.as2_from, status=reply.status, reason=reason)
        return _plain(reply.status, reason)
    mode = "none"
    resp: web.StreamResponse = web.Response(status=reply.status)
    if reply.mdn_entity is not None:
        delivery: _MdnDelivery | None = request.app[_DELIVERY]
        url = req.async_mdn_url
        if url and delivery is not None and url.lower().startswith("https://"):
            delivery.schedule(url, req, reply.mdn_entity)
            mode = "async"
        else:
            if url:
                log.info("as2.async_mdn_answered_sync", message_id=req.message_id,
                         why="not https" if delivery is not None else "async MDNs not configured")
            ctype, body, _ = h.split_sealed(reply.mdn_entity)
            resp = web.Response(status=reply.status, body=body,
                                headers={**_mdn_headers(req), "Content-Type": ctype})
            mode = "sync"
    log.info("as2.answered", message_id=req.message_id, as2_from=req.as2_from, status=reply.status, mdn=mode,
             ms=round((time.perf_counter() - started) * 1000, 1))
    return resp


def _mdn_headers(req: As2Request) -> dict[str, str]:
    """AS2 headers of an MDN from us (the original AS2-To) back to the sender (the original AS2-From)."""
    return {"AS2-Version": h.AS2_VERSION, "AS2-From": h.quote_name(req.as2_to), "AS2-To": h.quote_name(req.as2_from),
            "Message-ID": h.as2_message_id(f"mdn-{uuid.uuid4().hex}", req.as2_to), "MIME-Version": "1.0",
            "Date": format_datetime(datetime.now(timezone.utc), usegmt=True)}


async def _as2_request(request: web.Request, settings: _Settings) -> As2Request:
    """Check a request and read its body (see the module's table for every refusal)."""
    if request.method != "POST":
        raise _Refused(405, "only POST is accepted")
    hdrs = request.headers
    as2_from = h.parse_name(hdrs.get("AS2-From"))
    as2_to = h.parse_name(hdrs.get("AS2-To"))
    if as2_from is None or as2_to is None:
        raise _Refused(400, "AS2-From and AS2-To are required (1-128 printable ASCII characters)")
    if settings.own_names is not None and as2_to not in settings.own_names:
        raise _Refused(400, "AS2-To names no party served here")
    ctype = (hdrs.get("Content-Type") or "").strip()
    if not h.content_type(ctype)[0]:
        raise _Refused(400, "Content-Type is required")
    if (hdrs.get("Content-Encoding") or "identity").strip().lower() != "identity":
        raise _Refused(415, "Content-Encoding is not supported (compress inside S/MIME)")
    if request.content_length is not None and request.content_length > settings.max_body:
        raise _Refused(413, f"the body is larger than {settings.max_body} bytes")
    raw = await _read_body(request, settings)
    if not raw.strip():
        raise _Refused(400, "the body is empty")
    cte = (hdrs.get("Content-Transfer-Encoding") or "").strip().lower() or None
    try:
        body = h.decoded_body(raw, ctype, cte)
    except ValueError:
        raise _Refused(400, "the body is not valid base64") from None
    cert, chain = _peer(request)
    receipt = h.parse_receipt_request(hdrs)
    return As2Request(message_id=h.bare_message_id(hdrs.get("Message-ID")), as2_from=as2_from, as2_to=as2_to,
                      content_type=ctype, body=h.entity_of(ctype, body), peer_certificate=cert, peer_chain=chain,
                      wants_mdn=receipt.wanted, wants_signed_mdn=receipt.signed, mic_algorithm=receipt.mic_algorithm,
                      async_mdn_url=receipt.async_url, headers=hdrs,
                      is_mdn=not receipt.wanted and _looks_like_mdn(ctype, body))


def _looks_like_mdn(ctype: str, body: bytes) -> bool:
    kind, _ = h.content_type(ctype)
    if kind == "multipart/report":
        return True
    return kind == "multipart/signed" and b"disposition-notification" in body[:4096].lower()


async def _read_body(request: web.Request, settings: _Settings) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(settings.body_total_timeout):
            while True:
                async with asyncio.timeout(settings.body_idle_timeout):
                    chunk = await request.content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if total > settings.max_body:
                    raise _Refused(413, f"the body is larger than {settings.max_body} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _Refused(408, "the request body arrived too slowly") from None
    except aiohttp.ClientPayloadError:  # a broken chunked encoding or a body shorter than announced
        raise _Refused(400, "the request body is malformed") from None
    return b"".join(chunks)


def _peer(request: web.Request) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The verified TLS client certificate and chain (leaf first, anchor last)."""
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:  # cannot happen with serve()'s CERT_REQUIRED; an app mounted without TLS lands here
        raise _Refused(403, "a TLS client certificate is required")
    cert = x509.load_der_x509_certificate(der)
    # Python 3.13 has SSLObject.get_verified_chain(); 3.10-3.12 keep it on the private _sslobj
    getter = getattr(sslobj, "get_verified_chain", None) or getattr(getattr(sslobj, "_sslobj", None),
                                                                     "get_verified_chain", None)
    chain = [cert]
    if getter is not None:
        chain = [x509.load_der_x509_certificate(c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER))
                 for c in getter()]
    return cert, chain


# -- asynchronous MDNs ----------------------------------------------------------------------------

class _MdnDelivery:
    """POSTs MDNs to the receipt URLs senders gave, in the background, with retries."""

    def __init__(self, settings: AsyncMdnSettings):
        self.settings = settings
        self._ssl = client_context(server_trust_pem=settings.trust_pem,
                                   client_cert_chain_pem=settings.client_cert_chain_pem,
                                   client_key_pem=settings.client_key_pem)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, url: str, req: As2Request, mdn_entity: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(url, req, mdn_entity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, req: As2Request, mdn_entity: bytes) -> None:
        ctype, body, _ = h.split_sealed(mdn_entity)
        headers = {**_mdn_headers(req), "Content-Type": ctype, "Subject": "AS2 MDN"}
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl),
                                                  timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                                                  auto_decompress=False, trust_env=False)
        delays = (0.0, *self.settings.retry_delays)
        for attempt, delay in enumerate(delays, 1):
            await asyncio.sleep(delay)
            try:
                async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    await resp.content.read(4096)
                    status = resp.status
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                outcome, status = type(e).__name__, None
            else:
                if 200 <= status < 300:
                    log.info("as2.async_mdn_delivered", message_id=req.message_id, to=req.as2_from, attempt=attempt)
                    return
                outcome = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    break
            log.warning("as2.async_mdn_attempt_failed", message_id=req.message_id, to=req.as2_from,
                        attempt=attempt, outcome=outcome)
        log.error("as2.async_mdn_undelivered", message_id=req.message_id, to=req.as2_from)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


# -- listening ------------------------------------------------------------------------------------

class _TlsSite(web.BaseSite):
    """A TCP site whose TLS handshake has its own time limit (aiohttp's TCPSite leaves asyncio's 60 s)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, ssl_context, handshake_timeout: float):
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._handshake_timeout = host, port, handshake_timeout
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout, reuse_address=True)
        self.bound_port = self._server.sockets[0].getsockname()[1]


class Runner:
    """A listening AS2 server; ``await close()`` (or ``async with``) stops it."""

    def __init__(self, app_runner: web.AppRunner, site: _TlsSite, host: str):
        self.app_runner = app_runner
        self.host = host
        self.port = site.bound_port

    def url(self, path: str = "/as2") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{path}"

    async def close(self) -> None:
        await self.app_runner.cleanup()

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def serve(app: web.Application, *, host: str, port: int, server_cert_chain_pem: bytes, server_key_pem: bytes,
                client_ca_pem: bytes, header_timeout: float = 30.0, handshake_timeout: float = 30.0) -> Runner:
    """Listen on host:port with mutual TLS (see the module); port 0 picks a free port (``Runner.port``)."""
    ctx = server_context(server_cert_chain_pem=server_cert_chain_pem, server_key_pem=server_key_pem,
                         client_ca_pem=client_ca_pem)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout, auto_decompress=False,
                           handle_signals=False)
    await runner.setup()
    site = _TlsSite(runner, host, port, ctx, handshake_timeout)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("as2.listening", host=host, port=site.bound_port)
    return Runner(runner, site, host)
