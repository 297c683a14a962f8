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
  affected: their times are counted from the new clock)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, wait_for_states
from gateway.pipeline.daemon import Gateway
from gateway.store import State

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


async def test_a_clock_jump_forward_and_back_neither_bursts_nor_loses_a_retry(tmp_path, mail_servers, mail_users):
    edits = {'first_delay = "5m"': 'first_delay = "30s"', 'max_delay = "4000s"': 'max_delay = "10m"',
             'jitter = 0.2': 'jitter = 0'}
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, edits=edits))
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
