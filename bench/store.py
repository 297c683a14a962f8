"""Benchmark: the store's hot operations against plain sqlite3 doing the same writes.

Each figure is the rate of one public ``Store`` call, awaited one at a time from
asyncio as a pipeline task does, beside a baseline of the stdlib ``sqlite3``
module running the same statements in one ``BEGIN IMMEDIATE … COMMIT`` each
(same schema, same pragmas: WAL, ``synchronous=FULL``, so every commit is an
fsync of the WAL), synchronously, with no thread hand-off and no SQLAlchemy.
The ratio is what the store's layers (thread hand-off, SQLAlchemy, type
conversion, records) leave of the bare database's speed. Rounds alternate the
two sides so machine noise hits both alike; the figure is the ratio of the
medians. Goal: ratio >= 0.5.

- ``accept+transition``: ``accept()`` of a new message, then ``transition()``
  received -> held (pairs/s). Also with 8 tasks at once (the writer thread
  serialises them: this shows the queueing costs nothing).
- ``claim 10``: ``claim(limit=10)`` of due messages (claims/s; x10 messages).
- ``get``: ``get()`` of one message by id. Bare, that is one SELECT (~20 µs): the
  round trip to a reader thread and back (printed, ~70-200 µs on a 2-core VM) is
  most of the store's figure, so this one cannot reach the goal by design.
- ``save_sealed``: received -> queued with a 20 KB sealed entity.

Rows a figure needs (received or due messages) are written beforehand with
plain sqlite3, outside the timing, into both databases alike.

    .venv/bin/python bench/store.py [--rounds N] [--seconds S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy  # noqa: E402

from bench.common import machine, print_figures, write_result  # noqa: E402
from gateway.store import MessageRecord, NewMessage, State, Store  # noqa: E402
from gateway.store.chain import GENESIS, row_hash  # noqa: E402

GOAL = 0.5
ENTITY = os.urandom(20_000)
COLS = [f.name for f in fields(MessageRecord)]
DATETIMES = {"next_attempt_at", "lease_until", "created_at", "received_at", "updated_at", "sent_at", "delivered_at",
             "acknowledged_at"}
_ids = itertools.count()


def ts(dt: datetime) -> str:
    """A datetime as the store keeps it in SQLite (naive UTC, fixed width)."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def new_message() -> NewMessage:
    n = next(_ids)
    return NewMessage(message_id=f"b{n:08d}", type="meldingsbericht", version="1.0", sender="pi:PI-VUGHT",
                      recipient=f"gemeente:{n % 300:04d}", dossier=f"DOS-{n}", replies_to=None, supersedes=None,
                      priority=n % 3, created_at=datetime.now(timezone.utc), file_name=f"b{n:08d}.xml",
                      size=5000, sha256=f"{n:064x}", spool_path=f"/var/spool/nazorg/b{n:08d}.xml")


def message_row(msg: NewMessage, state: State, now: datetime) -> dict:
    row = {f.name: getattr(msg, f.name) for f in fields(NewMessage)}
    row.update(created_at=ts(msg.created_at), state=state.value, reason=None, successor=None, transport=None,
               address=None, attempts=0, lease_owner=None, lease_until=None, mic=None, mail_message_id=None,
               next_attempt_at=ts(now) if state is State.QUEUED else None, received_at=ts(now),
               updated_at=ts(now), sent_at=None, delivered_at=None, acknowledged_at=None)
    return row


INSERT_MESSAGE = f"INSERT INTO messages ({', '.join(COLS)}) VALUES ({', '.join(':' + c for c in COLS)})"
INSERT_PICKUP = ("INSERT INTO pickups (at, file_name, size, sha256, outcome, message_id, spool_path) "
                 "VALUES (?, ?, ?, ?, 'accepted', ?, ?)")
INSERT_TRANSITION = ("INSERT INTO transitions (message_id, at, from_state, to_state, reason, attempt, remote_reply, "
                     "actor) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)")
