"""The inbound memory: what arrived, what became of it, and the receipt it got (on a real SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError

from gateway.store import MIGRATIONS, Store
from gateway.store.states import DuplicateInbound, InboundRecord
from paths import NOW

ACCEPTED = dict(transport="email", transport_message_id="<m1@pi-vught.example.nl>", sender="pi:PI-VUGHT",
                signer_fingerprint="ab" * 32, type="meldingsbericht", dossier="VUG-2025-004711",
                mic="A" * 43 + "=", sha256="c" * 64, outcome="accepted",
                inbox_path="/srv/inbox/meldingsbericht/m1.xml", receipt=b"Content-Type: multipart/signed\r\n\r\nx")


async def test_an_accepted_arrival_is_remembered_with_its_receipt_and_audited(store, clock, sql):
    rec = await store.record_inbound(message_id="m1", **ACCEPTED)
    assert isinstance(rec, InboundRecord) and rec.received_at == NOW
    clock.advance(hours=1)
    found = await store.find_inbound("m1")
    assert found == rec
    assert found.receipt == ACCEPTED["receipt"] and isinstance(found.receipt, bytes)
    assert found.received_at.tzinfo is not None
    assert await store.find_inbound("m2") is None
    by_transport = await store.find_inbound_by_transport("email", "<m1@pi-vught.example.nl>")
    assert by_transport == rec
    assert await store.find_inbound_by_transport("as2", "<m1@pi-vught.example.nl>") is None
    rows = await store.audit_rows(object="m1")
    assert [(r["action"], r["result"], r["origin"], r["actor"]) for r in rows] == [
        ("inbound.accept", "accepted", "email", "intake")]
    assert sql("SELECT outcome, length(receipt) FROM inbound") == [("accepted", len(ACCEPTED["receipt"]))]


async def test_an_accepted_id_is_never_replaced(store):
    first = await store.record_inbound(message_id="m1", **ACCEPTED)
    for outcome in ("accepted", "refused"):
        with pytest.raises(DuplicateInbound) as caught:
            await store.record_inbound(message_id="m1", **{**ACCEPTED, "outcome": outcome, "receipt": b"other",
                                                           "reason_code": "duplicate"})
        assert caught.value.existing == first
    assert await store.find_inbound("m1") == first
    assert len(await store.audit_rows(object="m1")) == 1  # the refused attempts wrote nothing


async def test_a_refusal_is_replaced_by_the_next_arrival_of_the_same_id(store, clock):
    refused = await store.record_inbound(message_id="m1", transport="email", sha256="d" * 64, outcome="refused",
                                         reason_code="signer-not-trusted", reason="the CRL is stale",
                                         quarantine_path="/srv/q/x.p7m", receipt=b"error receipt")
    assert refused.outcome == "refused" and refused.inbox_path is None
    clock.advance(minutes=5)
    again = await store.record_inbound(message_id="m1", **ACCEPTED)
    assert again.outcome == "accepted" and again.quarantine_path is None and again.reason is None
    assert await store.find_inbound("m1") == again
    assert [r["result"] for r in await store.audit_rows(object="m1")] == ["accepted", "refused: signer-not-trusted"]


async def test_by_transport_prefers_the_accepted_arrival(store, clock):
    tmid = "<same@example.nl>"
    await store.record_inbound(message_id="sha256:" + "1" * 64, transport="as2", transport_message_id=tmid,
                               sha256="1" * 64, outcome="refused", reason_code="malformed", reason="not S/MIME")
    clock.advance(seconds=1)
    await store.record_inbound(message_id="m9", **{**ACCEPTED, "transport": "as2", "transport_message_id": tmid})
    clock.advance(seconds=1)
    await store.record_inbound(message_id="sha256:" + "2" * 64, transport="as2", transport_message_id=tmid,
                               sha256="2" * 64, outcome="refused", reason_code="malformed", reason="not S/MIME")
    assert (await store.find_inbound_by_transport("as2", tmid)).message_id == "m9"


async def test_bad_outcomes_are_refused_by_the_code_and_by_the_database(store, db_path):
    with pytest.raises(ValueError, match="accepted or refused"):
        await store.record_inbound(message_id="m1", **{**ACCEPTED, "outcome": "maybe"})
    with sqlite3.connect(db_path) as c, pytest.raises(sqlite3.IntegrityError, match="ck_inbound_outcome"):
        c.execute("INSERT INTO inbound (message_id, transport, sha256, received_at, outcome) "
                  "VALUES ('x', 'email', 'y', '2026-01-01 00:00:00.000000', 'lost')")
    assert await store.find_inbound("m1") is None


async def test_concurrent_records_of_one_id_accept_exactly_once(store):
    results = await asyncio.gather(*(store.record_inbound(message_id="m1", **{**ACCEPTED, "receipt": bytes([i])})
                                     for i in range(8)), return_exceptions=True)
    won = [r for r in results if isinstance(r, InboundRecord)]
    lost = [r for r in results if isinstance(r, DuplicateInbound)]
    assert len(won) == 1 and len(lost) == 7
    assert all(e.existing == won[0] for e in lost)
    assert not any(isinstance(r, IntegrityError) for r in results)


async def test_a_version_1_database_gets_the_inbound_table_and_keeps_its_messages(url, clock, make, db_path):
    s = await Store.open(url, clock=clock, migrations=MIGRATIONS[:1])
    await s.close()
    with sqlite3.connect(db_path) as c:  # a message as version 1 wrote it (today's code writes today's schema)
        at = "2026-01-01 00:00:00.000000"
        c.execute("INSERT INTO messages (message_id, type, version, sender, recipient, dossier, priority, state, "
                  "attempts, file_name, size, sha256, created_at, received_at, updated_at) VALUES ('m1', "
                  "'meldingsbericht', '1.0', 'pi:PI-VUGHT', 'gemeente:0599', 'D1', 0, 'received', 0, 'm1.xml', 1, "
                  "'00', ?, ?, ?)", (at, at, at))
        assert c.execute("SELECT name FROM sqlite_master WHERE name='inbound'").fetchall() == []
    s = await Store.open(url, clock=clock)
    try:
        assert (await s.get("m1")) is not None
        await s.record_inbound(message_id="m1", **ACCEPTED)  # another table: the same id may be both
        assert (await s.find_inbound("m1")).outcome == "accepted"
        with sqlite3.connect(db_path) as c:
            versions = [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS]
    finally:
        await s.close()


async def test_accepted_inbound_of_many_ids_at_once(store):
    """What the inbox's reconcile asks at start: which of these ids are recorded as accepted (refused ones not)."""
    ids = [f"m{i:04d}" for i in range(1_100)]
    for mid in ids[:1_050]:
        await store.record_inbound(message_id=mid, **ACCEPTED)
    await store.record_inbound(message_id="refused", **{**ACCEPTED, "outcome": "refused", "reason_code": "x",
                                                        "reason": "test", "inbox_path": None})
    assert await store.accepted_inbound([*ids, "refused"]) == set(ids[:1_050])
