"""Pick-up: ownership taken crash-safely, invalid input filed with its verdict, duplicates never taken twice."""

from __future__ import annotations

import json
import os
import re

import pytest

from dropped import OWN_EXAMPLES, example, with_new_id
from gateway.pipeline.pickup import Pickup
from gateway.store import NewMessage, State
from paths import EXAMPLES


@pytest.fixture
def taken() -> list[str]:
    return []


@pytest.fixture
def pickup(config, store, validation, taken) -> Pickup:
    return Pickup(store=store, validation=validation, outbox=config.folders.outbox, spool=config.folders.spool,
                  rejected=config.folders.rejected, own_party=str(config.party.party),
                  max_bytes=config.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                  accepted=taken.append)


def drop(config, name: str, data: bytes) -> None:
    """What a producer does: write NAME.tmp, then rename."""
    tmp = config.folders.outbox / f"{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, config.folders.outbox / name)


def outbox_files(config) -> list[str]:
    return sorted(p.name for p in config.folders.outbox.iterdir() if p.is_file())


async def test_valid_messages_are_owned_spooled_and_recorded(config, store, pickup, taken):
    ids = {}
    for name, recipient in OWN_EXAMPLES.items():
        data, mid = with_new_id(example(name))
        drop(config, name, data)
        ids[mid] = (recipient, data)
    assert await pickup.scan() == len(OWN_EXAMPLES)
    assert outbox_files(config) == []
    assert sorted(taken) == sorted(ids)
    for mid, (recipient, data) in ids.items():
        record = await store.get(mid)
        assert (record.state, record.recipient) == (State.RECEIVED, recipient)
        assert (config.folders.spool / f"{mid}.xml").read_bytes() == data
    assert await store.pending_pickups() == []
    # an ontslagbericht outranks a screening message
    prio = {r.type: r.priority for r in await store.list(limit=100)}
    assert prio["spoedontslagbericht"] > prio["ontslagbericht"] > prio["meldingsbericht"]


async def test_invalid_message_goes_to_rejected_with_its_verdict(config, store, pickup, taken):
    source = EXAMPLES / "invalid" / "aanmaaktijdstip-zonder-tijdzone.xml"
    drop(config, "broken.xml", source.read_bytes())
    await pickup.scan()
    assert taken == [] and outbox_files(config) == []
    rejected = config.folders.rejected
    assert (rejected / "broken.xml").read_bytes() == source.read_bytes()
    verdict = json.loads((rejected / "broken.xml.error.json").read_text())
    assert verdict["valid"] is False and verdict["problems"] and verdict["problems"][0]["code"]
    text = (rejected / "broken.xml.error.txt").read_text()
    assert "Why:" in text and verdict["problems"][0]["code"] in text
    counts = await store.counts()
    assert counts[State.REJECTED] == 1 and sum(counts.values()) == 1


async def test_message_of_another_sender_is_refused(config, pickup, taken):
    drop(config, "haaglanden.xml", example("ontslagbericht-met-justitieel-kader.xml"))
    await pickup.scan()
    verdict = json.loads((config.folders.rejected / "haaglanden.xml.error.json").read_text())
    assert [p["code"] for p in verdict["problems"]] == ["wrong-sender"]
    assert "pi:PI-HAAGLANDEN" in verdict["problems"][0]["message"] and taken == []


async def test_same_file_twice_is_sent_once(config, store, pickup, taken):
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    drop(config, "a.xml", data)
    await pickup.scan()
    drop(config, "a.xml", data)  # the producer repeats itself
    await pickup.scan()
    assert taken == [mid]
    verdict = json.loads((config.folders.rejected / "a.xml.error.json").read_text())
    assert verdict["duplicate"] == "same-file" and mid in verdict["problems"][0]["message"]
    assert (await store.get(mid)).state is State.RECEIVED


