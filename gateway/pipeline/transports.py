"""The transports the dispatcher hands sealed messages to, and how their failures are classified.

Each transport turns the adapter's own errors into one of three kinds, so the
dispatcher decides the same way for every route: temporary (retry with the
same message id), permanent (failed, operator alerted), security (held: never
downgraded, never sent in plaintext).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from adapters.as2 import As2Client, As2Partner, As2Permanent, As2Security, As2Settings, As2Temporary
from adapters.smtp import (Accepted, PermanentFailure, RelaySettings, SecurityFailure, SmtpSender,
                           TemporaryFailure, compose_mail)
from gateway.crypto.errors import CryptoError
from gateway.crypto.receipts import ReceiptCheck, ReceiptVerdict, check_receipt, parse_mdn
from gateway.crypto.trust import PartyBinding, TrustStore


class DeliveryFailure(Exception):
    def __init__(self, reason: str, remote_reply: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.remote_reply = remote_reply


class Temporary(DeliveryFailure):
    def __init__(self, reason: str, remote_reply: str | None = None, *, connection: bool = False):
        super().__init__(reason, remote_reply)
        #: the destination itself failed (unreachable, refused the connection or session, timed out):
        #: every message to it would fail the same way now, so the dispatcher's breaker opens
        self.connection = connection


class Permanent(DeliveryFailure):
    pass


class Security(DeliveryFailure):
    pass


@dataclass(frozen=True)
class Handed:
    """The next hop took the message."""

    remote_reply: str
    transport_id: str | None  #: e.g. the mail's Message-ID, for matching receipts
    #: a receipt that came with the answer (AS2's synchronous MDN), already verified and compared
    receipt: ReceiptCheck | None = None


@dataclass(frozen=True)
class Destination:
    """What a delivery to an address connects to: what the dispatcher's breaker opens and closes."""

    key: str  #: for operators and logs, e.g. "email relay 127.0.0.1:25" (no personal data)
    #: the route address it covers; None: every address of its transport (all mail goes through one relay)
    address: str | None


def relay_destination(host: str, port: int) -> Destination:
    return Destination(f"email relay {host}:{port}", None)


def platform_destination(url: str) -> Destination:
    return Destination(f"platform {url}", url)


def configured_destinations(config) -> list[str]:
    """The keys of the destinations a daemon with this configuration delivers to: the relay (with [smtp])
    and each platform route's URL (with [as2]). Bounded by the configuration: fit for metric labels."""
    keys = []
    if config.smtp is not None:
        keys.append(relay_destination(config.smtp.host, config.smtp.port).key)
    if config.as2 is not None:
        keys += sorted({platform_destination(r.address).key for r in config.routes.values()
                        if r.transport == "platform"})
    return keys


class Transport(Protocol):
    async def send(self, *, message_id: str, message_type: str, address: str, entity: bytes, mic: str) -> Handed: ...

    async def close(self) -> None: ...

    def destination(self, address: str) -> Destination: ...


class EmailTransport:
    """S/MIME e-mail through the configured relay; one SMTP connection per concurrent sender, reused."""

    def __init__(self, settings: RelaySettings, *, from_address: str, receipt_to: str, id_domain: str,
                 connections: int):
        self._from = from_address
        self._receipt_to = receipt_to
        self._id_domain = id_domain
        self._senders: asyncio.Queue[SmtpSender] = asyncio.Queue()
        self._all = [SmtpSender(settings) for _ in range(max(1, connections))]
        for s in self._all:
            self._senders.put_nowait(s)
        self._destination = relay_destination(settings.host, settings.port)

    def destination(self, address: str) -> Destination:
        return self._destination  # one relay for every address

    async def send(self, *, message_id: str, message_type: str, address: str, entity: bytes, mic: str) -> Handed:
        mail = compose_mail(sealed_entity=entity, message_id=message_id, label=message_type,
                            from_address=self._from, to_address=address, receipt_to=self._receipt_to,
                            date=datetime.now(timezone.utc), id_domain=self._id_domain)
        sender = await self._senders.get()
        try:
            accepted: Accepted = await sender.send(envelope_from=self._from, recipient=address, data=mail.data,
                                                   envid=message_id)
        except SecurityFailure as e:
            raise Security(e.reason, e.remote_reply) from None
        except PermanentFailure as e:
            raise Permanent(e.reason, e.remote_reply) from None
        except TemporaryFailure as e:
            raise Temporary(e.reason, e.remote_reply, connection=e.connection) from None
        finally:
            self._senders.put_nowait(sender)
        return Handed(accepted.reply, mail.mail_message_id)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._all), return_exceptions=True)


class PlatformTransport:
    """AS2 over HTTPS with mutual TLS, one client (connection pool) per partner URL.

    A 2xx with a synchronous MDN is verified here (signature, chain, signer = the partner's certificate
    binding) and its MIC compared with what was sealed; the verdict travels back in `Handed.receipt`.
    A receipt that cannot be verified is an integrity failure, never a success."""

    def __init__(self, settings: As2Settings, *, partners: dict[str, tuple[str, PartyBinding]], trust: TrustStore,
                 trust_pem: bytes):
        """`partners`: route address (URL) -> (the partner's AS2 name, the binding its receipts' signer must match)."""
        self._settings = settings
        self._partners = partners
        self._trust = trust
        self._trust_pem = trust_pem
        self._clients: dict[str, As2Client] = {}

    def destination(self, address: str) -> Destination:
        return platform_destination(address)

    def _client(self, url: str) -> As2Client:
        client = self._clients.get(url)
        if client is None:
            as2_to, _ = self._partners[url]
            client = self._clients[url] = As2Client(self._settings, As2Partner(url, as2_to, self._trust_pem))
        return client

    async def send(self, *, message_id: str, message_type: str, address: str, entity: bytes, mic: str) -> Handed:
        if address not in self._partners:
            raise Permanent(f"no platform partner is configured for {address}")
        client = self._client(address)
        try:
            response = await client.post_entity(message_id=message_id, entity=entity,
                                                subject=f"nazorg {message_type} {message_id}")
        except As2Security as e:
            raise Security(e.reason, e.remote_reply) from None
        except As2Permanent as e:
            raise Permanent(e.reason, e.remote_reply) from None
        except As2Temporary as e:  # no HTTP answer, or a gateway in front of the partner without one
            raise Temporary(e.reason, e.remote_reply, connection=e.status in (None, 502, 503, 504)) from None
        reply = f"HTTP {response.status}"
        if response.mdn_entity is None:  # an asynchronous receipt will follow (or none was given)
            return Handed(reply + ", no synchronous receipt", response.as2_message_id)
        _, binding = self._partners[address]
        try:
            receipt = parse_mdn(response.mdn_entity, self._trust, expected_signer=binding)
            check = check_receipt(receipt, message_id=response.as2_message_id, sealed_mic=mic)
        except CryptoError as e:
            check = ReceiptCheck(ReceiptVerdict.MISMATCH, f"the receipt could not be verified: {e}")
        return Handed(f"{reply}, receipt {check.verdict.value}", response.as2_message_id, check)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
