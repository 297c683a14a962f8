"""The dispatcher's decisions: priorities, per-destination limits, retry/fail/hold, graceful stop.

The SMTP protocol itself is exercised against real servers (tests/adapters, tests/e2e); here a
scripted implementation of the dispatcher's own `Transport` interface decides each outcome, so
that every branch is reached on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from gateway.config import RetryPolicy
from gateway.pipeline.dispatcher import Dispatcher
from gateway.pipeline.transports import Handed, Permanent, Security, Temporary
from gateway.store import NewMessage, State, Store


class ScriptedTransport:
    """Answers each send with the next scripted outcome (default: handed over); records every call."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []  # (message id, address)
        self.script: dict[str, list] = {}
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.gate: asyncio.Event | None = None

    async def send(self, *, message_id, message_type, address, entity, mic) -> Handed:
        self.calls.append((message_id, address))
        self.running[address] = self.running.get(address, 0) + 1
        self.peak[address] = max(self.peak.get(address, 0), self.running[address])
        try:
            if self.gate is not None:
                await self.gate.wait()
            outcome = (self.script.get(message_id) or [None]).pop(0) if self.script.get(message_id) else None
            if isinstance(outcome, Exception):
                raise outcome
            return Handed("250 2.0.0 Ok", f"<{message_id}@test>")
        finally:
            self.running[address] -= 1

    async def close(self):
        pass


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    yield s
    await s.close()


async def queued(store: Store, *, type="meldingsbericht", code="0599", priority=0) -> str:
    mid = str(uuid.uuid4())
    data = mid.encode()
    await store.accept(NewMessage(message_id=mid, type=type, version="1.0", sender="pi:PI-VUGHT",
                                  recipient=f"gemeente:{code}", dossier="D-1", replies_to=None, supersedes=None,
                                  priority=priority, created_at=datetime.now(timezone.utc), file_name=f"{mid}.xml",
                                  size=len(data), sha256=hashlib.sha256(data).hexdigest(), spool_path=f"/x/{mid}"))
    await store.save_sealed(mid, b"sealed " + data, base64.b64encode(hashlib.sha256(data).digest()).decode(),
                            transport="email", address=f"nazorg@gemeente-{code}.example.nl", profile="compatible")
    return mid


def dispatcher(store, transport, *, workers=4, limits=None, retry=None, clock=None) -> Dispatcher:
    return Dispatcher(store=store, transports={"email": transport}, workers=workers, per_destination=limits or {},
                      default_per_destination=2, lease=timedelta(minutes=5),
                      retry=retry or RetryPolicy(first_delay=timedelta(seconds=60), jitter=0.2),
                      **({"clock": clock} if clock else {}))


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def run_until(d: Dispatcher, predicate, timeout=10.0):
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
    try:
        await until(predicate, timeout)
    finally:
        stop.set()
        await task


async def states(store, ids):
    return {mid: (await store.get(mid)).state for mid in ids}


async def test_release_notices_go_before_a_screening_backlog(store):
    backlog = [await queued(store, type="meldingsbericht", priority=0) for _ in range(5)]
    urgent = await queued(store, type="spoedontslagbericht", priority=30)
    release = await queued(store, type="ontslagbericht", priority=20)
    t = ScriptedTransport()
    ids = backlog + [urgent, release]

    async def all_sent():
        return set((await states(store, ids)).values()) == {State.SENT}
    await run_until(dispatcher(store, t, workers=1), all_sent)
    assert [mid for mid, _ in t.calls][:2] == [urgent, release]


async def test_per_destination_limit_holds_while_others_proceed(store):
    slow = [await queued(store, code="0599") for _ in range(6)]
    other = [await queued(store, code="0344") for _ in range(2)]
    t = ScriptedTransport()
    t.gate = asyncio.Event()
    d = dispatcher(store, t, workers=4, limits={"0599": 1})
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, drain_timeout=1.0))
    try:
        async def both_busy():
            return t.running.get("nazorg@gemeente-0344.example.nl", 0) == 2
        await until(both_busy)
        assert t.running["nazorg@gemeente-0599.example.nl"] == 1
        t.gate.set()

        async def done():
            return set((await states(store, slow + other)).values()) == {State.SENT}
        await until(done)
    finally:
        stop.set()
        await task
    assert t.peak["nazorg@gemeente-0599.example.nl"] == 1 and t.peak["nazorg@gemeente-0344.example.nl"] == 2