async def test_same_message_id_with_other_content_is_refused(config, store, pickup, taken):
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    drop(config, "first.xml", data)
    await pickup.scan()
    drop(config, "second.xml", data.replace(b"</meldingsbericht>", b"\n</meldingsbericht>"))
    await pickup.scan()
    assert taken == [mid]
    verdict = json.loads((config.folders.rejected / "second.xml.error.json").read_text())
    assert verdict["duplicate"] == "same-id" and "new berichtId" in verdict["problems"][0]["message"]


async def test_temporary_hidden_and_growing_files_are_left_alone(config, store, validation, taken):
    outbox = config.folders.outbox
    (outbox / "half.xml.tmp").write_bytes(b"<meldingsbericht")
    (outbox / ".hidden.xml").write_bytes(b"<x/>")
    (outbox / ".tmp").mkdir()
    (outbox / ".tmp" / "in-progress.xml").write_bytes(b"<x/>")
    pickup = Pickup(store=store, validation=validation, outbox=outbox, spool=config.folders.spool,
                    rejected=config.folders.rejected, own_party=str(config.party.party),
                    max_bytes=config.limits.max_message_bytes, stable_after=0.2, rescan_interval=1.0,
                    accepted=taken.append)
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    growing = outbox / "growing.xml"
    growing.write_bytes(data[:100])
    assert await pickup.scan() == 0  # first sight: not yet quiet
    with open(growing, "ab") as fh:
        fh.write(data[100:])
    assert await pickup.scan() == 0  # it changed: the clock starts again
    import asyncio
    await asyncio.sleep(0.25)
    assert await pickup.scan() == 1
    assert taken == [mid]
    assert sorted(p.name for p in outbox.iterdir()) == [".hidden.xml", ".tmp", "half.xml.tmp"]


async def test_crash_between_commit_and_move_is_reconciled(config, store, pickup, taken):
    """The store committed the pick-up, then the process died before the file moved: on start the
    file is moved into the spool, and it is not taken a second time."""
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    import hashlib
    drop(config, "crash.xml", data)
    await store.accept(NewMessage(message_id=mid, type="ontslagbericht", version="1.0", sender="pi:PI-VUGHT",
                                  recipient="gemeente:0344", dossier="x", replies_to=None, supersedes=None,
                                  priority=20, created_at=__import__("datetime").datetime.now(
                                      __import__("datetime").timezone.utc), file_name=pickup.stored_name("crash.xml"), size=len(data),
                                  sha256=hashlib.sha256(data).hexdigest(),
                                  spool_path=str(config.folders.spool / f"{mid}.xml")))
    await pickup.reconcile()
    assert outbox_files(config) == []
    assert (config.folders.spool / f"{mid}.xml").read_bytes() == data
    assert await store.pending_pickups() == []
    assert await pickup.scan() == 0 and taken == []


async def test_start_removes_the_plaintext_of_what_was_delivered_and_keeps_the_rest(config, store, pickup, taken):
    """A crash between proving a delivery and removing the spool's plaintext copy: the next start removes the
    copies of delivered and acknowledged messages (looked up all at once), and keeps every other one."""
    from datetime import timedelta

    ids = []
    for name in ("01-meldingsbericht.xml", "03-basisdocument.xml", "05-ontslagbericht.xml"):
        data, mid = with_new_id(example(name))
        drop(config, name, data)
        ids.append(mid)
    assert await pickup.scan() == 3
    delivered, acknowledged, waiting = ids
    for mid in (delivered, acknowledged):
        await store.save_sealed(mid, b"sealed", "mic", transport="email", address="a@b.example.nl",
                                profile="compatible")
    for record in await store.claim(owner="t", limit=2, lease=timedelta(minutes=1)):
        await store.transition(record.message_id, State.SENT, actor="t")
    await store.transition(delivered, State.DELIVERED, actor="t")
    await store.transition(acknowledged, State.ACKNOWLEDGED, actor="t")
    stray = config.folders.spool / "0f0f0f0f-0000-4000-8000-000000000000.xml"  # no row: never ours to judge
    stray.write_bytes(b"<x/>")
    await pickup.reconcile()
    left = sorted(p.name for p in config.folders.spool.glob("*.xml"))
    assert left == sorted([f"{waiting}.xml", stray.name])


