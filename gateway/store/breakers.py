"""The dispatcher's circuit breakers as the store keeps them, for the processes that only read the store.

The daemon decides in memory (``gateway/pipeline/breaker.py``); ``status``, the dashboard and /metrics
run elsewhere and see only this table. The dispatcher writes a destination's row where it logs the
change: down (``destination-down``), each failed probe, up (``destination-up``), and at its start every
row a previous run left open is closed ("closed at restart"), as the daemon starts with every breaker
closed. Going down, coming back and that reset are also audit rows (action ``destination.down``,
``destination.up``, ``destination.reset``; the destination as object; in the row's transaction): system
events an operator or auditor asks about afterwards ("was the relay down that night?"), which the one
row per destination forgets. A failed probe is not: the probe's own transitions are audited already.

Rows hold the destination key, transport, URL and reasons only: never personal data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, update

from .schema import destination_breakers, messages

__all__ = ["CLOSED_AT_RESTART", "Breaker", "close_left_open", "open_breakers", "open_breakers_tx", "record_closed",
           "record_down"]

#: the closing reason of a row a previous run left open
CLOSED_AT_RESTART = "closed at restart: the daemon starts with every destination up and finds out by delivering"

b = destination_breakers.c
m = messages.c


@dataclass(frozen=True)
class Breaker:
    """One destination's breaker, as last written by the daemon."""

    destination: str  #: e.g. "email relay 127.0.0.1:25"
    transport: str  #: email | platform
    address: str | None  #: the AS2 URL; None: every address of the transport (the relay)
    since: datetime  #: down since
    reason: str  #: the failure that opened it, then the last failed probe's
    failures: int  #: the failure that opened it and every failed probe since
    next_probe_at: datetime | None
    updated_at: datetime
    closed_at: datetime | None  #: None: down
    closed_reason: str | None
    waiting: int = 0  #: messages waiting for it (queued, retry_wait), counted when read; 0 when closed

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [b[f.name] for f in fields(Breaker) if f.name != "waiting"]


async def record_down(store, *, destination: str, transport: str, address: str | None, since: datetime,
                      reason: str, failures: int, next_probe_at: datetime, opened: bool, at: datetime,
                      actor: str) -> None:
    """The destination is down: its breaker ``opened`` ``at`` (with an audit row), or a probe failed, or
    the next probe was put off (nothing waited to probe with). Times are the dispatcher's clock.

    The values are taken when called, so a row written later (the store's writer is first come, first
    served) is still what the breaker said at that moment."""
    values = dict(transport=transport, address=address, since=since, reason=reason, failures=failures,
                  next_probe_at=next_probe_at, updated_at=at, closed_at=None, closed_reason=None)

    def tx(conn: Connection) -> None:
        _upsert(conn, destination, values)
        if opened:
            store.audit_in(conn, "destination.down", destination, reason, actor)

    await store.run_write(tx)


async def record_closed(store, *, destination: str, reason: str, at: datetime, actor: str) -> None:
    """The destination answered ``at``: its breaker closed (with an audit row)."""

    def tx(conn: Connection) -> None:
        conn.execute(update(destination_breakers).where(b.destination == destination)
                     .values(closed_at=at, closed_reason=reason, next_probe_at=None, updated_at=at))
        store.audit_in(conn, "destination.up", destination, reason, actor)

    await store.run_write(tx)


async def close_left_open(store, *, at: datetime, actor: str) -> list[str]:
    """At the daemon's start (``at``): close every row a previous run left open (with an audit row each);
    their keys."""

    def tx(conn: Connection) -> list[str]:
        left = [d for (d,) in conn.execute(select(b.destination).where(b.closed_at.is_(None)).order_by(b.destination))]
        if left:
            conn.execute(update(destination_breakers).where(b.destination.in_(left))
                         .values(closed_at=at, closed_reason=CLOSED_AT_RESTART, next_probe_at=None, updated_at=at))
        for destination in left:
            store.audit_in(conn, "destination.reset", destination, CLOSED_AT_RESTART, actor)
        return left

    return await store.run_write(tx)


async def open_breakers(store) -> list[Breaker]:
    return await store.run_read(open_breakers_tx)


def open_breakers_tx(conn: Connection) -> list[Breaker]:
    """The destinations down, longest down first, each with the messages waiting for it (a read of the
    claim's index: a waiting message has a due time, and ``ix_messages_due`` carries transport and address)."""
    out = []
    for row in conn.execute(select(*_COLUMNS).where(b.closed_at.is_(None)).order_by(b.since, b.destination)):
        on_link = m.transport == row.transport if row.address is None else and_(m.transport == row.transport,
                                                                                 m.address == row.address)
        waiting = conn.execute(select(func.count()).select_from(messages)
                               .where(m.next_attempt_at.is_not(None), on_link)).scalar_one()
        out.append(Breaker(*row, waiting=waiting))
    return out


def _upsert(conn: Connection, destination: str, values: dict[str, Any]) -> None:
    # inside the writer's transaction (SQLite: BEGIN IMMEDIATE), so nobody inserts between the two
    if conn.execute(update(destination_breakers).where(b.destination == destination).values(**values)).rowcount:
        return
    conn.execute(destination_breakers.insert().values(destination=destination, **values))
