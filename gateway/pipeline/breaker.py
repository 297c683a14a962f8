"""The dispatcher's circuit breakers: one per destination (the relay all mail goes through, or one AS2 URL).

A temporary failure of the destination itself (unreachable, connection refused or closed, timed out, the
session deferred: ``Temporary.connection``) opens its breaker, unless another delivery to it got through
after the failing one began (then the destination is evidently up). While open, the dispatcher claims no
message for it but one probe at growing intervals — the retry policy's delays, probe after probe (first
5 min, doubling to 4000 s) — and the others wait in `queued`/`retry_wait` without spending attempts. Any
other outcome of a delivery to it (sent, a refusal, a 451 for one recipient) closes it; the dispatcher then
makes its waiting messages due at once. State is in memory: a restart starts closed. What operators see
of it (status, dashboard, metrics: other processes) the dispatcher writes to the store
(``gateway/store/breakers.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.store.store import Link


@dataclass
class Down:
    """An open breaker."""

    key: str  #: e.g. "email relay 127.0.0.1:25": no personal data
    link: Link  #: (transport, address or None for all its addresses): what the store's claims leave alone
    reason: str  #: the failure that opened it, then the last probe's
    since: datetime
    failures: int  #: the failure that opened it and every failed probe since
    next_probe_at: datetime
    probing: str | None = None  #: the message id of the probe in flight


class Breakers:
    def __init__(self, retry, clock: Callable[[], datetime], rng: random.Random):
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._down: dict[str, Down] = {}
        self._last_ok: dict[str, datetime] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._down

    def down(self) -> list[Down]:
        return list(self._down.values())

    def links(self) -> list[Link]:
        return [d.link for d in self._down.values()]

    def next_probe(self) -> datetime | None:
        due = [d.next_probe_at for d in self._down.values() if d.probing is None]
        return min(due) if due else None

    def probes_due(self) -> list[Down]:
        now = self._clock()
        # a clock set back behind the opening does not postpone the probe by the jump
        return [d for d in self._down.values() if d.probing is None and (d.next_probe_at <= now or now < d.since)]

    def failed(self, key: str, link: Link, reason: str, *, began: datetime, probe: bool) -> Down | None:
        """A delivery that began at ``began`` found the destination down. The breaker when it opened now."""
        now = self._clock()
        down = self._down.get(key)
        if down is not None:
            if probe and down.probing is not None:  # the probe failed: the next one later
                down.failures += 1
                down.reason = reason
                down.probing = None
                down.next_probe_at = now + self._retry.delay(down.failures, self._rng)
            return None
        last_ok = self._last_ok.get(key)
        if last_ok is not None and last_ok >= began:  # another delivery got through meanwhile: not down
            return None
        down = self._down[key] = Down(key, link, reason, now, 1, now + self._retry.delay(1, self._rng))
        return down

    def reached(self, key: str) -> Down | None:
        """A delivery reached the destination (whatever it answered). The breaker when it closed now."""
        self._last_ok[key] = self._clock()
        return self._down.pop(key, None)

    def probe_ended(self, key: str, message_id: str) -> None:
        """The probe ended without an answer about the destination (a stop, a bug): probe again later."""
        down = self._down.get(key)
        if down is not None and down.probing == message_id:
            down.probing = None
            down.next_probe_at = self._clock() + self._retry.delay(down.failures, self._rng)
