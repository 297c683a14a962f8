"""The execution model: one writer thread for every write, reads beside it, async URLs mapped to sync drivers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy.exc import OperationalError

from gateway.store import State, Store
from gateway.store import engine as store_engine
from gateway.store.engine import READERS, sync_url


@pytest.mark.parametrize(("given", "used"), [
    ("sqlite+aiosqlite:///state/gateway.db", "sqlite+pysqlite:///state/gateway.db"),
    ("sqlite:///state/gateway.db", "sqlite:///state/gateway.db"),
    ("sqlite+pysqlite:////var/lib/nazorg/gateway.db", "sqlite+pysqlite:////var/lib/nazorg/gateway.db"),
    ("postgresql+asyncpg://gw:s3cret@db.example:5432/nazorg", "postgresql+psycopg://gw:s3cret@db.example:5432/nazorg"),
    ("postgresql+psycopg_async://db.example/nazorg", "postgresql+psycopg://db.example/nazorg"),
    ("postgresql+psycopg://db.example/nazorg", "postgresql+psycopg://db.example/nazorg"),
])
def test_async_driver_urls_are_mapped_to_their_sync_twins(given, used):
    assert sync_url(given).render_as_string(hide_password=False) == used


async def test_the_daemons_url_opens_on_the_stdlib_driver(store):
    assert store._engine.url.drivername == "sqlite+pysqlite"
    assert repr(store).startswith("<Store sqlite:")


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:",
                                 "sqlite+aiosqlite:///file:gw?mode=memory&cache=shared&uri=true"])
async def test_an_in_memory_store_is_one_database(url, clock, make):
    """In memory, each connection would be a database of its own: reads must see what writes wrote."""
    s = await Store.open(url, clock=clock)
    try:
        await s.accept(make("m1"))
        assert (await s.get("m1")).state is State.RECEIVED
        assert (await s.counts())[State.RECEIVED] == 1
        ident = threading.get_ident
        assert len({await s._run.write(lambda _c: ident()), *(await asyncio.gather(
            *(s._run.read(lambda _c: ident()) for _ in range(8))))}) == 1
    finally:
        await s.close()


async def test_writes_run_in_one_thread_reads_in_others(store):
    def ident(_conn) -> int:
        return threading.get_ident()

    writers = set(await asyncio.gather(*(store._run.write(ident) for _ in range(20))))
    readers = set(await asyncio.gather(*(store._run.read(ident) for _ in range(20))))
    assert len(writers) == 1 and 1 <= len(readers) <= READERS
    assert not writers & readers and threading.get_ident() not in writers | readers


async def test_many_tasks_writing_at_once(store, make, sql):
    """Forty pipeline tasks each accept a message and move it on: every pair lands, each exactly once."""
    msgs = [make() for _ in range(40)]

    async def pair(msg):
        await store.accept(msg)
        return await store.transition(msg.message_id, State.HELD, reason="no route", actor="t", expect=State.RECEIVED)

    records = await asyncio.gather(*(pair(m) for m in msgs))
    assert sorted(r.message_id for r in records) == sorted(m.message_id for m in msgs)
    assert {r.state for r in records} == {State.HELD}
    assert sql("SELECT count(*) FROM transitions") == [(80,)]
    assert sql("SELECT action, count(*) FROM audit GROUP BY action ORDER BY action") == [
        ("message.accept", 40), ("message.transition", 40)]


def other_writer(db_path) -> sqlite3.Connection:
    """Another process holding the write lock (as another gateway instance would during its write)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def test_a_read_never_waits_behind_a_write_waiting_for_the_lock(store, make, db_path):
    await store.accept(make("m1"))
    other = other_writer(db_path)
    try:
        write = asyncio.create_task(store.transition("m1", State.HELD, reason="no route", actor="t"))
        await asyncio.sleep(0.2)
        assert not write.done()  # the writer thread waits in SQLite's busy handler
        # a read behind that write would hang until the lock is gone: here it must not
        got = await asyncio.wait_for(store.get("m1"), 5)
        assert got.state is State.RECEIVED
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await write).state is State.HELD