INSERT_AUDIT = ("INSERT INTO audit (id, at, action, object, result, origin, actor, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, 'gateway', ?, ?, ?)")
AUDIT_HEAD = ("SELECT (SELECT id FROM audit ORDER BY id DESC LIMIT 1), (SELECT hash FROM audit ORDER BY id DESC LIMIT 1), "
              "(SELECT seq FROM sqlite_sequence WHERE name = 'audit')")


def audit(c: sqlite3.Connection, at: datetime, rows: list[tuple[str, str, str, str]]) -> None:
    """Audit rows chained as the store chains them (gateway/store/chain.py): the head, a hash per row."""
    last_id, prev, seq = c.execute(AUDIT_HEAD).fetchone()
    next_id, prev = max(last_id or 0, seq or 0) + 1, prev or GENESIS
    chained = []
    for action, obj, result, actor in rows:
        h = row_hash(prev, next_id, at, action, obj, result, "gateway", actor)
        chained.append((next_id, ts(at), action, obj, result, actor, prev, h))
        next_id, prev = next_id + 1, h
    c.executemany(INSERT_AUDIT, chained)
RETURNING = f"RETURNING {', '.join(COLS)}"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("busy_timeout=15000", "foreign_keys=ON", "journal_mode=WAL", "synchronous=FULL"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def fill(path: Path, state: State, n: int) -> list[str]:
    """n messages in ``state`` (received, or queued and due), written in one transaction."""
    conn = connect(path)
    now = datetime.now(timezone.utc) - timedelta(days=1)
    msgs = [new_message() for _ in range(n)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT_MESSAGE, [message_row(m, state, now) for m in msgs])
    conn.execute("COMMIT")
    conn.close()
    return [m.message_id for m in msgs]


class Bare:
    """The baseline: the store's statements, by hand, on one plain sqlite3 connection."""

    def __init__(self, path: Path):
        self.conn = connect(path)

    def _move(self, c: sqlite3.Connection, mid: str, to: State, at: datetime, extra: str = "",
              params: tuple = ()) -> tuple:
        now = ts(at)
        frm, _owner = c.execute("SELECT state, lease_owner FROM messages WHERE message_id = ?", (mid,)).fetchone()
        row = c.execute(f"UPDATE messages SET state = ?, reason = NULL, updated_at = ?{extra} "
                        f"WHERE message_id = ? AND state = ? {RETURNING}", (to.value, now, *params, mid, frm)
                        ).fetchone()
        c.execute(INSERT_TRANSITION, (mid, now, frm, to.value, None, row[COLS.index("attempts")], "bench"))
        audit(c, at, [("message.transition", mid, f"{frm} -> {to}", "bench")])
        return row

    def accept(self, msg: NewMessage) -> None:
        at = datetime.now(timezone.utc)
        c, now = self.conn, ts(at)
        c.execute("BEGIN IMMEDIATE")
        c.execute(INSERT_MESSAGE, message_row(msg, State.RECEIVED, datetime.now(timezone.utc)))
        c.execute(INSERT_PICKUP, (now, msg.file_name, msg.size, msg.sha256, msg.message_id, msg.spool_path))
        c.execute(INSERT_TRANSITION, (msg.message_id, now, None, "received", None, 0, "pickup"))
        audit(c, at, [("message.accept", msg.message_id, "received", "pickup")])
        c.execute("COMMIT")

    def transition(self, mid: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._move(self.conn, mid, State.HELD, datetime.now(timezone.utc), ", next_attempt_at = NULL")
        self.conn.execute("COMMIT")

    def save_sealed(self, mid: str) -> None:
        at = datetime.now(timezone.utc)
        c, now = self.conn, ts(at)
        c.execute("BEGIN IMMEDIATE")
        self._move(c, mid, State.QUEUED, at, ", mic = ?, transport = ?, address = ?, next_attempt_at = ?",
                   ("mic", "smtp", "a@b.example", now))
        c.execute("DELETE FROM sealed WHERE message_id = ?", (mid,))
        c.execute("INSERT INTO sealed (message_id, entity, mic, profile, sealed_at) VALUES (?, ?, ?, ?, ?)",
                  (mid, ENTITY, "mic", "compatible", now))
        c.execute("COMMIT")

    def claim(self, limit: int) -> int:
        at = datetime.now(timezone.utc)
        c, now = self.conn, ts(at)
        until = ts(datetime.now(timezone.utc) + timedelta(minutes=5))
        c.execute("BEGIN IMMEDIATE")
        rows = c.execute("SELECT message_id, state FROM messages WHERE next_attempt_at <= ? ORDER BY priority DESC, "
                         "next_attempt_at, received_at, message_id LIMIT ?", (now, limit)).fetchall()
        ids = [r[0] for r in rows]
        marks = ", ".join("?" * len(ids))
        changed = c.execute(f"UPDATE messages SET state = 'sending', reason = NULL, updated_at = ?, lease_owner = ?, "
                            f"lease_until = ?, attempts = attempts + 1, next_attempt_at = NULL "
                            f"WHERE message_id IN ({marks}) {RETURNING}", (now, "w", until, *ids)).fetchall()
        c.executemany(INSERT_TRANSITION, [(r[0], now, "queued", "sending", None, r[COLS.index("attempts")], "w")
                                          for r in changed])
        audit(c, at, [("message.transition", r[0], "queued -> sending", "w") for r in changed])
        c.execute("COMMIT")
        return len(changed)

    def get(self, mid: str) -> tuple:
        return self.conn.execute(f"SELECT {', '.join(COLS)} FROM messages WHERE message_id = ?", (mid,)).fetchone()


class Supply:
    """Ids of rows in a state, refilled outside the timing when they run out."""

    def __init__(self, path: Path, state: State, batch: int):
        self.path, self.state, self.batch, self.ids = path, state, batch, []

    def take(self, n: int) -> list[str]:
        if len(self.ids) < n:
            self.ids += fill(self.path, self.state, self.batch)
        out, self.ids = self.ids[:n], self.ids[n:]
        return out


async def timed(op: Callable[[], Awaitable[int] | int], prepare: Callable[[], object], seconds: float) -> float:
    """Items per second of ``op`` alone (``prepare`` runs before each call, untimed)."""
    done, spent = 0, 0.0
    while spent < seconds:
        prepare()
        t = time.perf_counter()
        out = op()
        if asyncio.iscoroutine(out):
            out = await out
        spent += time.perf_counter() - t
        done += out
    return done / spent


async def concurrent_pairs(store: Store, tasks: int, seconds: float) -> float:
    stop, done = time.perf_counter() + seconds, 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            msg = new_message()
            await store.accept(msg)
            await store.transition(msg.message_id, State.HELD, reason="no route", actor="bench")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done / (time.perf_counter() - start)


async def hand_off_us(n: int = 2000) -> float:
    """One round trip of a no-op to a thread and back, as the store makes per call."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, int)
        start = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(pool, int)
        return (time.perf_counter() - start) / n * 1e6


async def measure(work: Path, rounds: int, seconds: float) -> tuple[list[dict], float]:
    ours_db, bare_db = work / "store.db", work / "bare.db"
    store = await Store.open(f"sqlite+aiosqlite:///{ours_db}", origin="gateway")
    await (await Store.open(f"sqlite+aiosqlite:///{bare_db}", origin="gateway")).close()  # the same schema
    bare = Bare(bare_db)
    received = {db: Supply(db, State.RECEIVED, 2000) for db in (ours_db, bare_db)}
    due = {db: Supply(db, State.QUEUED, 5000) for db in (ours_db, bare_db)}
    got = fill(ours_db, State.RECEIVED, 1)[0], fill(bare_db, State.RECEIVED, 1)[0]
    slot: dict[str, object] = {}

    async def ours_pair() -> int:
        msg = new_message()
        await store.accept(msg)
        await store.transition(msg.message_id, State.HELD, reason="no route", actor="bench")
        return 1

    def bare_pair() -> int:
        msg = new_message()
        bare.accept(msg)
        bare.transition(msg.message_id)
        return 1

    async def ours_claim() -> int:
        return len(await store.claim(owner="w", limit=10, lease=timedelta(minutes=5))) // 10

    async def ours_seal() -> int:
        await store.save_sealed(slot["mid"], ENTITY, "mic", transport="smtp", address="a@b.example",
                                profile="compatible")
        return 1

    async def ours_get() -> int:
        return (await store.get(got[0])) is not None

    def bare_seal() -> int:
        bare.save_sealed(slot["mid"])
        return 1

    def take(supply: Supply, n: int) -> Callable[[], None]:
        def prepare() -> None:
            slot["mid"] = supply.take(n)[0]
        return prepare

    def nothing() -> None:
        pass

    def keep_due(db: Path) -> Callable[[], None]:
        return lambda: due[db].take(10)  # makes sure ten are due (the store claims whichever come first)

    cases = [
        ("accept+transition", "pairs/s", ours_pair, nothing, bare_pair, nothing),
        ("claim 10", "claims/s", ours_claim, keep_due(ours_db), lambda: bare.claim(10) // 10, keep_due(bare_db)),
        ("get", "gets/s", ours_get, nothing, lambda: bare.get(got[1]) is not None, nothing),
        ("save_sealed 20 KB", "seals/s", ours_seal, take(received[ours_db], 1), bare_seal,
         take(received[bare_db], 1)),
    ]
    figures = []
    for name, unit, ours, ours_prep, base, base_prep in cases:
        await timed(ours, ours_prep, 0.05)  # warm caches and connections
        await timed(base, base_prep, 0.05)
        ours_rates, bare_rates = [], []
        for _ in range(rounds):
            bare_rates.append(await timed(base, base_prep, seconds))
            ours_rates.append(await timed(ours, ours_prep, seconds))
        figures.append(figure(name, unit, ours_rates, bare_rates))
        if name == "accept+transition":
            many = [await concurrent_pairs(store, 8, seconds) for _ in range(rounds)]
            figures.append(figure("accept+transition x8", unit, many, bare_rates))
    await store.close()
    bare.conn.close()
    return figures, await hand_off_us()


def figure(name: str, unit: str, ours_rates: list[float], bare_rates: list[float]) -> dict:
    o, b = statistics.median(ours_rates), statistics.median(bare_rates)
    per_round = sorted(x / y for x, y in zip(ours_rates, bare_rates))
    return {"name": name, "unit": unit, "value": round(o), "baseline_name": "plain sqlite3, same statements, "
            "one transaction each, synchronous", "baseline": round(b), "ratio": round(o / b, 3), "goal": GOAL,
            "ratio_per_round_min": round(per_round[0], 3), "ratio_per_round_max": round(per_round[-1], 3),
            "per_message_us": round(1e6 / o, 1), "baseline_per_message_us": round(1e6 / b, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="per side per round")
    ap.add_argument("--dir", type=Path, default=None, help="where the database files go (default: a temporary "
                    "directory; put it on the disk the gateway's state will live on)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        figures, hop = asyncio.run(measure(Path(tmp), args.rounds, args.seconds))
    result = {
        "benchmark": "store",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "sqlite": sqlite3.sqlite_version, "sqlalchemy": sqlalchemy.__version__},
        "thread_hand_off_us": round(hop, 1),
        "figures": figures,
    }
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"SQLAlchemy {sqlalchemy.__version__}; WAL, synchronous=FULL; {args.rounds} rounds of {args.seconds} s; "
          f"thread hand-off {hop:.0f} µs")
    print_figures(figures, GOAL, "ops/s")
    write_result(ROOT, "store", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