async def test_temporary_failure_waits_with_backoff_and_keeps_the_message_id(store):
    mid = await queued(store)
    t = ScriptedTransport()
    t.script[mid] = [Temporary("relay said 451 4.3.0 busy", "451 4.3.0 busy")]
    now = datetime.now(timezone.utc)

    async def waiting():
        return (await store.get(mid)).state is State.RETRY_WAIT
    await run_until(dispatcher(store, t), waiting)
    record = await store.get(mid)
    assert "451" in record.reason and record.attempts == 1
    wait = (record.next_attempt_at - now).total_seconds()
    assert 60 * 0.8 - 1 <= wait <= 60 * 1.2 + 1
    # due again (time passes): the second attempt carries the same message id
    await store.transition(mid, State.QUEUED, reason="test: due now", actor="test", next_attempt_at=now)

    async def sent():
        return (await store.get(mid)).state is State.SENT
    await run_until(dispatcher(store, t), sent)
    assert [c[0] for c in t.calls] == [mid, mid] and (await store.get(mid)).attempts == 2


async def test_retries_end_in_failed_after_the_give_up_time(store):
    mid = await queued(store)
    t = ScriptedTransport()
    t.script[mid] = [Temporary("connection refused")]
    later = lambda: datetime.now(timezone.utc) + timedelta(days=6)  # noqa: E731

    async def failed():
        return (await store.get(mid)).state is State.FAILED
    await run_until(dispatcher(store, t, clock=later), failed)
    assert "gave up after 1 attempts" in (await store.get(mid)).reason


@pytest.mark.parametrize("failure, state, words", [
    (Permanent("relay refused the recipient: 550 5.1.1 no such user", "550 5.1.1"), State.FAILED, "550 5.1.1"),
    (Security("relay offers no STARTTLS: nothing sent"), State.HELD, "STARTTLS"),
])
async def test_permanent_fails_and_security_holds(store, failure, state, words):
    mid = await queued(store)
    t = ScriptedTransport()
    t.script[mid] = [failure]

    async def settled():
        return (await store.get(mid)).state is state
    await run_until(dispatcher(store, t), settled)
    assert words in (await store.get(mid)).reason and len(t.calls) == 1


async def test_graceful_stop_releases_what_is_in_flight(store):
    mid = await queued(store)
    t = ScriptedTransport()
    t.gate = asyncio.Event()  # never opened: the relay hangs
    d = dispatcher(store, t)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, drain_timeout=0.2))

    async def in_flight():
        return bool(t.calls)
    await until(in_flight)
    assert (await store.get(mid)).state is State.SENDING
    stop.set()
    await asyncio.wait_for(task, 5)
    record = await store.get(mid)
    assert record.state is State.QUEUED and record.lease_owner is None


async def test_sent_without_receipt_past_the_limit_alerts_once(store):
    from gateway.pipeline.overdue import OverdueWatch

    mid = await queued(store)
    fresh = await queued(store)

    async def sent():
        return set((await states(store, [mid, fresh])).values()) == {State.SENT}
    await run_until(dispatcher(store, ScriptedTransport()), sent)
    await store.transition(fresh, State.DELIVERED, reason="test: a DSN came", actor="test")
    watch = OverdueWatch(store, timedelta(hours=24), clock=lambda: datetime.now(timezone.utc) + timedelta(hours=25))
    assert await watch.check() == [mid]  # the delivered one has a receipt (a DSN)
    assert await watch.check() == []
    assert [r["action"] for r in await store.audit_rows(object=mid)][0] == "receipt-overdue"
    early = OverdueWatch(store, timedelta(hours=24))
    assert await early.check() == []


async def test_the_overdue_watch_forgets_a_message_once_it_has_its_receipt(store):
    """The ids alerted are kept only while the messages stay overdue (before: one id per overdue message
    for the daemon's lifetime, a set that only grew)."""
    from gateway.pipeline.overdue import OverdueWatch

    ids = [await queued(store) for _ in range(3)]

    async def sent():
        return set((await states(store, ids)).values()) == {State.SENT}
    await run_until(dispatcher(store, ScriptedTransport()), sent)
    watch = OverdueWatch(store, timedelta(hours=24), clock=lambda: datetime.now(timezone.utc) + timedelta(hours=25))
    assert sorted(await watch.check()) == sorted(ids)
    assert watch._alerted == set(ids)
    await store.transition(ids[0], State.DELIVERED, reason="test: a DSN came", actor="test")
    assert await watch.check() == [] and watch._alerted == set(ids[1:])  # still overdue: no second alert
    for mid in ids[1:]:
        await store.transition(mid, State.DELIVERED, reason="test: a DSN came", actor="test")
    assert await watch.check() == [] and watch._alerted == set()


