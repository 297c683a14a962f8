"""The durable queue and message log: every state change is committed before anyone acts on it.

One ``Store`` per process, shared by its asyncio tasks. Every write is one short
transaction that changes the message row, appends its ``transitions`` row and its
``audit`` row together, or nothing at all.

SQLite (the embedded default): WAL, ``synchronous=FULL`` (a commit survives a
power cut), foreign keys on, and every write transaction starts with
``BEGIN IMMEDIATE``, so it takes the single writer lock before it reads what it
is about to change: two processes can never both claim one message, and a busy
writer makes the other wait (``busy_timeout``) instead of failing halfway.
Inside one process writers queue on an asyncio lock rather than on SQLite's
sleeping busy handler. Reads take no transaction on SQLite (each SELECT sees
its own committed snapshot, and never waits for a writer: WAL); this saves a
driver round trip per read, which is most of a read's cost with aiosqlite.

PostgreSQL (later, by URL): the same statements; the reads that precede a change
carry ``FOR UPDATE`` (``SKIP LOCKED`` when claiming), which SQLite ignores, and
every update repeats the expected state in its WHERE clause (compare-and-set).

Failures: a refused request raises a ``StoreError`` subclass (``states.py``);
database failures propagate as SQLAlchemy errors after the transaction is
rolled back. Nothing here logs or raises message content: only ids, party codes,
states and reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from sqlalchemy import Row, Select, and_, delete, event, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .migrations import MIGRATIONS, Migration, apply_migrations
from .schema import audit, messages, pickups, receipts, sealed, transitions
from .states import (WAITING, DuplicateMessage, MessageRecord, NewMessage, NewReceipt, Pickup, Receipt, StaleState,
                     State, StoreError, Transition, UnknownMessage, check_edge)

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 15_000  #: how long a writer waits for another process's write before failing
LEASE_EXPIRED = "lease expired: the daemon stopped or crashed while sending"
RECEIPT_KINDS = frozenset({"dsn", "mdn", "unsigned-mdn"})
_BEGIN = "nazorg_sqlite_begin"  # execution option read by the SQLite begin hook


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_RECORD_COLS = [messages.c[f.name] for f in fields(MessageRecord)]
_STATE_AT = [f.name for f in fields(MessageRecord)].index("state")
_PICKUP_COLS = [pickups.c[f.name] for f in fields(Pickup)]
_TRANSITION_COLS = [transitions.c[f.name] for f in fields(Transition)]
_RECEIPT_COLS = [receipts.c[f.name] for f in fields(Receipt)]
#: columns ``transition(**fields)`` may set besides state and reason
SETTABLE = frozenset({"successor", "transport", "address", "next_attempt_at", "mic", "mail_message_id", "spool_path",
                      "lease_owner", "lease_until", "sent_at", "delivered_at", "acknowledged_at", "attempts"})
_WAITING = sorted(s.value for s in WAITING)
_STAMPS = {State.SENT: "sent_at", State.DELIVERED: "delivered_at", State.ACKNOWLEDGED: "acknowledged_at"}


def _record(row: Row[Any] | Sequence[Any]) -> MessageRecord:
    values = list(row)
    values[_STATE_AT] = State(values[_STATE_AT])
    return MessageRecord(*values)


def _transition(row: Row[Any]) -> Transition:
    m, at, frm, to, *rest = row
    return Transition(m, at, None if frm is None else State(frm), State(to), *rest)


def make_engine(url: str) -> AsyncEngine:
    """An engine with the store's connection settings (SQLite: pragmas and explicit BEGIN)."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # sqlite3's legacy mode would BEGIN only before DML (not before our SELECTs): we begin ourselves
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        mode = cur.fetchone()[0]
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()
        if mode != "wal":  # an in-memory database; a file always takes WAL
            log.warning("store.no_wal", journal_mode=mode)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # writers: BEGIN IMMEDIATE; readers: none, each SELECT is its own snapshot (saves a driver round trip)
        if begin := conn.get_execution_options().get(_BEGIN):
            conn.exec_driver_sql(begin)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the store takes timezone-aware datetimes only (clock and message header)")
    return value.astimezone(timezone.utc)