async def test_a_write_cancelled_before_its_turn_never_runs(store, db_path):
    other = other_writer(db_path)
    try:
        first = asyncio.create_task(store.audit(action="t.first", object="x", result="ok", actor="t"))
        await asyncio.sleep(0.2)  # the writer thread is inside `first`, waiting for the lock
        second = asyncio.create_task(store.audit(action="t.second", object="x", result="ok", actor="t"))
        await asyncio.sleep(0.05)  # handed over, queued behind `first`
        second.cancel()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert [r["action"] for r in await store.audit_rows()] == ["t.first"]


async def test_a_write_cancelled_while_running_still_commits(store, db_path):
    """Once in the writer thread a transaction finishes: the caller is gone, the row is not."""
    other = other_writer(db_path)
    try:
        running = asyncio.create_task(store.audit(action="t.running", object="x", result="ok", actor="t"))
        await asyncio.sleep(0.2)
        running.cancel()
    finally:
        other.execute("ROLLBACK")
        other.close()
    with pytest.raises(asyncio.CancelledError):
        await running
    await store.audit(action="t.after", object="x", result="ok", actor="t")  # runs after it: first in, first out
    assert [r["action"] for r in await store.audit_rows()] == ["t.after", "t.running"]


async def test_a_lock_timeout_fails_one_write_and_the_next_one_works(url, clock, make, db_path, monkeypatch):
    monkeypatch.setattr(store_engine, "BUSY_TIMEOUT_MS", 100)
    s = await Store.open(url, clock=clock)
    try:
        other = other_writer(db_path)
        try:
            with pytest.raises(OperationalError, match="database is locked"):
                await s.accept(make("m1"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await s.accept(make("m1"))).state is State.RECEIVED
        assert [t.to_state for t in await s.timeline("m1")] == [State.RECEIVED]
    finally:
        await s.close()


async def test_close_lets_the_writes_handed_over_finish(url, clock, make):
    s = await Store.open(url, clock=clock)
    tasks = [asyncio.create_task(s.accept(make(f"q{i}"))) for i in range(10)]
    await asyncio.sleep(0)  # every task has handed its write to the writer thread
    await s.close()
    assert [r.state for r in await asyncio.gather(*tasks)] == [State.RECEIVED] * 10
    with pytest.raises(RuntimeError):  # a closed store takes no more work
        await s.get("q0")
    await s.close()  # twice is fine
    s = await Store.open(url, clock=clock)
    try:
        assert (await s.counts())[State.RECEIVED] == 10
    finally:
        await s.close()


async def test_writes_queued_together_commit_once_and_a_failing_one_is_undone_alone(store, db_path, sql):
    """Group commit: what queued while the writer waited goes in one transaction, each call in its own
    savepoint. The call that raises gets its exception and leaves nothing; the others are committed, and
    none of them hears of success before that one COMMIT."""
    from sqlalchemy import event

    from gateway.ops.audit import Report, _walk

    commits: list[int] = []
    event.listen(store._engine, "commit", lambda _conn: commits.append(1))

    def failing(conn):
        conn.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
        raise ValueError("this call fails after writing")

    other = other_writer(db_path)
    try:
        first = asyncio.create_task(store.audit(action="t.first", object="x", result="ok", actor="t"))
        await asyncio.sleep(0.2)  # the writer thread holds `first` alone, waiting for the lock
        queued = [asyncio.create_task(store.audit(action=f"t.q{i}", object="x", result="ok", actor="t"))
                  for i in range(4)]
        bad = asyncio.create_task(store._run.write(failing))
        queued += [asyncio.create_task(store.audit(action=f"t.q{i}", object="x", result="ok", actor="t"))
                   for i in range(4, 8)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in (first, bad, *queued))
    finally:
        other.execute("ROLLBACK")
        other.close()
    await first
    await asyncio.gather(*queued)
    with pytest.raises(ValueError, match="fails after writing"):
        await bad
    assert len(commits) == 2, "the eight queued writes and the failing one were committed as one group"
    assert sql("SELECT name FROM sqlite_master WHERE name = 'scratch'") == []
    actions = sorted(r["action"] for r in await store.audit_rows())
    assert actions == sorted(["t.first", *(f"t.q{i}" for i in range(8))])
    report = Report()
    await store.run_read(_walk, set(), report)
    assert report.rows == 9 and report.problems == [], "the audit chain has no hole where the failed call was"
