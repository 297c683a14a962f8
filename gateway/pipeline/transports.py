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

from adapters.smtp import (Accepted, PermanentFailure, RelaySettings, SecurityFailure, SmtpSender,
                           TemporaryFailure, compose_mail)


class DeliveryFailure(Exception):
    def __init__(self, reason: str, remote_reply: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.remote_reply = remote_reply


class Temporary(DeliveryFailure):
    pass


class Permanent(DeliveryFailure):
    pass


class Security(DeliveryFailure):
    pass


@dataclass(frozen=True)
class Handed:
    """The next hop took the message."""

    remote_reply: str
    transport_id: str | None  #: e.g. the mail's Message-ID, for matching receipts


class Transport(Protocol):
    async def send(self, *, message_id: str, message_type: str, address: str, entity: bytes) -> Handed: ...

    async def close(self) -> None: ...


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

    async def send(self, *, message_id: str, message_type: str, address: str, entity: bytes) -> Handed:
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
            raise Temporary(e.reason, e.remote_reply) from None
        finally:
            self._senders.put_nowait(sender)
        return Handed(accepted.reply, mail.mail_message_id)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._all), return_exceptions=True)
