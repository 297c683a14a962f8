"""A full disk under a running daemon: the outbox, spool, rejected/, inbox, quarantine and store on one small
tmpfs that the test fills to the last byte while messages are dropped.

What must hold: pick-up stops taking files and says so once (an `alert` log event with the reason, not one
per retry), the daemon stays up, every dropped file is still in the outbox byte for byte, nothing half-written
lies in the spool (no partial copy, no hidden temporary), the store passes `PRAGMA integrity_check`; when the
filler is deleted, pick-up resumes by itself and every message is delivered exactly once (one mail per
message at its entitled municipality, one Message-ID)."""

from __future__ import annotations

import asyncio
import email
import os
import sqlite3
import time
from pathlib import Path

from disk_fill import fill
from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import DaemonProcess, drop, log_events, make_setup, open_config, wait_for_states
from gateway.store import State, Store

DISK_KIB = 12 * 1024
WARM = 3     # delivered before the disk fills (the store and its WAL have grown to their working size)
DROPPED = 8  # dropped while the disk is full




async def wait_for_event(log_path: Path, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in log_events(log_path) if e.get("event") == name]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {name!r} event in {timeout} s; last events: "
                         f"{[e.get('event') for e in log_events(log_path)][-15:]}")


def on_disk(disk: Path) -> dict[str, list[str]]:
    return {folder: sorted(os.listdir(disk / folder)) for folder in ("outbox", "rejected", "spool", "inbox",
                                                                     "quarantine")}


async def test_a_full_disk_pauses_pick_up_loses_nothing_and_everything_goes_once_when_room_returns(
        tmp_path, mail_servers, mail_users, small_disk):
    disk = small_disk(DISK_KIB)
    edits = {f'{name} = "{name}"': f'{name} = "{disk / name}"'
             for name in ("outbox", "rejected", "inbox", "spool", "quarantine")}
    edits['url = "sqlite+aiosqlite:///state/gateway.db"'] = f'url = "sqlite+aiosqlite:///{disk}/state/gateway.db"'
    config_path = make_setup(tmp_path / "gw", mail_servers, mail_users, edits=edits)
    cfg = open_config(config_path)
    assert cfg.folders.spool == disk / "spool" and cfg.store.sqlite_path == disk / "state" / "gateway.db"
    log_path = tmp_path / "daemon.log"  # on the big disk: the log must stay readable
    daemon = DaemonProcess(config_path, log_path)
    names = list(OWN_EXAMPLES)
    messages: dict[str, tuple[bytes, str]] = {}  # message id -> (bytes, recipient)
    for i in range(WARM + DROPPED):
        data, mid = with_new_id(example(names[i % len(names)]))
        messages[mid] = (data, OWN_EXAMPLES[names[i % len(names)]])
    warm, late = list(messages)[:WARM], list(messages)[WARM:]
    daemon.start()
    try:
        store = await Store.open(cfg.store.url)
        try:
            for mid in warm:
                drop(cfg.folders.outbox, f"{mid}.xml", messages[mid][0])
            await wait_for_states(store, warm, [State.DELIVERED], timeout=60)
        finally:
            await store.close()

        # the producer writes its files under a temporary name (ignored by pick-up), the disk fills up,
        # then the files are renamed into place: every pick-up meets a disk without a free byte
        for mid in late:
            (cfg.folders.outbox / f"{mid}.xml.tmp").write_bytes(messages[mid][0])
        filler = disk / "filler"
        assert fill(filler) > 0
        assert os.statvfs(disk).f_bavail == 0
        for mid in late:
            os.rename(cfg.folders.outbox / f"{mid}.xml.tmp", cfg.folders.outbox / f"{mid}.xml")

        paused = await wait_for_event(log_path, "pickup-paused", timeout=30)
        assert paused["reason"] == "disk-full" and paused["alert"] is True and paused["level"] == "error"
        await asyncio.sleep(3 * cfg.limits.rescan_interval)  # several retries, all on a full disk
        assert daemon.proc.poll() is None, f"the daemon ended on a full disk: {log_events(log_path)[-5:]}"
        seen = on_disk(disk)
        assert seen["outbox"] == sorted(f"{mid}.xml" for mid in late), seen
        for mid in late:
            assert (cfg.folders.outbox / f"{mid}.xml").read_bytes() == messages[mid][0], "a file was changed"
        assert seen["spool"] == [] and seen["rejected"] == [] and seen["inbox"] == [], seen
        logged = log_events(log_path)
        assert [e["event"] for e in logged].count("pickup-paused") == 1, "the pause is reported once, not per retry"
        assert not [e for e in logged if e.get("event") == "picked-up" and e.get("message_id") in late]
        assert not [e for e in logged if e.get("level") == "error" and e.get("event") != "pickup-paused"], \
            [e for e in logged if e.get("level") == "error"]
        # the store is whole while the disk is full (read through a second connection, as an operator would)
        with sqlite3.connect(f"file:{cfg.store.sqlite_path}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            taken = db.execute(f"SELECT count(*) FROM messages WHERE message_id IN ({','.join('?' * len(late))})",
                               late).fetchone()[0]
        assert taken == 0, "a message was recorded although its pick-up failed"

        filler.unlink()  # room again: pick-up resumes by itself at its next try
        resumed = await wait_for_event(log_path, "pickup-resumed", timeout=30)
        assert resumed["after"] == "disk-full"
        store = await Store.open(cfg.store.url)
        try:
            await wait_for_states(store, list(messages), [State.DELIVERED], timeout=90)
            records = {mid: await store.get(mid) for mid in messages}
        finally:
            await store.close()
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    with sqlite3.connect(cfg.store.sqlite_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    seen = on_disk(disk)
    assert seen["outbox"] == [] and seen["rejected"] == [] and seen["quarantine"] == [], seen
    assert not [f for folder in seen.values() for f in folder if f.startswith(".")], f"temporary files left: {seen}"
    # exactly once: one mail per message, at its entitled municipality, under its one Message-ID
    copies: dict[str, list[tuple[str, str]]] = {}
    for code in {recipient.split(":")[1] for _, recipient in messages.values()}:
        for raw in mail_servers.messages(f"nazorg@gemeente-{code}.example.nl", folder=None):
            mail = email.message_from_bytes(raw)
            copies.setdefault(mail["X-Nazorg-Message-Id"], []).append((code, mail["Message-ID"]))
    assert set(copies) == set(messages)
    for mid, (_, recipient) in messages.items():
        assert copies[mid] == [(recipient.split(":")[1], records[mid].mail_message_id)], (mid, copies[mid])
