"""The queue: sealing, claiming (order, exclusions, no double hand-out), leases, graceful release."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store import LEASE_EXPIRED, StaleState, State, Store, StoreError, UnknownMessage
from gateway.store.store import claim_query
from paths import NOW, ROOT

LEASE = timedelta(minutes=2)


async def test_save_sealed_queues_with_the_bytes(store, make, clock):
    await store.accept(make("m1"))
    entity = bytes(range(256)) * 10
    rec = await store.save_sealed("m1", entity, "sha256:abc", transport="as2", address="https://gw.example/as2",
                                  profile="strong")
    assert (rec.state, rec.mic, rec.transport, rec.address, rec.next_attempt_at) == (
        State.QUEUED, "sha256:abc", "as2", "https://gw.example/as2", clock.now)
    assert await store.sealed("m1") == entity
    assert [t.actor for t in await store.timeline("m1")] == ["pickup", "sealer"]
    with pytest.raises(StaleState):  # sealing twice: the message is already queued
        await store.save_sealed("m1", b"other", "x", transport="smtp", address="a@b", profile="compatible")
    assert await store.sealed("m1") == entity
    with pytest.raises(StoreError, match="no sealed entity for message nope"):
        await store.sealed("nope")


async def test_a_held_message_is_sealed_again_when_released(store, make):
    await store.accept(make("m1"))
    await store.save_sealed("m1", b"v1", "mic1", transport="smtp", address="a@b", profile="compatible")
    await store.transition("m1", State.HELD, reason="recipient certificate revoked", actor="dispatcher")
    rec = await store.save_sealed("m1", b"v2", "mic2", transport="smtp", address="a@b", profile="compatible")
    assert (rec.state, rec.mic, rec.reason) == (State.QUEUED, "mic2", None)
    assert await store.sealed("m1") == b"v2"


async def test_claim_order_priority_then_due_time_then_arrival(store, make, queue, clock):
    await queue(store, make("low-early", priority=0))
    clock.advance(seconds=1)
    await queue(store, make("high-late", priority=9))
    clock.advance(seconds=1)
    await queue(store, make("mid-a", priority=5))
    clock.advance(seconds=1)
    await queue(store, make("mid-b", priority=5))
    # mid-a retried: due later than mid-b now
    [_, _] = await store.claim(owner="w", limit=2, lease=LEASE)  # high-late, mid-a
    await store.transition("mid-a", State.RETRY_WAIT, actor="w", next_attempt_at=clock.now + timedelta(seconds=30))
    await store.transition("high-late", State.SENT, actor="w")
    await queue(store, make("future", priority=99))
    await store.transition("future", State.HELD, actor="t")  # held: never claimed
    clock.advance(minutes=1)
    got = await store.claim(owner="w", limit=10, lease=LEASE)
    assert [r.message_id for r in got] == ["mid-b", "mid-a", "low-early"]
    assert [r.attempts for r in got] == [1, 2, 1]
    assert all((r.state, r.lease_owner, r.lease_until) == (State.SENDING, "w", clock.now + LEASE) for r in got)
    assert await store.claim(owner="w", limit=10, lease=LEASE) == []


async def test_claim_limit_and_not_yet_due(store, make, queue, clock):
    for i in range(5):
        await queue(store, make(f"m{i}"))
    await store.claim(owner="w", limit=2, lease=LEASE)
    assert len(await store.claim(owner="w", limit=2, lease=LEASE)) == 2
    assert await store.claim(owner="w", limit=0, lease=LEASE) == []
    [last] = await store.claim(owner="w", limit=2, lease=LEASE)
    await store.transition(last.message_id, State.RETRY_WAIT, actor="w", next_attempt_at=clock.now + timedelta(hours=1))
    assert await store.claim(owner="w", limit=5, lease=LEASE) == []
    assert await store.next_due() == clock.now + timedelta(hours=1)
    clock.advance(minutes=59, seconds=59)
    assert await store.claim(owner="w", limit=5, lease=LEASE) == []
    clock.advance(seconds=1)  # due exactly now
    assert [r.message_id for r in await store.claim(owner="w", limit=5, lease=LEASE)] == [last.message_id]


async def test_exclude_destinations(store, make, queue):
    await queue(store, make("to-0599", recipient="gemeente:0599", priority=9))
    await queue(store, make("to-0363", recipient="gemeente:0363", priority=5))
    await queue(store, make("to-pi", recipient="pi:PI-VUGHT", priority=1))
    got = await store.claim(owner="w", limit=10, lease=LEASE, exclude_destinations={"gemeente:0599", "pi:PI-VUGHT"})
    assert [r.message_id for r in got] == ["to-0363"]
    got = await store.claim(owner="w", limit=10, lease=LEASE, exclude_destinations=["gemeente:0599"])
    assert [r.message_id for r in got] == ["to-pi"]
    assert [r.message_id for r in await store.claim(owner="w", limit=10, lease=LEASE)] == ["to-0599"]


async def test_concurrent_claims_never_hand_out_a_message_twice(url, clock, make, queue):
    """Eight dispatcher tasks over two Store instances (two processes' worth of connections) drain one queue."""
    a, b = await Store.open(url, clock=clock), await Store.open(url, clock=clock)
    try:
        ids = set()
        for i in range(40):
            m = make(f"c{i:03d}", priority=i % 4)
            ids.add(m.message_id)
            await queue(a, m)
        claimed: list[tuple[str, str]] = []

        async def dispatcher(s: Store, name: str) -> None:
            while batch := await s.claim(owner=name, limit=3, lease=LEASE):
                for r in batch:
                    claimed.append((r.message_id, name))
                    await asyncio.sleep(0.002)  # "sending"
                    await s.transition(r.message_id, State.SENT, actor=name, expect=State.SENDING, owner=name)

        await asyncio.gather(*(dispatcher(s, f"{s_name}-{k}") for k in range(4) for s_name, s in (("a", a), ("b", b))))
        got = [m for m, _ in claimed]
        assert len(got) == len(set(got)) == 40 and set(got) == ids
        # (which instance wins is up to SQLite's busy handler, which is not fair: see the report)
        assert (await a.counts())[State.SENT] == 40
        assert {len(await a.timeline(m)) for m in ids} == {4}  # received, queued, sending, sent: once each
    finally:
        await a.close()
        await b.close()


CLAIMER = """
import asyncio, json, sys, time
from datetime import datetime, timedelta
from gateway.store import Store
async def main(url, name, now):
    s = await Store.open(url, clock=lambda: now)
    print("ready", flush=True)
    sys.stdin.readline()
    got, first = [], time.monotonic()
    while batch := await s.claim(owner=name, limit=1, lease=timedelta(minutes=5)):
        got += [r.message_id for r in batch]
        await asyncio.sleep(0.002)
    last = time.monotonic()
    await s.close()
    print(json.dumps({"got": got, "window": [first, last]}), flush=True)
asyncio.run(main(sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])))
"""


async def test_two_processes_claim_disjoint_sets(url, store, make, queue):
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", CLAIMER, url, f"proc{k}", NOW.isoformat(),
                                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE)
             for k in range(2)]
    for i in range(30):  # while they start
        await queue(store, make(f"p{i:03d}"))
    for p in procs:  # both are connected before either starts (log lines come first)
        while (line := await asyncio.wait_for(p.stdout.readline(), 30)).strip() != b"ready":
            assert line, "the claimer died before it was ready"
    for p in procs:
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode()[-2000:] for _, e in outs]
    reports = [json.loads(o.decode().strip().splitlines()[-1]) for o, _ in outs]
    sets = [r["got"] for r in reports]
    together = [m for s in sets for m in s]
    assert len(together) == len(set(together)) == 30
    (a0, a1), (b0, b1) = (r["window"] for r in reports)
    assert a0 < b1 and b0 < a1  # both were claiming at the same time (who wins is SQLite's busy handler's luck)
    for k, mine in enumerate(sets):
        for m in mine[:5]:
            assert (await store.get(m)).lease_owner == f"proc{k}"


