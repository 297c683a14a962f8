"""Sending one sealed message to an AS2 partner (RFC 4130) over HTTPS with mutual TLS.

What goes over the wire (one POST to the partner's URL, redirects never followed)::

    AS2-Version: 1.2
    AS2-From: <our name>                 AS2-To: <partner's name>     (quoted when needed)
    Message-ID: <message id@AS2-From as host>   (derived: the same on every retry and resend)
    Subject: <caller's subject>          Date: <RFC 5322>             MIME-Version: 1.0
    Content-Type: <the sealed entity's Content-Type>
    Content-Transfer-Encoding: base64    (default: seal's base64 body as it is; or binary, see below)
    Content-Disposition: attachment; filename="smime.p7m"
    Disposition-Notification-To: <receipt_to>
    Disposition-Notification-Options: signed-receipt-protocol=optional, pkcs7-signature;
        signed-receipt-micalg=optional, sha-256
    Receipt-Delivery-Option: <async_mdn_url>    (only when asynchronous MDNs are configured)

Body encoding: by default the base64 body ``seal`` wrote is sent unchanged with
``Content-Transfer-Encoding: base64`` (no re-encoding cost; libas2 garbles binary bodies, see the
research notes); ``As2Settings(body_encoding="binary")`` sends the decoded DER with
``Content-Transfer-Encoding: binary`` (25 % smaller). Our server accepts both.

How answers and failures are classified (``.reason`` in operator words, never content):

=====================================  ============================================================
``As2Response`` (the next hop has it)  2xx; ``mdn_entity`` = the synchronous MDN as a MIME entity
                                       (for ``gateway.crypto.receipts.parse_mdn``), or None (async
                                       MDN asked for, or the peer sent none)
``As2Temporary`` (retry later)         5xx, 408, 429; timeouts; connection refused, reset or closed;
                                       a response larger than ``max_response_bytes``
``As2Permanent`` (do not retry)        other 4xx (``remote_reply``: the peer's reason, shortened,
                                       control characters removed); 3xx (the URL must be fixed)
``As2Security`` (never downgrade)      TLS handshake failure, untrusted or expired server certificate,
                                       host name not in it, our client certificate refused
=====================================  ============================================================

A connection that the server closed while idle in the pool is retried once, transparently (same
Message-ID). When a connection breaks before any answer, a fresh TLS handshake without a request
tells a refused client certificate (TLS 1.3 reports it only after the request is on its way, as a
reset; see ``_refused_at_tls``) from a transient failure, such as a TLS front whose service behind
it is down (it accepts our certificate, sends its session tickets, then hangs up). The client keeps one
``aiohttp.ClientSession`` (connections reused); it is safe for concurrent posts. Never logged:
bodies, keys, the receipt address.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

import aiohttp
import structlog
from yarl import URL

from . import headers as h
from .tls import client_context

log = structlog.get_logger(__name__)

USER_AGENT = "nazorg-gateway-as2"


def check_https_url(url: str, what: str = "url") -> URL:
    """`url` as a yarl URL when it is https with a host and no user information, else ValueError."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a URL") from None
    if parsed.scheme != "https":
        raise ValueError(f"{what} must be an https:// URL")
    if not parsed.host or parsed.user is not None or parsed.password is not None:
        raise ValueError(f"{what} must name a host and carry no user information")
    return parsed


@dataclass(frozen=True)
class As2Partner:
    url: str
    as2_to: str
    #: CA certificate(s) the partner's server certificate must chain to (PEM file or bytes); no system trust
    server_trust_pem: Path | bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_https_url(self.url, "the partner URL")
        h.check_name(self.as2_to, "AS2-To")


@dataclass(frozen=True)
class As2Settings:
    as2_from: str
    client_cert_chain_pem: bytes = field(repr=False)
    client_key_pem: bytes = field(repr=False)
    #: Disposition-Notification-To (our e-mail address or URL)
    receipt_to: str = field(repr=False)
    #: when set, MDNs are asked for asynchronously at this URL (Receipt-Delivery-Option)
    async_mdn_url: str | None = None
    timeout: float = 60.0
    max_response_bytes: int = 1 << 20
    body_encoding: Literal["base64", "binary"] = "base64"

    def __post_init__(self) -> None:
        h.check_name(self.as2_from, "AS2-From")
        h.check_text(self.receipt_to, "receipt_to", 250)
        if self.async_mdn_url is not None:
            check_https_url(self.async_mdn_url, "async_mdn_url")
        if self.timeout <= 0 or self.max_response_bytes <= 0:
            raise ValueError("timeout and max_response_bytes must be positive")
        if self.body_encoding not in ("base64", "binary"):
            raise ValueError("body_encoding must be 'base64' or 'binary'")


