"""The durable queue and message log: every state change is committed before anyone acts on it.

One ``Store`` per process, shared by its asyncio tasks. Every write is one short
transaction that changes the message row, appends its ``transitions`` row and its
``audit`` row together, or nothing at all.

Execution (``engine.py``): each public method is one synchronous function run
whole in a thread, written with SQLAlchemy Core on a synchronous engine. Writes
run one at a time in the store's writer thread (which replaces an asyncio lock:
the writers of one process queue there, first come first served); reads run on
a small pool of reader connections. The statements that run on every message
are built once, at import, with bind parameters, so SQLAlchemy finds their
compiled form in its cache without rebuilding them per call.

SQLite (the embedded default): WAL, ``synchronous=FULL``, foreign keys on, and
every write transaction starts with ``BEGIN IMMEDIATE``, so it takes the single
writer lock before it reads what it is about to change: two processes can never
both claim one message, and a busy writer makes the other wait
(``busy_timeout``) instead of failing halfway. Reads take no transaction (each
SELECT sees its own committed snapshot, and never waits for a writer: WAL).

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
from collections.abc import Callable, Collection, Iterable, Sequence
import re
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, timezone
from typing import Any, NamedTuple

import structlog
from sqlalchemy import (Connection, Engine, Row, Select, and_, bindparam, delete, func, insert, null, or_, select,
                        text, update)
from sqlalchemy.dialects import postgresql as pg_dialect, sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from .chain import GENESIS, row_hash
from .engine import BUSY_TIMEOUT_MS, DriverStatement, Runner, make_engine
from .migrations import MIGRATIONS, Migration, apply_migrations
from .schema import (audit, deadline_facts, inbound, message_counts, messages, pickups, receipts, sealed, subject_index,
                     transitions)
from .states import (INBOUND_OUTCOMES, WAITING, DuplicateInbound, DuplicateMessage, Filed, IllegalTransition, InboundRecord,
                     MessageRecord, NewMessage, NewReceipt, Pickup, Receipt, ReceiptFiling, StaleState, State, StoreError,
                     Transition, UnknownMessage, check_edge)

__all__ = ["BUSY_TIMEOUT_MS", "DIRECTIONS", "LEASE_EXPIRED", "SETTABLE", "DeadlineDates", "Store", "SubjectMessage",
           "claim_query", "make_engine", "utcnow"]

log = structlog.get_logger(__name__)

LEASE_EXPIRED = "lease expired: the daemon stopped or crashed while sending"
RECEIPT_KINDS = frozenset({"dsn", "mdn", "unsigned-mdn"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


m = messages.c
_RECORD_COLS = [messages.c[f.name] for f in fields(MessageRecord)]
_STATE_AT = [f.name for f in fields(MessageRecord)].index("state")
_PICKUP_COLS = [pickups.c[f.name] for f in fields(Pickup)]
_TRANSITION_COLS = [transitions.c[f.name] for f in fields(Transition)]
_RECEIPT_COLS = [receipts.c[f.name] for f in fields(Receipt)]
_NEW_COLS = [f.name for f in fields(NewMessage)]
#: columns ``transition(**fields)`` may set besides state and reason
SETTABLE = frozenset({"successor", "transport", "address", "next_attempt_at", "mic", "mail_message_id", "spool_path",
                      "lease_owner", "lease_until", "sent_at", "delivered_at", "acknowledged_at", "attempts"})
_WAITING = sorted(s.value for s in WAITING)
_STAMPS = {State.SENT: "sent_at", State.DELIVERED: "delivered_at", State.ACKNOWLEDGED: "acknowledged_at"}

# The statements of the hot path, built once. Bind parameters that are not columns start with "_": in an
# UPDATE, every other key of the parameters becomes a SET clause.
_INSERT_MESSAGE = DriverStatement(insert(messages))
_INSERT_PICKUP = DriverStatement(insert(pickups))
_INSERT_PICKUP_RETURNING = insert(pickups).returning(*_PICKUP_COLS)
_INSERT_TRANSITION = DriverStatement(insert(transitions))
_INSERT_AUDIT = DriverStatement(insert(audit))
_LAST_AUDIT = select(audit.c.id, audit.c.hash).order_by(audit.c.id.desc()).limit(1).with_for_update()
# SQLite: the chain's head and AUTOINCREMENT's high-water mark in one statement (one round trip per write)
_AUDIT_HEAD_SQLITE = DriverStatement(text("SELECT (SELECT id FROM audit ORDER BY id DESC LIMIT 1), "
                                         "(SELECT hash FROM audit ORDER BY id DESC LIMIT 1), "
                                         "(SELECT seq FROM sqlite_sequence WHERE name = 'audit')"))
# a receipt whose carrier was filed already (its mail read again) is not kept: no row, no audit row, no count
_INSERT_RECEIPT = {name: d.insert(receipts).on_conflict_do_nothing(
    index_elements=[receipts.c.message_id, receipts.c.kind, receipts.c.source])
    for name, d in (("sqlite", sqlite_dialect), ("postgresql", pg_dialect))}
_INSERT_SEALED = DriverStatement(insert(sealed))
_DELETE_SEALED = DriverStatement(delete(sealed).where(sealed.c.message_id == bindparam("_mid")))
_LOCK_ONE = DriverStatement(select(m.state, m.lease_owner, m.attempts).where(m.message_id == bindparam("_mid"))
                            .with_for_update())
_STATE_OF = select(m.state).where(m.message_id == bindparam("_mid"))
_UPDATE_ONE = update(messages).where(m.message_id == bindparam("_mid"), m.state == bindparam("_frm")) \
    .returning(*_RECORD_COLS)
_UPDATE_ONE_COUNTED = _UPDATE_ONE.values(attempts=m.attempts + 1)  # entering sending counts an attempt
_UPDATE_MANY = update(messages).where(m.message_id.in_(bindparam("_ids", expanding=True))).returning(*_RECORD_COLS)
_CLAIMED = _UPDATE_MANY.values(attempts=m.attempts + 1)
_RELEASED = _UPDATE_MANY.values(attempts=m.attempts - 1)
_RENEW = update(messages).where(m.message_id == bindparam("_mid"), m.state == State.SENDING.value,
                                m.lease_owner == bindparam("_owner"))
_GET_BY_ID = select(*_RECORD_COLS).where(m.message_id == bindparam("_mid")).limit(1)
_GET_BY_MAIL_ID = select(*_RECORD_COLS).where(m.mail_message_id == bindparam("_mid")).limit(1)
_RECORDS_OF = select(*_RECORD_COLS).where(m.message_id.in_(bindparam("_ids", expanding=True)))
_SEALED_ENTITY = DriverStatement(select(sealed.c.entity).where(sealed.c.message_id == bindparam("_mid")))
_EXISTS = select(m.message_id).where(m.message_id == bindparam("_mid"))
_FILING_ROW = select(m.state, m.spool_path).where(m.message_id == bindparam("_mid")).with_for_update()
_ACCEPTED_BY_SHA = select(*_PICKUP_COLS).where(pickups.c.outcome == "accepted",
                                               pickups.c.sha256 == bindparam("_sha"))
_ACCEPTED_BY_ID = select(*_PICKUP_COLS).where(pickups.c.outcome == "accepted",
                                              pickups.c.message_id == bindparam("_mid"))
_INBOUND_COLS = [inbound.c[f.name] for f in fields(InboundRecord)]
_INBOUND_FIELDS = [f.name for f in fields(InboundRecord)]
_INBOUND_BY_ID = select(*_INBOUND_COLS).where(inbound.c.message_id == bindparam("_mid")).with_for_update()
# accepted first (the one a duplicate is answered with), then the latest refusal
_INBOUND_BY_TRANSPORT = (select(*_INBOUND_COLS)
                         .where(inbound.c.transport == bindparam("_transport"),
                                inbound.c.transport_message_id == bindparam("_tmid"))
                         .order_by((inbound.c.outcome == "accepted").desc(), inbound.c.received_at.desc()).limit(1))
_INSERT_INBOUND = insert(inbound)
_INSERT_DEADLINE_FACTS = DriverStatement(insert(deadline_facts))
_INSERT_SUBJECT = DriverStatement(insert(subject_index))
_CONFIRM_ACCEPTED = DriverStatement(update(pickups).where(pickups.c.sha256 == bindparam("_sha"),
                                                        pickups.c.outcome == "accepted"))
_REPLACE_INBOUND = update(inbound).where(inbound.c.message_id == bindparam("_mid"), inbound.c.outcome == "refused")


DIRECTIONS = ("outbound", "inbound")
_SUBJECT = re.compile(r"[0-9a-f]{64}\Z")


class DeadlineDates(NamedTuple):
    """The dates a message states about the detention, as ``deadline_facts`` keeps them (None: not stated).

    The same five fields as ``gateway.ops.deadlines.Facts``: ``accept`` and ``record_inbound`` take either."""

    start: date | None = None  #: aanvangDetentie
    status: str | None = None  #: preventiefGehecht | veroordeeld
    expected_release: date | None = None  #: einddatumDetentie
    verdict: date | None = None  #: datumVonnis
    release_day: date | None = None  #: ontslagdatum


_DATE_FIELDS = DeadlineDates._fields


@dataclass(frozen=True, slots=True)
class SubjectMessage:
    """One ``subject_index`` row with what the store knows of its message (None: the message row is gone,
    e.g. purged, or the column does not exist for its direction)."""

    subject: str  #: hex HMAC-SHA256 of the BSN (``gateway.privacy.subject_hash``)
    direction: str  #: outbound | inbound
    message_id: str
    recorded_at: datetime  #: when the index row was written (pick-up or intake)
    erased_at: datetime | None  #: when subject-erase shielded this message's data
    type: str | None
    sender: str | None  #: party code
    recipient: str | None  #: party code (inbound: None, it was this gateway)
    dossier: str | None
    created_at: datetime | None  #: outbound: from the message header; inbound: None
    received_at: datetime | None  #: outbound: picked up; inbound: arrived
    sent_at: datetime | None  #: outbound only
    delivered_at: datetime | None  #: outbound only
    acknowledged_at: datetime | None  #: outbound only
    state: str | None  #: outbound: the message's state; inbound: the outcome (accepted)
    transport: str | None  #: outbound: "smtp" | "as2" once routed; inbound: "email" | "as2"


def _dates_row(direction: str, message_id: str, dates: Any) -> dict[str, Any]:
    return {"direction": direction, "message_id": message_id, **{f: getattr(dates, f) for f in _DATE_FIELDS}}


def _subject_rows(direction: str, message_id: str, subjects: Iterable[str], now: datetime) -> list[dict[str, Any]]:
    rows = []
    for subject in dict.fromkeys(subjects):
        if not isinstance(subject, str) or not _SUBJECT.match(subject):  # never a BSN by mistake (not echoed)
            raise ValueError("a subject is the hex HMAC-SHA256 of a BSN (gateway.privacy.subject_hash)")
        rows.append(dict(subject=subject, direction=direction, message_id=message_id, recorded_at=now))
    return rows


def _record(row: Row[Any] | Sequence[Any]) -> MessageRecord:
    values = list(row)
    values[_STATE_AT] = State(values[_STATE_AT])
    return MessageRecord(*values)


def _transition(row: Row[Any]) -> Transition:
    mid, at, frm, to, *rest = row
    return Transition(mid, at, None if frm is None else State(frm), State(to), *rest)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the store takes timezone-aware datetimes only (clock and message header)")
    return value.astimezone(timezone.utc)


# Due work in dispatch order. No condition on ``state``: a due time means waiting (a CHECK constraint),
# and leaving the state out lets the planner walk the partial index ``ix_messages_due`` in order instead
# of sorting every due row (SQLite, without statistics, would otherwise pick the state index).
_DUE = (select(m.message_id, m.state).where(m.next_attempt_at <= bindparam("_now"))
        .order_by(m.priority.desc(), m.next_attempt_at, m.received_at, m.message_id)
        .limit(bindparam("_limit")).with_for_update(skip_locked=True))
_DUE_EXCLUDING = _DUE.where(m.recipient.not_in(bindparam("_exclude", expanding=True)))
#: a (transport, address) pair whose destination is down; address None: every address of that transport
#: (e-mail: one relay carries every address)
Link = tuple[str, "str | None"]


def _on_link(link: Link) -> Any:
    transport, address = link
    return m.transport == transport if address is None else and_(m.transport == transport, m.address == address)


def _off_links(links: Collection[Link]) -> Any:
    """Rows on none of ``links`` (a row without transport or address is on none)."""
    return and_(*(or_(m.transport.is_(None), m.address.is_(None), ~_on_link(link)) for link in links))


def _claim_statement(now: datetime, limit: int, exclude_destinations: Collection[str],
                     exclude_down: Collection[Link] = ()) -> tuple[Select[Any], dict[str, Any]]:
    params: dict[str, Any] = {"_now": now, "_limit": limit}
    statement = _DUE
    if exclude_destinations:
        statement, params = _DUE_EXCLUDING, params | {"_exclude": list(exclude_destinations)}
    if exclude_down:  # rare (a destination is down): built each time
        statement = statement.where(_off_links(exclude_down))
    return statement, params


def claim_query(now: datetime, limit: int, exclude_destinations: Collection[str] = (),
                exclude_down: Collection[Link] = ()) -> Select[Any]:
    """The claim's query with its values bound (``claim`` runs the same statement, built once).

    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, nothing on SQLite.
    """
    statement, params = _claim_statement(now, limit, exclude_destinations, exclude_down)
    return statement.params(params)


class Store:
    """The gateway's durable state (see the module docstring). Open with ``await Store.open(url)``."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime], origin: str):
        self._engine = engine
        self._run = Runner(engine)
        self._clock = clock
        self.origin = origin  #: the audit trail's "origin" of rows written here (host or instance name)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = utcnow, origin: str = "gateway",
                   migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        """Connect and migrate; refuses a database whose schema is newer than ``migrations`` (``SchemaError``).

        ``url`` may name an async driver (``sqlite+aiosqlite:///…``): ``engine.sync_url`` maps it.
        """
        engine = make_engine(url)
        store = cls(engine, clock, origin)
        try:
            applied = await store._run.write(apply_migrations, migrations, store._now())
        except BaseException:
            await store.close()
            raise
        log.info("store.opened", dialect=engine.dialect.name, database=engine.url.database,
                 schema_version=len(migrations), migrated=applied)
        return store

    async def close(self) -> None:
        """Finish the calls already handed over, then close the connections."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._run.close)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Store {self._engine.dialect.name}:{self._engine.url.database}>"

    # -- plumbing (the functions named _..._tx run in the store's threads, on a synchronous connection)

    def _now(self) -> datetime:
        return _aware_utc(self._clock())

    def _audit(self, conn: Connection, at: datetime, action: str, obj: str, result: str, actor: str,
               origin: str | None = None) -> None:
        self._audit_rows(conn, [dict(at=at, action=action, object=obj, result=result,
                                     origin=origin or self.origin, actor=actor)])

    def _audit_rows(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The single place audit rows are written: each chained to the one before (``chain.py``).

        Inside the caller's write transaction (which holds the writer lock), so the last row read
        here is still the last when these are inserted; ids are given, not left to AUTOINCREMENT,
        because each one is part of its row's hash.
        """
        if conn.dialect.name == "sqlite":  # ids go past any deleted tail: its gap then shows in the chain
            last_id, last_hash, seq = _AUDIT_HEAD_SQLITE.first(conn)
            next_id, prev = max(last_id or 0, seq or 0) + 1, last_hash or GENESIS
        else:
            last = conn.execute(_LAST_AUDIT).first()
            next_id, prev = (1, GENESIS) if last is None else (last.id + 1, last.hash)
        chained = []
        for row in rows:
            h = row_hash(prev, next_id, row["at"], row["action"], row["object"], row["result"], row["origin"],
                         row["actor"])
            chained.append({**row, "id": next_id, "prev_hash": prev, "hash": h})
            next_id, prev = next_id + 1, h
        _INSERT_AUDIT.execute(conn, chained)

    def audit_in(self, conn: Connection, action: str, obj: str, result: str, actor: str,
                 origin: str | None = None) -> None:
        """An audit row inside a transaction run with ``run_write`` (ops modules: purge, checkpoints)."""
        self._audit(conn, self._now(), action, obj, result, actor, origin)

    async def run_read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(conn, *args)`` on a reader connection: for ops modules that own their queries."""
        return await self._run.read(fn, *args)

    async def run_write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(conn, *args)`` as one write transaction; audit rows only through ``audit_in``."""
        return await self._run.write(fn, *args)

    # -- pick-up

    async def find_pickup(self, sha256: str) -> Pickup | None:
        """The accepted pickup of this file if there is one, else its most recent pickup of any outcome."""
        return await self._run.read(_find_pickup_tx, sha256)

    async def last_refusal(self, sha256: str, file_name: str) -> Pickup | None:
        """The most recent rejection or duplicate report of this file under this name (a crash may have
        stopped filing it away: the pick-up then finishes that refusal instead of making a second one)."""
        return await self._run.read(_last_refusal_tx, sha256, file_name)

    @staticmethod
    def _accepted_pickup(conn: Connection, query: Select[Any], **params: str) -> Pickup | None:
        row = conn.execute(query, params).first()
        return None if row is None else Pickup(*row)

    def _refuse_duplicate(self, conn: Connection, msg: NewMessage) -> None:
        if (p := self._accepted_pickup(conn, _ACCEPTED_BY_SHA, _sha=msg.sha256)) is not None:
            raise DuplicateMessage("same-file", p.message_id, p)
        if conn.execute(_EXISTS, {"_mid": msg.message_id}).first() is not None:
            raise DuplicateMessage("same-id", msg.message_id,
                                   self._accepted_pickup(conn, _ACCEPTED_BY_ID, _mid=msg.message_id))

    async def accept(self, msg: NewMessage, *, actor: str = "pickup", dates: Any = None,
                     subjects: Iterable[str] = ()) -> MessageRecord:
        """Make a message of a picked-up file (state ``received``), or raise ``DuplicateMessage``.

        One transaction: the pickup row (``accepted``, unconfirmed until ``confirm_pickup``),
        the message, its first transition and the audit row; with ``dates`` (a ``DeadlineDates`` or
        anything with its five attributes) its ``deadline_facts`` row (outbound), and one
        ``subject_index`` row per subject hash in ``subjects`` (ValueError for anything else).
        """
        now = self._now()
        facts_row = None if dates is None else _dates_row("outbound", msg.message_id, dates)
        subject_rows = _subject_rows("outbound", msg.message_id, subjects, now)
        row = {name: getattr(msg, name) for name in _NEW_COLS}
        row.update(created_at=_aware_utc(msg.created_at), state=State.RECEIVED.value, reason=None, successor=None,
                   transport=None, address=None, attempts=0, next_attempt_at=None, lease_owner=None,
                   lease_until=None, mic=None, mail_message_id=None,
                   received_at=now, updated_at=now, sent_at=None, delivered_at=None, acknowledged_at=None)

        def tx(conn: Connection) -> None:
            _INSERT_MESSAGE.execute(conn, row)
            _INSERT_PICKUP.execute(conn, dict(
                at=now, file_name=msg.file_name, size=msg.size, sha256=msg.sha256, outcome="accepted",
                message_id=msg.message_id, spool_path=msg.spool_path))
            _INSERT_TRANSITION.execute(conn, dict(
                message_id=msg.message_id, at=now, from_state=None, to_state=State.RECEIVED.value, attempt=0,
                actor=actor))
            self._audit(conn, now, "message.accept", msg.message_id, "received", actor)
            if facts_row is not None:
                _INSERT_DEADLINE_FACTS.execute(conn, facts_row)
            if subject_rows:
                _INSERT_SUBJECT.execute(conn, subject_rows)

        try:  # the primary key and the unique index are the duplicate checks; a failure says which below
            await self._run.write(tx)
        except IntegrityError:
            await self._run.read(self._refuse_duplicate, msg)
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
                               reason: str, rejected_path: str | None = None, actor: str = "pickup") -> Pickup:
        """The report of a second drop of a known file or id (with its audit row: do not also call ``audit``)."""
        if kind not in ("same-file", "same-id"):
            raise ValueError(f"duplicate kind must be same-file or same-id, not {kind!r}")
        return await self._record_pickup(
            dict(file_name=file_name, size=size, sha256=sha256, outcome="duplicate", kind=kind,
                 message_id=message_id, reason=reason, spool_path=rejected_path),
            "pickup.duplicate", message_id, f"duplicate ({kind})", actor)

    async def _record_pickup(self, values: dict[str, Any], action: str, obj: str, result: str, actor: str) -> Pickup:
        now = self._now()

        def tx(conn: Connection) -> Pickup:
            row = conn.execute(_INSERT_PICKUP_RETURNING, dict(at=now, **values)).one()
            self._audit(conn, now, action, obj, result, actor)
            return Pickup(*row)

        return await self._run.write(tx)

    async def pending_pickups(self) -> list[Pickup]:
        """Accepted pickups whose file move was never confirmed: start-up reconciliation finishes them."""
        def tx(conn: Connection) -> list[Pickup]:
            rows = conn.execute(select(*_PICKUP_COLS).where(
                pickups.c.outcome == "accepted", pickups.c.confirmed_at.is_(None)).order_by(pickups.c.id))
            return [Pickup(*r) for r in rows]

        return await self._run.read(tx)

    async def confirm_pickup(self, pickup_id: int) -> None:
        """The spool copy is durable and the outbox file is gone."""
        now = self._now()

        def tx(conn: Connection) -> None:
            res = conn.execute(update(pickups).where(pickups.c.id == pickup_id).values(confirmed_at=now))
            if res.rowcount != 1:
                raise StoreError(f"no pickup {pickup_id}")

        await self._run.write(tx)

    async def confirm_accepted(self, sha256: str) -> None:
        """`confirm_pickup` for the accepted pick-up of this file (one write, no read first)."""
        now = self._now()

        def tx(conn: Connection) -> None:
            if _CONFIRM_ACCEPTED.execute(conn, {"_sha": sha256, "confirmed_at": now}) != 1:
                raise StoreError(f"no accepted pickup of {sha256[:16]}")

        await self._run.write(tx)

    # -- state

    async def transition(self, message_id: str, to: State, *, reason: str | None = None, actor: str,
                         expect: Iterable[State] | State | None = None, owner: str | None = None,
                         of_attempt: int | None = None, attempt: int | None = None,
                         remote_reply: str | None = None, origin: str | None = None,
                         receipt: NewReceipt | None = None, **fields: Any) -> MessageRecord:
        """Move a message along an edge of ``TRANSITIONS`` (else ``IllegalTransition``).

        Compare-and-set: with ``expect`` the current state must be one of them, with ``owner``
        the message must be ``sending`` under that owner's lease, with ``of_attempt`` its attempt count
        must still be that one (an attempt that outlived its lease must not record its outcome over
        the next attempt's; else ``StaleState``). ``fields`` sets columns (``SETTABLE``). Leaving ``sending`` clears the lease; entering
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
        expected = None if expect is None else (
            {State(expect)} if isinstance(expect, str) else {State(s) for s in expect})
        now = self._now()

        def tx(conn: Connection) -> MessageRecord:
            record = self._move(conn, message_id, to, now=now, reason=reason, actor=actor, expect=expected,
                                owner=owner, of_attempt=of_attempt, attempt=attempt, remote_reply=remote_reply,
                                origin=origin, fields=fields)
            if receipt is not None:
                self._add_receipt(conn, now, message_id, receipt, actor)
            return record

        return await self._run.write(tx)

    def _move(self, conn: Connection, message_id: str, to: State, *, now: datetime, reason: str | None,
              actor: str, expect: set[State] | None, owner: str | None = None, of_attempt: int | None = None,
              attempt: int | None = None, remote_reply: str | None = None, origin: str | None = None,
              fields: dict[str, Any]) -> MessageRecord:
        cur = _LOCK_ONE.first(conn, {"_mid": message_id})
        if cur is None:
            raise UnknownMessage(message_id)
        frm, lease_owner, attempts = State(cur[0]), cur[1], cur[2]
        if expect is not None and frm not in expect:
            raise StaleState(message_id, frm, expect)
        if owner is not None and (frm is not State.SENDING or lease_owner != owner):
            raise StaleState(message_id, frm, {State.SENDING}, f" under a lease of {owner}")
        if of_attempt is not None and attempts != of_attempt:  # a later attempt owns the message now
            raise StaleState(message_id, frm, expect or {frm},
                             f" (attempt {of_attempt}; attempt {attempts} is the current one)")
        check_edge(message_id, frm, to)
        values: dict[str, Any] = {"state": to.value, "reason": reason, "updated_at": now, **fields}
        if frm is State.SENDING and to is not State.SENDING:
            values.update(lease_owner=None, lease_until=None)
        statement = _UPDATE_ONE
        if to is State.SENDING and "attempts" not in values:
            statement = _UPDATE_ONE_COUNTED
        if to is State.QUEUED:
            values.setdefault("next_attempt_at", now)
        elif to is not State.RETRY_WAIT:
            values["next_attempt_at"] = None
        if (stamp := _STAMPS.get(to)) and frm is not to:
            values.setdefault(stamp, now)
        row = conn.execute(statement, {**values, "_mid": message_id, "_frm": frm.value}).first()
        if row is None:  # only possible without the row lock (never on SQLite under BEGIN IMMEDIATE)
            raise StaleState(message_id, None, {frm})
        record = _record(row)
        _INSERT_TRANSITION.execute(conn, dict(
            message_id=message_id, at=now, from_state=frm.value, to_state=to.value, reason=reason,
            attempt=record.attempts if attempt is None else attempt, remote_reply=remote_reply, actor=actor))
        self._audit(conn, now, "message.transition", message_id,
                    f"{frm} -> {to}" + (f": {reason}" if reason else ""), actor, origin)
        return record

    async def save_sealed(self, message_id: str, entity: bytes, mic: str, *, transport: str, address: str,
                          profile: str, actor: str = "sealer", reason: str | None = None) -> MessageRecord:
        """Keep the sealed bytes and queue the message (``received``/``held`` -> ``queued``, due now), atomically."""
        now = self._now()

        def tx(conn: Connection) -> MessageRecord:
            record = self._move(conn, message_id, State.QUEUED, now=now, reason=reason, actor=actor,
                                expect={State.RECEIVED, State.HELD},
                                fields=dict(mic=mic, transport=transport, address=address))
            _DELETE_SEALED.execute(conn, {"_mid": message_id})
            _INSERT_SEALED.execute(conn, dict(message_id=message_id, entity=entity, mic=mic, profile=profile,
                                              sealed_at=now))
            return record

        return await self._run.write(tx)

    async def sealed(self, message_id: str) -> bytes:
        row = await self._run.read(_SEALED_ENTITY.first, {"_mid": message_id})
        entity = None if row is None else row[0]
        if entity is None:
            raise StoreError(f"no sealed entity for message {message_id}")
        return bytes(entity)

    def _move_many(self, conn: Connection, statement: Any, rows: Sequence[Row[Any]], to: State, now: datetime,
                   values: dict[str, Any], reason: str | None, actor: str) -> list[MessageRecord]:
        """One edge for many rows (claim, lease release): one UPDATE, then their transition and audit rows.

        ``rows`` (message_id, state) were read in this write transaction (SQLite: under the write
        lock; PostgreSQL: FOR UPDATE), so they cannot have changed since. The UPDATE names them by
        primary key only: an extra condition on state made SQLite's planner scan the state index.
        ``statement`` is ``_UPDATE_MANY`` or one of its variants that also change ``attempts``.
        """
        ids = [r.message_id for r in rows]
        before = {r.message_id: State(r.state) for r in rows}
        for mid, frm in before.items():
            check_edge(mid, frm, to)
        changed = conn.execute(statement, dict(state=to.value, reason=reason, updated_at=now, **values,
                                               _ids=ids)).all()
        if len(changed) != len(ids):  # cannot happen with the rows locked; roll everything back if it does
            raise StoreError(f"{len(ids) - len(changed)} of {len(ids)} rows vanished during a transition to {to}")
        by_id = {r.message_id: _record(r) for r in changed}
        records = [by_id[i] for i in ids]
        _INSERT_TRANSITION.execute(conn, [
            dict(message_id=r.message_id, at=now, from_state=before[r.message_id].value, to_state=to.value,
                 reason=reason, attempt=r.attempts, remote_reply=None, actor=actor) for r in records])
        result = f"-> {to}" + (f": {reason}" if reason else "")
        self._audit_rows(conn, [
            dict(at=now, action="message.transition", object=r.message_id,
                 result=f"{before[r.message_id]} {result}", origin=self.origin, actor=actor) for r in records])
        return records

    async def claim(self, *, owner: str, limit: int, lease: timedelta, exclude_destinations: Collection[str] = (),
                    exclude_down: Collection[Link] = ()) -> list[MessageRecord]:
        """Take up to ``limit`` due messages (``queued``/``retry_wait``, due) -> ``sending`` under ``owner``'s lease.

        Order: priority (high first), then due time, then arrival. Messages to a recipient in
        ``exclude_destinations``, and messages on a link in ``exclude_down`` ((transport, address or
        None for every address), a destination that is down), are left alone. Each claim counts an attempt.
        """
        if limit <= 0:
            return []
        now = self._now()
        query, params = _claim_statement(now, limit, exclude_destinations, exclude_down)

        def tx(conn: Connection) -> list[MessageRecord]:
            rows = conn.execute(query, params).all()
            if not rows:
                return []
            return self._move_many(conn, _CLAIMED, rows, State.SENDING, now,
                                   dict(lease_owner=owner, lease_until=now + lease, next_attempt_at=None),
                                   None, owner)

        return await self._run.write(tx)

    async def claim_probe(self, *, owner: str, lease: timedelta, link: Link) -> MessageRecord | None:
        """Take the one waiting message on ``link`` (a destination that is down) that is due first, due or
        not yet, -> ``sending``: the probe whether the destination is back. Counts an attempt."""
        now = self._now()
        query = (select(m.message_id, m.state).where(m.state.in_(_WAITING), _on_link(link))
                 .order_by(m.next_attempt_at, m.priority.desc(), m.received_at, m.message_id).limit(1)
                 .with_for_update(skip_locked=True))

        def tx(conn: Connection) -> list[MessageRecord]:
            rows = conn.execute(query).all()
            if not rows:
                return []
            return self._move_many(conn, _CLAIMED, rows, State.SENDING, now,
                                   dict(lease_owner=owner, lease_until=now + lease, next_attempt_at=None),
                                   "probe: is the destination back?", owner)

        claimed = await self._run.write(tx)
        return claimed[0] if claimed else None

    async def due_now(self, link: Link) -> int:
        """Every waiting message on ``link`` becomes due now (its destination is back); how many were waiting
        for a later time. Not a state change: no transition rows."""
        now = self._now()
        statement = (update(messages).where(m.state.in_(_WAITING), m.next_attempt_at > now, _on_link(link))
                     .values(next_attempt_at=now, updated_at=now))

        def tx(conn: Connection) -> int:
            return conn.execute(statement).rowcount

        return await self._run.write(tx)

    async def waiting_past(self, link: Link, horizon: datetime, *, limit: int = 500) -> list[MessageRecord]:
        """Waiting messages on ``link`` that arrived at or before ``horizon`` and were not sent again by a
        person after it (``failed -> queued``: a resend gets the whole retry period anew). Oldest first."""
        t = transitions.c
        resent = (select(t.message_id).where(t.message_id == m.message_id, t.from_state == State.FAILED.value,
                                             t.to_state == State.QUEUED.value, t.at > horizon).exists())
        query = (select(*_RECORD_COLS).where(m.state.in_(_WAITING), _on_link(link), m.received_at <= horizon, ~resent)
                 .order_by(m.received_at, m.message_id).limit(limit))
        return await self._run.read(_records, query)

    async def renew_lease(self, message_id: str, owner: str, lease: timedelta) -> datetime:
        """Extend ``owner``'s lease; ``StaleState`` when the message is no longer sending under it."""
        now = self._now()
        until = now + lease

        def tx(conn: Connection) -> None:
            res = conn.execute(_RENEW, dict(lease_until=until, updated_at=now, _mid=message_id, _owner=owner))
            if res.rowcount != 1:
                state = conn.execute(_STATE_OF, {"_mid": message_id}).scalar()
                if state is None:
                    raise UnknownMessage(message_id)
                raise StaleState(message_id, State(state), {State.SENDING}, f" under a lease of {owner}")

        await self._run.write(tx)
        return until

    async def release_expired_leases(self) -> list[str]:
        """``sending`` rows whose lease ran out -> ``retry_wait``, due now (the attempt stays counted)."""
        now = self._now()

        def tx(conn: Connection) -> list[MessageRecord]:
            rows = conn.execute(select(m.message_id, m.state).where(m.state == State.SENDING.value,
                                                                    m.lease_until < now)
                                .with_for_update(skip_locked=True)).all()
            if not rows:
                return []
            return self._move_many(conn, _UPDATE_MANY, rows, State.RETRY_WAIT, now,
                                   dict(lease_owner=None, lease_until=None, next_attempt_at=now),
                                   LEASE_EXPIRED, "store")

        ids = [r.message_id for r in await self._run.write(tx)]
        if ids:
            log.warning("store.leases_expired", count=len(ids), message_ids=ids)
        return ids

    async def release_owned(self, owner: str) -> list[str]:
        """Graceful stop: ``owner``'s ``sending`` rows -> ``queued``, due now, the attempt not counted."""
        now = self._now()

        def tx(conn: Connection) -> list[MessageRecord]:
            rows = conn.execute(select(m.message_id, m.state).where(m.state == State.SENDING.value,
                                                                    m.lease_owner == owner)
                                .with_for_update(skip_locked=True)).all()
            if not rows:
                return []
            return self._move_many(conn, _RELEASED, rows, State.QUEUED, now,
                                   dict(lease_owner=None, lease_until=None, next_attempt_at=now),
                                   "released: graceful stop", owner)

        ids = [r.message_id for r in await self._run.write(tx)]
        if ids:
            log.info("store.leases_released", owner=owner, count=len(ids))
        return ids

    # -- reads

    async def get(self, message_id: str) -> MessageRecord | None:
        return await self._run.read(_one, _GET_BY_ID, message_id)

    async def by_mail_message_id(self, mail_message_id: str) -> MessageRecord | None:
        return await self._run.read(_one, _GET_BY_MAIL_ID, mail_message_id)

    async def timeline(self, message_id: str) -> list[Transition]:
        def tx(conn: Connection) -> list[Transition]:
            rows = conn.execute(select(*_TRANSITION_COLS).where(transitions.c.message_id == message_id)
                                .order_by(transitions.c.id))
            return [_transition(r) for r in rows]

        return await self._run.read(tx)

    async def counts(self) -> dict[State, int]:
        """Messages per state (every state present); ``rejected`` counts rejected pickups."""
        def tx(conn: Connection) -> dict[State, int]:
            out = dict.fromkeys(State, 0)
            if conn.dialect.name == "sqlite":  # kept by triggers (migration 5): no count over every row
                query = select(message_counts.c.state, func.sum(message_counts.c.n)).group_by(message_counts.c.state)
            else:
                query = select(m.state, func.count()).group_by(m.state)
            for state, n in conn.execute(query):
                out[State(state)] = int(n)
            out[State.REJECTED] = conn.execute(select(func.count()).select_from(pickups)
                                               .where(pickups.c.outcome == "rejected")).scalar_one()
            return out

        return await self._run.read(tx)

    async def list(self, *, states: Iterable[State] | None = None, type: str | None = None,
                   party: str | None = None, since: datetime | None = None, until: datetime | None = None,
                   limit: int = 100, after: str | None = None) -> list[MessageRecord]:
        """Newest first (``received_at``, then id). ``party`` matches sender or recipient; ``since`` is
        inclusive, ``until`` exclusive; ``after`` is the last message id of the previous page."""
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

        def tx(conn: Connection) -> list[MessageRecord]:
            page = q
            if after is not None:
                at = conn.execute(select(m.received_at).where(m.message_id == after)).scalar()
                if at is None:
                    raise UnknownMessage(after)
                page = q.where(or_(m.received_at < at, and_(m.received_at == at, m.message_id < after)))
            rows = conn.execute(page.order_by(m.received_at.desc(), m.message_id.desc()).limit(limit))
            return [_record(r) for r in rows]

        return await self._run.read(tx)

    async def sent_without_receipt(self, older_than: datetime, *,
                                   include_delivered: bool = False) -> list[MessageRecord]:
        """Sent at or before ``older_than`` and still ``sent`` (no DSN nor MDN); with ``include_delivered``
        also ``delivered`` ones still waiting for their signed receipt. Oldest first."""
        wanted = [State.SENT.value] + ([State.DELIVERED.value] if include_delivered else [])
        query = select(*_RECORD_COLS).where(m.state.in_(wanted), m.sent_at <= older_than) \
            .order_by(m.sent_at, m.message_id)
        return await self._run.read(_records, query)

    async def next_due(self, exclude_down: Collection[Link] = ()) -> datetime | None:
        """When the dispatcher has work next (may be in the past: work is due now); ``exclude_down`` as in
        ``claim``."""
        query = select(func.min(m.next_attempt_at)).where(m.state.in_(_WAITING))
        if exclude_down:  # waiting = due at some time (a CHECK): the claim's index alone answers this
            query = select(func.min(m.next_attempt_at)).where(m.next_attempt_at.is_not(None), _off_links(exclude_down))
        return await self._run.read(_scalar, query, {})

    async def next_lease_expiry(self) -> datetime | None:
        """The earliest lease end among ``sending`` messages (when ``release_expired_leases`` has work)."""
        return await self._run.read(
            _scalar, select(func.min(m.lease_until)).where(m.state == State.SENDING.value), {})

    # -- inbound (the receiving side)

    async def find_inbound(self, message_id: str) -> InboundRecord | None:
        """What is remembered of the message ``message_id`` that arrived (accepted or refused), or None."""
        return await self._run.read(_inbound_one, _INBOUND_BY_ID, {"_mid": message_id})

    async def states_of(self, message_ids: Iterable[str]) -> dict[str, State]:
        """The state of each of ``message_ids`` that the store knows: one read per 500 ids (start-up looks up
        every spooled copy at once: a backlog of 20,000 was 20,000 reads, seconds of start-up)."""
        def tx(conn: Connection, ids: list[str]) -> dict[str, State]:
            found: dict[str, State] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                rows = conn.execute(select(m.message_id, m.state).where(m.message_id.in_(ids[start:start + _IN_CHUNK])))
                found.update((mid, State(state)) for mid, state in rows)
            return found
        return await self._run.read(tx, list(message_ids))

    async def records_of(self, message_ids: Iterable[str]) -> dict[str, MessageRecord]:
        """The record of each of ``message_ids`` that the store knows: one read per 512 ids (the receipt matcher
        looks up a batch of delivery reports at once). Each IN list is padded to a power of two (its last id
        repeated): the driver prepares and caches one statement per text on each reader connection (128 each), so
        one text per list length would grow them by a statement for every length a batch happened to have."""
        def tx(conn: Connection, ids: list[str]) -> dict[str, MessageRecord]:
            found: dict[str, MessageRecord] = {}
            for start in range(0, len(ids), 512):
                chunk = ids[start:start + 512]
                chunk += [chunk[-1]] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
                for record in _records(conn, _RECORDS_OF, {"_ids": chunk}):
                    found[record.message_id] = record
            return found
        ids = list(dict.fromkeys(message_ids))
        return await self._run.read(tx, ids) if ids else {}

    async def accepted_inbound(self, message_ids: Iterable[str]) -> set[str]:
        """Which of ``message_ids`` arrived and were accepted (one read per 500 ids)."""
        def tx(conn: Connection, ids: list[str]) -> set[str]:
            i, found = inbound.c, set()
            for start in range(0, len(ids), _IN_CHUNK):
                found.update(conn.execute(select(i.message_id).where(i.message_id.in_(ids[start:start + _IN_CHUNK]),
                                                                     i.outcome == "accepted")).scalars())
            return found
        return await self._run.read(tx, list(message_ids))

    async def find_inbound_by_transport(self, transport: str, transport_message_id: str) -> InboundRecord | None:
        """The arrival with this transport message id: the accepted one if there is one, else the latest."""
        return await self._run.read(_inbound_one, _INBOUND_BY_TRANSPORT,
                                    {"_transport": transport, "_tmid": transport_message_id})

    async def record_inbound(self, *, message_id: str, transport: str, sha256: str, outcome: str,
                             transport_message_id: str | None = None, sender: str | None = None,
                             signer_fingerprint: str | None = None, type: str | None = None,
                             dossier: str | None = None, mic: str | None = None, reason_code: str | None = None,
                             reason: str | None = None, inbox_path: str | None = None,
                             quarantine_path: str | None = None, receipt: bytes | None = None,
                             actor: str = "intake", dates: Any = None, subjects: Iterable[str] = ()
                             ) -> InboundRecord:
        """Remember an arrival and its receipt: the row and its audit row in one transaction.

        An accepted message also gets, in that transaction, its ``deadline_facts`` row (direction
        inbound) from ``dates`` and a ``subject_index`` row per hash in ``subjects`` (as ``accept``);
        for a refused one they are ignored (a refusal is not a message of the dossier).

        An accepted message id is remembered for good: recording it again raises ``DuplicateInbound``
        (carrying the row as it stays) and changes nothing. A refused one is replaced by the next
        arrival of the same id (the cause, e.g. a stale CRL, may have been fixed since).
        ``received_at`` is the store's clock.
        """
        if outcome not in INBOUND_OUTCOMES:
            raise ValueError(f"inbound outcome must be accepted or refused, not {outcome!r}")
        now = self._now()
        row = dict(message_id=message_id, transport=transport, transport_message_id=transport_message_id,
                   sender=sender, signer_fingerprint=signer_fingerprint, type=type, dossier=dossier, mic=mic,
                   sha256=sha256, received_at=now, outcome=outcome, reason_code=reason_code, reason=reason,
                   inbox_path=inbox_path, quarantine_path=quarantine_path,
                   receipt=None if receipt is None else bytes(receipt))
        accepted = outcome == "accepted"
        facts_row = _dates_row("inbound", message_id, dates) if accepted and dates is not None else None
        subject_rows = _subject_rows("inbound", message_id, subjects, now) if accepted else []

        def tx(conn: Connection) -> InboundRecord:
            existing = conn.execute(_INBOUND_BY_ID, {"_mid": message_id}).first()
            if existing is None:
                conn.execute(_INSERT_INBOUND, row)
            elif existing.outcome == "accepted":
                raise DuplicateInbound(_inbound(existing))
            else:
                conn.execute(_REPLACE_INBOUND, {**{k: v for k, v in row.items() if k != "message_id"},
                                                "_mid": message_id})
            if facts_row is not None:
                _INSERT_DEADLINE_FACTS.execute(conn, facts_row)
            if subject_rows:
                _INSERT_SUBJECT.execute(conn, subject_rows)
            result = outcome if reason_code is None else f"{outcome}: {reason_code}"
            self._audit(conn, now, f"inbound.{'accept' if outcome == 'accepted' else 'refuse'}", message_id,
                        result, actor, transport)
            return InboundRecord(**row)

        return await self._run.write(tx)

    # -- the data subject's rights and the chain's deadlines

    async def subjects_messages(self, subject: str) -> list[SubjectMessage]:
        """Every message indexed under ``subject`` (a ``subject_hash``), both directions, in the order
        they were recorded, with what is known of each (outer joins: a purged message keeps its index row)."""
        if not _SUBJECT.match(subject or ""):
            raise ValueError("a subject is the hex HMAC-SHA256 of a BSN (gateway.privacy.subject_hash)")
        return await self._run.read(_subjects_messages_tx, subject)

    async def deadline_facts(self, direction: str, message_ids: Iterable[str]) -> dict[str, DeadlineDates]:
        """The stored dates of these messages (a message without a row is left out)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be outbound or inbound, not {direction!r}")
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        return await self._run.read(_deadline_facts_tx, direction, ids)

    # -- receipts and audit

    async def add_receipt(self, message_id: str, *, kind: str, verdict: str, detail: str, source: str | None = None,
                          actor: str = "receipts") -> bool:
        """Keep a receipt (no state change: use ``transition(..., receipt=...)`` to do both at once). False: one of
        this message and kind from ``source`` was kept already, nothing written."""
        _check_receipt_kind(kind)
        now = self._now()

        def tx(conn: Connection) -> bool:
            if conn.execute(_EXISTS, {"_mid": message_id}).first() is None:
                raise UnknownMessage(message_id)
            return self._add_receipt(conn, now, message_id, NewReceipt(kind, verdict, detail, source), actor)

        return await self._run.write(tx)

    async def file_receipts(self, filings: Sequence[ReceiptFiling], *, actor: str = "receipt-matcher") -> list[Filed]:
        """Many receipts, each with the transition it proves, in one write transaction (one commit for a window of
        delivery reports, not two per report). Each receipt is kept whether or not its transition applies
        (``Filed.outcome``), unless its carrier was filed already (``NewReceipt.source``; the transition is then
        tried as before: ``already`` or ``stale``); a refused transition (stale) undoes only itself (its
        savepoint). In order: a later filing of the same message sees what an earlier one did. Nothing is kept
        when the transaction fails."""
        for f in filings:
            _check_receipt_kind(f.receipt.kind)
        now = self._now()

        def tx(conn: Connection) -> list[Filed]:
            cursor = conn.connection.dbapi_connection.cursor()
            return [self._file_one(conn, cursor, now, f, actor) for f in filings]

        return await self._run.write(tx) if filings else []

    def _file_one(self, conn: Connection, cursor: Any, now: datetime, f: ReceiptFiling, actor: str) -> Filed:
        row = conn.execute(_FILING_ROW, {"_mid": f.message_id}).first()
        if row is None:
            return Filed("unknown")
        state, spool_path = State(row[0]), row[1]
        self._add_receipt(conn, now, f.message_id, f.receipt, actor)
        if f.to is None:
            return Filed("kept", state)
        if state is f.to:
            return Filed("already", state)
        clear = f.clear_spool and spool_path is not None
        # the driver's savepoint (as engine.py's): SQLAlchemy's begin_nested() costs ~10x the CPU
        cursor.execute("SAVEPOINT receipt_transition")
        try:
            self._move(conn, f.message_id, f.to, now=now, reason=f.reason, actor=actor,
                       expect=set(f.expect) or None, remote_reply=f.remote_reply,
                       fields={"spool_path": None} if clear else {})
        except (StaleState, IllegalTransition):
            cursor.execute("ROLLBACK TO SAVEPOINT receipt_transition")
            cursor.execute("RELEASE SAVEPOINT receipt_transition")
            return Filed("stale", state)
        cursor.execute("RELEASE SAVEPOINT receipt_transition")
        return Filed("moved", state, spool_path if clear else None)

    def _add_receipt(self, conn: Connection, now: datetime, message_id: str, receipt: NewReceipt,
                     actor: str) -> bool:
        """Whether it was kept (False: its carrier was filed already)."""
        added = conn.execute(_INSERT_RECEIPT[conn.dialect.name], dict(
            message_id=message_id, at=now, kind=receipt.kind, verdict=receipt.verdict, detail=receipt.detail,
            source=receipt.source)).rowcount
        if added:
            self._audit(conn, now, "receipt.add", message_id, f"{receipt.kind}: {receipt.verdict}", actor)
        return bool(added)

    async def receipts(self, message_id: str) -> list[Receipt]:
        def tx(conn: Connection) -> list[Receipt]:
            rows = conn.execute(select(*_RECEIPT_COLS).where(receipts.c.message_id == message_id)
                                .order_by(receipts.c.id))
            return [Receipt(*r) for r in rows]

        return await self._run.read(tx)

    async def audit(self, *, action: str, object: str, result: str, origin: str | None = None,
                    actor: str) -> None:
        """An audit row for an event that is not a transition (an alert, an operator's look, a login)."""
        now = self._now()
        await self._run.write(self._audit, now, action, object, result, actor, origin)

    async def audit_rows(self, limit: int = 100, *, object: str | None = None) -> list[dict[str, Any]]:
        """The most recent audit rows, newest first (optionally of one object); the chain's hashes are
        ``gateway.ops.audit``'s business, not the reader's."""
        q = select(*[c for c in audit.c if c.name not in ("prev_hash", "hash")])
        if object is not None:
            q = q.where(audit.c.object == object)
        q = q.order_by(audit.c.id.desc()).limit(limit)

        def tx(conn: Connection) -> list[dict[str, Any]]:
            return [dict(r._mapping) for r in conn.execute(q)]

        return await self._run.read(tx)

    async def read_query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(connection, *args)`` on a reader connection: for the operator's reports, which write
        their own aggregate queries (``gateway/ops``). ``fn`` must only read."""
        return await self._run.read(fn, *args)


# -- reads shared by several methods (they run in a reader thread)

#: ids per IN list: well under SQLite's bound on host parameters (999 before 3.32)
_IN_CHUNK = 500

_s = subject_index.c
_SUBJECT_OUT = (select(_s.subject, _s.direction, _s.message_id, _s.recorded_at, _s.erased_at, m.type, m.sender,
                       m.recipient, m.dossier, m.created_at, m.received_at, m.sent_at, m.delivered_at,
                       m.acknowledged_at, m.state, m.transport, _s.id)
                .select_from(subject_index.outerjoin(messages, m.message_id == _s.message_id))
                .where(_s.subject == bindparam("_subject"), _s.direction == "outbound"))
_i = inbound.c
_SUBJECT_IN = (select(_s.subject, _s.direction, _s.message_id, _s.recorded_at, _s.erased_at, _i.type, _i.sender,
                      null().label("recipient"), _i.dossier, null().label("created_at"), _i.received_at,
                      null().label("sent_at"), null().label("delivered_at"), null().label("acknowledged_at"),
                      _i.outcome, _i.transport, _s.id)
               .select_from(subject_index.outerjoin(inbound, _i.message_id == _s.message_id))
               .where(_s.subject == bindparam("_subject"), _s.direction == "inbound"))


def _subjects_messages_tx(conn: Connection, subject: str) -> list[SubjectMessage]:
    rows = [*conn.execute(_SUBJECT_OUT, {"_subject": subject}), *conn.execute(_SUBJECT_IN, {"_subject": subject})]
    rows.sort(key=lambda r: (r.recorded_at, r[-1]))
    return [SubjectMessage(*r[:-1]) for r in rows]


def _deadline_facts_tx(conn: Connection, direction: str, ids: list[str]) -> dict[str, DeadlineDates]:
    d = deadline_facts.c
    out: dict[str, DeadlineDates] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
        rows = conn.execute(select(d.message_id, *(d[f] for f in _DATE_FIELDS))
                            .where(d.direction == direction, d.message_id.in_(ids[start:start + 500])))
        out.update((r[0], DeadlineDates(*r[1:])) for r in rows)
    return out


def _find_pickup_tx(conn: Connection, sha256: str) -> Pickup | None:
    row = conn.execute(select(*_PICKUP_COLS).where(pickups.c.sha256 == sha256)
                       .order_by((pickups.c.outcome == "accepted").desc(), pickups.c.id.desc()).limit(1)).first()
    return None if row is None else Pickup(*row)


def _last_refusal_tx(conn: Connection, sha256: str, file_name: str) -> Pickup | None:
    row = conn.execute(select(*_PICKUP_COLS).where(pickups.c.sha256 == sha256, pickups.c.file_name == file_name,
                                                   pickups.c.outcome.in_(("rejected", "duplicate")))
                       .order_by(pickups.c.id.desc()).limit(1)).first()
    return None if row is None else Pickup(*row)


def _inbound(row: Row[Any]) -> InboundRecord:
    values = dict(zip(_INBOUND_FIELDS, row))
    if values["receipt"] is not None:
        values["receipt"] = bytes(values["receipt"])
    return InboundRecord(**values)


def _inbound_one(conn: Connection, query: Select[Any], params: dict[str, Any]) -> InboundRecord | None:
    row = conn.execute(query, params).first()
    return None if row is None else _inbound(row)


def _one(conn: Connection, query: Select[Any], message_id: str) -> MessageRecord | None:
    row = conn.execute(query, {"_mid": message_id}).first()
    return None if row is None else _record(row)


def _records(conn: Connection, query: Select[Any], params: dict[str, Any] | None = None) -> list[MessageRecord]:
    return [_record(r) for r in conn.execute(query, params)]


def _scalar(conn: Connection, query: Select[Any], params: dict[str, Any]) -> Any:
    return conn.execute(query, params).scalar()


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