def test_the_claim_query_locks_rows_on_postgresql_only():
    q = claim_query(NOW, 5, ["gemeente:0599"])
    pg = str(q.compile(dialect=postgresql.dialect()))
    lite = str(q.compile(dialect=sqlite.dialect()))
    assert pg.rstrip().endswith("FOR UPDATE SKIP LOCKED") and "NOT IN" in pg
    assert "FOR UPDATE" not in lite and "ORDER BY messages.priority DESC" in lite


async def test_the_claim_walks_the_due_index_without_sorting(store, sql):
    compiled = claim_query(NOW, 5, ["gemeente:0599", "pi:PI-VUGHT"]).compile(
        dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
    plan = " ".join(row[-1] for row in sql("EXPLAIN QUERY PLAN " + str(compiled), *["x"] * str(compiled).count("?")))
    assert "ix_messages_due" in plan and "TEMP B-TREE" not in plan, plan


async def test_with_a_destination_down_the_claim_and_the_next_due_look_read_the_index_alone(store, sql):
    """While a destination is down, the claims walk past its waiting messages (a 20,000 backlog): in the
    index alone (it carries transport and address), never a row read each, never a sort."""
    from sqlalchemy import func, select

    from gateway.store.schema import messages
    from gateway.store.store import _off_links

    down = [("email", None), ("platform", "https://gw.example.nl/as2")]
    for query in (claim_query(NOW, 5, ["gemeente:0599"], down),
                  select(func.min(messages.c.next_attempt_at)).where(messages.c.next_attempt_at.is_not(None),
                                                                    _off_links(down))):
        compiled = query.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
        plan = " ".join(row[-1] for row in sql("EXPLAIN QUERY PLAN " + str(compiled),
                                               *["x"] * str(compiled).count("?")))
        assert "COVERING INDEX ix_messages_due" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_due_time_means_waiting(store, make, queue, sql):
    """The invariant the claim query rests on is a CHECK constraint, not just a habit of the code."""
    await queue(store, make("m1"))
    with pytest.raises(sqlite3.IntegrityError, match="ck_messages_due_when_waiting"):
        sql("UPDATE messages SET state='held' WHERE message_id='m1'")
    with pytest.raises(sqlite3.IntegrityError, match="ck_messages_due_when_waiting"):
        sql("UPDATE messages SET next_attempt_at=NULL WHERE message_id='m1'")
    await store.transition("m1", State.HELD, actor="t")
    with pytest.raises(ValueError, match="queued message needs a next_attempt_at"):
        await store.transition("m1", State.QUEUED, actor="t", next_attempt_at=None)


async def test_renew_lease(store, make, queue, clock):
    await queue(store, make("m1"))
    await store.claim(owner="w1", limit=1, lease=LEASE)
    clock.advance(minutes=1)
    until = await store.renew_lease("m1", "w1", LEASE)
    assert until == clock.now + LEASE == (await store.get("m1")).lease_until
    with pytest.raises(StaleState, match="under a lease of w2"):
        await store.renew_lease("m1", "w2", LEASE)
    await store.transition("m1", State.SENT, actor="w1", owner="w1")
    with pytest.raises(StaleState, match="m1 is sent"):
        await store.renew_lease("m1", "w1", LEASE)
    with pytest.raises(UnknownMessage):
        await store.renew_lease("nope", "w1", LEASE)


async def test_expired_leases_return_to_the_queue(store, make, queue, clock):
    for i in range(3):
        await queue(store, make(f"m{i}"))
    await store.claim(owner="w1", limit=2, lease=timedelta(seconds=30))  # m0, m1
    await store.claim(owner="w2", limit=1, lease=timedelta(minutes=10))  # m2
    assert await store.next_lease_expiry() == clock.now + timedelta(seconds=30)
    clock.advance(seconds=30)
    assert await store.release_expired_leases() == []  # lease_until == now: not yet expired
    clock.advance(seconds=1)
    assert sorted(await store.release_expired_leases()) == ["m0", "m1"]
    rec = await store.get("m0")
    assert (rec.state, rec.reason, rec.next_attempt_at, rec.lease_owner, rec.lease_until, rec.attempts) == (
        State.RETRY_WAIT, LEASE_EXPIRED, clock.now, None, None, 1)
    last = (await store.timeline("m0"))[-1]
    assert (last.from_state, last.to_state, last.actor, last.reason) == (State.SENDING, State.RETRY_WAIT, "store",
                                                                         LEASE_EXPIRED)
    assert (await store.get("m2")).state is State.SENDING
    again = await store.claim(owner="w3", limit=5, lease=LEASE)
    assert sorted((r.message_id, r.attempts) for r in again) == [("m0", 2), ("m1", 2)]


async def test_release_owned_on_graceful_stop(store, make, queue, clock):
    for i in range(4):
        await queue(store, make(f"m{i}"))
    await store.claim(owner="w1", limit=3, lease=LEASE)
    await store.claim(owner="w2", limit=1, lease=LEASE)
    clock.advance(seconds=10)
    assert sorted(await store.release_owned("w1")) == ["m0", "m1", "m2"]
    assert await store.release_owned("w1") == []
    rec = await store.get("m0")
    assert (rec.state, rec.attempts, rec.lease_owner, rec.next_attempt_at) == (State.QUEUED, 0, None, clock.now)
    assert (await store.get("m3")).lease_owner == "w2"
    assert (await store.timeline("m1"))[-1].actor == "w1"
    assert (await store.counts())[State.QUEUED] == 3


async def test_next_due_ignores_what_is_not_waiting(store, make, queue, clock):
    assert await store.next_due() is None and await store.next_lease_expiry() is None
    await queue(store, make("m1"))
    t1 = clock.now
    clock.advance(minutes=5)
    await queue(store, make("m2"))
    assert await store.next_due() == t1
    await store.transition("m1", State.HELD, actor="t")
    assert await store.next_due() == clock.now
