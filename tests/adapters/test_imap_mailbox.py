"""The IMAP adapter against a real Dovecot (tests/mailservers.py): TLS, login, fetch, move, IDLE,
polling without IDLE/MOVE, and the watcher through handler failures and a server restart."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time

import pytest
import structlog

from adapters.imap import FetchedMail, Mailbox, MailboxError, MailboxSettings, watch_mailbox
from adapters.imap.mailbox import WATCH_BATCH, WATCH_BATCH_BYTES
from mailservers import MailServers, free_port

DOMAIN = "pi-vught.example.nl"
SENDER = f"nazorg@{DOMAIN}"
USERS = {SENDER: "pw-sender", **{f"box{i}@{DOMAIN}": f"pw-{i}" for i in range(24)}}
_free_boxes = itertools.count()


@pytest.fixture(scope="module")
def servers():
    with MailServers.temporary(USERS, [DOMAIN]) as pair:
        yield pair


@pytest.fixture(scope="module")
def plain_servers():
    """A Dovecot that announces neither MOVE nor IDLE after login (it still knows them)."""
    with MailServers.temporary(USERS, [DOMAIN],
                               dovecot_settings="imap_capability = IMAP4rev1 LITERAL+ UIDPLUS\n") as pair:
        yield pair


@pytest.fixture
def box() -> str:
    """A mailbox no other test of this module touches."""
    return f"box{next(_free_boxes)}@{DOMAIN}"


def settings(servers: MailServers, user: str, **overrides) -> MailboxSettings:
    values = dict(host=servers.imap_host, port=servers.imap_port, username=user, password=USERS[user],
                  ssl_context=servers.ssl_context(), timeout=5.0, poll_interval=0.2)
    values.update(overrides)
    return MailboxSettings(**values)


def mail(subject: str, to: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}.{time.time_ns()}@test>"
            f"\r\n\r\nbody {subject}\r\n").encode()


def deliver(servers: MailServers, to: str, *subjects: str) -> None:
    """Submit through the relay and wait until INBOX holds them (not while a watcher empties it)."""
    before = len(servers.messages(to))
    for subject in subjects:
        servers.deliver(SENDER, to, mail(subject, to))
    servers.wait_for_messages(to, before + len(subjects))


async def test_fetch_all_returns_every_message_as_stored_by_uid(servers, box):
    deliver(servers, box, "one", "two", "three")
    mailbox = Mailbox(settings(servers, box))
    await mailbox.connect()
    try:
        fetched = await mailbox.fetch_all()
    finally:
        await mailbox.close()
    assert [m.uid for m in fetched] == sorted(m.uid for m in fetched) and len(fetched) == 3
    # Dovecot keeps LF on disk and serves CRLF: the same bytes otherwise (parallel LMTP deliveries
    # make the order of UIDs and of file names differ at times)
    assert sorted(m.data.replace(b"\r\n", b"\n") for m in fetched) == sorted(m.replace(b"\r\n", b"\n")
                                                                         for m in servers.messages(box))
    [one] = [m for m in fetched if b"Subject: one\r\n" in m.data]
    assert one.data.endswith(b"\r\n\r\nbody one\r\n")
    assert "body" not in repr(fetched[0])


async def test_move_creates_the_folder_and_the_mail_lands_there(servers, box):
    deliver(servers, box, "keep", "receipt-1", "receipt-2")
    mailbox = Mailbox(settings(servers, box))
    await mailbox.connect()
    try:
        by_subject = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0]: m for m in await mailbox.fetch_all()}
        keep, first, second = by_subject[b"keep"], by_subject[b"receipt-1"], by_subject[b"receipt-2"]
        await mailbox.move(first.uid, "Receipts/DSN")  # does not exist yet
        await mailbox.move(second.uid, "Receipts/DSN")  # exists now
        await mailbox.move(second.uid, "Receipts/DSN")  # already gone: nothing happens
        assert [m.uid for m in await mailbox.fetch_all()] == [keep.uid]
        assert await mailbox.fetch(first.uid) is None
    finally:
        await mailbox.close()
    moved = servers.messages(box, "Receipts/DSN")
    assert sorted(m.split(b"Subject: ")[1][:9] for m in moved) == [b"receipt-1", b"receipt-2"]
    assert len(servers.messages(box)) == 1 and b"Subject: keep" in servers.messages(box)[0]


async def test_connect_creates_no_mailbox(servers, box):
    mailbox = Mailbox(settings(servers, box, mailbox="Not-There"))
    with pytest.raises(MailboxError) as failure:
        await mailbox.connect()
    assert failure.value.kind == "mailbox" and "'Not-There'" in str(failure.value)
    check = Mailbox(settings(servers, box, mailbox="Not-There"))
    with pytest.raises(MailboxError):  # still not there: the first attempt created nothing
        await check.connect()


async def test_wrong_password_is_a_clear_error_without_the_password(servers, box):
    mailbox = Mailbox(settings(servers, box, password="Sesame-123"))
    with pytest.raises(MailboxError) as failure:
        await mailbox.connect()
    assert failure.value.kind == "login" and "login refused" in str(failure.value)
    assert "Sesame-123" not in str(failure.value) and "Sesame-123" not in repr(mailbox.settings)


async def test_untrusted_server_certificate_is_a_tls_error(servers, box):
    mailbox = Mailbox(settings(servers, box, ssl_context=ssl.create_default_context()))
    with pytest.raises(MailboxError) as failure:
        await mailbox.connect()
    assert failure.value.kind == "tls" and "TLS" in str(failure.value)
    assert "certificate" in str(failure.value)


async def test_nothing_listening_is_a_connect_error(servers, box):
    mailbox = Mailbox(settings(servers, box, port=free_port()))
    with pytest.raises(MailboxError) as failure:
        await mailbox.connect()
    assert failure.value.kind == "connect"


async def test_idle_wakes_up_soon_after_a_delivery(servers, box):
    mailbox = Mailbox(settings(servers, box))
    await mailbox.connect()
    try:
        assert await mailbox.fetch_all() == []
        t0 = time.monotonic()
        assert await mailbox.wait_for_change(0.3) is False  # nothing came
        assert 0.25 < time.monotonic() - t0 < 1.5
        waiting = asyncio.ensure_future(mailbox.wait_for_change(10))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.to_thread(servers.deliver, SENDER, box, mail("pushed", box))
        assert await waiting is True
        woke = time.monotonic() - t0
        assert woke < 2.0
        [fetched] = await mailbox.fetch_all()
        assert b"Subject: pushed" in fetched.data
        print(f"\nIDLE woke {woke:.3f} s after submission to the relay")
    finally:
        await mailbox.close()


async def test_mail_reported_during_other_commands_wakes_the_next_wait(servers, box):
    """EXISTS riding on the answer to another command (aioimaplib drops those) still counts."""
    deliver(servers, box, "first")
    mailbox = Mailbox(settings(servers, box))
    await mailbox.connect()
    try:
        [first] = await mailbox.fetch_all()
        deliver(servers, box, "second")
        await mailbox.move(first.uid, "Done")  # Dovecot reports the new mail with this answer
        t0 = time.monotonic()
        assert await mailbox.wait_for_change(5) is True
        assert time.monotonic() - t0 < 0.5
        assert len(await mailbox.fetch_all()) == 1
    finally:
        await mailbox.close()


async def test_idle_switched_off_polls_even_where_the_server_offers_it(servers, box):
    """[imap] idle = false: the server's IDLE is not used; new mail is noticed by polling."""
    class CountingMailbox(Mailbox):
        idles = 0

        async def _idle(self, deadline, wake):
            CountingMailbox.idles += 1
            return await super()._idle(deadline, wake)

    mailbox = CountingMailbox(settings(servers, box, poll_interval=0.1, idle=False))
    await mailbox.connect()
    try:
        assert "IDLE" in mailbox.capabilities
        assert await mailbox.fetch_all() == []
        waiting = asyncio.ensure_future(mailbox.wait_for_change(10))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(servers.deliver, SENDER, box, mail("polled", box))
        assert await waiting is True
        assert CountingMailbox.idles == 0
    finally:
        await mailbox.close()


