"""The dispatcher's per-destination breaker: its decisions, with the store real and the transport scripted
(the protocol side, a relay answering 421 and an AS2 peer beside it, is in
tests/reliability/test_reliability_breaker_relay.py).

- A destination that is down is not tried message by message: a few deliveries in flight when it fails,
  then one probe per interval; the others wait unclaimed, their attempts unspent.
- When a probe gets through, every waiting message is due at once, also one whose own retry is an hour off.
- A failure of one message (a 451 to its recipient) opens nothing.
- At the give-up horizon the held-back messages fail, with their real attempt count and the destination's
  reason, as they would have at their next attempt."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from gateway.config import RetryPolicy
from gateway.pipeline.dispatcher import Dispatcher
from gateway.pipeline.transports import Destination, Handed, Temporary
from gateway.store import NewMessage, State, Store

RELAY = "email relay test:25"


class Relay:
    """The dispatcher's Transport interface over one relay for every address, which is down or up."""

    def __init__(self):
        self.up = False
        self.calls: list[str] = []
        self.sent: list[str] = []
        self.refuse: dict[str, str] = {}  #: address -> a 451 for that recipient only

    def destination(self, address: str) -> Destination:
        return Destination(RELAY, None)

    async def send(self, *, message_id, message_type, address, entity, mic) -> Handed:
        self.calls.append(message_id)
        await asyncio.sleep(0.01)
        if not self.up:
            raise Temporary("could not reach relay test:25 at connect: Connection refused", connection=True)
        if address in self.refuse:
            raise Temporary(f"relay refused the recipient: {self.refuse[address]}", self.refuse[address])
        self.sent.append(message_id)
        return Handed("250 2.0.0 Ok", f"<{message_id}@test>")

    async def close(self):
        pass


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    yield s
    await s.close()


async def queued(store: Store, code="0599") -> str:
    mid = str(uuid.uuid4())
    data = mid.encode()
    await store.accept(NewMessage(message_id=mid, type="meldingsbericht", version="1.0", sender="pi:PI-VUGHT",
                                  recipient=f"gemeente:{code}", dossier="D-1", replies_to=None, supersedes=None,
                                  priority=0, created_at=datetime.now(timezone.utc), file_name=f"{mid}.xml",
                                  size=len(data), sha256=hashlib.sha256(data).hexdigest(), spool_path=f"/x/{mid}"))
    await store.save_sealed(mid, b"sealed " + data, base64.b64encode(hashlib.sha256(data).digest()).decode(),
                            transport="email", address=f"nazorg@gemeente-{code}.example.nl", profile="compatible")
    return mid


def dispatcher(store, relay, *, workers=4, first=0.3, clock=None) -> Dispatcher:
    retry = RetryPolicy(first_delay=timedelta(seconds=first), max_delay=timedelta(seconds=first * 2), jitter=0.2)
    return Dispatcher(store=store, transports={"email": relay}, workers=workers, per_destination={},
                      default_per_destination=4, lease=timedelta(minutes=5), retry=retry,
                      **({"clock": clock} if clock else {}))


