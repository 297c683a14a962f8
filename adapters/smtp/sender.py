"""Sending one mail to the relay over SMTP: TLS always, DSNs asked for, every failure classified.

What the relay learns and when:
- TLS first, always. STARTTLS (RFC 3207) is required, never opportunistic: the session is opened
  without aiosmtplib's automatic upgrade (its default sends in plaintext when the server offers no
  STARTTLS), the EHLO answer must list STARTTLS, and the upgrade must leave a TLS transport before
  any AUTH, MAIL or DATA is written; otherwise ``SecurityFailure`` and nothing was sent. With
  ``tls="implicit"`` the socket is TLS from the first byte. The caller's ``ssl.SSLContext`` decides
  trust; a certificate it does not accept ends the session before the first command.
- AUTH only inside TLS, and only when credentials are configured; refused (5xx) or not offered →
  ``SecurityFailure``.
- DSN (RFC 3461) when the relay offers it: ``MAIL FROM:<…> RET=HDRS ENVID=<xtext>`` and
  ``RCPT TO:<…> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;<xtext>``. A relay without DSN gets neither
  parameter (it would refuse them) and ``Accepted.dsn_requested`` is False.

How failures are classified (``.reason`` says it in operator words, never content):

=====================================  =========================================================
``TemporaryFailure`` (retry later)     any 4xx; connection refused, reset or closed; timeouts;
                                       5xx to the greeting or EHLO (the relay's state, not the
                                       message's). ``.connection`` is True when the relay itself
                                       failed (session not opened, closed, timed out, 421), not
                                       this mail (e.g. 451 to RCPT)
``PermanentFailure`` (do not retry)    5xx to MAIL, RCPT or DATA
``SecurityFailure`` (never downgrade)  no STARTTLS offered; STARTTLS or AUTH answered 5xx;
                                       TLS handshake or certificate failure; AUTH not offered
=====================================  =========================================================

One connection serves many sends (RSET before each reuse, at most
``max_messages_per_connection``); sends are serialised by a lock, so one ``SmtpSender`` per
worker. A reused connection that turns out to be dead before the relay accepted MAIL FROM is
reopened once, transparently; after that point a broken connection is a ``TemporaryFailure``
(the message may have to be sent again; the Message-ID stays the same, so the receiver drops
the duplicate).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from typing import Literal, NoReturn

import aiosmtplib
import structlog

from .compose import check_address

log = structlog.get_logger(__name__)

_REPLY_MAX = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_ENVID_MAX = 100  # RFC 3461 4.4: at most 100 characters, xtext-encoded
_HELO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z|\[[0-9A-Fa-f:.]{2,45}\]\Z")


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int
    ssl_context: ssl.SSLContext
    tls: Literal["starttls", "implicit"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    #: the name given in EHLO; None: aiosmtplib's default (the host's FQDN)
    helo: str | None = None
    max_messages_per_connection: int = 100

    def __post_init__(self) -> None:
        if self.tls not in ("starttls", "implicit"):
            raise ValueError("tls must be 'starttls' or 'implicit'")
        if not isinstance(self.ssl_context, ssl.SSLContext):
            raise ValueError("ssl_context must be an ssl.SSLContext")
        if self.ssl_context.verify_mode != ssl.CERT_REQUIRED or not self.ssl_context.check_hostname:
            raise ValueError("ssl_context must verify the relay's certificate and host name")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        if self.max_messages_per_connection < 1 or self.timeout <= 0:
            raise ValueError("max_messages_per_connection and timeout must be positive")
        if self.helo is not None and not _HELO.match(self.helo):
            raise ValueError("helo must be a host name or an address literal")


class SmtpFailure(Exception):
    """A send that did not end in acceptance. `reason` is for the operator and holds no content."""

    def __init__(self, reason: str, *, code: int | None = None, remote_reply: str | None = None,
                 connection: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.remote_reply = remote_reply
        #: the relay itself failed, not this mail: unreachable, refused or deferred the session, closed the
        #: connection, timed out, said 421; every mail would fail the same way now
        self.connection = connection


class TemporaryFailure(SmtpFailure):
    """Try again later: 4xx, timeouts, connections refused, reset or closed."""


class PermanentFailure(SmtpFailure):
    """Do not try again: the relay refused the sender, the recipient or the message with 5xx."""


class SecurityFailure(SmtpFailure):
    """The session could not be secured as configured (TLS, certificate, AUTH); nothing was sent."""


@dataclass(frozen=True)
class Accepted:
    #: the relay's final reply to DATA, e.g. "250 2.0.0 Ok: queued as 4Xyz"
    reply: str
    #: whether the relay took the DSN parameters (it offered DSN)
    dsn_requested: bool


def xtext(value: str) -> str:
    """RFC 3461 4 xtext: '!'..'~' as themselves except '+' and '=', everything else as '+XX'."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in value)


def _shown(reply: str) -> str:
    """A server reply as it may appear in a reason: one line, no control characters, bounded."""
    text = _CONTROL.sub(" ", reply).strip()
    return text if len(text) <= _REPLY_MAX else text[:_REPLY_MAX - 3] + "..."