def claim_query(now: datetime, limit: int, exclude_destinations: Collection[str] = ()) -> Select[Any]:
    """Due work in dispatch order; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, nothing on SQLite.

    No condition on ``state``: a due time means waiting (a CHECK constraint), and leaving the
    state out lets the planner walk the partial index ``ix_messages_due`` in order instead of
    sorting every due row (SQLite, without statistics, would otherwise pick the state index).
    """
    m = messages.c
    q = select(m.message_id, m.state).where(m.next_attempt_at <= now)
    if exclude_destinations:
        q = q.where(m.recipient.not_in(list(exclude_destinations)))
    return (q.order_by(m.priority.desc(), m.next_attempt_at, m.received_at, m.message_id)
            .limit(limit).with_for_update(skip_locked=True))


class Store:
    """The gateway's durable state (see the module docstring). Open with ``await Store.open(url)``."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime], origin: str):
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
        self._clock = clock
        self.origin = origin  #: the audit trail's "origin" of rows written here (host or instance name)
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = utcnow, origin: str = "gateway",
                   migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        """Connect and migrate; refuses a database whose schema is newer than ``migrations`` (``SchemaError``)."""
        engine = make_engine(url)
        store = cls(engine, clock, origin)
        try:
            async with store._write() as conn:
                applied = await conn.run_sync(apply_migrations, migrations, store._now())
        except BaseException:
            await engine.dispose()
            raise
        log.info("store.opened", dialect=engine.dialect.name, database=engine.url.database,
                 schema_version=len(migrations), migrated=applied)
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Store {self._engine.dialect.name}:{self._engine.url.database}>"

    # -- plumbing

    def _now(self) -> datetime:
        return _aware_utc(self._clock())

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._lock or nullcontext():
            async with self._writer.connect() as conn, conn.begin():
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    async def _audit(self, conn: AsyncConnection, at: datetime, action: str, obj: str, result: str, actor: str,
                     origin: str | None = None) -> None:
        await self._audit_rows(conn, [dict(at=at, action=action, object=obj, result=result,
                                           origin=origin or self.origin, actor=actor)])

    async def _audit_rows(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """The single place audit rows are written (a hash chain, when added, goes here)."""
        await conn.execute(insert(audit), rows)

    # -- pick-up

    async def find_pickup(self, sha256: str) -> Pickup | None:
        """The accepted pickup of this file if there is one, else its most recent pickup of any outcome."""
        async with self._read() as conn:
            row = (await conn.execute(
                select(*_PICKUP_COLS).where(pickups.c.sha256 == sha256)
                .order_by((pickups.c.outcome == "accepted").desc(), pickups.c.id.desc()).limit(1))).first()
        return None if row is None else Pickup(*row)

    async def _accepted_pickup(self, conn: AsyncConnection, **where: str) -> Pickup | None:
        q = select(*_PICKUP_COLS).where(pickups.c.outcome == "accepted",
                                        *(pickups.c[k] == v for k, v in where.items()))
        row = (await conn.execute(q)).first()
        return None if row is None else Pickup(*row)

    async def _refuse_duplicate(self, conn: AsyncConnection, msg: NewMessage) -> None:
        if (p := await self._accepted_pickup(conn, sha256=msg.sha256)) is not None:
            raise DuplicateMessage("same-file", p.message_id, p)
        known = (await conn.execute(select(messages.c.message_id)
                                    .where(messages.c.message_id == msg.message_id))).first()
        if known is not None:
            raise DuplicateMessage("same-id", msg.message_id,
                                   await self._accepted_pickup(conn, message_id=msg.message_id))

    async def accept(self, msg: NewMessage, *, actor: str = "pickup") -> MessageRecord:
        """Make a message of a picked-up file (state ``received``), or raise ``DuplicateMessage``.

        One transaction: the pickup row (``accepted``, unconfirmed until ``confirm_pickup``),
        the message, its first transition and the audit row.
        """
        now = self._now()
        row = {f.name: getattr(msg, f.name) for f in fields(NewMessage)}
        row.update(created_at=_aware_utc(msg.created_at), state=State.RECEIVED.value, reason=None, successor=None,
                   transport=None, address=None, attempts=0, next_attempt_at=None, lease_owner=None,
                   lease_until=None, mic=None, mail_message_id=None,
                   received_at=now, updated_at=now, sent_at=None, delivered_at=None, acknowledged_at=None)
        try:  # the primary key and the unique index are the duplicate checks; a failure says which below
            async with self._write() as conn:
                await conn.execute(insert(messages).values(row))
                await conn.execute(insert(pickups).values(
                    at=now, file_name=msg.file_name, size=msg.size, sha256=msg.sha256, outcome="accepted",
                    message_id=msg.message_id, spool_path=msg.spool_path))
                await conn.execute(insert(transitions).values(
                    message_id=msg.message_id, at=now, from_state=None, to_state=State.RECEIVED.value, attempt=0,
                    actor=actor))
                await self._audit(conn, now, "message.accept", msg.message_id, "received", actor)
        except IntegrityError:
            async with self._read() as conn:
                await self._refuse_duplicate(conn, msg)
            raise
        return _record([row[f.name] for f in fields(MessageRecord)])

    async def record_rejection(self, *, file_name: str, size: int, sha256: str, declared_id: str | None,
                               declared_type: str | None, reason: str, rejected_path: str,
                               actor: str = "pickup") -> Pickup:
        """An invalid file (with its audit row). ``reason`` must name the rule, never quote content."""
        return await self._record_pickup(
            dict(file_name=file_name, size=size, sha256=sha256, outcome="rejected", declared_id=declared_id,
                 declared_type=declared_type, reason=reason, spool_path=rejected_path),
            "pickup.reject", declared_id or f"sha256:{sha256}", "rejected", actor)

    async def record_duplicate(self, *, file_name: str, size: int, sha256: str, kind: str, message_id: str,
                               reason: str, actor: str = "pickup") -> Pickup:
        """The report of a second drop of a known file or id (with its audit row: do not also call ``audit``)."""
        if kind not in ("same-file", "same-id"):
            raise ValueError(f"duplicate kind must be same-file or same-id, not {kind!r}")
        return await self._record_pickup(
            dict(file_name=file_name, size=size, sha256=sha256, outcome="duplicate", kind=kind,
                 message_id=message_id, reason=reason),
            "pickup.duplicate", message_id, f"duplicate ({kind})", actor)

    async def _record_pickup(self, values: dict[str, Any], action: str, obj: str, result: str, actor: str) -> Pickup:
        now = self._now()
        async with self._write() as conn:
            row = (await conn.execute(insert(pickups).values(at=now, **values).returning(*_PICKUP_COLS))).one()
            await self._audit(conn, now, action, obj, result, actor)
        return Pickup(*row)

    async def pending_pickups(self) -> list[Pickup]:
        """Accepted pickups whose file move was never confirmed: start-up reconciliation finishes them."""
        async with self._read() as conn:
            rows = await conn.execute(select(*_PICKUP_COLS).where(
                pickups.c.outcome == "accepted", pickups.c.confirmed_at.is_(None)).order_by(pickups.c.id))
            return [Pickup(*r) for r in rows]

    async def confirm_pickup(self, pickup_id: int) -> None:
        """The spool copy is durable and the outbox file is gone."""
        now = self._now()
        async with self._write() as conn:
            res = await conn.execute(update(pickups).where(pickups.c.id == pickup_id).values(confirmed_at=now))
            if res.rowcount != 1:
                raise StoreError(f"no pickup {pickup_id}")

    # -- state

    async def transition(self, message_id: str, to: State, *, reason: str | None = None, actor: str,
                         expect: Iterable[State] | State | None = None, owner: str | None = None,
                         attempt: int | None = None, remote_reply: str | None = None, origin: str | None = None,
                         receipt: NewReceipt | None = None, **fields: Any) -> MessageRecord:
        """Move a message along an edge of ``TRANSITIONS`` (else ``IllegalTransition``).

        Compare-and-set: with ``expect`` the current state must be one of them, with ``owner``
        the message must be ``sending`` under that owner's lease (else ``StaleState``).
        ``fields`` sets columns (``SETTABLE``). Leaving ``sending`` clears the lease; entering
        ``sent``/``delivered``/``acknowledged`` stamps its time; entering ``queued`` makes it due
        now unless ``next_attempt_at`` is given; ``retry_wait`` needs ``next_attempt_at``;
        ``sending`` needs ``lease_owner`` and ``lease_until`` and counts an attempt.
        ``receipt``, when given, is stored in the same transaction. ``attempt`` (default: the
        row's count) and ``remote_reply`` go to the transition row; ``origin`` to the audit row.
        """
        to = State(to)
        _check_fields(to, fields)
        if receipt is not None:
            _check_receipt_kind(receipt.kind)
        now = self._now()
        async with self._write() as conn:
            record = await self._move(conn, message_id, to, now=now, reason=reason, actor=actor, expect=expect,
                                      owner=owner, attempt=attempt, remote_reply=remote_reply, origin=origin,
                                      fields=fields)
            if receipt is not None:
                await self._add_receipt(conn, now, message_id, receipt, actor)
        return record

    async def _move(self, conn: AsyncConnection, message_id: str, to: State, *, now: datetime, reason: str | None,
                    actor: str, expect: Iterable[State] | State | None, owner: str | None = None,
                    attempt: int | None = None, remote_reply: str | None = None, origin: str | None = None,
                    fields: dict[str, Any]) -> MessageRecord:
        m = messages.c
        cur = (await conn.execute(select(m.state, m.lease_owner).where(m.message_id == message_id)
                                  .with_for_update())).first()
        if cur is None:
            raise UnknownMessage(message_id)
        frm = State(cur.state)
        if expect is not None:
            expected = {State(expect)} if isinstance(expect, str) else {State(s) for s in expect}
            if frm not in expected:
                raise StaleState(message_id, frm, expected)
        if owner is not None and (frm is not State.SENDING or cur.lease_owner != owner):
            raise StaleState(message_id, frm, {State.SENDING}, f" under a lease of {owner}")
        check_edge(message_id, frm, to)
        values: dict[str, Any] = {"state": to.value, "reason": reason, "updated_at": now, **fields}
        if frm is State.SENDING and to is not State.SENDING:
            values.update(lease_owner=None, lease_until=None)
        if to is State.SENDING:
            values.setdefault("attempts", m.attempts + 1)
        if to is State.QUEUED:
            values.setdefault("next_attempt_at", now)
        elif to is not State.RETRY_WAIT:
            values["next_attempt_at"] = None
        if (stamp := _STAMPS.get(to)) and frm is not to:
            values.setdefault(stamp, now)
        row = (await conn.execute(update(messages).where(m.message_id == message_id, m.state == frm.value)
                                  .values(values).returning(*_RECORD_COLS))).first()
        if row is None:  # only possible without the row lock (never on SQLite under BEGIN IMMEDIATE)
            raise StaleState(message_id, None, {frm})
        record = _record(row)
        await conn.execute(insert(transitions).values(
            message_id=message_id, at=now, from_state=frm.value, to_state=to.value, reason=reason,
            attempt=record.attempts if attempt is None else attempt, remote_reply=remote_reply, actor=actor))
        await self._audit(conn, now, "message.transition", message_id,
                          f"{frm} -> {to}" + (f": {reason}" if reason else ""), actor, origin)
        return record

    async def save_sealed(self, message_id: str, entity: bytes, mic: str, *, transport: str, address: str,
                          profile: str, actor: str = "sealer", reason: str | None = None) -> MessageRecord:
        """Keep the sealed bytes and queue the message (``received``/``held`` -> ``queued``, due now), atomically."""
        now = self._now()
        async with self._write() as conn:
            record = await self._move(conn, message_id, State.QUEUED, now=now, reason=reason, actor=actor,
                                      expect=(State.RECEIVED, State.HELD),
                                      fields=dict(mic=mic, transport=transport, address=address))
            await conn.execute(delete(sealed).where(sealed.c.message_id == message_id))
            await conn.execute(insert(sealed).values(message_id=message_id, entity=entity, mic=mic,
                                                     profile=profile, sealed_at=now))
        return record

    async def sealed(self, message_id: str) -> bytes:
        async with self._read() as conn:
            entity = (await conn.execute(select(sealed.c.entity)
                                         .where(sealed.c.message_id == message_id))).scalar_one_or_none()
        if entity is None:
            raise StoreError(f"no sealed entity for message {message_id}")
        return bytes(entity)

    async def _move_many(self, conn: AsyncConnection, rows: Sequence[Row[Any]], to: State, now: datetime,
                         values: dict[str, Any], reason: str | None, actor: str) -> list[MessageRecord]:
        """One edge for many rows (claim, lease release): one UPDATE, then their transition and audit rows.

        ``rows`` (message_id, state) were read in this write transaction (SQLite: under the write
        lock; PostgreSQL: FOR UPDATE), so they cannot have changed since. The UPDATE names them by
        primary key only: an extra condition on state made SQLite's planner scan the state index.
        """
        ids = [r.message_id for r in rows]
        before = {r.message_id: State(r.state) for r in rows}
        for mid, frm in before.items():
            check_edge(mid, frm, to)
        changed = (await conn.execute(update(messages).where(messages.c.message_id.in_(ids))
                                      .values(state=to.value, reason=reason, updated_at=now, **values)
                                      .returning(*_RECORD_COLS))).all()
        if len(changed) != len(ids):  # cannot happen with the rows locked; roll everything back if it does
            raise StoreError(f"{len(ids) - len(changed)} of {len(ids)} rows vanished during a transition to {to}")
        by_id = {r.message_id: _record(r) for r in changed}
        records = [by_id[i] for i in ids]
        await conn.execute(insert(transitions), [
            dict(message_id=r.message_id, at=now, from_state=before[r.message_id].value, to_state=to.value,
                 reason=reason, attempt=r.attempts, remote_reply=None, actor=actor) for r in records])
        result = f"-> {to}" + (f": {reason}" if reason else "")
        await self._audit_rows(conn, [
            dict(at=now, action="message.transition", object=r.message_id,
                 result=f"{before[r.message_id]} {result}", origin=self.origin, actor=actor) for r in records])
        return records

    async def claim(self, *, owner: str, limit: int, lease: timedelta,
                    exclude_destinations: Collection[str] = ()) -> list[MessageRecord]:
        """Take up to ``limit`` due messages (``queued``/``retry_wait``, due) -> ``sending`` under ``owner``'s lease.

        Order: priority (high first), then due time, then arrival. Messages to a recipient in
        ``exclude_destinations`` are left alone. Each claim counts an attempt.
        """
        if limit <= 0:
            return []
        now = self._now()
        m = messages.c
        async with self._write() as conn:
            rows = (await conn.execute(claim_query(now, limit, exclude_destinations))).all()
            if not rows:
                return []
            return await self._move_many(
                conn, rows, State.SENDING, now,
                dict(lease_owner=owner, lease_until=now + lease, attempts=m.attempts + 1, next_attempt_at=None),
                None, owner)

    async def renew_lease(self, message_id: str, owner: str, lease: timedelta) -> datetime:
        """Extend ``owner``'s lease; ``StaleState`` when the message is no longer sending under it."""
        now = self._now()
        until = now + lease
        m = messages.c
        async with self._write() as conn:
            res = await conn.execute(update(messages).where(
                m.message_id == message_id, m.state == State.SENDING.value, m.lease_owner == owner)
                .values(lease_until=until, updated_at=now))
            if res.rowcount != 1:
                state = (await conn.execute(select(m.state).where(m.message_id == message_id))).scalar()
                if state is None:
                    raise UnknownMessage(message_id)
                raise StaleState(message_id, State(state), {State.SENDING}, f" under a lease of {owner}")
        return until

    async def release_expired_leases(self) -> list[str]:
        """``sending`` rows whose lease ran out -> ``retry_wait``, due now (the attempt stays counted)."""
        now = self._now()
        m = messages.c
        async with self._write() as conn:
            rows = (await conn.execute(select(m.message_id, m.state).where(m.state == State.SENDING.value,
                                                                           m.lease_until < now)
                                       .with_for_update(skip_locked=True))).all()
            if not rows:
                return []
            records = await self._move_many(conn, rows, State.RETRY_WAIT, now,
                                            dict(lease_owner=None, lease_until=None, next_attempt_at=now),
                                            LEASE_EXPIRED, "store")
        ids = [r.message_id for r in records]
        log.warning("store.leases_expired", count=len(ids), message_ids=ids)
        return ids

    async def release_owned(self, owner: str) -> list[str]:
        """Graceful stop: ``owner``'s ``sending`` rows -> ``queued``, due now, the attempt not counted."""
        now = self._now()
        m = messages.c
        async with self._write() as conn:
            rows = (await conn.execute(select(m.message_id, m.state).where(m.state == State.SENDING.value,
                                                                           m.lease_owner == owner)
                                       .with_for_update(skip_locked=True))).all()
            if not rows:
                return []
            records = await self._move_many(conn, rows, State.QUEUED, now,
                                            dict(lease_owner=None, lease_until=None, next_attempt_at=now,
                                                 attempts=m.attempts - 1),
                                            "released: graceful stop", owner)
        ids = [r.message_id for r in records]
        log.info("store.leases_released", owner=owner, count=len(ids))
        return ids

    # -- reads

    async def get(self, message_id: str) -> MessageRecord | None:
        return await self._one(messages.c.message_id == message_id)

    async def by_mail_message_id(self, mail_message_id: str) -> MessageRecord | None:
        return await self._one(messages.c.mail_message_id == mail_message_id)

    async def _one(self, where: Any) -> MessageRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(*_RECORD_COLS).where(where).limit(1))).first()
        return None if row is None else _record(row)

    async def timeline(self, message_id: str) -> list[Transition]:
        async with self._read() as conn:
            rows = await conn.execute(select(*_TRANSITION_COLS).where(transitions.c.message_id == message_id)
                                      .order_by(transitions.c.id))
            return [_transition(r) for r in rows]

    async def counts(self) -> dict[State, int]:
        """Messages per state (every state present); ``rejected`` counts rejected pickups."""
        out = dict.fromkeys(State, 0)
        async with self._read() as conn:
            for state, n in await conn.execute(select(messages.c.state, func.count())
                                               .group_by(messages.c.state)):
                out[State(state)] = n
            out[State.REJECTED] = (await conn.execute(select(func.count()).select_from(pickups)
                                                      .where(pickups.c.outcome == "rejected"))).scalar_one()
        return out

    async def list(self, *, states: Iterable[State] | None = None, type: str | None = None,
                   party: str | None = None, since: datetime | None = None, until: datetime | None = None,
                   limit: int = 100, after: str | None = None) -> list[MessageRecord]:
        """Newest first (``received_at``, then id). ``party`` matches sender or recipient; ``since`` is
        inclusive, ``until`` exclusive; ``after`` is the last message id of the previous page."""
        m = messages.c
        q = select(*_RECORD_COLS)
        if states is not None:
            q = q.where(m.state.in_([State(s).value for s in states]))
        if type is not None:
            q = q.where(m.type == type)
        if party is not None:
            q = q.where(or_(m.sender == party, m.recipient == party))
        if since is not None:
            q = q.where(m.received_at >= since)
        if until is not None:
            q = q.where(m.received_at < until)
        async with self._read() as conn:
            if after is not None:
                at = (await conn.execute(select(m.received_at).where(m.message_id == after))).scalar()
                if at is None:
                    raise UnknownMessage(after)
                q = q.where(or_(m.received_at < at, and_(m.received_at == at, m.message_id < after)))
            rows = await conn.execute(q.order_by(m.received_at.desc(), m.message_id.desc()).limit(limit))
            return [_record(r) for r in rows]

    async def sent_without_receipt(self, older_than: datetime, *,
                                   include_delivered: bool = False) -> list[MessageRecord]:
        """Sent at or before ``older_than`` and still ``sent`` (no DSN nor MDN); with ``include_delivered``
        also ``delivered`` ones still waiting for their signed receipt. Oldest first."""
        wanted = [State.SENT.value] + ([State.DELIVERED.value] if include_delivered else [])
        m = messages.c
        async with self._read() as conn:
            rows = await conn.execute(select(*_RECORD_COLS).where(m.state.in_(wanted), m.sent_at <= older_than)
                                      .order_by(m.sent_at, m.message_id))
            return [_record(r) for r in rows]

    async def next_due(self) -> datetime | None:
        """When the dispatcher has work next (may be in the past: work is due now)."""
        m = messages.c
        async with self._read() as conn:
            return (await conn.execute(select(func.min(m.next_attempt_at))
                                       .where(m.state.in_(_WAITING)))).scalar()

    async def next_lease_expiry(self) -> datetime | None:
        """The earliest lease end among ``sending`` messages (when ``release_expired_leases`` has work)."""
        m = messages.c
        async with self._read() as conn:
            return (await conn.execute(select(func.min(m.lease_until))
                                       .where(m.state == State.SENDING.value))).scalar()

    # -- receipts and audit

    async def add_receipt(self, message_id: str, *, kind: str, verdict: str, detail: str,
                          actor: str = "receipts") -> None:
        """Keep a receipt (no state change: use ``transition(..., receipt=...)`` to do both at once)."""
        _check_receipt_kind(kind)
        now = self._now()
        async with self._write() as conn:
            exists = (await conn.execute(select(messages.c.message_id)
                                         .where(messages.c.message_id == message_id))).first()
            if exists is None:
                raise UnknownMessage(message_id)
            await self._add_receipt(conn, now, message_id, NewReceipt(kind, verdict, detail), actor)

    async def _add_receipt(self, conn: AsyncConnection, now: datetime, message_id: str, receipt: NewReceipt,
                           actor: str) -> None:
        await conn.execute(insert(receipts).values(message_id=message_id, at=now, kind=receipt.kind,
                                                   verdict=receipt.verdict, detail=receipt.detail))
        await self._audit(conn, now, "receipt.add", message_id, f"{receipt.kind}: {receipt.verdict}", actor)

    async def receipts(self, message_id: str) -> list[Receipt]:
        async with self._read() as conn:
            rows = await conn.execute(select(*_RECEIPT_COLS).where(receipts.c.message_id == message_id)
                                      .order_by(receipts.c.id))
            return [Receipt(*r) for r in rows]

    async def audit(self, *, action: str, object: str, result: str, origin: str | None = None,
                    actor: str) -> None:
        """An audit row for an event that is not a transition (an alert, an operator's look, a login)."""
        now = self._now()
        async with self._write() as conn:
            await self._audit(conn, now, action, object, result, actor, origin)

    async def audit_rows(self, limit: int = 100, *, object: str | None = None) -> list[dict[str, Any]]:
        """The most recent audit rows, newest first (optionally of one object)."""
        q = select(audit)
        if object is not None:
            q = q.where(audit.c.object == object)
        async with self._read() as conn:
            rows = await conn.execute(q.order_by(audit.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]


def _check_fields(to: State, fields: dict[str, Any]) -> None:
    unknown = fields.keys() - SETTABLE
    if unknown:
        raise TypeError(f"transition() cannot set {', '.join(sorted(unknown))}")
    if to is State.SENDING and not {"lease_owner", "lease_until"} <= fields.keys():
        raise ValueError("entering sending needs lease_owner and lease_until (or use claim())")
    if to is State.RETRY_WAIT and fields.get("next_attempt_at") is None:
        raise ValueError("entering retry_wait needs next_attempt_at")
    for name, value in fields.items():
        if isinstance(value, datetime) and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{name}: naive datetime given to the store: pass timezone-aware datetimes")
    if to is State.QUEUED and "next_attempt_at" in fields and fields["next_attempt_at"] is None:
        raise ValueError("a queued message needs a next_attempt_at (leave it out for: now)")
    if "next_attempt_at" in fields and to not in WAITING:
        raise ValueError(f"next_attempt_at means nothing in {to} (only in queued and retry_wait)")


def _check_receipt_kind(kind: str) -> None:
    if kind not in RECEIPT_KINDS:
        raise ValueError(f"receipt kind must be one of {', '.join(sorted(RECEIPT_KINDS))}, not {kind!r}")
