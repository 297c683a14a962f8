"""The breakers' table (store migration 9): added to a store of the previous schema with its rows kept, and
what the dispatcher writes into it — down, failed probes, up, reset at restart — with the audit rows for
going down, coming back and the reset, in the audit trail's hash chain."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

from gateway.store import MIGRATIONS, State, Store
from gateway.store.breakers import CLOSED_AT_RESTART, close_left_open, open_breakers, record_closed, record_down
from gateway.ops.audit import verify

RELAY = "email relay 127.0.0.1:25"
PLATFORM = "platform https://gemeente-0344.example.nl/as2"


def tables(db_path) -> set[str]:
    with sqlite3.connect(db_path) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def waiting_on(store: Store, msg, transport: str, address: str) -> None:
    """Accepted and sealed for ``transport``/``address``: queued, due now."""
    await store.accept(msg)
    await store.save_sealed(msg.message_id, b"sealed:" + msg.message_id.encode(), "mic-" + msg.message_id,
                            transport=transport, address=address, profile="compatible")


def audit(db_path, *objects: str) -> list[tuple]:
    with sqlite3.connect(db_path) as c:
        marks = ", ".join("?" * len(objects))
        return c.execute(f"SELECT action, object, result, actor FROM audit WHERE object IN ({marks}) ORDER BY id",
                         objects).fetchall()


async def test_migration_9_adds_the_table_to_a_store_of_the_previous_schema_and_keeps_its_rows(url, clock, make,
                                                                                                db_path):
    old = await Store.open(url, clock=clock, migrations=MIGRATIONS[:8])
    await old.accept(make("m1"))
    await old.close()
    assert "destination_breakers" not in tables(db_path)

    store = await Store.open(url, clock=clock, migrations=MIGRATIONS[:9])
    try:
        assert "destination_breakers" in tables(db_path)
        with sqlite3.connect(db_path) as c:
            assert c.execute("SELECT max(version) FROM schema_version").fetchone() == (9,)
        assert (await store.get("m1")).state is State.RECEIVED
        assert await open_breakers(store) == []
        await record_down(store, destination=RELAY, transport="email", address=None, since=clock.now,
                          reason="421 4.3.2 out of service", failures=1, next_probe_at=clock.now + timedelta(minutes=5),
                          opened=True, at=clock.now, actor="dispatcher-test")
        assert [b.destination for b in await open_breakers(store)] == [RELAY]
    finally:
        await store.close()


async def test_down_probes_up_and_a_reset_at_restart_with_their_audit_rows(store, clock, make, db_path):
    for code in ("0599", "0344"):  # on the relay: every e-mail address goes through it
        await waiting_on(store, make(recipient=f"gemeente:{code}"), "email", f"nazorg@gemeente-{code}.example.nl")
    await waiting_on(store, make(recipient="gemeente:0344"), "platform", "https://gemeente-0344.example.nl/as2")
    await waiting_on(store, make(recipient="gemeente:0363"), "platform", "https://gemeente-0363.example.nl/as2")
    opened_at = clock.now

    await record_down(store, destination=RELAY, transport="email", address=None, since=opened_at,
                      reason="421 4.3.2 out of service", failures=1, next_probe_at=opened_at + timedelta(minutes=5),
                      opened=True, at=clock.now, actor="dispatcher-a")
    clock.advance(minutes=1)
    await record_down(store, destination=PLATFORM, transport="platform", address=PLATFORM.split(" ", 1)[1],
                      since=clock.now, reason="no answer: connection refused", failures=1,
                      next_probe_at=clock.now + timedelta(minutes=5), opened=True, at=clock.now, actor="dispatcher-a")
    clock.advance(minutes=5)
    await record_down(store, destination=RELAY, transport="email", address=None, since=opened_at,
                      reason="421 4.7.0 still out", failures=2, next_probe_at=clock.now + timedelta(minutes=10),
                      opened=False, at=clock.now, actor="dispatcher-a")

    relay, platform = await open_breakers(store)  # longest down first
    assert (relay.destination, relay.transport, relay.address) == (RELAY, "email", None)
    assert (relay.since, relay.failures, relay.reason) == (opened_at, 2, "421 4.7.0 still out")
    assert relay.next_probe_at == clock.now + timedelta(minutes=10) and relay.closed_at is None
    assert relay.waiting == 2, "both e-mail messages, whatever their address; not the platform's"
    assert (platform.destination, platform.waiting) == (PLATFORM, 1), "only the messages to its own URL"

    clock.advance(minutes=3)
    await record_closed(store, destination=RELAY, reason="the destination answered after 9 min 0 s down, "
                                                         "1 failed probes", at=clock.now, actor="dispatcher-a")
    assert [b.destination for b in await open_breakers(store)] == [PLATFORM]

    # the next run: the platform's row was left open by the last one, the relay's closed stays as it was
    assert await close_left_open(store, at=clock.now, actor="dispatcher-b") == [PLATFORM]
    assert await open_breakers(store) == []
    assert await close_left_open(store, at=clock.now, actor="dispatcher-b") == []
    with sqlite3.connect(db_path) as c:
        rows = dict(c.execute("SELECT destination, closed_reason FROM destination_breakers").fetchall())
    assert rows == {RELAY: "the destination answered after 9 min 0 s down, 1 failed probes",
                    PLATFORM: CLOSED_AT_RESTART}

    # down, up and the reset are audited (a failed probe is not: its message's transitions are)
    assert audit(db_path, RELAY, PLATFORM) == [
        ("destination.down", RELAY, "421 4.3.2 out of service", "dispatcher-a"),
        ("destination.down", PLATFORM, "no answer: connection refused", "dispatcher-a"),
        ("destination.up", RELAY, "the destination answered after 9 min 0 s down, 1 failed probes", "dispatcher-a"),
        ("destination.reset", PLATFORM, CLOSED_AT_RESTART, "dispatcher-b")]
    report = await verify(store, [])
    assert report.ok and report.rows == 4 + 4 * 2, report.problems  # 4 messages: accepted, queued
