"""The transition table, and transition(): every edge allowed or refused, compare-and-set, side effects."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gateway.store import (FINAL, TRANSITIONS, IllegalTransition, StaleState, State, StoreError, UnknownMessage)

S = State
#: the edges of the brief, written out independently of the code
EXPECTED_EDGES = {
    S.RECEIVED: {S.HELD, S.QUEUED, S.FAILED, S.CANCELLED},
    S.HELD: {S.QUEUED, S.HELD, S.CANCELLED},
    S.QUEUED: {S.SENDING, S.HELD, S.CANCELLED, S.FAILED},  # failed: gave up while its destination was down
    S.SENDING: {S.SENT, S.RETRY_WAIT, S.FAILED, S.HELD, S.QUEUED},
    S.RETRY_WAIT: {S.SENDING, S.FAILED, S.HELD, S.CANCELLED, S.QUEUED},
    S.SENT: {S.DELIVERED, S.ACKNOWLEDGED, S.FAILED, S.SENT},
    S.DELIVERED: {S.ACKNOWLEDGED},
    S.FAILED: {S.QUEUED},
    S.ACKNOWLEDGED: set(),
    S.CANCELLED: set(),
    S.REJECTED: set(),
}


def needs(to: State, now: datetime) -> dict:
    """The fields an edge into ``to`` requires."""
    if to is S.SENDING:
        return dict(lease_owner="w1", lease_until=now + timedelta(minutes=5))
    if to is S.RETRY_WAIT:
        return dict(next_attempt_at=now + timedelta(minutes=10))
    return {}


def test_the_table_is_the_brief():
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED_EDGES
    assert FINAL == {S.ACKNOWLEDGED, S.CANCELLED}
    assert all(not TRANSITIONS[s] for s in FINAL)
    assert not any(S.REJECTED in targets for targets in TRANSITIONS.values())


def test_every_state_but_rejected_is_reachable_from_received():
    seen, todo = {S.RECEIVED}, [S.RECEIVED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert seen == set(State) - {S.REJECTED}


async def test_every_edge_allowed_and_refused(store, make, force, sql, clock):
    """All 121 pairs: an allowed edge moves the row and writes one transition; a refused one changes nothing."""
    pairs = [(a, b) for a in State for b in State]
    for frm, to in pairs:
        await store.accept(make(f"e-{frm}-{to}"))
    wrong = []
    for frm, to in pairs:
        mid = f"e-{frm}-{to}"
        force(mid, frm)
        before = len(await store.timeline(mid))
        try:
            rec = await store.transition(mid, to, reason=f"test {frm}->{to}", actor="test", **needs(to, clock.now))
        except IllegalTransition as e:
            assert (e.from_state, e.to_state) == (frm, to)
            assert f"{frm} -> {to}" in str(e) and mid in str(e)
            got = "refused"
            assert (await store.get(mid)).state is frm
            assert len(await store.timeline(mid)) == before
        else:
            got = "allowed"
            assert rec.state is to and rec == await store.get(mid)
            last = (await store.timeline(mid))[-1]
            assert (last.from_state, last.to_state, last.reason, last.actor) == (frm, to, f"test {frm}->{to}", "test")
        if got != ("allowed" if to in EXPECTED_EDGES[frm] else "refused"):
            wrong.append((frm, to, got))
    assert wrong == []
    n_allowed = sum(len(v) for v in EXPECTED_EDGES.values())
    assert sql("SELECT count(*) FROM audit WHERE action='message.transition'") == [(n_allowed,)]


async def test_compare_and_set(store, make):
    await store.accept(make("m1"))
    with pytest.raises(StaleState) as e:
        await store.transition("m1", S.HELD, actor="t", expect=[S.QUEUED, S.SENDING])
    assert e.value.actual is S.RECEIVED and e.value.expected == {S.QUEUED, S.SENDING}
    assert "m1 is received, expected queued|sending" in str(e.value)
    # a single state is one state, not an iterable of characters
    rec = await store.transition("m1", S.HELD, reason="no route", actor="t", expect=S.RECEIVED)
    assert (rec.state, rec.reason) == (S.HELD, "no route")
    # the loser of a race: both expected 'held'; the second finds 'queued'
    await store.transition("m1", S.QUEUED, actor="operator", expect={S.HELD})
    with pytest.raises(StaleState):
        await store.transition("m1", S.CANCELLED, actor="operator", expect={S.HELD})
    assert (await store.get("m1")).state is S.QUEUED
    assert [t.to_state for t in await store.timeline("m1")] == [S.RECEIVED, S.HELD, S.QUEUED]


async def test_owner_guard_stops_a_worker_whose_lease_was_taken(store, make, queue, clock):
    await queue(store, make("m1"))
    await store.claim(owner="w1", limit=1, lease=timedelta(seconds=30))
    clock.advance(minutes=1)
    assert await store.release_expired_leases() == ["m1"]
    [again] = await store.claim(owner="w2", limit=1, lease=timedelta(seconds=30))
    assert again.lease_owner == "w2" and again.attempts == 2
    with pytest.raises(StaleState, match="under a lease of w1"):  # w1 comes back late with its SMTP 250
        await store.transition("m1", S.SENT, actor="w1", expect={S.SENDING}, owner="w1")
    rec = await store.transition("m1", S.SENT, actor="w2", expect={S.SENDING}, owner="w2", remote_reply="250 ok")
    assert rec.state is S.SENT


async def test_attempt_guard_stops_an_attempt_that_outlived_its_lease_under_the_same_owner(store, make, queue, clock):
    """One dispatcher claims again what its own hanging attempt still holds: the owner is the same, the
    attempt count is not, and the late outcome of attempt 1 must not overwrite attempt 2's state."""
    await queue(store, make("m1"))
    [first] = await store.claim(owner="d1", limit=1, lease=timedelta(seconds=30))
    clock.advance(minutes=1)
    assert await store.release_expired_leases() == ["m1"]
    [second] = await store.claim(owner="d1", limit=1, lease=timedelta(seconds=30))
    assert (first.attempts, second.attempts) == (1, 2)
    with pytest.raises(StaleState, match="attempt 2 is the current one"):  # attempt 1's 451, late
        await store.transition("m1", S.RETRY_WAIT, actor="d1", expect={S.SENDING}, of_attempt=first.attempts,
                               next_attempt_at=clock.now + timedelta(minutes=5))
    assert (await store.get("m1")).state is S.SENDING
    rec = await store.transition("m1", S.SENT, actor="d1", expect={S.SENDING}, of_attempt=second.attempts)
    assert rec.state is S.SENT


