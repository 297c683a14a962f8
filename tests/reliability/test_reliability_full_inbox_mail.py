"""A full inbox while a message arrives by e-mail: the counterpart of test_reliability_full_inbox.py for the
e-mail route. The PI's gateway (in-process) sends to municipality 0344 through the private Postfix; 0344's
gateway runs as a real daemon process reading its Dovecot mailbox (IMAP, IDLE), its inbox on a small tmpfs
(mounted by the test, root) that is full when the mail comes in.

What must hold while the inbox has no room (not a byte, and then one page: room for the `.json`, not the `.xml`):
- nothing lies in the inbox (no `.xml`, no `.json` without its `.xml`, no hidden temporary), nothing is
  recorded as received, nothing is refused (quarantine, on disk and in IMAP, stays empty), no receipt goes
  back, and the mail stays in the IMAP INBOX (not moved anywhere): it is to be tried again;
- the daemon keeps running and says so once as an alert (`inbound.inbox_full`), not at every retry;
- it tries the mail again without a restart, after a delay of its own that doubles (1, 2, 4 … s here, with
  `poll_interval = 1`): not at every round of the watcher, which comes with every new mail (other mail
  arriving meanwhile is handled, and does not make the stuck one tried again), not never;
once there is room again, the mail is filed exactly once (one `.xml` byte for byte with its `.json`), moved to
the processed folder, one signed receipt goes back and the PI's gateway marks the message `acknowledged`."""

from __future__ import annotations

import asyncio
import email
import json
import math
import os
import re
import time
from pathlib import Path

from disk_fill import fill
from dropped import example, with_new_id
from e2e_gateway import (DaemonProcess, drop, log_events, logged, make_setup, named, open_config, running,
                         wait_for_states)
from gateway.store import State, Store

DISK_KIB = 1024
PAGE = 4096  #: what tmpfs counts a file in: the .json (under 1 KiB) and the .xml (under 4 KiB) need a page each
POLL = 1  #: 0344's IMAP poll_interval (s): also the first delay before a mail whose intake failed is tried again
OTHERS = 5  #: unrelated mails that arrive while the inbox is full
PROCESSED, QUARANTINE = "nazorg/verwerkt", "nazorg/quarantaine"


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return result


def inbox_files(inbox: Path) -> list[str]:
    """Every file under the inbox, as type/name (hidden temporaries included)."""
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


def copies(servers, address: str, mid: str, folder: str | None) -> list[bytes]:
    """The mails of message `mid` in a folder of the mailbox (None: every folder)."""
    return [raw for raw in servers.messages(address, folder=folder)
            if email.message_from_bytes(raw)["X-Nazorg-Message-Id"] == mid]


def receipts(servers, address: str, mid: str) -> list[bytes]:
    """Every receipt mail for message `mid` in the mailbox (all folders)."""
    return [raw for raw in servers.messages(address, folder=None)
            if email.message_from_bytes(raw)["Subject"] == f"nazorg ontvangstbevestiging {mid}"]