async def test_the_store_keeps_no_producers_file_name(config, store, pickup, taken):
    """A careless producer names files after the person (a BSN): the store keeps a keyed digest of the name,
    for an accepted, a refused and a duplicate file alike; the reports in rejected/ still name the file."""
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    drop(config, "999998226.xml", data)
    await pickup.scan()
    drop(config, "999998226.xml", data)  # again: a duplicate
    await pickup.scan()
    drop(config, "999998238.xml", (EXAMPLES / "invalid" / "aanmaaktijdstip-zonder-tijdzone.xml").read_bytes())
    await pickup.scan()
    assert taken == [mid]
    assert json.loads((config.folders.rejected / "999998238.xml.error.json").read_text())["file"] == "999998238.xml"
    await store.close()
    raw = b"".join(p.read_bytes() for p in config.store.sqlite_path.parent.glob(config.store.sqlite_path.name + "*"))
    assert b"99999822" not in raw and b"99999823" not in raw
    assert pickup.stored_name("999998226.xml").encode() in raw


@pytest.mark.parametrize("second_drop", [False, True], ids=["crashed-filing", "refiled-after-success"])
async def test_a_refusal_cut_short_by_a_crash_is_finished_not_repeated(config, store, pickup, taken, monkeypatch,
                                                                       second_drop):
    """The daemon died after writing a refusal's reports but before moving the file: the next scan
    files that same refusal (one report, one audit row). A file refused in full and dropped again is a
    new refusal beside the first (`NAME.1`)."""
    source = (EXAMPLES / "invalid" / "aanmaaktijdstip-zonder-tijdzone.xml").read_bytes()
    drop(config, "broken.xml", source)
    if second_drop:
        await pickup.scan()
        drop(config, "broken.xml", source)
    else:
        from adapters import outbox_fs

        class Died(Exception):
            """stands for the process dying here"""

        def killed(src, dst):
            raise Died

        monkeypatch.setattr(outbox_fs, "move", killed)
        with pytest.raises(Died):
            await pickup.scan()
        monkeypatch.undo()
        assert outbox_files(config) == ["broken.xml"]
    await pickup.scan()
    rejected = sorted(p.name for p in config.folders.rejected.iterdir())
    names = ["broken.xml", "broken.xml.1"] if second_drop else ["broken.xml"]
    assert rejected == sorted(n + suffix for n in names for suffix in ("", ".error.json", ".error.txt"))
    assert outbox_files(config) == [] and taken == []
    assert (await store.counts())[State.REJECTED] == len(names)


async def test_what_a_killed_atomic_write_left_is_removed_at_start(config, store, pickup):
    """A kill inside write_atomic leaves `.NAME.PID.tmp` (never renamed into place): reconcile removes those
    of our own folders, and nothing else."""
    rejected, spool = config.folders.rejected, config.folders.spool
    (rejected / ".999998226.xml.error.json.3666.tmp").write_bytes(b'{"half')
    (spool / ".0b1c.xml.77.tmp").write_bytes(b"<half")
    (rejected / "kept.xml").write_bytes(b"<a/>")
    (rejected / ".kept.tmp").write_bytes(b"not ours: no pid")
    await pickup.reconcile()
    assert sorted(p.name for p in rejected.iterdir()) == [".kept.tmp", "kept.xml"]
    assert list(spool.iterdir()) == []