async def test_a_route_whose_transport_is_not_running_is_held(store):
    mid = await queued(store)
    d = Dispatcher(store=store, transports={}, workers=1, per_destination={}, default_per_destination=1,
                   lease=timedelta(minutes=5), retry=RetryPolicy())

    async def held():
        return (await store.get(mid)).state is State.HELD
    await run_until(d, held)
    assert "transport 'email' is not available" in (await store.get(mid)).reason


async def test_a_receipt_that_overtakes_the_commit_of_sent_waits_for_it(store, tmp_path):
    """A DSN can arrive while the dispatcher is still recording `sent`: the matcher leaves the mail in the
    mailbox (offered again) instead of filing it as unrecognised, and applies it once the message is sent."""
    from adapters.imap import FetchedMail
    from gateway.crypto.trust import TrustStore
    from gateway.crypto.pki import init_dev_pki
    from gateway.pipeline.receipt_matcher import ReceiptMatcher

    init_dev_pki(tmp_path / "pki")
    matcher = ReceiptMatcher(store=store, trust=TrustStore.from_bundle(tmp_path / "pki" / "trust.pem"),
                             processed_folder="done", unrecognised_folder="unknown")
    mid = await queued(store)
    await store.claim(owner="w", limit=1, lease=timedelta(minutes=5))  # sending; `sent` not yet committed
    dsn = (f"From: MAILER-DAEMON@relay\r\nTo: nazorg@pi-vught.example.nl\r\nMessage-ID: <dsn-1@relay>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
           f"--b\r\nContent-Type: text/plain\r\n\r\ndelivered\r\n"
           f"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay\r\n"
           f"Original-Envelope-Id: {mid}\r\n\r\nFinal-Recipient: rfc822; nazorg@gemeente-0599.example.nl\r\n"
           f"Action: delivered\r\nStatus: 2.0.0\r\n--b--\r\n").encode()
    mail = FetchedMail(uid=7, data=dsn)
    assert await matcher.handle(mail) is None
    assert (await store.get(mid)).state is State.SENDING and await store.receipts(mid) == []
    await store.transition(mid, State.SENT, reason="relay took it", actor="w", mail_message_id=f"<{mid}@x>")
    assert await matcher.handle(mail) == "done"
    assert (await store.get(mid)).state is State.DELIVERED



async def test_a_retry_by_hand_gets_the_whole_retry_period_anew(store, tmp_path):
    """Failed after days of retries, sent again by an operator: a temporary failure now waits and retries,
    it does not fail at once because the message arrived long ago."""
    mid = await queued(store)
    t = ScriptedTransport()
    t.script[mid] = [Temporary("connection refused"), Temporary("connection refused")]
    later = lambda: datetime.now(timezone.utc) + timedelta(days=6)  # noqa: E731

    async def state_is(state):
        async def check():
            return (await store.get(mid)).state is state
        return check
    await run_until(dispatcher(store, t, clock=later), await state_is(State.FAILED))
    # six days on, the operator sends it again (the store's clock is then six days on as well)
    operator = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", clock=later)
    try:
        await operator.transition(mid, State.QUEUED, reason="retry by operator", actor="operator:test",
                                  next_attempt_at=datetime.now(timezone.utc))  # due for the real-time claim
    finally:
        await operator.close()
    await run_until(dispatcher(store, t, clock=later), await state_is(State.RETRY_WAIT))
    assert "next attempt" in (await store.get(mid)).reason


async def test_expired_leases_are_looked_for_every_few_seconds_and_at_once_after_a_clock_jump(store):
    """Not at every wake-up (one write transaction each, once per message under load): every
    LEASE_CHECK_EVERY of the dispatcher's clock, and at once when that clock jumps either way."""
    from gateway.pipeline.dispatcher import LEASE_CHECK_EVERY

    now = [datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)]
    d = dispatcher(store, None, clock=lambda: now[0])
    assert d._lease_check_due()  # the first look
    now[0] += LEASE_CHECK_EVERY / 2
    assert not d._lease_check_due()
    now[0] += LEASE_CHECK_EVERY / 2
    assert d._lease_check_due()  # a whole interval later
    now[0] += timedelta(hours=6)
    assert d._lease_check_due()  # jumped forward
    now[0] -= timedelta(hours=1)
    assert d._lease_check_due()  # jumped back behind the last look
    assert not d._lease_check_due()
