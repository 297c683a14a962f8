"""The deadlines read the store one dossier at a time (outbound and inbound merged in dossier order), with the
facts stored at pick-up and intake; a message without stored facts (older than migration 4) falls back to XML."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone

from gateway.ops.deadlines import load_dossiers, load_events, step_of
from gateway.store import NewMessage, State
from gateway.store.store import DeadlineDates
from test_ops_cli_support import ops_config, ops_setup, ops_store, ops_template  # noqa: F401

START = DeadlineDates(date(2025, 9, 15), "preventiefGehecht", None, None, None)


async def outbound(store, mid: str, dossier: str, type_: str, dates: DeadlineDates | None) -> None:
    data = f"<{mid}/>".encode()
    await store.accept(NewMessage(
        message_id=mid, type=type_, version="1.0", sender="pi:PI-VUGHT", recipient="gemeente:0599",
        dossier=dossier, replies_to=None, supersedes=None, priority=0,
        created_at=datetime(2025, 9, 16, 9, tzinfo=timezone.utc), file_name=f"{mid}.xml", size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), spool_path=f"/nowhere/{mid}.xml"), dates=dates)


async def test_dossiers_come_in_order_with_both_directions_merged(ops_store):
    await outbound(ops_store, "out-c", "C-3", "meldingsbericht", START)
    await outbound(ops_store, "out-a", "A-1", "meldingsbericht", START)
    await ops_store.transition("out-a", State.QUEUED, actor="t", transport="email", address="x@example.nl")
    await ops_store.transition("out-a", State.SENDING, actor="t", lease_owner="t",
                               lease_until=datetime(2025, 9, 17, 10, tzinfo=timezone.utc))
    await ops_store.transition("out-a", State.SENT, actor="t", sent_at=datetime(2025, 9, 17, 9, tzinfo=timezone.utc))
    for mid, dossier in (("in-a", "A-1"), ("in-b", "B-2")):
        await ops_store.record_inbound(message_id=mid, transport="email", sha256="c" * 64, outcome="accepted",
                                       sender="gemeente:0599", type="gemeenteblad", dossier=dossier,
                                       inbox_path=f"/nowhere/{mid}.xml", dates=DeadlineDates())
    await outbound(ops_store, "out-old", "D-4", "meldingsbericht", None)  # no facts kept, no XML left

    events = await load_events(ops_store)
    assert list(events) == ["A-1", "B-2", "C-3", "D-4"]
    assert sorted(e.message_id for e in events["A-1"]) == ["in-a", "out-a"]
    a, b, c, d = await load_dossiers(ops_store, date(2025, 9, 20))
    assert (a.dossier, b.dossier, c.dossier, d.dossier) == ("A-1", "B-2", "C-3", "D-4")
    assert step_of(a, "meldingsbericht").status == "met" and step_of(a, "gemeenteblad").done_at is not None
    assert step_of(c, "meldingsbericht").status == "overdue"  # due 17 September, never sent
    assert step_of(d, "meldingsbericht").status == "unknown" and d.facts.start is None
    assert [x.dossier for x in await load_dossiers(ops_store, date(2025, 9, 20), ["C-3", "A-1"])] == ["A-1", "C-3"]


async def test_the_reader_connections_stay_small_whatever_the_watch_s_rounds_ask(ops_store):
    """The watch reads the dossiers that changed, in IN lists as long as the round happened to need. SQLite
    prepares, and the driver keeps (128 per connection), one statement per text: a text per length grew the
    reader connections by ~50 KB per length, 4.4 MB after 100 lengths (the soak's creeping second half).
    The lists are padded to a power of two, so 100 lengths are 8 statements."""
    import ctypes

    from gateway.ops.deadlines import alerts_tx

    sqlite = ctypes.CDLL("libsqlite3.so.0")  # the library the sqlite3 module links
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    for n in range(1, 4):
        await outbound(ops_store, f"out-{n}", f"VUG-2026-{n:06d}", "meldingsbericht", START)
    refs = [f"VUG-2026-{n:06d}" for n in range(1, 101)]
    today = date(2026, 11, 30)
    await ops_store.read_query(alerts_tx, today, refs[:1])
    before = sqlite.sqlite3_memory_used()
    for n in range(1, 101):
        got = await ops_store.read_query(alerts_tx, today, refs[:n])
        assert set(got) == set(refs[:min(n, 3)])  # the padding finds nothing twice and nothing more
    grown = sqlite.sqlite3_memory_used() - before
    assert grown < 1_500_000, f"SQLite's memory grew {grown} bytes over 100 lengths of IN list"