async def test_a_full_inbox_leaves_the_mail_in_the_mailbox_alerts_once_and_files_it_once_with_room(
        tmp_path, mail_servers, mail_users, small_disk, dev_pki):
    disk = small_disk(DISK_KIB)
    pi = open_config(make_setup(tmp_path / "pi", mail_servers, mail_users, pki=dev_pki))
    gm_path = make_setup(tmp_path / "gm", mail_servers, mail_users, party="0344", pki=dev_pki,
                         edits={'inbox = "inbox"': f'inbox = "{disk / "inbox"}"',
                                'password_file = "secrets/imap-password"':
                                f'password_file = "secrets/imap-password"\npoll_interval = {POLL}'})
    gm = open_config(gm_path)
    assert gm.folders.inbox == disk / "inbox" and gm.folders.quarantine.parent == tmp_path / "gm"
    assert pi.routes["0344"].transport == "email" and gm.routes["PI-VUGHT"].transport == "email"
    assert gm.imap.poll_interval == POLL
    gm_mail, pi_mail = gm.party.email, pi.party.email
    folder = gm.folders.inbox / "ontslagbericht"
    folder.mkdir(parents=True)
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    assert len(data) <= PAGE
    # a page kept apart before the disk is filled: deleting it later leaves room for exactly one page
    (disk / "page").write_bytes(b"\0" * PAGE)
    filler = disk / "filler"
    log_path = tmp_path / "gm.log"  # on the big disk: the log must stay readable
    daemon = DaemonProcess(gm_path, log_path)
    daemon.start()
    try:
        await logged(log_path, "started")
        async with running(pi) as pi_gw:
            assert fill(filler) > 0 and os.statvfs(disk).f_bavail == 0
            t_dropped = time.monotonic()  # before the first try: the bound on the tries below is loose
            drop(pi.folders.outbox, "m.xml", data)

            # 1. not a byte free: the .json does not fit. Postfix delivered the mail (its DSN: `delivered`)
            await wait_for_states(pi_gw.store, [mid], [State.DELIVERED], timeout=60)
            alert = (await logged(log_path, "inbound.inbox_full", timeout=60))[0]
            # other mail arriving meanwhile is handled (filed as unrecognised) and brings no extra try
            for i in range(OTHERS):
                await asyncio.to_thread(mail_servers.deliver, pi_mail, gm_mail,
                                        f"From: <{pi_mail}>\r\nTo: <{gm_mail}>\r\nSubject: other {i}\r\n"
                                        f"Message-ID: <other-{i}@pi-vught.example.nl>\r\n\r\nhello\r\n".encode())
            await until(lambda: len(mail_servers.messages(gm_mail, gm.imap.unrecognised_folder)) == OTHERS, 30,
                        "the other mails handled while the inbox is full")
            await logged(log_path, "imap.handler_failed", 3, timeout=60)  # the first try and two more
            await asyncio.sleep(0.5)  # a round in progress settles
            assert inbox_files(gm.folders.inbox) == [], "a half-written message in the inbox"
            assert len(copies(mail_servers, gm_mail, mid, "INBOX")) == 1, "the mail left the IMAP INBOX"
            assert len(copies(mail_servers, gm_mail, mid, None)) == 1, "the mail was copied elsewhere"

            # 2. one page free: the .json fits, the .xml does not
            (disk / "page").unlink()
            assert os.statvfs(disk).f_bavail == 1
            before = len(named(log_path, "imap.handler_failed"))
            await logged(log_path, "imap.handler_failed", before + 1, timeout=60)
            await asyncio.sleep(0.5)
            full_for = time.monotonic() - t_dropped
            failed = named(log_path, "imap.handler_failed")
            assert inbox_files(gm.folders.inbox) == [], "a .json without its .xml (or a temporary) was left"
            assert len(copies(mail_servers, gm_mail, mid, "INBOX")) == 1, "the mail left the IMAP INBOX"
            assert len(copies(mail_servers, gm_mail, mid, None)) == 1, "the mail was copied elsewhere"
            assert receipts(mail_servers, pi_mail, mid) == [], "a receipt for a message not in the inbox"
            assert [(r.kind, r.verdict) for r in await pi_gw.store.receipts(mid)] == [("dsn", "delivered")]
            assert (await pi_gw.store.get(mid)).state is State.DELIVERED
            async with await Store.open(gm.store.url) as gm_store:
                assert await gm_store.find_inbound(mid) is None, "an arrival recorded that is not in the inbox"
            assert daemon.proc.poll() is None, f"the daemon ended on a full inbox: {log_events(log_path)[-5:]}"

            # 3. room again: the next try files it, once, and answers it
            filler.unlink()
            await wait_for_states(pi_gw.store, [mid], [State.ACKNOWLEDGED], timeout=120)
            await until(lambda: copies(mail_servers, gm_mail, mid, PROCESSED), 30, "the mail filed as processed")
            record = await pi_gw.store.get(mid)
            timeline = [t.to_state for t in await pi_gw.store.timeline(mid)]
            got = [(r.kind, r.verdict) for r in await pi_gw.store.receipts(mid)]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    # the sender: sent once (the mail stayed with the receiver), delivered, acknowledged by the one receipt
    assert record.attempts == 1 and timeline == [State.RECEIVED, State.QUEUED, State.SENDING, State.SENT,
                                                 State.DELIVERED, State.ACKNOWLEDGED], timeline
    assert sorted(got) == [("dsn", "delivered"), ("mdn", "match")], got
    assert len(receipts(mail_servers, pi_mail, mid)) == 1, "one receipt went back"
    # the receiver's mailbox: the one mail, moved to the processed folder; nothing refused
    assert len(copies(mail_servers, gm_mail, mid, None)) == 1
    assert len(copies(mail_servers, gm_mail, mid, PROCESSED)) == 1
    assert copies(mail_servers, gm_mail, mid, "INBOX") == [] and copies(mail_servers, gm_mail, mid, QUARANTINE) == []
    # the receiver's inbox: one copy, byte for byte, with its metadata; nothing refused
    assert inbox_files(gm.folders.inbox) == [f"ontslagbericht/{mid}.json", f"ontslagbericht/{mid}.xml"]
    assert (folder / f"{mid}.xml").read_bytes() == data
    meta = json.loads((folder / f"{mid}.json").read_text())
    assert meta["mic"] == record.mic and meta["transport_message_id"] == record.mail_message_id
    assert meta["transport"] == "email"
    assert not any(gm.folders.quarantine.iterdir())
    async with await Store.open(gm.store.url) as gm_store:
        arrival = await gm_store.find_inbound(mid)
    assert arrival.outcome == "accepted" and arrival.transport_message_id == record.mail_message_id
    logged_events = log_events(log_path)
    names = [e["event"] for e in logged_events]
    assert "inbound.refused" not in names and "service-crashed" not in names
    # the operator is told once, not at every try, and when there is room again
    alerts = [e for e in logged_events if e["event"] == "inbound.inbox_full"]
    assert len(alerts) == 1 and alerts[0]["alert"] is True and alerts[0]["message_id"] == mid, alerts
    assert alert["level"] == "error"
    assert [e["message_id"] for e in logged_events if e["event"] == "inbound.inbox_room_again"] == [mid]
    assert names.count("receipt-sent") == 1 and names.count("inbound.accepted") == 1
    assert names.count("started") == 1, "the daemon was restarted"
    # no personal data in what the operator reads
    personal = [m.group(1) for tag in (b"geslachtsnaam", b"voornamen", b"geboortedatum")
                if (m := re.search(b"<" + tag + b">([^<]+)<", data))]
    assert len(personal) == 3 and not [p for p in personal if p in log_path.read_bytes()]
    # every failed try was the full inbox, tried again after a doubling delay of its own: try k comes
    # POLL * (2**k - 1) s after the first at the soonest, whatever else arrives (a watcher that tried it at
    # every round would have tried it at each of the other mails too)
    assert {e["error"] for e in failed} == {"OSError"} and len({e["uid"] for e in failed}) == 1, failed
    assert 4 <= len(failed) <= 1 + math.log2(full_for / POLL + 1), (len(failed), full_for)
    assert [e.get("retry_in") for e in failed] == [POLL * 2 ** k for k in range(len(failed))], failed