def _reply(code: int, message: str) -> str:
    return _shown(f"{code} {message}")


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind `exc`, if any (aiosmtplib wraps implicit-TLS handshake errors in
    SMTPConnectError, because ssl.SSLError is an OSError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class _Stale(Exception):
    """A reused connection turned out to be dead before the relay accepted anything."""


class SmtpSender:
    """Sends mails through one relay, reusing one connection (see the module docstring)."""

    def __init__(self, settings: RelaySettings):
        self._settings = settings
        self._lock = asyncio.Lock()
        self._smtp: aiosmtplib.SMTP | None = None
        self._sent_on_connection = 0
        self._dsn = False

    # -- public -------------------------------------------------------------------------------

    async def send(self, *, envelope_from: str, recipient: str, data: bytes, envid: str) -> Accepted:
        """Hand `data` to the relay for `recipient`. Raises a ``SmtpFailure`` subclass otherwise;
        ValueError for arguments that could never be sent."""
        check_address(recipient, "recipient")
        if envelope_from != "":  # the null reverse-path is allowed (RFC 5321 4.5.5)
            check_address(envelope_from, "envelope sender")
        envid_x = xtext(envid) if isinstance(envid, str) else ""
        if not envid or not envid.isascii() or len(envid_x) > _ENVID_MAX:
            raise ValueError(f"envid must be 1-{_ENVID_MAX} ASCII characters after xtext encoding")
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError("data must be non-empty bytes")
        async with self._lock:
            try:
                return await self._send(envelope_from, recipient, bytes(data), envid_x)
            except SmtpFailure as failure:
                log.warning("smtp.failed", host=self._settings.host, envid=envid_x, kind=type(failure).__name__,
                            code=failure.code, reason=failure.reason)
                raise

    async def _send(self, envelope_from: str, recipient: str, data: bytes, envid_x: str) -> Accepted:
        reused = await self._connection()
        try:
            return await self._transaction(envelope_from, recipient, data, envid_x, reused)
        except _Stale:  # only ever raised on a reused connection: one fresh try, classified as usual
            self._drop()
            log.info("smtp.reconnect", host=self._settings.host, envid=envid_x, why="reused connection found closed")
        await self._connection()
        return await self._transaction(envelope_from, recipient, data, envid_x, reused=False)

    async def close(self) -> None:
        """End the session politely (QUIT), or just drop it if the relay is gone."""
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is not None and smtp.is_connected:
                try:
                    await smtp.quit(timeout=min(self._settings.timeout, 5.0))
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    pass
                finally:
                    smtp.close()

    # -- session ------------------------------------------------------------------------------

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None

    async def _connection(self) -> bool:
        """Make sure there is a secured session; True when an existing one is reused."""
        s = self._settings
        if self._smtp is not None:
            if self._smtp.is_connected and self._sent_on_connection < s.max_messages_per_connection:
                return True
            if self._smtp.is_connected:  # used up: leave politely, then open a fresh one
                try:
                    await self._smtp.quit(timeout=min(s.timeout, 5.0))
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    pass
            self._drop()
        try:
            self._smtp = await self._open()
        except BaseException:
            self._drop()
            raise
        self._sent_on_connection = 0
        return False

    async def _open(self) -> aiosmtplib.SMTP:
        s = self._settings
        implicit = s.tls == "implicit"
        # start_tls=False: no opportunistic upgrade; STARTTLS is issued below and required
        smtp = aiosmtplib.SMTP(hostname=s.host, port=s.port, use_tls=implicit, start_tls=False,
                               tls_context=s.ssl_context, timeout=s.timeout, local_hostname=s.helo)
        self._smtp = smtp
        step = "connect"
        try:
            await smtp.connect()
            step = "EHLO"
            await smtp.ehlo()
            if not implicit:
                if not smtp.supports_extension("starttls"):
                    raise SecurityFailure("relay offers no STARTTLS: nothing sent")
                step = "STARTTLS"
                await smtp.starttls()
                step = "EHLO"
                await smtp.ehlo()  # RFC 3207 4.2: forget what was learnt before TLS
            if smtp.get_transport_info("sslcontext") is None:  # belt and braces: never talk in plaintext
                raise SecurityFailure("session with the relay is not encrypted: nothing sent")
            if s.username is not None:
                step = "AUTH"
                if not smtp.supports_extension("auth"):
                    raise SecurityFailure("relay offers no AUTH inside TLS but credentials are configured: "
                                          "nothing sent")
                await smtp.login(s.username, s.password or "")
        except SmtpFailure:
            raise
        except Exception as exc:
            self._raise_setup(exc, step)
        self._dsn = smtp.supports_extension("dsn")
        log.info("smtp.connected", host=s.host, port=s.port, tls=s.tls, dsn=self._dsn,
                 auth=s.username is not None)
        if not self._dsn:
            log.warning("smtp.no_dsn", host=s.host, port=s.port,
                        why="relay does not offer DSN: delivery will not be reported by the mail system")
        return smtp

    def _raise_setup(self, exc: Exception, step: str) -> NoReturn:
        """Classify a failure while opening the session (before any MAIL)."""
        host = self._settings.host
        tls_err = _ssl_cause(exc)
        if tls_err is not None:
            if isinstance(tls_err, ssl.SSLCertVerificationError):
                what = f"relay's TLS certificate not accepted (certificate verify failed: {tls_err.verify_message})"
            else:
                what = f"TLS handshake with the relay failed ({tls_err.reason or type(tls_err).__name__})"
            raise SecurityFailure(f"{_shown(what)}: nothing sent") from exc
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            reply = _reply(exc.code, exc.message)
            temporary = 400 <= exc.code < 500
            if step in ("STARTTLS", "AUTH") and not temporary:
                what = "refused STARTTLS" if step == "STARTTLS" else "refused the credentials"
                raise SecurityFailure(f"relay {what}: {reply}: nothing sent", code=exc.code,
                                      remote_reply=reply) from exc
            what = {"connect": "refused the session", "EHLO": "refused EHLO", "STARTTLS": "deferred STARTTLS",
                    "AUTH": "deferred AUTH"}[step]
            raise TemporaryFailure(f"relay {what}: {reply}", code=exc.code, remote_reply=reply,
                                   connection=True) from exc
        if step == "AUTH" and isinstance(exc, aiosmtplib.SMTPException) \
                and not isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError)):
            raise SecurityFailure(f"relay offers no usable AUTH mechanism: {_shown(str(exc))}: nothing sent") \
                from exc
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            raise TemporaryFailure(f"timed out at {step} with relay {host}:{self._settings.port}",
                                   connection=True) from exc
        if isinstance(exc, (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError)):
            raise TemporaryFailure(f"could not reach relay {host}:{self._settings.port} at {step}: "
                                   f"{_shown(str(exc)) or type(exc).__name__}", connection=True) from exc
        raise exc

    # -- one mail -----------------------------------------------------------------------------

    async def _transaction(self, envelope_from: str, recipient: str, data: bytes, envid_x: str,
                           reused: bool) -> Accepted:
        smtp = self._smtp
        assert smtp is not None
        dsn = self._dsn
        step = "RSET"
        try:
            if reused:
                try:
                    await smtp.rset()
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    raise _Stale() from exc
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code == 421:  # "closing": an idle timeout said out loud
                        raise _Stale() from exc
                    raise
            step = "MAIL"
            mail_options = ["RET=HDRS", f"ENVID={envid_x}"] if dsn else []
            try:
                await smtp.mail(envelope_from, options=mail_options)
            except aiosmtplib.SMTPServerDisconnected as exc:
                if reused:
                    raise _Stale() from exc
                raise
            step = "RCPT"
            rcpt_options = ["NOTIFY=SUCCESS,FAILURE,DELAY", f"ORCPT=rfc822;{xtext(recipient)}"] if dsn else []
            await smtp.rcpt(recipient, options=rcpt_options)
            step = "DATA"
            self._sent_on_connection += 1  # counted from here: the relay may have taken it
            response = await smtp.data(data)
        except _Stale:
            raise
        except asyncio.CancelledError:  # the session's state is unknown: never reuse it
            self._drop()
            raise
        except Exception as exc:
            self._raise_transaction(exc, step)
        reply = _reply(response.code, response.message)
        log.debug("smtp.accepted", host=self._settings.host, envid=envid_x, dsn=dsn, reply=reply)  # the caller logs the state
        return Accepted(reply=reply, dsn_requested=dsn)

    def _raise_transaction(self, exc: Exception, step: str) -> NoReturn:
        smtp = self._smtp
        if smtp is None or not smtp.is_connected:
            self._drop()
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            reply = _reply(exc.code, exc.message)
            what = {"RSET": "refused RSET", "MAIL": "refused the sender", "RCPT": "refused the recipient",
                    "DATA": "refused the message"}[step]
            if 500 <= exc.code < 600 and step != "RSET":
                cls: type[SmtpFailure] = PermanentFailure
            else:
                cls = TemporaryFailure
                if exc.code == 421:
                    self._drop()
            if step == "RSET":
                self._drop()
            raise cls(f"relay {what}: {reply}", code=exc.code, remote_reply=reply,
                      connection=cls is TemporaryFailure and exc.code == 421) from exc
        if _ssl_cause(exc) is not None:
            self._drop()
            raise TemporaryFailure(f"TLS error during {step}: {_shown(str(exc))}") from exc
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            self._drop()
            raise TemporaryFailure(f"timed out waiting for the relay at {step}", connection=True) from exc
        if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, OSError)):
            self._drop()
            raise TemporaryFailure(f"relay closed the connection at {step}", connection=True) from exc
        if isinstance(exc, aiosmtplib.SMTPException):
            self._drop()
            raise TemporaryFailure(f"SMTP error at {step}: {_shown(str(exc))}") from exc
        raise exc
