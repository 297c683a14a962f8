"""Pick-up and intake keep what outlives the plaintext: each message's deadline dates (``deadline_facts``) and
one ``subject_index`` row per person it is about (HMAC of the BSN, made in the validation worker), in the
message's own transaction; the BSN itself is nowhere in the store, the logs or what the worker returns."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dropped import example, with_new_id
from gateway.config import load_config
from gateway.crypto.profiles import STRONG
from gateway.crypto.seal import seal
from gateway.crypto.trust import PartyBinding
from gateway.ops.deadlines import load_dossiers, step_of
from gateway.pipeline.intake import Arrival, Partner
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.validation import ValidationPool
from gateway.store.schema import deadline_facts, subject_index
from gateway.store.store import DeadlineDates
from test_pipeline_intake import (by_mail, certificate, identity, make_intake, municipality, rstore,  # noqa: F401
                                  sealed_mail)

DOSSIER = "VUG-2025-004711"


def bsn_of(xml: bytes) -> str:
    return re.search(rb"<burgerservicenummer>([0-9]{9})</burgerservicenummer>", xml).group(1).decode()


def hashed(key: bytes, bsn: str) -> str:
    """Computed here, not with gateway.privacy: the test's own idea of HMAC-SHA256 of the BSN."""
    return hmac.new(key, bsn.encode("ascii"), hashlib.sha256).hexdigest()


def without_bsn(xml: bytes) -> bytes:
    return re.sub(rb"\s*<burgerservicenummer>[0-9]{9}</burgerservicenummer>", b"", xml, count=1)


@pytest.fixture(scope="module")
def subject_key(setup_template) -> bytes:
    key = load_config(setup_template / "gateway.toml").check_secrets().subject_key
    assert key is not None and len(key) == 32  # init writes one
    return key


@pytest.fixture(scope="module")
def keyed_validation(setup_template, subject_key):
    cfg = load_config(setup_template / "gateway.toml")
    pool = ValidationPool(institutions=cfg.registries.institutions, municipalities=cfg.registries.municipalities,
                          max_bytes=cfg.limits.max_message_bytes, workers=1, subject_key=subject_key)
    yield pool
    pool.close()