async def test_without_move_and_idle_it_copies_expunges_and_polls(plain_servers, box):
    deliver(plain_servers, box, "old")
    mailbox = Mailbox(settings(plain_servers, box, poll_interval=0.1))
    await mailbox.connect()
    try:
        assert "MOVE" not in mailbox.capabilities and "IDLE" not in mailbox.capabilities
        [old] = await mailbox.fetch_all()
        await mailbox.move(old.uid, "Archive")
        assert await mailbox.fetch_all() == []
        assert len(plain_servers.messages(box, "Archive")) == 1 and plain_servers.messages(box) == []
        waiting = asyncio.ensure_future(mailbox.wait_for_change(10))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.to_thread(plain_servers.deliver, SENDER, box, mail("polled", box))
        assert await waiting is True
        assert time.monotonic() - t0 < 1.5
    finally:
        await mailbox.close()


async def _until(condition, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_watcher_moves_handled_mail_and_leaves_the_rest(servers, box):
    seen: list[bytes] = []

    async def handle(fetched: FetchedMail) -> str | None:
        subject = next(line for line in fetched.data.splitlines() if line.startswith(b"Subject: "))
        seen.append(subject)
        if b"boom" in subject:
            raise RuntimeError("handler bug " + fetched.data.decode())  # its text must not be logged
        return "Done" if b"move-me" in subject else None

    deliver(servers, box, "move-me", "keep-me", "boom")
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(servers, box), handle, stop))
        await _until(lambda: len(servers.messages(box, "Done")) == 1)
        await _until(lambda: seen.count(b"Subject: keep-me") >= 2)  # offered again on the next rescan
        assert not watcher.done()
        servers.deliver(SENDER, box, mail("move-me-too", box))  # not `deliver`: the watcher empties INBOX
        await _until(lambda: len(servers.messages(box, "Done")) == 2)
        stop.set()
        await asyncio.wait_for(watcher, 3)
    inbox = servers.messages(box)
    assert len(inbox) == 2 and any(b"keep-me" in m for m in inbox) and any(b"boom" in m for m in inbox)
    failures = [e for e in logs if e["event"] == "imap.handler_failed"]
    assert failures and failures[0]["error"] == "RuntimeError"
    assert not any("body" in repr(e) or "Subject" in repr(e) for e in logs)
    assert [e["folder"] for e in logs if e["event"] == "imap.moved"] == ["Done", "Done"]


