"""A full inbox while a message arrives: the receiving gateway's inbox on a small tmpfs (mounted by the test,
root) that is full when a message comes in over the platform route (two real gateways, AS2 over mutual TLS).

What must hold:
- the intake answers with an error (HTTP 5xx, no receipt at all: no success MDN, and no `processed/error`
  either, which would make the sender give the message up), records nothing, refuses nothing (quarantine
  stays empty) and says so once as an alert;
- nothing half-written lies in the inbox: not with the disk quite full (the `.json` does not fit), and not
  with room for the `.json` but not for the `.xml` (one free page): no `.json` without its `.xml`, no
  hidden temporary;
- the sender keeps the message and tries again and again under the same AS2 Message-ID (`retry_wait`
  with the partner's HTTP status as the reason);
- once there is room, the next attempt lands it exactly once (one `.xml` with its `.json`, byte for byte)
  and the sender is `acknowledged` by the signed receipt."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import structlog

from disk_fill import fill
from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.store import State
from mailservers import free_port

DISK_KIB = 1024
PAGE = 4096  #: what tmpfs counts a file in: the .json (under 1 KiB) and the .xml (under 4 KiB) need a page each


def inbox_files(inbox: Path) -> list[str]:
    """Every file under the inbox, as type/name (hidden temporaries included)."""
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


async def attempts_beyond(store, mid: str, count: int, timeout: float = 60.0):
    """Until the message has had more than `count` attempts and is waiting again; its record."""
    deadline = time.monotonic() + timeout
    while True:
        record = await store.get(mid)
        if record is not None and record.attempts > count and record.state is State.RETRY_WAIT:
            return record
        assert record is None or record.state in (State.RECEIVED, State.QUEUED, State.SENDING, State.RETRY_WAIT), \
            (record.state, record.reason)
        if time.monotonic() > deadline:
            raise AssertionError(f"not more than {count} attempts within {timeout} s: {record}")
        await asyncio.sleep(0.05)


async def test_a_full_inbox_answers_with_an_error_writes_nothing_half_and_the_message_lands_once_with_room(
        tmp_path, mail_servers, mail_users, small_disk, dev_pki):
    disk = small_disk(DISK_KIB)
    gm_port = free_port()
    pi = open_config(make_setup(tmp_path / "pi", mail_servers, mail_users,
                                platform={"0344": f"https://127.0.0.1:{gm_port}/as2"}, pki=dev_pki))
    gm = open_config(make_setup(tmp_path / "gm", mail_servers, mail_users, party="0344", pki=dev_pki,
                                as2_listen=("127.0.0.1", gm_port),
                                platform={"PI-VUGHT": f"https://127.0.0.1:{free_port()}/as2"},
                                edits={'inbox = "inbox"': f'inbox = "{disk / "inbox"}"'}))
    assert gm.folders.inbox == disk / "inbox" and gm.folders.quarantine.parent == tmp_path / "gm"
    folder = gm.folders.inbox / "ontslagbericht"
    folder.mkdir(parents=True)
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    assert len(data) <= PAGE
    # a page kept apart before the disk is filled: deleting it later leaves room for exactly one page
    (disk / "page").write_bytes(b"\0" * PAGE)
    filler = disk / "filler"
    with structlog.testing.capture_logs() as logs:
        async with running(pi) as pi_gw, running(gm) as gm_gw:
            assert fill(filler) > 0 and os.statvfs(disk).f_bavail == 0
            drop(pi.folders.outbox, "m.xml", data)

            # 1. not a byte free: the .json does not fit
            full = await attempts_beyond(pi_gw.store, mid, 2)
            assert "HTTP 500" in full.reason, full.reason
            assert inbox_files(gm.folders.inbox) == [], "a half-written message in the inbox"
            assert await gm_gw.store.find_inbound(mid) is None, "an arrival recorded that is not in the inbox"

            # 2. one page free: the .json fits, the .xml does not
            (disk / "page").unlink()
            assert os.statvfs(disk).f_bavail == 1
            one_page = await attempts_beyond(pi_gw.store, mid, full.attempts + 2)
            assert "HTTP 500" in one_page.reason, one_page.reason
            assert inbox_files(gm.folders.inbox) == [], "a .json without its .xml (or a temporary) was left"
            assert await gm_gw.store.find_inbound(mid) is None
            assert await pi_gw.store.receipts(mid) == [], "a receipt came back for a message not in the inbox"

            # 3. room again: the next attempt lands it, once
            filler.unlink()
            await wait_for_states(pi_gw.store, [mid], [State.ACKNOWLEDGED], timeout=60)
            record = await pi_gw.store.get(mid)
            timeline = [(t.from_state.value if t.from_state else None, t.to_state.value)
                        for t in await pi_gw.store.timeline(mid)]
            receipts = await pi_gw.store.receipts(mid)
            arrival = await gm_gw.store.find_inbound(mid)

    # the sender: every attempt but the last answered with an error and waited; one sent, acknowledged
    assert record.attempts > one_page.attempts
    assert timeline.count(("sending", "retry_wait")) == record.attempts - 1, timeline
    assert timeline[-2:] == [("sending", "sent"), ("sent", "acknowledged")], timeline
    assert [(r.kind, r.verdict) for r in receipts] == [("mdn", "match")]
    # every attempt carried the one AS2 Message-ID; the receiver answered each failed one with 500
    failed = [e for e in logs if e["event"] == "as2.handler_failed"]
    assert len(failed) == record.attempts - 1 and {e["message_id"] for e in failed} == \
        {record.mail_message_id.strip("<>")}, (failed, record.mail_message_id)
    assert {e["error"] for e in failed} == {"OSError"}
    assert arrival.outcome == "accepted" and arrival.transport_message_id == record.mail_message_id
    # the receiver: one copy, byte for byte, nothing else; nothing refused
    assert inbox_files(gm.folders.inbox) == [f"ontslagbericht/{mid}.json", f"ontslagbericht/{mid}.xml"]
    assert (folder / f"{mid}.xml").read_bytes() == data
    assert not any(gm.folders.quarantine.iterdir())
    assert not [e for e in logs if e["event"] in ("inbound.refused", "service-crashed")]
    # the receiver's operator is told once, not at every attempt, and when there is room again
    full_alerts = [e for e in logs if e["event"] == "inbound.inbox_full"]
    assert len(full_alerts) == 1 and full_alerts[0]["alert"] is True and full_alerts[0]["message_id"] == mid
    assert [e["message_id"] for e in logs if e["event"] == "inbound.inbox_room_again"] == [mid]
