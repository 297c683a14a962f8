"""Pick-up: accept (one transaction), duplicates by file and by id, rejections, unconfirmed moves."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway.store import DuplicateMessage, State, Store, StoreError


async def test_accept_writes_message_pickup_transition_and_audit(store, make, sql, clock):
    msg = make("m1", priority=3)
    rec = await store.accept(msg, actor="pickup-1")
    assert rec == await store.get("m1")
    assert (rec.state, rec.attempts, rec.priority, rec.sender, rec.recipient) == (
        State.RECEIVED, 0, 3, "pi:PI-VUGHT", "gemeente:0599")
    assert (rec.received_at, rec.updated_at, rec.created_at) == (clock.now, clock.now, msg.created_at)
    assert (rec.sha256, rec.size, rec.file_name, rec.spool_path) == (msg.sha256, msg.size, msg.file_name,
                                                                      msg.spool_path)
    [t] = await store.timeline("m1")
    assert (t.from_state, t.to_state, t.actor, t.at) == (None, State.RECEIVED, "pickup-1", clock.now)
    [a] = await store.audit_rows()
    assert (a["action"], a["object"], a["result"], a["actor"]) == ("message.accept", "m1", "received", "pickup-1")
    p = await store.find_pickup(msg.sha256)
    assert (p.outcome, p.message_id, p.spool_path, p.confirmed_at) == ("accepted", "m1", msg.spool_path, None)
    # no XML body anywhere: the sealed table is empty and no column holds the file's bytes
    assert sql("SELECT count(*) FROM sealed") == [(0,)]


async def test_same_file_twice_is_a_duplicate_and_writes_nothing(store, make, sql):
    first = make("m1")
    await store.accept(first)
    before = sql("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM pickups), "
                 "(SELECT count(*) FROM transitions), (SELECT count(*) FROM audit)")
    # the very same file again (same bytes, hence same id too): reported as the same file
    with pytest.raises(DuplicateMessage) as e:
        await store.accept(replace(first, file_name="again.xml"))
    assert (e.value.kind, e.value.message_id, e.value.pickup.file_name) == ("same-file", "m1", first.file_name)
    # the same bytes under another id cannot happen, but if it does, it is still the same file
    with pytest.raises(DuplicateMessage) as e:
        await store.accept(replace(first, message_id="m2"))
    assert (e.value.kind, e.value.message_id) == ("same-file", "m1")
    assert sql("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM pickups), "
               "(SELECT count(*) FROM transitions), (SELECT count(*) FROM audit)") == before


async def test_same_id_in_another_file_is_a_duplicate(store, make):
    await store.accept(make("m1"))
    other = make("m1")  # other bytes, same message id
    with pytest.raises(DuplicateMessage) as e:
        await store.accept(other)
    assert (e.value.kind, e.value.message_id, e.value.pickup.outcome) == ("same-id", "m1", "accepted")
    assert "same-id" in str(e.value) and "m1" in str(e.value)
    p = await store.record_duplicate(file_name=other.file_name, size=other.size, sha256=other.sha256,
                                     kind="same-id", message_id="m1", reason="message id m1 was accepted before")
    assert (p.outcome, p.kind, p.message_id, p.reason) == ("duplicate", "same-id", "m1",
                                                           "message id m1 was accepted before")
    assert (await store.find_pickup(other.sha256)) == p
    a = (await store.audit_rows(limit=1))[0]
    assert (a["action"], a["object"], a["result"]) == ("pickup.duplicate", "m1", "duplicate (same-id)")
    with pytest.raises(ValueError):
        await store.record_duplicate(file_name="x", size=1, sha256="0" * 64, kind="other", message_id="m1",
                                     reason="r")


async def test_concurrent_accepts_of_one_file_from_two_stores(url, clock, make):
    """Two processes' stores race for one file: exactly one accepts, the other hears it is a duplicate."""
    a, b = await Store.open(url, clock=clock), await Store.open(url, clock=clock)
    try:
        msgs = [make() for _ in range(20)]
        results = await asyncio.gather(*(s.accept(m) for m in msgs for s in (a, b)), return_exceptions=True)
        ok = [r for r in results if not isinstance(r, BaseException)]
        dup = [r for r in results if isinstance(r, DuplicateMessage)]
        assert len(ok) == 20 and len(dup) == 20
        assert sorted(r.message_id for r in ok) == sorted(m.message_id for m in msgs)
        assert {d.kind for d in dup} == {"same-file"}
        assert (await a.counts())[State.RECEIVED] == 20
    finally:
        await a.close()
        await b.close()


async def test_rejections_are_recorded_and_may_repeat(store, make):
    bad = make("bad-1")
    p1 = await store.record_rejection(file_name=bad.file_name, size=bad.size, sha256=bad.sha256,
                                      declared_id="bad-1", declared_type="meldingsbericht",
                                      reason="XSD: element 'bsn' missing", rejected_path="/outbox/rejected/bad-1.xml")
    assert (p1.outcome, p1.message_id, p1.declared_id, p1.declared_type, p1.spool_path) == (
        "rejected", None, "bad-1", "meldingsbericht", "/outbox/rejected/bad-1.xml")
    p2 = await store.record_rejection(file_name=bad.file_name, size=bad.size, sha256=bad.sha256, declared_id=None,
                                      declared_type=None, reason="not UTF-8", rejected_path="/outbox/rejected/x")
    assert p2.id > p1.id and (await store.find_pickup(bad.sha256)) == p2
    assert (await store.get("bad-1")) is None
    assert (await store.counts())[State.REJECTED] == 2
    rows = await store.audit_rows()
    assert [(r["action"], r["object"], r["result"]) for r in rows] == [
        ("pickup.reject", f"sha256:{bad.sha256}", "rejected"), ("pickup.reject", "bad-1", "rejected")]
    # the same bytes, once fixed... are other bytes; but a rejected file does not block an accept either
    rec = await store.accept(bad)
    assert rec.state is State.RECEIVED
    assert (await store.find_pickup(bad.sha256)).outcome == "accepted"  # the accepted pickup wins


async def test_pending_pickups_until_confirmed(store, make, clock):
    for i in range(3):
        await store.accept(make(f"m{i}"))
    pending = await store.pending_pickups()
    assert [p.message_id for p in pending] == ["m0", "m1", "m2"]
    clock.advance(seconds=1)
    await store.confirm_pickup(pending[1].id)
    assert [p.message_id for p in await store.pending_pickups()] == ["m0", "m2"]
    assert (await store.find_pickup(pending[1].sha256)).confirmed_at == clock.now
    with pytest.raises(StoreError, match="no pickup 999"):
        await store.confirm_pickup(999)


async def test_find_pickup_of_an_unknown_file(store):
    assert await store.find_pickup("0" * 64) is None
