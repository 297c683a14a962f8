"""deadline_facts and subject_index: written with the message (one transaction), read back for the chain's
deadlines and for the data subject's rights (subjects_messages), never holding anything but hashes and dates."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway.store import DuplicateMessage, State
from gateway.store.store import DeadlineDates
from paths import NOW

PERSON = "a1" * 32
OTHER = "b2" * 32
DATES = DeadlineDates(date(2025, 9, 15), "veroordeeld", date(2026, 11, 20), date(2025, 12, 10), None)
ACCEPTED = dict(transport="as2", transport_message_id="<in1@pi>", sender="pi:PI-VUGHT", signer_fingerprint="ab" * 32,
                type="meldingsbericht", dossier="VUG-1", mic="A" * 43 + "=", sha256="c" * 64, outcome="accepted",
                inbox_path="/srv/inbox/meldingsbericht/in1.xml", receipt=b"r")


async def test_accept_writes_dates_and_subjects_with_the_message(store, make, clock, sql):
    msg = make("out-1")
    await store.accept(msg, dates=DATES, subjects=[PERSON, OTHER, PERSON])  # a repeat is one row
    assert sql("SELECT direction, message_id, start, status FROM deadline_facts") == [
        ("outbound", "out-1", "2025-09-15", "veroordeeld")]
    assert sorted(sql("SELECT subject, direction, message_id FROM subject_index")) == [
        (PERSON, "outbound", "out-1"), (OTHER, "outbound", "out-1")]
    assert await store.deadline_facts("outbound", ["out-1", "nothing"]) == {"out-1": DATES}
    assert await store.deadline_facts("inbound", ["out-1"]) == {}

    # the same id again: refused as a whole, no second index row
    with pytest.raises(DuplicateMessage):
        await store.accept(make("out-1"), dates=DATES, subjects=[PERSON])
    assert sql("SELECT count(*) FROM subject_index") == [(2,)]
    # callers that know nothing of either keep working: no rows
    await store.accept(make("out-2"))
    assert sql("SELECT count(*) FROM deadline_facts WHERE message_id = 'out-2'") == [(0,)]


async def test_subjects_messages_joins_both_directions_in_recorded_order(store, make, clock):
    await store.accept(make("out-1", recipient="gemeente:0344", type="overdrachtsdocument"), subjects=[PERSON])
    clock.advance(minutes=1)
    await store.record_inbound(message_id="in-1", **ACCEPTED, dates=DATES, subjects=[PERSON])
    clock.advance(minutes=1)
    await store.record_inbound(message_id="in-2", **{**ACCEPTED, "transport_message_id": "<in2@pi>",
                                                      "outcome": "refused", "reason_code": "not-entitled"},
                               dates=DATES, subjects=[PERSON])  # a refusal is indexed under no one
    await store.accept(make("out-9"), subjects=[OTHER])
    await store.transition("out-1", State.HELD, reason="no route", actor="sealer")

    out, inn = await store.subjects_messages(PERSON)
    assert (out.direction, out.message_id, out.type, out.sender, out.recipient, out.state, out.recorded_at,
            out.received_at, out.created_at) == ("outbound", "out-1", "overdrachtsdocument", "pi:PI-VUGHT",
                                                 "gemeente:0344", "held", NOW, NOW, NOW)
    assert (inn.direction, inn.message_id, inn.type, inn.sender, inn.recipient, inn.dossier, inn.state,
            inn.transport, inn.received_at, inn.sent_at) == ("inbound", "in-1", "meldingsbericht", "pi:PI-VUGHT",
                                                             None, "VUG-1", "accepted", "as2",
                                                             NOW + timedelta(minutes=1), None)
    assert await store.deadline_facts("inbound", ["in-1", "in-2"]) == {"in-1": DATES}
    assert await store.subjects_messages("c3" * 32) == []


async def test_a_subject_must_be_a_hash_and_is_never_echoed(store, make, sql):
    for bad in ("999998225", "A1" * 32, PERSON[:-1]):
        with pytest.raises(ValueError) as e:
            await store.accept(make(), subjects=[bad])
        assert bad not in str(e.value)
        with pytest.raises(ValueError) as e:
            await store.subjects_messages(bad)
        assert bad not in str(e.value)
    assert sql("SELECT count(*) FROM messages") == [(0,)]
    with pytest.raises(ValueError):
        await store.deadline_facts("sideways", ["x"])
