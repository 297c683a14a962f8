"""The clock jumps a day forward and back while a message waits to be retried (the daemon in-process against the
private Postfix; its dispatcher and store read one clock the test moves, as an NTP step would move the
system clock under both).

The semantics, as built: a retry is scheduled at an absolute time (`next_attempt_at` = the failure's time +
the backoff delay) and is due when the clock reaches it.
- Forward by a day: every waiting retry is due at once and is attempted ONCE (the attempt count goes up by
  one, not by the number of delays that "passed"); the next wait is the following backoff step counted from
  the new time; a day is well inside the give-up horizon (5 days), so nothing fails for it.
- Back by a day: the scheduled retry now lies a day (plus its delay) ahead; nothing fires early, nothing is
  dropped: the message stays in `retry_wait` with its schedule and is sent when the clock reaches it again.
  A step back therefore delays waiting retries by the size of the step (messages arriving meanwhile are not
  affected: their times are counted from the new clock).
- Forward past the lease while a delivery is in flight: the lease is counted in the store's (wall) time, so it
  has run out: the dispatcher puts the message back (`lease-expired`) and sends it again at once under the
  same message id and Message-ID; the attempt still in flight is not stopped (its timeouts run on the
  monotonic clock) and its late outcome is not recorded, because the message has left `sending`.
- Forward past the give-up horizon (5 days): a message waiting for its retry is tried once more; a temporary
  error then fails it with the reason ("gave up after N attempts over 6.0 days: <the relay's answer>"); one
  whose next attempt succeeds is sent, not failed for the jump."""

from __future__ import annotations

import asyncio
import email
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import structlog

from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, wait_for_states
from gateway.pipeline.daemon import Gateway
from gateway.store import LEASE_EXPIRED, State

ADDRESS = "nazorg@gemeente-0599.example.nl"  # where a meldingsbericht of PI-VUGHT goes
FIRST, SECOND = timedelta(seconds=30), timedelta(seconds=60)  # the first two backoff steps (no jitter)


class Clock:
    """Wall time plus a step the test sets (the jump)."""

    def __init__(self):
        self.step = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.step


@asynccontextmanager
async def running(config, clock: Clock):
    """The daemon in this event loop, every service and its store on `clock` (as all read the system clock)."""
    gateway = Gateway(config, clock=clock)
    task = asyncio.create_task(gateway.run())
    try:
        while not gateway.ready.is_set() and not task.done():
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        gateway.store._clock = clock  # the daemon opens its store on the system clock: set it to the same
        yield gateway
    finally:
        gateway.stop.set()
        await asyncio.wait_for(task, 60)


def near(span: timedelta, expected: timedelta) -> bool:
    """Equal but for the moment between the dispatcher's and the store's reading of the clock."""
    return abs(span - expected) < timedelta(seconds=1)


async def until(predicate, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.05)
    return result