async def test_refusals_before_any_write(store, make, sql, clock):
    await store.accept(make("m1"))
    audit_before = sql("SELECT count(*) FROM audit")
    with pytest.raises(UnknownMessage):
        await store.transition("nope", S.HELD, actor="t")
    with pytest.raises(TypeError, match="cannot set dossier"):
        await store.transition("m1", S.HELD, actor="t", dossier="other")
    with pytest.raises(ValueError, match="next_attempt_at"):
        await store.transition("m1", S.RETRY_WAIT, actor="t")
    with pytest.raises(ValueError, match="lease_owner"):
        await store.transition("m1", S.SENDING, actor="t")
    with pytest.raises(ValueError, match="naive"):
        await store.transition("m1", S.HELD, actor="t", successor="0600", sent_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="only in queued and retry_wait"):
        await store.transition("m1", S.HELD, actor="t", next_attempt_at=clock.now)
    assert isinstance(UnknownMessage("x"), StoreError) and isinstance(StaleState("x", S.HELD, ()), StoreError)
    assert sql("SELECT count(*) FROM audit") == audit_before
    assert (await store.get("m1")).state is S.RECEIVED and (await store.get("m1")).successor is None


async def test_side_effects_of_entering_and_leaving(store, make, queue, clock):
    t0 = clock.now
    await queue(store, make("m1"))
    rec = await store.get("m1")
    assert rec.next_attempt_at == t0 and rec.mic == "mic-m1" and rec.transport == "smtp"
    [rec] = await store.claim(owner="w1", limit=1, lease=timedelta(minutes=2))
    assert (rec.lease_owner, rec.lease_until, rec.next_attempt_at, rec.attempts) == ("w1", t0 + timedelta(minutes=2),
                                                                                     None, 1)
    t1 = clock.advance(seconds=5)
    rec = await store.transition("m1", S.SENT, actor="w1", mail_message_id="<m1@gw>", remote_reply="250 2.0.0 Ok")
    assert (rec.lease_owner, rec.lease_until, rec.sent_at, rec.mail_message_id) == (None, None, t1, "<m1@gw>")
    clock.advance(minutes=30)
    rec = await store.transition("m1", S.SENT, reason="DSN delayed", actor="receipts")  # a note keeps sent_at
    assert (rec.sent_at, rec.reason) == (t1, "DSN delayed")
    t3 = clock.advance(minutes=30)
    rec = await store.transition("m1", S.DELIVERED, actor="receipts")
    assert (rec.delivered_at, rec.reason) == (t3, None)
    t4 = clock.advance(minutes=1)
    rec = await store.transition("m1", S.ACKNOWLEDGED, actor="receipts")
    assert (rec.acknowledged_at, rec.sent_at, rec.delivered_at) == (t4, t1, t3)
    assert [(t.to_state, t.attempt) for t in await store.timeline("m1")] == [
        (S.RECEIVED, 0), (S.QUEUED, 0), (S.SENDING, 1), (S.SENT, 1), (S.SENT, 1), (S.DELIVERED, 1),
        (S.ACKNOWLEDGED, 1)]
    [sent] = [t for t in await store.timeline("m1") if t.to_state is S.SENT and t.from_state is S.SENDING]
    assert sent.remote_reply == "250 2.0.0 Ok" and sent.actor == "w1"


async def test_retry_then_fail_then_operator_resend(store, make, queue, clock):
    await queue(store, make("m1"))
    await store.claim(owner="w1", limit=1, lease=timedelta(minutes=2))
    later = clock.now + timedelta(minutes=15)
    rec = await store.transition("m1", S.RETRY_WAIT, reason="451 4.3.0 try later", actor="w1",
                                 next_attempt_at=later, remote_reply="451 4.3.0 try later")
    assert (rec.state, rec.next_attempt_at, rec.lease_owner) == (S.RETRY_WAIT, later, None)
    assert await store.claim(owner="w1", limit=5, lease=timedelta(minutes=2)) == []  # not due yet
    clock.now = later
    [rec] = await store.claim(owner="w1", limit=5, lease=timedelta(minutes=2))
    assert rec.attempts == 2
    rec = await store.transition("m1", S.FAILED, reason="550 5.1.1 no such mailbox", actor="w1")
    assert rec.next_attempt_at is None
    clock.advance(hours=2)
    rec = await store.transition("m1", S.QUEUED, reason="resend by operator", actor="operator:jan", attempts=0)
    assert (rec.message_id, rec.state, rec.attempts, rec.next_attempt_at) == ("m1", S.QUEUED, 0, clock.now)
    assert (await store.sealed("m1")) == b"sealed:m1"  # the same sealed bytes go again