def store_bytes(db: Path) -> bytes:
    """The SQLite file and its WAL and shared-memory files (recent writes live in the WAL)."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


async def subject_rows(store, message_id: str) -> int:
    return await store.read_query(lambda c: c.execute(select(func.count()).select_from(subject_index)
                                                      .where(subject_index.c.message_id == message_id)).scalar_one())


async def test_the_worker_hashes_the_bsn_and_returns_no_bsn(keyed_validation, subject_key, validation):
    xml, mid = with_new_id(example("04-overdrachtsdocument.xml"))
    checked = await keyed_validation.check(xml, "x.xml")
    assert checked.facts.subjects == (hashed(subject_key, bsn_of(xml)),)
    assert checked.facts.dates.start == date(2025, 9, 15) and checked.facts.dates.verdict == date(2025, 12, 10)
    assert bsn_of(xml) not in repr(checked) and bsn_of(xml) not in repr(keyed_validation)
    assert subject_key.hex() not in repr(keyed_validation)
    # a pool without the key makes no hashes, but still the dates
    plain = await validation.check(xml, "x.xml")
    assert plain.facts.subjects == () and plain.facts.dates == checked.facts.dates
    # no BSN in the message (it is optional): no subject
    assert (await keyed_validation.check(without_bsn(xml), "y.xml")).facts.subjects == ()


async def test_pickup_keeps_the_dates_and_the_subject_and_no_bsn(config, store, keyed_validation, subject_key,
                                                                 capsys):
    transfer, transfer_id = with_new_id(example("04-overdrachtsdocument.xml"))
    other, other_id = with_new_id(example("basisdocument-niet-gescreend.xml"))
    nameless, nameless_id = with_new_id(without_bsn(example("01-meldingsbericht.xml")))
    for data, mid in ((transfer, transfer_id), (other, other_id), (nameless, nameless_id)):
        (config.folders.outbox / f"{mid}.xml").write_bytes(data)
    pickup = Pickup(store=store, validation=keyed_validation, outbox=config.folders.outbox,
                    spool=config.folders.spool, rejected=config.folders.rejected, own_party=str(config.party.party),
                    max_bytes=config.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                    accepted=lambda _: None)
    assert await pickup.scan() == 3
    for mid in (transfer_id, other_id, nameless_id):
        assert await store.get(mid) is not None

    person = hashed(subject_key, bsn_of(transfer))
    [row] = await store.subjects_messages(person)
    assert (row.subject, row.direction, row.message_id, row.type, row.sender, row.recipient, row.dossier,
            row.state, row.erased_at) == (person, "outbound", transfer_id, "overdrachtsdocument", "pi:PI-VUGHT",
                                          "gemeente:0344", DOSSIER, "received", None)
    assert row.received_at is not None and row.created_at is not None and row.sent_at is None
    [other_row] = await store.subjects_messages(hashed(subject_key, bsn_of(other)))
    assert other_row.message_id == other_id
    assert await subject_rows(store, nameless_id) == 0

    facts = await store.deadline_facts("outbound", [transfer_id, nameless_id, "no-such-id"])
    assert facts == {transfer_id: DeadlineDates(date(2025, 9, 15), "veroordeeld", date(2026, 11, 20),
                                                date(2025, 12, 10), None),
                     nameless_id: DeadlineDates(date(2025, 9, 15), "preventiefGehecht", None, None, None)}

    # the store names the person by hash only: no BSN anywhere in its files, nor in the log
    raw, logged = store_bytes(config.store.sqlite_path), capsys.readouterr().out
    assert person.encode() in raw and transfer_id in logged  # the greps see the index and the log
    for bsn in (bsn_of(transfer), bsn_of(other), bsn_of(example("01-meldingsbericht.xml"))):
        assert bsn.encode() not in raw
        assert bsn not in logged


async def test_the_dates_outlive_the_spool_copy(config, store, keyed_validation):
    release, mid = with_new_id(example("05-ontslagbericht.xml"))  # ontslagdatum 2026-11-20
    (config.folders.outbox / f"{mid}.xml").write_bytes(release)
    pickup = Pickup(store=store, validation=keyed_validation, outbox=config.folders.outbox,
                    spool=config.folders.spool, rejected=config.folders.rejected, own_party=str(config.party.party),
                    max_bytes=config.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                    accepted=lambda _: None)
    await pickup.scan()
    (config.folders.spool / f"{mid}.xml").unlink()  # as after delivery
    [d] = await load_dossiers(store, date(2026, 11, 21))
    assert (step_of(d, "ontslagbericht").due, step_of(d, "ontslagbericht").status) == (date(2026, 11, 20),
                                                                                         "overdue")
    # a message stored before migration 4 (no row) falls back to its XML, and without one knows nothing
    await store.run_write(lambda c: c.execute(deadline_facts.delete().where(deadline_facts.c.message_id == mid)))
    [d] = await load_dossiers(store, date(2026, 11, 21))
    assert step_of(d, "ontslagbericht").status == "unknown"


async def test_intake_keeps_the_dates_and_the_subject_by_mail_and_by_as2(setup, municipality, rstore,
                                                                         keyed_validation, subject_key, capsys):
    by_email, email_id = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, by_email)
    assert (await make_intake(municipality, rstore, keyed_validation).receive(by_mail(data, mail_id))).accepted

    partners = {"pi:PI-VUGHT": Partner("pi:PI-VUGHT", as2_id="PI-VUGHT-AS2",
                                       certificate=PartyBinding(subject_serial="PI-VUGHT"))}
    as2_intake = make_intake(municipality, rstore, keyed_validation, partners=partners,
                             own_names={"as2": "GEMEENTE-0599"})
    by_as2, as2_id = with_new_id(example("03-basisdocument.xml"))
    sealed = seal(by_as2, identity(setup, "PI-VUGHT"), certificate(setup, "0599"), STRONG)
    outcome = await as2_intake.receive(Arrival(entity=sealed.entity, transport="as2",
                                               transport_message_id="<as2-subject@pi-vught>",
                                               claimed_sender="PI-VUGHT-AS2", reply_to=None))
    assert outcome.accepted
    # refused (for another municipality): neither dates nor subject
    stray, stray_id = with_new_id(example("04-overdrachtsdocument.xml"))
    _, stray_mail, stray_mail_id = sealed_mail(setup, stray)
    refused = await make_intake(municipality, rstore, keyed_validation).receive(by_mail(stray_mail, stray_mail_id))
    assert (refused.accepted, refused.reason_code) == (False, "not-entitled")

    person = hashed(subject_key, bsn_of(by_email))
    rows = await rstore.subjects_messages(person)
    assert [(r.direction, r.message_id, r.type, r.sender, r.dossier, r.state, r.transport) for r in rows] == [
        ("inbound", email_id, "meldingsbericht", "pi:PI-VUGHT", DOSSIER, "accepted", "email"),
        ("inbound", as2_id, "basisdocument", "pi:PI-VUGHT", DOSSIER, "accepted", "as2")]
    assert all(r.received_at is not None and r.recipient is None for r in rows)
    assert await subject_rows(rstore, stray_id) == 0
    assert (await rstore.deadline_facts("inbound", [email_id, stray_id])) == {
        email_id: DeadlineDates(date(2025, 9, 15), "preventiefGehecht", None, None, None)}

    # the inbox copies are handed over and may go: the melding's due date stays known
    for p in municipality.folders.inbox.rglob("*.xml"):
        p.unlink()
    [d] = await load_dossiers(rstore, date(2025, 9, 20))
    assert step_of(d, "meldingsbericht").due == date(2025, 9, 17)
    assert d.facts.start == date(2025, 9, 15)

    raw = store_bytes(municipality.store.sqlite_path)
    assert person.encode() in raw
    assert bsn_of(by_email).encode() not in raw and bsn_of(stray).encode() not in raw
    assert bsn_of(by_email) not in capsys.readouterr().out


async def test_reconcile_recovers_the_dates_and_the_subject_from_the_inbox_copy(setup, municipality, rstore,
                                                                               keyed_validation, subject_key):
    from test_pipeline_intake import CrashBeforeRecord

    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml)
    with pytest.raises(SystemExit):
        await make_intake(municipality, CrashBeforeRecord(rstore), keyed_validation).receive(by_mail(data, mail_id))
    assert await make_intake(municipality, rstore, keyed_validation).reconcile() == 1
    assert [r.message_id for r in await rstore.subjects_messages(hashed(subject_key, bsn_of(xml)))] == [mid]
    assert (await rstore.deadline_facts("inbound", [mid]))[mid].start == date(2025, 9, 15)