async def test_a_clock_jump_forward_and_back_neither_bursts_nor_loses_a_retry(tmp_path, mail_servers, mail_users,
                                                                              dev_pki):
    edits = {'first_delay = "5m"': 'first_delay = "30s"', 'max_delay = "4000s"': 'max_delay = "10m"',
             'jitter = 0.2': 'jitter = 0'}
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, edits=edits, pki=dev_pki))
    clock = Clock()
    mail_servers.refuse(ADDRESS, "451 4.3.0 try again later")
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(cfg, clock) as gateway:
        store = gateway.store
        drop(cfg.folders.outbox, "m.xml", data)
        await wait_for_states(store, [mid], [State.RETRY_WAIT], timeout=30)
        first = await store.get(mid)
        assert first.attempts == 1
        assert near(first.next_attempt_at - first.updated_at, FIRST)

        # a day forward: the retry is due, and is made once (still refused: waits the next step)
        clock.step = timedelta(days=1)
        gateway.dispatcher.wake()
        second = await until(lambda: _with_attempts(store, mid, 2), 20, "the attempt after the jump forward")
        assert second.state is State.RETRY_WAIT
        assert near(second.next_attempt_at - second.updated_at, SECOND)
        assert second.updated_at - clock() < timedelta(seconds=5) and second.updated_at > first.updated_at + \
            timedelta(days=1) - timedelta(seconds=5), "the failure is recorded at the new time"
        await asyncio.sleep(1.5)
        now = await store.get(mid)
        assert (now.state, now.attempts) == (State.RETRY_WAIT, 2), "one attempt for the jump, not a burst"

        # and back: the retry planned at the later time waits; nothing fires early, nothing is lost
        clock.step = timedelta(0)
        mail_servers.lift(ADDRESS)
        gateway.dispatcher.wake()
        await asyncio.sleep(1.5)
        now = await store.get(mid)
        assert (now.state, now.attempts, now.next_attempt_at) == (State.RETRY_WAIT, 2, second.next_attempt_at)
        assert now.next_attempt_at - clock() > timedelta(days=1), "the schedule is kept in absolute time"

        # the clock reaches the planned time again: sent, once, under its one Message-ID
        clock.step = second.next_attempt_at - datetime.now(timezone.utc) + timedelta(seconds=1)
        gateway.dispatcher.wake()
        await wait_for_states(store, [mid], [State.SENT, State.DELIVERED], timeout=30)
        final = await store.get(mid)
        assert final.attempts == 3
        transitions = [(t.from_state, t.to_state) for t in await store.timeline(mid)]
        assert transitions.count((State.SENDING, State.RETRY_WAIT)) == 2
        assert transitions.count((State.SENDING, State.SENT)) == 1
    mails = await mail_servers.wait_for_messages_async(ADDRESS, 1, timeout=20, folder=None)
    assert len(mails) == 1 and f"<{mid}@pi-vught.example.nl>".encode() in mails[0]


async def _with_attempts(store, mid: str, attempts: int):
    record = await store.get(mid)
    return record if record.attempts >= attempts and record.state is not State.SENDING else None


