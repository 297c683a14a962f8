"""All or nothing: when any statement of a write fails (a trigger makes it fail), no row of it remains."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from gateway.store import NewReceipt, State


def snapshot(sql):
    return {t: sql(f"SELECT * FROM {t} ORDER BY 1") for t in
            ("messages", "pickups", "sealed", "transitions", "audit", "receipts")}


def fail_on(sql, name: str, event: str, table: str, when: str = "1") -> None:
    sql(f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when} "
        f"BEGIN SELECT RAISE(ABORT, 'injected failure'); END")


async def test_a_failed_update_leaves_no_transition_and_no_audit(store, make, queue, sql):
    await queue(store, make("m1"))
    fail_on(sql, "no_sending", "UPDATE", "messages", "NEW.state = 'held'")
    before = snapshot(sql)
    with pytest.raises(IntegrityError, match="injected failure"):
        await store.transition("m1", State.HELD, reason="no route", actor="t")
    assert snapshot(sql) == before
    sql("DROP TRIGGER no_sending")
    assert (await store.transition("m1", State.HELD, reason="no route", actor="t")).state is State.HELD


async def test_a_failed_audit_row_undoes_the_state_change(store, make, queue, sql):
    await queue(store, make("m1"))
    fail_on(sql, "no_audit", "INSERT", "audit")
    before = snapshot(sql)
    with pytest.raises(IntegrityError):
        await store.transition("m1", State.CANCELLED, actor="operator")
    with pytest.raises(IntegrityError):
        await store.claim(owner="w", limit=5, lease=timedelta(minutes=1))
    with pytest.raises(IntegrityError):
        await store.accept(make("m2"))
    with pytest.raises(IntegrityError):
        await store.record_rejection(file_name="x.xml", size=1, sha256="1" * 64, declared_id=None,
                                     declared_type=None, reason="not XML", rejected_path="/r/x.xml")
    with pytest.raises(IntegrityError):
        await store.add_receipt("m1", kind="dsn", verdict="delivered", detail="2.0.0")
    assert snapshot(sql) == before
    assert (await store.get("m1")).state is State.QUEUED


async def test_a_failed_transition_row_undoes_seal_and_claim(store, make, sql):
    await store.accept(make("m1"))
    fail_on(sql, "no_transition", "INSERT", "transitions")
    before = snapshot(sql)
    with pytest.raises(IntegrityError):
        await store.save_sealed("m1", b"sealed", "mic", transport="smtp", address="a@b", profile="compatible")
    assert snapshot(sql) == before  # no sealed row, still received
    sql("DROP TRIGGER no_transition")
    await store.save_sealed("m1", b"sealed", "mic", transport="smtp", address="a@b", profile="compatible")
    fail_on(sql, "no_transition", "INSERT", "transitions", "NEW.to_state = 'sending'")
    before = snapshot(sql)
    with pytest.raises(IntegrityError):
        await store.claim(owner="w", limit=5, lease=timedelta(minutes=1))
    assert snapshot(sql) == before
    assert (await store.get("m1")).state is State.QUEUED


async def test_a_receipt_and_its_transition_go_together(store, make, queue, sql):
    await queue(store, make("m1"))
    await store.claim(owner="w", limit=1, lease=timedelta(minutes=1))
    await store.transition("m1", State.SENT, actor="w")
    fail_on(sql, "no_receipt", "INSERT", "receipts")
    with pytest.raises(IntegrityError):
        await store.transition("m1", State.ACKNOWLEDGED, actor="receipts",
                               receipt=NewReceipt("mdn", "processed", "MIC matches"))
    assert (await store.get("m1")).state is State.SENT
    sql("DROP TRIGGER no_receipt")
    rec = await store.transition("m1", State.ACKNOWLEDGED, actor="receipts",
                                 receipt=NewReceipt("mdn", "processed", "MIC matches"))
    assert rec.state is State.ACKNOWLEDGED
    [r] = await store.receipts("m1")
    assert (r.kind, r.verdict, r.detail) == ("mdn", "processed", "MIC matches")
