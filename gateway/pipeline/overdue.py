"""The overdue-receipt watch: a message `sent` too long without any receipt raises an alert, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import structlog

from gateway.store import Store

log = structlog.get_logger(__name__)


class OverdueWatch:
    def __init__(self, store: Store, overdue_after: timedelta, *, every: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.store = store
        self.overdue_after = overdue_after
        self.every = every
        self._clock = clock
        self._alerted: set[str] = set()

    async def check(self) -> list[str]:
        """Alert for every message newly overdue; return their ids."""
        new = []
        overdue = await self.store.sent_without_receipt(self._clock() - self.overdue_after)
        # remember only what is overdue now: one that got its receipt (or left `sent`) is forgotten
        self._alerted &= {record.message_id for record in overdue}
        for record in overdue:
            if record.message_id in self._alerted:
                continue
            self._alerted.add(record.message_id)
            new.append(record.message_id)
            log.error("receipt-overdue", message_id=record.message_id, type=record.type, recipient=record.recipient,
                      sent_at=record.sent_at.isoformat(), alert=True)
            await self.store.audit(action="receipt-overdue", object=record.message_id, result="alert",
                                   origin="gateway", actor="overdue-watch")
        return new

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.every)
            except asyncio.TimeoutError:
                pass
