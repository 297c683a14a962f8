"""The dispatcher: claims due messages from the store and hands them to their transport.

A bounded number of deliveries run at once (`workers`), at most
`max_concurrency` per destination; the store hands out due work by priority
(release notices first). Every attempt is claimed with a lease before the
first byte leaves, and its outcome committed before anything else happens:
- handed over (SMTP 250)          → `sent`
- temporary (4xx, timeout, down)  → `retry_wait`, exponential backoff with jitter, until `give_up_after`
- permanent (5xx)                 → `failed`, operator alerted
- security (no TLS, bad cert, auth refused) → `held`: never downgraded, never retried blindly
A destination that is down (the relay or an AS2 URL unreachable, refusing, timing out: see
`breaker.py`) is not tried message by message: its breaker opens (`destination-down`, an alert), its
messages wait unclaimed without spending attempts, one probe goes at the retry policy's intervals, and
when one gets through (`destination-up`) they are all due at once. Messages that reach the give-up
horizon meanwhile fail as they would have at their next attempt (`queued`/`retry_wait` → `failed`).
Each breaker's state is also written to the store where it is logged (`gateway/store/breakers.py`), for
`status`, the dashboard and the metrics, which run in other processes.
A crash leaves the lease, which expires and puts the message back in the queue:
it is then sent again with the same message id (receivers drop duplicates).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

import structlog

from adapters.outbox_fs import remove_plaintext
from gateway.pipeline.breaker import Breakers, Down
from gateway.pipeline.disk import no_space
from gateway.pipeline.transports import Destination, Permanent, Security, Temporary, Transport
from gateway.store import MessageRecord, StaleState, State, Store
from gateway.store import breakers as breaker_rows
from gateway.store.store import Link

log = structlog.get_logger(__name__)
#: seconds between tries while the disk is full
DISK_FULL_RETRY = 5.0
#: seconds between looks for expired leases (a crashed daemon's deliveries) while running
LEASE_CHECK_EVERY = timedelta(seconds=5)
#: messages failed at once at the give-up horizon of a destination that is down (one read each)
GIVE_UP_BATCH = 500
#: seconds between looks for work that found none while a destination is down: each look walks past its
#: waiting messages (see `_claim_and_start`), and every message queued meanwhile wakes the dispatcher
DOWN_LOOK_EVERY = 0.25


class Dispatcher:
    def __init__(self, *, store: Store, transports: Mapping[str, Transport], retry, workers: int,
                 per_destination: Mapping[str, int], default_per_destination: int, lease: timedelta,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc), rng: random.Random | None = None):
        self.store = store
        self.transports = transports
        self.retry = retry
        self.workers = max(1, workers)
        self.per_destination = per_destination
        self.default_per_destination = max(1, default_per_destination)
        self.lease = lease
        self.owner = f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task] = {}
        self._by_destination: Counter[str] = Counter()
        self._last_lease_check: datetime | None = None
        self._started = 0  #: deliveries started since the start
        #: per destination: open while it is down (in memory: a restart starts closed)
        self.breakers = Breakers(retry, clock, self._rng)

    def wake(self) -> None:
        """New work may be due (called by the sealer and by operators)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, drain_timeout: float = 30.0) -> None:
        released = await self.store.release_expired_leases()
        if released:
            log.warning("leases-expired", count=len(released), message_ids=released[:20])
        # this run starts with every breaker closed: the store must not show one still open from the last
        reset = await breaker_rows.close_left_open(self.store, at=self._clock(), actor=self.owner)
        if reset:
            log.info("breakers-reset", destinations=reset, why=breaker_rows.CLOSED_AT_RESTART)
        stopping = asyncio.create_task(stop.wait())
        paused: str | None = None
        try:
            while not stop.is_set():
                try:
                    started = await self._claim_and_start()
                    await self._sleep(stopping, idle=not started)
                    if len(self._running) < self.workers and self._lease_check_due():
                        for mid in await self.store.release_expired_leases():
                            log.warning("lease-expired", message_id=mid)
                except Exception as e:
                    if (why := no_space(e)) is None:
                        raise
                    if paused is None:  # a claim is a write: with the disk full, wait for room (once alerted)
                        log.error("dispatch-paused", reason=why, alert=True, retry_in=DISK_FULL_RETRY)
                    paused = why
                    await asyncio.wait({stopping}, timeout=DISK_FULL_RETRY)
                    continue
                if paused is not None:
                    log.warning("dispatch-resumed", after=paused)
                    paused = None
        finally:
            stopping.cancel()
            await self._drain(drain_timeout)

    def _lease_check_due(self) -> bool:
        """Whether to look for expired leases now: every LEASE_CHECK_EVERY seconds of the clock, not at
        every wake-up (a write transaction each: once per message under load), and at once when the
        clock has jumped (forward past the next check, or back behind the last one)."""
        now = self._clock()
        last = self._last_lease_check
        if last is not None and last <= now < last + LEASE_CHECK_EVERY:
            return False
        self._last_lease_check = now
        return True

    async def _sleep(self, stopping: asyncio.Task, *, idle: bool = False) -> None:
        if idle and self.breakers.down():
            await asyncio.wait({stopping}, timeout=DOWN_LOOK_EVERY)
        timeout = 5.0
        if len(self._running) < self.workers:
            due = await self.store.next_due(self.breakers.links())
            probe = self.breakers.next_probe()
            for at in (due, probe):
                if at is not None:
                    timeout = min(timeout, max(0.0, (at - self._clock()).total_seconds()))
        self._wake.clear()
        waking = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({waking, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waking.cancel()

    async def _claim_and_start(self) -> int:
        """Start what is due; how many deliveries were started."""
        before = self._started
        for down in self.breakers.probes_due():
            if len(self._running) >= self.workers:
                break
            await self._probe(down)
        down_links = self.breakers.links()
        if down_links and len(self._running) < self.workers:
            # a destination is down: its due messages are walked past by every claim, a write that would
            # hold the store's writer for it (~100 ms at 20,000); look first, with a read
            due = await self.store.next_due(down_links)
            if due is None or due > self._clock():
                return self._started - before
        while len(self._running) < self.workers:
            full = {d for d, n in self._by_destination.items() if n >= self._limit(d)}
            # one claim must not hand out more for a destination than it has room for: claim no
            # more at once than the smallest room left anywhere (usually 1-2; each claim is one commit)
            room = [self._limit(d) - n for d, n in self._by_destination.items() if d not in full]
            room += [n for code, n in self.per_destination.items() if f"gemeente:{code}" not in self._by_destination
                     and f"pi:{code}" not in self._by_destination]
            batch = max(1, min([self.workers - len(self._running), self.default_per_destination, *room]))
            claimed = await self.store.claim(owner=self.owner, limit=batch, lease=self.lease,
                                             exclude_destinations=full, exclude_down=down_links)
            if not claimed:
                break
            for record in claimed:
                self._start(record)
        return self._started - before

    def _start(self, record: MessageRecord, *, probe: bool = False) -> None:
        self._started += 1
        self._by_destination[record.recipient] += 1
        task = asyncio.create_task(self._deliver(record, probe=probe), name=f"deliver-{record.message_id}")
        self._running[record.message_id] = task
        task.add_done_callback(lambda t, r=record: self._done(r))

    async def _probe(self, down: Down) -> None:
        """A destination that is down is due for a probe: first fail what reached the give-up horizon
        while it waited, then send one message (the one due first) to see whether it is back."""
        await self._give_up_waiting(down)
        record = await self.store.claim_probe(owner=self.owner, lease=self.lease, link=down.link)
        if record is None:  # nothing waits for it: look again an interval later
            down.next_probe_at = self._clock() + self.retry.delay(down.failures, self._rng)
            await self._record_down(down, opened=False)
            return
        down.probing = record.message_id
        log.info("destination-probe", destination=down.key, message_id=record.message_id, probe=down.failures)
        self._start(record, probe=True)

    async def _give_up_waiting(self, down: Down) -> None:
        """Messages held back by an open breaker fail at the give-up horizon, as they would have at their
        next attempt: with the attempts they had and the destination's failure as the reason."""
        while True:
            now = self._clock()
            batch = await self.store.waiting_past(down.link, now - self.retry.give_up_after, limit=GIVE_UP_BATCH)
            results = await asyncio.gather(*(self._give_up(r, down, now) for r in batch), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, StaleState):
                    raise result
            if len(batch) < GIVE_UP_BATCH:
                return

    async def _give_up(self, record: MessageRecord, down: Down, now: datetime) -> None:
        reason = (f"gave up after {record.attempts} attempts over {_days(now - record.received_at)}: "
                  f"{down.key} is down: {down.reason}")
        await self.store.transition(record.message_id, State.FAILED, reason=reason, actor=self.owner,
                                    expect=[State.QUEUED, State.RETRY_WAIT])
        log.error("failed", message_id=record.message_id, type=record.type, recipient=record.recipient,
                  attempt=record.attempts, transport=record.transport, reason=reason, alert=True)

    def _destination(self, record: MessageRecord, transport: Transport) -> tuple[str, Link]:
        name = record.transport or ""
        find = getattr(transport, "destination", None)
        d = find(record.address) if find is not None else Destination(f"{name} {record.address}", record.address)
        return d.key, (name, d.address)

    async def _reached(self, key: str, link: Link) -> None:
        """A delivery reached the destination (whatever the answer): if it was down, it is back."""
        down = self.breakers.reached(key)
        if down is None:
            return
        down_for = _span(self._clock() - down.since)
        due = await self.store.due_now(link)
        log.warning("destination-up", destination=key, down_for=down_for,
                    failed_probes=down.failures - 1, was=down.reason, made_due=due)
        self._wake.set()
        try:
            await breaker_rows.record_closed(self.store, destination=key, at=self._clock(), actor=self.owner,
                                             reason=f"the destination answered after {down_for} down, "
                                                    f"{down.failures - 1} failed probes")
        except Exception as e:  # as in _record_down
            log.warning("breaker-not-recorded", destination=key, error=type(e).__name__)

    async def _unreachable(self, key: str, link: Link, reason: str, began: datetime, probe: bool) -> None:
        opened = self.breakers.failed(key, link, reason, began=began, probe=probe)
        if opened is not None:
            log.error("destination-down", destination=key, reason=reason, alert=True,
                      next_probe_in=_span(opened.next_probe_at - self._clock()))
            await self._record_down(opened, opened=True)
        elif probe and (down := next((d for d in self.breakers.down() if d.key == key), None)) is not None:
            log.info("destination-still-down", destination=key, reason=reason, failed_probes=down.failures - 1,
                     next_probe_in=_span(down.next_probe_at - self._clock()))
            await self._record_down(down, opened=False)

    async def _record_down(self, down: Down, *, opened: bool) -> None:
        """The breaker as it is now, for the operator's processes. Never in the way of the delivery whose
        failure this is: its own outcome must still be recorded when this write fails (a full disk)."""
        transport, address = down.link
        try:
            await breaker_rows.record_down(self.store, destination=down.key, transport=transport, address=address,
                                           since=down.since, reason=down.reason, failures=down.failures,
                                           next_probe_at=down.next_probe_at, opened=opened, at=self._clock(),
                                           actor=self.owner)
        except Exception as e:
            log.warning("breaker-not-recorded", destination=down.key, error=type(e).__name__)

    def _limit(self, destination: str) -> int:
        return self.per_destination.get(destination.split(":", 1)[-1], self.default_per_destination)

    def _done(self, record: MessageRecord) -> None:
        self._running.pop(record.message_id, None)
        self._by_destination[record.recipient] -= 1
        if self._by_destination[record.recipient] <= 0:
            del self._by_destination[record.recipient]
        self._wake.set()

    async def _deliver(self, record: MessageRecord, *, probe: bool = False) -> None:
        log_ = log.bind(message_id=record.message_id, type=record.type, recipient=record.recipient,
                        attempt=record.attempts, transport=record.transport)
        transport = self.transports.get(record.transport or "")
        if transport is None:
            await self._settle(record, State.HELD, f"transport {record.transport!r} is not available", log_)
            return
        key, link = self._destination(record, transport)
        began = self._clock()
        try:
            try:
                entity = await self.store.sealed(record.message_id)
                handed = await transport.send(message_id=record.message_id, message_type=record.type,
                                              address=record.address, entity=entity, mic=record.mic)
            except Temporary as e:
                if e.connection:  # the destination, not this message: its breaker opens (before the claims go on)
                    await self._unreachable(key, link, e.reason, began, probe)
                else:
                    await self._reached(key, link)
                await self._retry_or_fail(record, e.reason, e.remote_reply, log_)
            except Permanent as e:
                await self._reached(key, link)
                await self._settle(record, State.FAILED, f"refused permanently: {e.reason}", log_, e.remote_reply)
            except Security as e:
                await self._reached(key, link)
                await self._settle(record, State.HELD, f"security failure, nothing sent: {e.reason}", log_,
                                   e.remote_reply)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not lose the message: back to the queue after a pause
                log_.exception("delivery-error")
                await self._retry_or_fail(record, f"internal error while sending ({type(e).__name__})", None, log_)
            else:
                await self._reached(key, link)
                recorded = await self._settle(record, State.SENT, "the next hop accepted the message", log_,
                                              handed.remote_reply, mail_message_id=handed.transport_id)
                if handed.receipt is not None and recorded:  # else the attempt that owns it now gets the receipt again
                    await self._receipt(record, handed.receipt, log_)
        finally:
            if probe:  # a probe that ended without a verdict (a stop, a bug): the next one later
                self.breakers.probe_ended(key, record.message_id)

    async def _receipt(self, record: MessageRecord, check, log_) -> None:
        """A receipt that came with the answer (AS2): only a matching signed one proves anything."""
        await self.store.add_receipt(record.message_id, kind="mdn", verdict=check.verdict.value, detail=check.reason)
        if check.ok:
            await self.store.transition(record.message_id, State.ACKNOWLEDGED, reason=check.reason,
                                        actor=self.owner, expect=[State.SENT],
                                        **({"spool_path": None} if record.spool_path else {}))
            if record.spool_path:  # delivery is proven: the plaintext copy goes, as on the e-mail route
                await asyncio.to_thread(remove_plaintext, record.spool_path)
            log_.info("acknowledged", reason=check.reason)
        elif check.verdict.value == "not-processed":
            await self.store.transition(record.message_id, State.FAILED, reason=check.reason, actor=self.owner,
                                        expect=[State.SENT])
            log_.error("failed", reason=check.reason, alert=True)
        else:  # sent, but nothing proves it arrived intact: an integrity alert for the operator
            log_.error("receipt-integrity", verdict=check.verdict.value, reason=check.reason, alert=True)
            await self.store.audit(action="receipt-check", object=record.message_id, result=check.verdict.value,
                                   origin="as2", actor=self.owner)

    async def _retry_or_fail(self, record: MessageRecord, reason: str, reply: str | None, log_) -> None:
        now = self._clock()
        if now - record.received_at >= self.retry.give_up_after and \
                now - await self._retrying_since(record) >= self.retry.give_up_after:
            await self._settle(record, State.FAILED, f"gave up after {record.attempts} attempts over "
                                                     f"{_days(now - record.received_at)}: {reason}", log_, reply)
            return
        delay = self.retry.delay(record.attempts, self._rng)
        await self._settle(record, State.RETRY_WAIT, f"temporary failure, next attempt in {_span(delay)}: {reason}",
                           log_, reply, next_attempt_at=now + delay)

    async def _retrying_since(self, record: MessageRecord) -> datetime:
        """When this round of retries began: arrival, or the last time a person sent it again (a retry
        after `failed` gets the whole retry period anew)."""
        for t in reversed(await self.store.timeline(record.message_id)):
            if t.to_state is State.QUEUED and t.from_state is State.FAILED:
                return t.at
        return record.received_at

    async def _settle(self, record: MessageRecord, state: State, reason: str, log_, reply: str | None = None,
                      **fields) -> bool:
        """Record this attempt's outcome, if the message is still this attempt's (True when recorded).

        The attempt number is part of the compare-and-set: an attempt that outlived its lease (the
        message was claimed again) must not write its outcome over the newer attempt's."""
        try:
            await self.store.transition(record.message_id, state, reason=reason, actor=self.owner,
                                        expect=[State.SENDING], of_attempt=record.attempts, attempt=record.attempts,
                                        remote_reply=reply, **fields)
        except StaleState:
            log_.warning("outcome-not-recorded", state=state.value,
                         why="the message left 'sending' meanwhile, or a later attempt owns it")
            return False
        level = {State.SENT: "info", State.RETRY_WAIT: "warning"}.get(state, "error")
        getattr(log_, level)(state.value, reason=reason, remote_reply=reply,
                             **({"alert": True} if state in (State.FAILED, State.HELD) else {}))
        return True

    async def _drain(self, timeout: float) -> None:
        """Graceful stop: let running deliveries finish for `timeout`, then cancel and release them."""
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=timeout)
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        released = await self.store.release_owned(self.owner)
        if released:
            log.info("released-on-stop", count=len(released))


def _span(delay: timedelta) -> str:
    seconds = delay.total_seconds()
    return f"{int(seconds) // 60} min {int(seconds) % 60} s" if seconds >= 60 else f"{seconds:.1f} s"


def _days(span: timedelta) -> str:
    return f"{span.total_seconds() / 86400:.1f} days"