async def until(predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def records(store, ids):
    return {mid: await store.get(mid) for mid in ids}


async def test_a_dead_relay_gets_probes_not_every_message_and_all_go_at_once_when_it_is_back(store):
    ids = [await queued(store) for _ in range(50)]
    relay = Relay()
    d = dispatcher(store, relay)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
        try:
            async def tried():
                return len(relay.calls) >= 1
            await until(tried)
            await asyncio.sleep(3.0)  # ~3 s of outage: probes every 0.24-0.72 s
            during = len(relay.calls)
            waiting = await records(store, ids)
            # one due an hour from now (as after many failed attempts): the relay's return makes it due too
            late = ids[-1]  # probes take the message due first: the last one queued is not probed yet
            await store.transition(late, State.SENDING, reason="test", actor="test", lease_owner="test",
                                   lease_until=datetime.now(timezone.utc) + timedelta(minutes=1),
                                   expect=[State.QUEUED])
            await store.transition(late, State.RETRY_WAIT, reason="test: an hour off", actor="test",
                                   next_attempt_at=datetime.now(timezone.utc) + timedelta(hours=1))
            relay.up = True
            t0 = asyncio.get_running_loop().time()

            async def all_sent():
                return {r.state for r in (await records(store, ids)).values()} == {State.SENT}
            await until(all_sent)
            drained = asyncio.get_running_loop().time() - t0
        finally:
            stop.set()
            await task
    # without the breaker: 50 messages retried every 0.24-0.72 s, some 300 tries in 3 s
    assert during <= 4 + 3.0 / 0.24 + 6, during
    assert sum(1 for r in waiting.values() if r.attempts == 0) >= 50 - during, "held back: no attempt spent"
    assert drained < 10, drained
    final = await records(store, ids)
    assert sorted(relay.sent) == sorted(ids), "every message handed over exactly once"
    assert relay.calls.count(late) == 1 and final[late].attempts == 2  # the test's own claim was one
    assert all(relay.calls.count(mid) == final[mid].attempts for mid in ids if mid != late), "each claim one send"
    downs = [e for e in logs if e["event"] == "destination-down"]
    ups = [e for e in logs if e["event"] == "destination-up"]
    assert len(downs) == 1 and len(ups) == 1, [e["event"] for e in logs if e["event"].startswith("destination")]
    assert downs[0]["destination"] == RELAY and downs[0]["alert"] is True and "Connection refused" in downs[0]["reason"]
    assert ups[0]["destination"] == RELAY and ups[0]["made_due"] >= 1
    assert not any("message_id" in e for e in downs + ups), "a transition, not a message"


async def test_a_451_for_one_recipient_opens_nothing(store):
    refused = [await queued(store, code="0599") for _ in range(3)]
    fine = [await queued(store, code="0344") for _ in range(10)]
    relay = Relay()
    relay.up = True
    relay.refuse["nazorg@gemeente-0599.example.nl"] = "451 4.3.0 try again later"
    d = dispatcher(store, relay)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
        try:
            async def done():
                states = {mid: r.state for mid, r in (await records(store, refused + fine)).items()}
                return all(states[m] is State.SENT for m in fine) and all(states[m] is State.RETRY_WAIT
                                                                          for m in refused)
            await until(done)
        finally:
            stop.set()
            await task
    assert not [e for e in logs if e["event"].startswith("destination-")]
    assert not d.breakers.down()


async def test_held_back_messages_fail_at_the_give_up_horizon_with_their_own_attempt_count(store):
    ids = [await queued(store) for _ in range(20)]
    relay = Relay()
    later = lambda: datetime.now(timezone.utc) + timedelta(days=6)  # noqa: E731
    d = dispatcher(store, relay, workers=2, clock=later)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
    try:
        async def all_failed():
            return {r.state for r in (await records(store, ids)).values()} == {State.FAILED}
        await until(all_failed)
    finally:
        stop.set()
        await task
    final = await records(store, ids)
    assert len(relay.calls) <= 2 + 2, relay.calls  # the two in flight when it opened, then nothing to probe with
    never = [r for r in final.values() if r.attempts == 0]
    assert len(never) >= 20 - len(relay.calls)
    for r in never:
        assert r.reason.startswith("gave up after 0 attempts over 6.0 days: email relay test:25 is down: "), r.reason
        assert "Connection refused" in r.reason
        assert [t.to_state for t in await store.timeline(r.message_id)] == [State.RECEIVED, State.QUEUED,
                                                                            State.FAILED]
    tried = [r for r in final.values() if r.attempts]
    assert all(r.reason.startswith(f"gave up after {r.attempts} attempts over 6.0 days: ") for r in tried)


async def test_a_message_resent_by_hand_is_not_failed_by_the_horizon_of_its_first_round(store, tmp_path):
    """An operator's resend gets the whole retry period anew, also while the destination is down."""
    old = await queued(store)
    later = lambda: datetime.now(timezone.utc) + timedelta(days=6)  # noqa: E731
    operator = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", clock=later)
    try:
        await operator.transition(old, State.SENDING, reason="test", actor="test", lease_owner="t",
                                  lease_until=later() + timedelta(minutes=1))
        await operator.transition(old, State.FAILED, reason="test: gave up", actor="test")
        await operator.transition(old, State.QUEUED, reason="retry by operator", actor="operator:test",
                                  next_attempt_at=datetime.now(timezone.utc) + timedelta(hours=1))
    finally:
        await operator.close()
    fresh = [await queued(store) for _ in range(5)]
    relay = Relay()
    d = dispatcher(store, relay, workers=1, clock=later)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
    try:
        async def fresh_failed():
            return {r.state for r in (await records(store, fresh)).values()} == {State.FAILED}
        await until(fresh_failed)
        await asyncio.sleep(1.0)  # more probe rounds
    finally:
        stop.set()
        await task
    assert (await store.get(old)).state in (State.QUEUED, State.RETRY_WAIT)