@dataclass(frozen=True)
class As2Response:
    status: int
    #: the synchronous MDN as a MIME entity (Content-Type line, empty line, body), or None
    mdn_entity: bytes | None = field(repr=False)
    mdn_content_type: str | None
    remote_reason: str | None
    #: the AS2 Message-ID we sent, "<…@…>" (what a receipt's Original-Message-ID names)
    as2_message_id: str = ""


class As2Failure(Exception):
    def __init__(self, reason: str, *, status: int | None = None, remote_reply: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.remote_reply = remote_reply


class As2Temporary(As2Failure):
    """Retry later with the same message id."""


class As2Permanent(As2Failure):
    """The partner refused the message: do not retry."""


class As2Security(As2Failure):
    """TLS or certificate trouble: hold for an operator, never downgrade."""


class _Broken(Exception):
    """The connection broke before an answer: temporary, unless the partner refuses us at TLS."""

    def __init__(self, error: BaseException, reason: str):
        super().__init__(reason)
        self.error = error
        self.reason = reason


def _ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError an aiohttp error was caused by, if any (walks the cause/context chain)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        # aiohttp's ClientConnectorSSLError is itself an ssl.SSLError without OpenSSL's fields (reason, …):
        # the one it wraps comes first
        for attr in ("certificate_error", "os_error"):
            inner = getattr(cur, attr, None)
            if isinstance(inner, ssl.SSLError):
                return inner
        if isinstance(cur, ssl.SSLError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _tls_words(err: ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        why = err.verify_message or "verification failed"
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            return f"TLS: the partner's server certificate does not name the URL's host ({why})"
        return f"TLS: the partner's server certificate is not trusted ({why})"
    reason = getattr(err, "reason", None)
    name = (reason or type(err).__name__).lower()
    if any(word in name for word in ("certificate_required", "bad_certificate", "unknown_ca", "certificate_unknown",
                                     "unsupported_certificate", "certificate_expired", "certificate_revoked",
                                     "access_denied")):
        return f"TLS: the partner refused our client certificate ({reason})"
    return f"TLS handshake failed ({reason or type(err).__name__})"


class As2Client:
    """Posts sealed messages to one partner; reuses its connections. Call ``close()`` when done."""

    def __init__(self, settings: As2Settings, partner: As2Partner):
        self.settings = settings
        self.partner = partner
        self._url = check_https_url(partner.url, "the partner URL")
        self._ssl = client_context(server_trust_pem=partner.server_trust_pem,
                                   client_cert_chain_pem=settings.client_cert_chain_pem,
                                   client_key_pem=settings.client_key_pem)
        self._session: aiohttp.ClientSession | None = None
        self._fixed = {
            "AS2-Version": h.AS2_VERSION,
            "AS2-From": h.quote_name(settings.as2_from),
            "AS2-To": h.quote_name(partner.as2_to),
            "MIME-Version": "1.0",
            "Content-Disposition": 'attachment; filename="smime.p7m"',
            "Disposition-Notification-To": settings.receipt_to,
            "Disposition-Notification-Options": h.DISPOSITION_OPTIONS,
            "User-Agent": USER_AGENT,
        }
        if settings.async_mdn_url:
            self._fixed["Receipt-Delivery-Option"] = settings.async_mdn_url

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                auto_decompress=False, trust_env=False, skip_auto_headers=("Accept-Encoding",))
        return self._session

    def message_id(self, message_id: str) -> str:
        """The AS2 Message-ID header value for `message_id` (the same on every attempt)."""
        return h.as2_message_id(message_id, self.settings.as2_from)

    async def post_entity(self, *, message_id: str, entity: bytes, subject: str) -> As2Response:
        """`post` for a whole sealed MIME entity (``Sealed.entity``)."""
        ctype, body, cte = h.split_sealed(entity)
        return await self.post(message_id=message_id, body=body, content_type=ctype, subject=subject,
                               transfer_encoding=cte)

    async def post(self, *, message_id: str, body: bytes, content_type: str, subject: str,
                   transfer_encoding: str | None = "base64") -> As2Response:
        """POST one sealed body; see the module for the headers and how every outcome is classified.

        `transfer_encoding` says how `body` is encoded now ("base64", as ``split_sealed`` returns seal's
        body, or "binary"/None); it is re-encoded only when the configured body encoding differs."""
        as2_id = self.message_id(message_id)
        h.check_text(subject, "subject")
        h.check_text(content_type, "content type", 998)
        if not body:
            raise ValueError("the body is empty")
        body, cte = self._encoded(body, (transfer_encoding or "binary").lower())
        headers = dict(self._fixed)
        headers.update({"Message-ID": as2_id, "Subject": subject, "Content-Type": content_type,
                        "Content-Transfer-Encoding": cte,
                        "Date": format_datetime(datetime.now(timezone.utc), usegmt=True)})
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                response = await self._exchange(headers, body, as2_id)
                break
            except _Broken as e:
                if attempt == 1 and isinstance(e.error, aiohttp.ServerDisconnectedError):
                    log.info("as2.retry_closed_connection", message_id=message_id, partner=self.partner.as2_to)
                    continue
                refused = await self._refused_at_tls()
                if refused:
                    raise As2Security(refused) from None
                raise As2Temporary(e.reason) from None
        log.info("as2.posted", message_id=message_id, partner=self.partner.as2_to, status=response.status,
                 mdn=response.mdn_entity is not None, ms=round((time.perf_counter() - started) * 1000, 1))
        return response

    def _encoded(self, body: bytes, current: str) -> tuple[bytes, str]:
        want = self.settings.body_encoding
        if current == "base64":
            return (body, "base64") if want == "base64" else (h.strict_base64(body), "binary")
        if current not in ("binary", "8bit", "7bit"):
            raise ValueError("transfer_encoding must be base64 or binary")
        return (h.encode_base64(body), "base64") if want == "base64" else (body, "binary")

    async def _exchange(self, headers: dict[str, str], body: bytes, as2_id: str) -> As2Response:
        try:
            async with self._session_now().post(self._url, data=body, headers=headers,
                                                allow_redirects=False) as resp:
                data = await self._read(resp)
                return self._classify(resp, data, as2_id)
        except As2Failure:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise As2Security(_tls_words(e.certificate_error)) from None
        except asyncio.TimeoutError:
            raise As2Temporary(f"no answer from the partner within {self.settings.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as e:
            tls = _ssl_error_in(e)
            if tls is not None:
                raise As2Security(_tls_words(tls)) from None
            if isinstance(e, aiohttp.ClientConnectorError):
                raise As2Temporary(f"could not connect to the partner ({type(e.os_error).__name__})") from None
            if isinstance(e, aiohttp.ServerDisconnectedError):
                raise _Broken(e, "the partner closed the connection without an answer") from None
            raise _Broken(e, f"connection to the partner failed ({type(e).__name__})") from None

    async def _refused_at_tls(self) -> str | None:
        """Why the partner refuses us at the TLS level, or None when it does not.

        With TLS 1.3 the server checks our certificate after our side of the handshake is done, so a
        refusal reaches the client as a reset or closed connection once the request is on its way (and
        servers built on asyncio send no alert at all). After such a failure a fresh handshake without
        a request tells: a server that accepts us waits for the request; one that refused us sends an
        alert or hangs up at once, before its session tickets. (A server that sends no tickets at all and
        hangs up after the handshake is still taken for a refusal: held, never sent elsewhere.)"""
        host, port = self._url.raw_host, self._url.port or 443
        wait = min(1.0, self.settings.timeout)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self._ssl, server_hostname=host), wait)
        except ssl.SSLError as e:
            return _tls_words(e)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            data = await asyncio.wait_for(reader.read(1), wait)
        except ssl.SSLError as e:
            return _tls_words(e)
        except (OSError, asyncio.TimeoutError):
            return None
        else:
            # A server that checked and accepted our certificate sends its session tickets before anything
            # else (TLS 1.3: only then); one that refused it sends none. So a hang-up after a ticket is a
            # TLS front whose service behind it is down: temporary, not a refusal.
            accepted = data or ((ssl_object := writer.get_extra_info("ssl_object")) is not None
                                and ssl_object.session is not None and ssl_object.session.has_ticket)
        finally:
            writer.close()
        if accepted:
            return None
        return "TLS: the partner refused our client certificate (it hangs up right after the handshake)"

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise As2Temporary(f"the partner's answer is larger than {limit} bytes", status=resp.status)
        chunks, total = [], 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if total > limit:
                raise As2Temporary(f"the partner's answer is larger than {limit} bytes", status=resp.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _classify(self, resp: aiohttp.ClientResponse, data: bytes, as2_id: str) -> As2Response:
        status = resp.status
        if 200 <= status < 300:
            ctype = resp.headers.get("Content-Type")
            if data.strip() and ctype and not self.settings.async_mdn_url:
                return As2Response(status, h.entity_of(ctype, data), ctype, None, as2_id)
            return As2Response(status, None, None, None, as2_id)
        remote = h.shorten(data) or h.shorten(resp.reason)
        if status >= 500 or status in (408, 429):
            raise As2Temporary(f"the partner answered HTTP {status}", status=status, remote_reply=remote)
        if 300 <= status < 400:
            raise As2Permanent(f"the partner redirects (HTTP {status}); the partner URL must be corrected",
                               status=status, remote_reply=remote)
        raise As2Permanent(f"the partner refused the message (HTTP {status})", status=status, remote_reply=remote)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