class HoldFirst:
    """A TCP relay in front of the relay (Postfix): the first connection is taken and left hanging (nothing
    answered, nothing passed on: a delivery in flight); later ones pass. `cut()` closes the hanging one."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.held: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        for writer in self.held:
            writer.transport.abort()

    async def close(self) -> None:
        self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        if not self.held:
            self.held.append(writer)
            while await reader.read(65536):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            writer.transport.abort()
            up_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


async def test_a_jump_past_the_lease_sends_a_delivery_in_flight_again_under_its_ids(tmp_path, mail_servers,
                                                                                       mail_users, dev_pki):
    hold = HoldFirst(mail_servers.smtp_port)
    port = await hold.start()
    # a lease of a minute and an SMTP timeout below it: without the jump, nothing would expire for a minute
    edits = {'lease = "11s"': 'lease = "60s"',
             'password_file = "secrets/smtp-password"\ntimeout = 5': 'password_file = "secrets/smtp-password"\n'
                                                                    'timeout = 50'}
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, smtp_port=port, edits=edits,
                                 pki=dev_pki))
    assert cfg.limits.lease == timedelta(seconds=60) and cfg.smtp.timeout == 50
    clock = Clock()
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    try:
        with structlog.testing.capture_logs() as logs:
            async with running(cfg, clock) as gateway:
                store = gateway.store
                drop(cfg.folders.outbox, "m.xml", data)
                await until(lambda: _held(hold), 30, "the first attempt in flight")
                first = await store.get(mid)
                assert (first.state, first.attempts) == (State.SENDING, 1)
                assert first.lease_until - clock() < timedelta(seconds=61)

                clock.step = timedelta(hours=1)  # an NTP step: every lease in flight has run out
                gateway.dispatcher.wake()
                await wait_for_states(store, [mid], [State.SENT, State.DELIVERED], timeout=30)
                assert hold.held and not hold.held[0].transport.is_closing(), "the first attempt is still open"
                hold.cut()  # now the first attempt ends too (a reset): its outcome comes late
                await until(lambda: _logged(logs, "outcome-not-recorded"), 30, "the first attempt's end")
                record = await store.get(mid)
                timeline = list(await store.timeline(mid))
    finally:
        await hold.close()
    assert record.attempts == 2 and record.state in (State.SENT, State.DELIVERED)
    moves = [(t.from_state.value if t.from_state else None, t.to_state.value, t.reason == LEASE_EXPIRED)
             for t in timeline if t.from_state is State.SENDING]
    assert moves == [("sending", "retry_wait", True), ("sending", "sent", False)], moves
    late = [e for e in logs if e["event"] == "outcome-not-recorded"]
    assert len(late) == 1 and late[0]["message_id"] == mid and late[0]["state"] == "retry_wait"
    assert [e["message_id"] for e in logs if e["event"] == "lease-expired"] == [mid]
    mails = await mail_servers.wait_for_messages_async(ADDRESS, 1, timeout=20, folder=None)
    assert len(mails) == 1
    mail = email.message_from_bytes(mails[0])
    assert (mail["Message-ID"], mail["X-Nazorg-Message-Id"]) == (f"<{mid}@pi-vught.example.nl>", mid)
    assert record.mail_message_id == mail["Message-ID"]


def _held(hold: HoldFirst):
    async def check():
        return bool(hold.held)
    return check()


async def _logged(logs: list[dict], event: str) -> bool:
    return any(e["event"] == event for e in logs)


async def test_a_jump_past_the_give_up_horizon_fails_a_message_at_its_next_temporary_error(tmp_path, mail_servers,
                                                                                            mail_users, dev_pki):
    edits = {'first_delay = "5m"': 'first_delay = "30s"', 'max_delay = "4000s"': 'max_delay = "10m"',
             'jitter = 0.2': 'jitter = 0'}
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, edits=edits, pki=dev_pki))
    assert cfg.retry.give_up_after == timedelta(days=5)
    clock = Clock()
    still_refused = ADDRESS
    refused_then_lifted = "nazorg@gemeente-0344.example.nl"  # where an overdrachtsdocument of PI-VUGHT goes
    mail_servers.refuse(still_refused, "451 4.3.0 try again later")
    mail_servers.refuse(refused_then_lifted, "451 4.3.0 try again later")
    (a, a_id), (b, b_id) = with_new_id(example("01-meldingsbericht.xml")), \
        with_new_id(example("04-overdrachtsdocument.xml"))
    async with running(cfg, clock) as gateway:
        store = gateway.store
        drop(cfg.folders.outbox, "a.xml", a)
        drop(cfg.folders.outbox, "b.xml", b)
        await wait_for_states(store, [a_id, b_id], [State.RETRY_WAIT], timeout=30)
        mail_servers.lift(refused_then_lifted)

        clock.step = timedelta(days=6)  # beyond the horizon, counted from the arrival
        gateway.dispatcher.wake()
        states = await wait_for_states(store, [a_id, b_id], [State.FAILED, State.SENT, State.DELIVERED], timeout=30)
        failed, sent = await store.get(a_id), await store.get(b_id)
        transitions = list(await store.timeline(a_id))
    assert states[a_id] is State.FAILED and states[b_id] in (State.SENT, State.DELIVERED), states
    assert failed.attempts == 2 and sent.attempts == 2, "one attempt after the jump each, no burst"
    assert failed.reason.startswith("gave up after 2 attempts over 6.0 days: "), failed.reason
    assert "451" in f"{failed.reason} {transitions[-1].remote_reply}", (failed.reason, transitions[-1].remote_reply)
    assert [t.to_state for t in transitions] == \
        [State.RECEIVED, State.QUEUED, State.SENDING, State.RETRY_WAIT, State.SENDING, State.FAILED]
    mails = await mail_servers.wait_for_messages_async(refused_then_lifted, 1, timeout=20, folder=None)
    assert len(mails) == 1 and f"<{b_id}@pi-vught.example.nl>".encode() in mails[0]
    assert not [m for m in mail_servers.messages(still_refused, folder=None) if a_id.encode() in m]
