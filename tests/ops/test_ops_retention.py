"""Retention: the dry run changes nothing; the purge removes exactly what is past its time, keeps the
monthly figures, audits itself with counts only, and leaves the audit chain intact."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timedelta

import pytest

from gateway.ops.audit import verify
from gateway.ops.retention import purge, years_before
from gateway.store import NewMessage, State, Store
from paths import NOW


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
async def store(db, clock):
    s = await Store.open(f"sqlite+aiosqlite:///{db}", clock=clock)
    yield s
    await s.close()


async def message(store: Store, clock: Clock, spool, mid: str, dossier: str, at: datetime, *,
                  acknowledged: datetime | None = None, sent: bool = False) -> str:
    clock.now = at
    body = f"<bericht>{mid}</bericht>".encode()
    path = spool / f"{mid}.xml"
    path.write_bytes(body)
    await store.accept(NewMessage(mid, "meldingsbericht", "1.0", "pi:PI-VUGHT", "gemeente:0599", dossier, None, None,
                                  0, at, path.name, len(body), hashlib.sha256(body).hexdigest(), str(path)))
    await store.save_sealed(mid, b"sealed", "mic", transport="smtp", address="a@example.nl", profile="strong")
    if sent or acknowledged:
        await store.transition(mid, State.SENDING, actor="t", lease_owner="t", lease_until=at + timedelta(minutes=5))
        await store.transition(mid, State.SENT, actor="t", sent_at=at)
    if acknowledged:
        clock.now = acknowledged
        await store.transition(mid, State.ACKNOWLEDGED, actor="t", acknowledged_at=acknowledged)
        await store.add_receipt(mid, kind="mdn", verdict="processed", detail="mic matches")
    return mid


def dump(db) -> dict[str, list[tuple]]:
    c = sqlite3.connect(db)
    try:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        c.close()


@pytest.fixture
async def history(store, clock, tmp_path):
    """Six years of a small gateway: what is past its time and what is not."""
    spool, quarantine, rejected = (tmp_path / n for n in ("spool", "quarantine", "rejected"))
    for d in (spool, quarantine, rejected):
        d.mkdir()
    old = years_before(NOW, 6)
    await message(store, clock, spool, "old-1", "D-OLD", old, acknowledged=old + timedelta(days=1))
    await message(store, clock, spool, "old-2", "D-OLD", old + timedelta(days=40))  # queued, never sent
    await message(store, clock, spool, "mixed-1", "D-MIXED", old, acknowledged=old + timedelta(days=1))
    clock.now = NOW - timedelta(days=400)
    await store.record_inbound(message_id="in-mixed", transport="email", sha256="aa", outcome="accepted",
                               sender="gemeente:0599", type="gemeenteblad", dossier="D-MIXED")  # keeps D-MIXED
    await message(store, clock, spool, "ack-40d", "D-NEW", NOW - timedelta(days=41), acknowledged=NOW - timedelta(days=40))
    await message(store, clock, spool, "ack-10d", "D-NEW", NOW - timedelta(days=11), acknowledged=NOW - timedelta(days=10))
    await message(store, clock, spool, "sent-40d", "D-NEW", NOW - timedelta(days=41), sent=True)
    clock.now = old + timedelta(days=2)
    await store.record_inbound(message_id="in-old", transport="as2", sha256="bb", outcome="accepted",
                               sender="gemeente:0599", type="gemeenteblad", dossier="D-OLD")
    kept = quarantine / "x.p7m"
    kept.write_bytes(b"entity")
    kept.with_suffix(".json").write_text("{}")
    await store.record_inbound(message_id="sha256:cc", transport="email", sha256="cc", outcome="refused",
                               reason_code="unreadable", reason="not CMS", quarantine_path=str(kept))
    bad = rejected / "bad.xml"
    bad.write_bytes(b"<x/>")
    await store.record_rejection(file_name="bad.xml", size=4, sha256="dd", declared_id=None, declared_type=None,
                                 reason="schema", rejected_path=str(bad))
    clock.now = NOW
    return {"spool": spool, "quarantine": kept, "rejected": bad}


async def test_a_dry_run_lists_and_changes_nothing(store, db, history):
    before = dump(db)
    files = sorted(p.name for p in history["spool"].iterdir())
    plan = await purge(store, dry_run=True)
    assert plan.plaintext == ["ack-40d", "mixed-1"]  # old-1's copy goes with its dossier
    assert plan.dossiers == ["D-OLD"] and plan.messages == ["old-1", "old-2"]
    assert plan.inbound == ["in-old", "sha256:cc"] and len(plan.rejected) == 1 and plan.files_removed == 0
    assert dump(db) == before  # not even an audit row
    assert sorted(p.name for p in history["spool"].iterdir()) == files
    assert history["quarantine"].exists() and history["rejected"].exists()


async def test_the_purge_removes_exactly_what_is_past_its_time_and_audits_itself(store, db, history):
    plan = await purge(store)
    assert plan.counts() == {"plaintext": 2, "dossiers": 1, "messages": 2, "inbound": 2, "rejected": 1,
                             "files_removed": 7}  # 4 spool copies, the quarantined entity and its report, bad.xml
    assert sorted(p.stem for p in history["spool"].iterdir()) == ["ack-10d", "sent-40d"]
    assert not history["quarantine"].exists() and not history["quarantine"].with_suffix(".json").exists()
    assert not history["rejected"].exists()
    rows = dump(db)
    assert sorted(r[0] for r in rows["messages"]) == ["ack-10d", "ack-40d", "mixed-1", "sent-40d"]
    assert (await store.get("ack-40d")).spool_path is None and (await store.get("ack-10d")).spool_path
    assert (await store.get("ack-40d")).state is State.ACKNOWLEDGED  # only its plaintext went
    for table in ("sealed", "transitions", "receipts", "pickups"):
        assert not [r for r in rows[table] if "old-1" in r or "old-2" in r], table
    assert {r[0] for r in rows["sealed"]} == {"ack-10d", "ack-40d", "mixed-1", "sent-40d"}
    assert sorted(r[0] for r in rows["inbound"]) == ["in-mixed"]
    assert not [r for r in rows["pickups"] if r[5] == "rejected"] and len(rows["pickups"]) == 4

    last = (await store.audit_rows(limit=1))[0]
    assert (last["action"], last["object"], last["actor"]) == ("retention.purge", "store", "retention")
    assert last["result"] == "plaintext=2 dossiers=1 messages=2 inbound=2 rejected=1 files_removed=7"
    assert (await verify(store, [])).ok  # the chain holds after the purge (no checkpoint to check)

    again = await purge(store)
    assert again.counts() == dict.fromkeys(plan.counts(), 0)


async def test_monthly_figures_survive_the_purge(store, db, history):
    old = years_before(NOW, 6)
    await purge(store)
    figures = sorted(dump(db)["monthly_figures"])
    month, arrived, later = (at.strftime("%Y-%m") for at in (old, old + timedelta(days=2), old + timedelta(days=40)))
    assert figures == sorted([
        (arrived, "in", "", "", "", 1, 0, 0, None),  # the refused, unreadable arrival
        (arrived, "in", "gemeenteblad", "gemeente:0599", "", 1, 0, 1, None),
        (month, "out", "meldingsbericht", "pi:PI-VUGHT", "gemeente:0599", 1, 1, 1, None),
        (later, "out", "meldingsbericht", "pi:PI-VUGHT", "gemeente:0599", 1, 0, 0, None),
    ])
    # five years on, a later purge adds to the same months, never replaces them
    await purge(store, now=NOW + timedelta(days=5 * 366))
    assert dump(db)["messages"] == []
    after = {r[:5]: r[5:] for r in dump(db)["monthly_figures"]}
    assert after[(month, "out", "meldingsbericht", "pi:PI-VUGHT", "gemeente:0599")] == (2, 2, 2, None)  # + mixed-1


def test_years_before_keeps_the_calendar():
    assert years_before(datetime(2028, 2, 29, 12), 5) == datetime(2023, 2, 28, 12)
    assert years_before(datetime(2026, 11, 30), 5) == datetime(2021, 11, 30)


async def test_the_purge_takes_the_subject_index_and_the_dates_with_the_messages(store, db, history):
    """Who a message was about and its detention dates go when the message goes (covenant art. 9): a subject
    index row must not outlive the retention period of what it points at."""
    c = sqlite3.connect(db)
    rows = [("outbound", "old-1"), ("inbound", "in-old"), ("outbound", "mixed-1"), ("inbound", "in-mixed")]
    c.executemany("INSERT INTO subject_index (subject, direction, message_id, recorded_at) VALUES (?, ?, ?, ?)",
                  [("ab" * 32, d, mid, "2020-01-01 00:00:00.000000") for d, mid in rows])
    c.executemany("INSERT INTO deadline_facts (direction, message_id, start) VALUES (?, ?, '2020-01-01')", rows)
    c.commit()
    c.close()
    await purge(store)
    kept = [("outbound", "mixed-1"), ("inbound", "in-mixed")]
    assert sorted((r[2], r[3]) for r in dump(db)["subject_index"]) == sorted(kept)
    assert sorted((r[0], r[1]) for r in dump(db)["deadline_facts"]) == sorted(kept)