async def test_a_mail_whose_handler_raises_waits_its_own_doubling_delay_not_the_next_new_mail(servers, box):
    """A round comes with every new mail: a failing mail is not fetched and handled again at each one (a fault
    that lasts, like a full inbox disk, would have every stuck mail opened again at every arrival), but after
    a delay of its own, doubling; the other mails flow meanwhile."""
    offers: list[float] = []

    async def handle(fetched: FetchedMail) -> str:
        if b"Subject: stuck" in fetched.data:
            offers.append(time.monotonic())
            raise OSError(28, "No space left on device")
        return "Done"

    deliver(servers, box, "stuck")
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(servers, box), handle, stop, retry_delay=(2.0, 4.0)))
        await _until(lambda: len(offers) == 1)
        for i in range(8):  # new mail, round after round, within the first delay (unless this machine is slow)
            await asyncio.to_thread(servers.deliver, SENDER, box, mail(f"other-{i}", box))
        await _until(lambda: len(servers.messages(box, "Done")) == 8)
        quick = time.monotonic() - offers[0]
        assert len(offers) <= 1 + (quick >= 2.0), (len(offers), quick)
        await _until(lambda: len(offers) >= 3, timeout=20)
        stop.set()
        await asyncio.wait_for(watcher, 3)
    assert offers[1] - offers[0] >= 2.0 and offers[2] - offers[1] >= 4.0, offers
    failed = [e for e in logs if e["event"] == "imap.handler_failed"]
    assert [e["retry_in"] for e in failed][:3] == [2.0, 4.0, 4.0] and {e["error"] for e in failed} == {"OSError"}
    assert [m for m in servers.messages(box) if b"Subject: stuck" in m], "the failing mail stays in INBOX"