async def test_ended_municipality_is_accepted_for_routing_to_hold(config, store, pickup, taken):
    """0003 (Appingedam) ended on 2021-01-01 (now Eemsdelta, 1979): not a validation error in the
    daemon — routing holds it with the successor (test_pipeline_sealer)."""
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    drop(config, "ended.xml", re.sub(rb">0599<", b">0003<", data))
    await pickup.scan()
    assert taken == [mid]
    assert (await store.get(mid)).recipient == "gemeente:0003"


async def test_too_large_file_is_rejected_without_reading_it_all(config, store, validation, taken):
    small = Pickup(store=store, validation=validation, outbox=config.folders.outbox, spool=config.folders.spool,
                   rejected=config.folders.rejected, own_party=str(config.party.party), max_bytes=1000,
                   stable_after=0.0, rescan_interval=1.0, accepted=taken.append)
    drop(config, "big.xml", b"<a>" + b"x" * 5000 + b"</a>")
    await small.scan()
    verdict = json.loads((config.folders.rejected / "big.xml.error.json").read_text())
    assert verdict["problems"][0]["code"] == "too-large" and taken == []


@pytest.fixture
def sigio_ignored():
    """As in the daemon (gateway.pipeline.daemon.run): the lease probe needs SIGIO ignored."""
    import signal
    before = signal.signal(signal.SIGIO, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGIO, before)


def _patient_pickup(config, store, validation, taken, stable_after: float) -> Pickup:
    return Pickup(store=store, validation=validation, outbox=config.folders.outbox, spool=config.folders.spool,
                  rejected=config.folders.rejected, own_party=str(config.party.party),
                  max_bytes=config.limits.max_message_bytes, stable_after=stable_after, rescan_interval=1.0,
                  accepted=taken.append)


async def test_a_file_no_one_writes_is_taken_at_once(config, store, validation, taken, sigio_ignored):
    """A file renamed into the outbox (the convention) needs no quiet period: no process holds it open."""
    pickup = _patient_pickup(config, store, validation, taken, stable_after=60.0)
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    drop(config, "renamed.xml", data)
    assert await pickup.scan() == 1 and taken == [mid]


async def test_a_file_held_open_by_its_writer_waits_for_the_close(config, store, validation, taken, sigio_ignored):
    """A producer writing straight into the outbox: nothing is taken while it holds the file open for
    writing (however long it pauses, within stable_after); the close makes it ready."""
    import asyncio
    import subprocess
    import sys
    from adapters.outbox_fs import open_for_writing

    pickup = _patient_pickup(config, store, validation, taken, stable_after=60.0)
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    path = config.folders.outbox / "direct.xml"
    with subprocess.Popen(
            [sys.executable, "-c", "import sys\n"
             "with open(sys.argv[1], 'ab') as fh:\n"
             "    fh.write(bytes.fromhex(sys.argv[2])); fh.flush(); print('half', flush=True)\n"
             "    sys.stdin.readline(); fh.write(bytes.fromhex(sys.argv[3]))\n",
             str(path), data[:200].hex(), data[200:].hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout.readline().strip() == "half"
            assert open_for_writing(path) is True
            assert await pickup.scan() == 0
            await asyncio.sleep(0.3)
            assert await pickup.scan() == 0 and taken == []  # paused, still open: left alone
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.wait(timeout=30) == 0
        finally:
            writer.kill()
    assert open_for_writing(path) is False
    assert await pickup.scan() == 1 and taken == [mid]
    assert (config.folders.spool / f"{mid}.xml").read_bytes() == data


def test_without_sigio_ignored_the_probe_says_it_cannot_know(config):
    """Outside the daemon (SIGIO at its default, which would end the process) no lease is taken: the
    quiet period alone decides, as in test_temporary_hidden_and_growing_files_are_left_alone."""
    import signal
    from adapters.outbox_fs import open_for_writing

    assert signal.getsignal(signal.SIGIO) is signal.SIG_DFL
    path = config.folders.outbox / "x.xml"
    path.write_bytes(b"<x/>")
    assert open_for_writing(path) is None
