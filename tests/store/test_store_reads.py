"""Reads for the dispatcher, the receipt matcher and the operator: counts, lists, receipts, audit, time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from gateway.store import State, Store, UnknownMessage
from paths import NOW


async def test_counts_every_state(store, make, queue):
    assert await store.counts() == dict.fromkeys(State, 0)
    await store.accept(make("r1"))
    await queue(store, make("q1"))
    await queue(store, make("q2"))
    await store.accept(make("h1"))
    await store.transition("h1", State.HELD, actor="t")
    await store.record_rejection(file_name="x.xml", size=3, sha256="f" * 64, declared_id=None, declared_type=None,
                                 reason="not XML", rejected_path="/r/x.xml")
    counts = await store.counts()
    assert set(counts) == set(State)
    assert {s: n for s, n in counts.items() if n} == {State.RECEIVED: 1, State.QUEUED: 2, State.HELD: 1,
                                                       State.REJECTED: 1}


async def test_list_filters_and_pages(store, make, queue, clock):
    await store.accept(make("a", type="meldingsbericht", recipient="gemeente:0599"))
    clock.advance(minutes=1)
    t1 = clock.now
    await queue(store, make("b", type="basisdocument", recipient="gemeente:0599"))
    clock.advance(minutes=1)
    await queue(store, make("c", type="basisdocument", recipient="gemeente:0363"))
    clock.advance(minutes=1)
    t3 = clock.now
    await store.accept(make("d", type="gemeenteblad", sender="gemeente:0363", recipient="pi:PI-VUGHT"))

    async def ids(**kw) -> list[str]:
        return [r.message_id for r in await store.list(**kw)]

    assert await ids() == ["d", "c", "b", "a"]  # newest first
    assert await ids(states=[State.QUEUED]) == ["c", "b"]
    assert await ids(states={State.RECEIVED, State.QUEUED}, type="basisdocument") == ["c", "b"]
    assert await ids(party="gemeente:0363") == ["d", "c"]  # as recipient and as sender
    assert await ids(since=t1, until=t3) == ["c", "b"]  # since inclusive, until exclusive
    assert await ids(limit=2) == ["d", "c"]
    assert await ids(limit=2, after="c") == ["b", "a"]
    assert await ids(after="a") == []
    with pytest.raises(UnknownMessage):
        await store.list(after="nope")


async def test_pages_are_stable_when_arrivals_share_a_time(store, make):
    for i in range(7):  # the clock does not move: all at one instant
        await store.accept(make(f"s{i}"))
    seen, after = [], None
    while page := await store.list(limit=3, after=after):
        seen += [r.message_id for r in page]
        after = page[-1].message_id
    assert seen == [f"s{i}" for i in reversed(range(7))]


async def test_sent_without_receipt(store, make, queue, clock):
    for m in ("old", "delivered", "acked", "recent"):
        await queue(store, make(m))
    await store.claim(owner="w", limit=10, lease=timedelta(minutes=5))
    for m in ("old", "delivered", "acked"):
        await store.transition(m, State.SENT, actor="w", mail_message_id=f"<{m}@gw>")
    await store.transition("delivered", State.DELIVERED, actor="receipts")
    await store.transition("acked", State.ACKNOWLEDGED, actor="receipts")
    sent_at = clock.now
    clock.advance(hours=1)
    await store.transition("recent", State.SENT, actor="w")
    clock.advance(hours=47)
    assert [r.message_id for r in await store.sent_without_receipt(sent_at)] == ["old"]
    assert [r.message_id for r in await store.sent_without_receipt(sent_at, include_delivered=True)] == [
        "delivered", "old"]
    assert [r.message_id for r in await store.sent_without_receipt(sent_at - timedelta(seconds=1))] == []
    assert [r.message_id for r in await store.sent_without_receipt(clock.now)] == ["old", "recent"]
    assert (await store.by_mail_message_id("<delivered@gw>")).message_id == "delivered"
    assert await store.by_mail_message_id("<nope@gw>") is None


async def test_receipts(store, make, queue, clock):
    await queue(store, make("m1"))
    await store.add_receipt("m1", kind="dsn", verdict="delayed", detail="4.4.1")
    clock.advance(minutes=5)
    await store.add_receipt("m1", kind="unsigned-mdn", verdict="displayed", detail="no signature")
    got = await store.receipts("m1")
    assert [(r.kind, r.verdict, r.detail, r.at) for r in got] == [
        ("dsn", "delayed", "4.4.1", NOW), ("unsigned-mdn", "displayed", "no signature", clock.now)]
    assert (await store.audit_rows(limit=1))[0]["result"] == "unsigned-mdn: displayed"
    with pytest.raises(ValueError, match="receipt kind"):
        await store.add_receipt("m1", kind="fax", verdict="x", detail="y")
    with pytest.raises(UnknownMessage):
        await store.add_receipt("nope", kind="dsn", verdict="x", detail="y")
    assert await store.receipts("nope") == []


async def test_audit_rows(store, make):
    await store.accept(make("m1"))
    await store.audit(action="alert.raise", object="m1", result="no receipt after 48h", origin="scheduler",
                      actor="scheduler")
    await store.audit(action="operator.view", object="dashboard", result="ok", origin="web:10.0.0.5",
                      actor="operator:jan")
    rows = await store.audit_rows()
    assert [r["action"] for r in rows] == ["operator.view", "alert.raise", "message.accept"]
    assert rows[0] | {"id": 0} == {"id": 0, "at": NOW, "action": "operator.view", "object": "dashboard",
                                   "result": "ok", "origin": "web:10.0.0.5", "actor": "operator:jan"}
    assert rows[2]["origin"] == "gateway"  # the store's own origin
    assert [r["action"] for r in await store.audit_rows(object="m1")] == ["alert.raise", "message.accept"]
    assert len(await store.audit_rows(limit=1)) == 1
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)


async def test_datetimes_are_utc_whatever_the_clock_zone(url, make):
    amsterdam = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 29, 13, 0, tzinfo=amsterdam)  # == NOW (12:00 UTC)
    s = await Store.open(url, clock=lambda: local)
    try:
        rec = await s.accept(replace(make("m1"), created_at=local))
        got = await s.get("m1")
        assert got.received_at == NOW and got.received_at.tzinfo == timezone.utc and got == rec
        assert rec.created_at.tzinfo == got.created_at.tzinfo == timezone.utc
        assert (await s.list(since=local, until=local + timedelta(seconds=1)))[0].message_id == "m1"
    finally:
        await s.close()


async def test_a_naive_clock_or_header_time_is_refused(store, make, clock):
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.accept(replace(make("m0"), created_at=datetime(2026, 1, 1)))
    clock.now = datetime(2026, 1, 1)  # a naive "now" would be stored as if it were UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.accept(make("m1"))
    assert await store.list() == []


async def test_the_deadline_watch_reads_a_changed_dossier_by_its_index(store, sql):
    """The watch recomputes the dossiers that changed: their rows come from the dossier indexes (migration
    8), in dossier order, never a scan of every message (or arrival) ever stored nor a sort of it."""
    from sqlalchemy.dialects import sqlite

    from gateway.ops.deadlines import _queries

    for query, index, table in zip(_queries(["VUG-2025-000001", "VUG-2025-000002"]),
                                   ("ix_messages_dossier", "ix_inbound_dossier"), ("messages", "inbound")):
        compiled = query.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
        plan = [row[-1] for row in sql("EXPLAIN QUERY PLAN " + str(compiled), *["x"] * str(compiled).count("?"))]
        assert f"SEARCH {table} USING INDEX {index} (dossier=?)" in plan, plan
        assert not any(step.startswith(f"SCAN {table}") or "TEMP B-TREE" in step for step in plan), plan


async def test_states_of_many_ids_at_once(store, make, queue):
    """Start-up looks up every spooled copy in one call: more ids than one IN list holds, unknown ones left out."""
    ids = [f"m{i:04d}" for i in range(1_203)]
    for mid in ids[:1_200]:
        await store.accept(make(mid))
    await queue(store, make("q"))
    await store.transition("m0007", State.HELD, actor="t")
    found = await store.states_of([*ids, "q"])
    assert len(found) == 1_201 and "m1201" not in found
    assert found["m0007"] is State.HELD and found["q"] is State.QUEUED and found["m1199"] is State.RECEIVED
    assert await store.states_of([]) == {}