async def test_a_mail_larger_than_the_limit_is_filed_unread_and_the_rest_flows(servers, box):
    """Its size is asked first: a mail over `max_mail_bytes` is never fetched (it could take the daemon's memory)
    nor handed over; it is filed in the oversized folder with an alert that says its size, not its content."""
    handled: list[bytes] = []

    async def handle(fetched: FetchedMail) -> str:
        handled.append(next(line for line in fetched.data.splitlines() if line.startswith(b"Subject: ")))
        return "Done"

    big = mail("big", box).replace(b"body big", b"body big " + b"x" * 20_000)
    servers.deliver(SENDER, box, big)
    deliver(servers, box, "small-1", "small-2")
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(servers, box, max_mail_bytes=10_000,
                                                             oversized_folder="Too large"), handle, stop))
        await _until(lambda: len(servers.messages(box, "Done")) == 2)
        stop.set()
        await asyncio.wait_for(watcher, 3)
    assert sorted(handled) == [b"Subject: small-1", b"Subject: small-2"]
    [filed] = servers.messages(box, "Too large")
    assert b"body big xxx" in filed and servers.messages(box) == []
    [alert] = [e for e in logs if e["event"] == "imap.too_large"]
    assert alert["size"] > 20_000 and alert["limit"] == 10_000 and alert["alert"] is True
    assert not any("big" in repr(e) for e in logs)


async def test_a_batch_is_handled_then_filed_together(plain_servers, box):
    """More mails than one batch, two folders, on a server without MOVE (copy, flag, expunge of those UIDs): the
    first batch is all handled before any of it is moved (one fetch and one move per folder per batch)."""
    subjects = [f"m{i:02d}" for i in range(WATCH_BATCH + 4)]
    deliver(plain_servers, box, *subjects)
    order: list[int] = []
    moved_before: list[int] = []  # per handled mail: how many mails had been moved already

    async def handle(fetched: FetchedMail) -> str:
        order.append(fetched.uid)
        moved_before.append(sum(e["event"] == "imap.moved" for e in logs))
        return "Even" if fetched.uid % 2 == 0 else "Odd"

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(plain_servers, box), handle, stop))
        await _until(lambda: len(plain_servers.messages(box, "Even")) + len(plain_servers.messages(box, "Odd"))
                     == len(subjects))
        stop.set()
        await asyncio.wait_for(watcher, 3)
    assert order == sorted(order) and len(order) == len(subjects)  # each handled once, in UID order
    assert plain_servers.messages(box) == []
    moved = [e["uid"] for e in logs if e["event"] == "imap.moved"]
    assert sorted(moved) == sorted(order)
    assert moved_before[:WATCH_BATCH] == [0] * WATCH_BATCH and moved_before[WATCH_BATCH] == WATCH_BATCH


async def test_a_batch_handler_gets_each_fetched_batch_at_once(servers, box):
    """`batched=True`: the handler is given each fetched batch whole (the receipt matcher files a batch of delivery
    reports with one store write) and answers per mail: a folder (moved, one move per folder), None (left in
    place) or the exception its handling raised (left, offered again after its own delay); a batch handler that
    raises fails the whole batch the same way."""
    subjects = [f"m{i:02d}" for i in range(WATCH_BATCH + 3)]
    deliver(servers, box, *subjects)
    batches: list[list[int]] = []

    async def handle_many(mails: list[FetchedMail]) -> list[str | None | Exception]:
        batches.append([m.uid for m in mails])
        if len(batches) == 1:
            raise RuntimeError("the whole batch failed")
        if len(batches) == 2:  # offered again at once: nothing else is due
            return [ValueError("this one") if i == 0 else None if i == 1 else "Done" for i, _ in enumerate(mails)]
        return ["Done" for _ in mails]

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(servers, box), handle_many, stop, batched=True,
                                                    retry_delay=(0.5, 0.5)))
        await _until(lambda: len(servers.messages(box, "Done")) == len(subjects))
        stop.set()
        await asyncio.wait_for(watcher, 3)
    first = batches[0]
    assert len(first) == WATCH_BATCH and first == sorted(first), "one fetch, one call, in UID order"
    assert batches[1] == [first[-1] + 1, first[-1] + 2, first[-1] + 3], "the rest of the round, then the failed ones"
    failed = [e for e in logs if e["event"] == "imap.handler_failed"]
    assert {e["error"] for e in failed} == {"RuntimeError", "ValueError"} and len(failed) >= WATCH_BATCH + 1
    assert [e["uid"] for e in logs if e["event"] == "imap.left_in_place"][:1] == [first[-1] + 2]
    assert servers.messages(box) == []


async def test_a_batch_is_bounded_by_the_sizes_of_its_mails(servers, box):
    """With the sizes asked (`max_mail_bytes`), one fetch holds at most `WATCH_BATCH_BYTES` (a mail larger than that
    alone): a batch of sealed messages of several MB each would otherwise be held in memory at once."""
    big = WATCH_BATCH_BYTES // 3 + 1000  # two fit in a batch, three do not
    for i in range(5):
        servers.deliver(SENDER, box, mail(f"big-{i}", box).replace(b"body", (b"x" * 98 + b"\r\n") * (big // 100)
                                                                   + b"body"))
    servers.wait_for_messages(box, 5)
    sizes: list[list[int]] = []

    async def handle_many(mails: list[FetchedMail]) -> list[str]:
        sizes.append([len(m.data) for m in mails])
        return ["Done" for _ in mails]

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_mailbox(settings(servers, box, max_mail_bytes=10 << 20), handle_many, stop,
                                                batched=True))
    await _until(lambda: len(servers.messages(box, "Done")) == 5)
    stop.set()
    await asyncio.wait_for(watcher, 3)
    assert [len(b) for b in sizes] == [2, 2, 1] and all(sum(b) <= WATCH_BATCH_BYTES for b in sizes), sizes


async def test_watcher_survives_a_server_restart(servers, box):
    handled: list[int] = []

    async def handle(fetched: FetchedMail) -> str:
        handled.append(fetched.uid)
        return "Done"

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(watch_mailbox(settings(servers, box, poll_interval=5.0), handle, stop,
                                                    reconnect_delay=(0.05, 0.2)))
        servers.deliver(SENDER, box, mail("before", box))
        await _until(lambda: len(servers.messages(box, "Done")) == 1)
        await asyncio.to_thread(servers.stop_imap)
        await asyncio.sleep(0.5)  # a few refused reconnects
        await asyncio.to_thread(servers.start_imap)
        t0 = time.monotonic()
        await asyncio.to_thread(servers.deliver, SENDER, box, mail("after", box))
        await _until(lambda: len(servers.messages(box, "Done")) == 2)
        print(f"\nafter the restart, handled {time.monotonic() - t0:.3f} s after submission")
        assert not watcher.done()
        stop.set()
        await asyncio.wait_for(watcher, 3)
    events = [e["event"] for e in logs]
    assert events.count("imap.connected") >= 2
    kinds = {e["kind"] for e in logs if e["event"] == "imap.disconnected"}
    assert "connection_lost" in kinds and "connect" in kinds
    assert len(handled) == 2
