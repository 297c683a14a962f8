"""subject-access and subject-erase (covenant art. 12-15) on a real local set-up: a real store, messages
sealed by the real sealer (the own copy opened with the own key), inbox and quarantine copies; the CLI
in-process, the PDF printed by Debian's headless Chromium."""

from __future__ import annotations

import json
import logging
import sqlite3

from datetime import date

import pytest
import structlog
from lxml import etree
from sqlalchemy import insert

from gateway.ops.audit import verify, write_checkpoint
from gateway.ops.subjects import (TYPE_SECTIONS, InvalidBsn, OfficerRefused, access_report, check_bsn,
                                  check_officer, erase, plan_erase, render_html, subject_of)
from gateway.privacy import subject_hash
from gateway.store import State
from gateway.store.schema import deadline_facts
from ops_web_support import PASSWORDS, web_config, web_secrets, web_setup, web_store, web_template  # noqa: F401
from test_ops_cli_support import run_cli
from test_ops_subjects_support import ANNA, BERT, NOBODY, arrived, outbound, settle


def top_sections(xml: bytes) -> list[str]:
    names = [etree.QName(c).localname for c in etree.fromstring(xml)]
    return list(dict.fromkeys(n for n in names if n not in ("berichtkop", "datum")))


@pytest.fixture
async def people(web_store, web_config, web_secrets):
    """Anna: a basisdocument (not screened: no tabs 4-9) acknowledged, a meldingsbericht failed, a gemeenteblad
    received (inbox) and one refused (quarantine). Bert: one meldingsbericht, acknowledged."""
    a_basis = await outbound(web_store, web_config, web_secrets, "basisdocument-niet-gescreend.xml", "basisdocument",
                             "gemeente:0772", ANNA)
    await settle(web_store, a_basis, State.ACKNOWLEDGED)
    a_melding = await outbound(web_store, web_config, web_secrets, "01-meldingsbericht.xml", "meldingsbericht",
                               "gemeente:0599", ANNA)
    await settle(web_store, a_melding, State.FAILED)
    a_in, a_refused = await arrived(web_store, web_config, web_secrets, ANNA)
    b_melding = await outbound(web_store, web_config, web_secrets, "01-meldingsbericht.xml", "meldingsbericht",
                               "gemeente:0599", BERT)
    await settle(web_store, b_melding, State.ACKNOWLEDGED)
    return dict(a_basis=a_basis, a_melding=a_melding, a_in=a_in, a_refused=a_refused, b_melding=b_melding)


async def kept_dates(store, mid: str) -> None:
    """The detention dates the pick-up keeps for the chain's deadlines (deadline_facts)."""
    row = dict(direction="outbound", message_id=mid, start=date(2025, 9, 15), status="preventiefGehecht")
    await store.run_write(lambda conn: conn.execute(insert(deadline_facts).values(**row)))


def officer_env(monkeypatch, name: str = "otto") -> None:
    monkeypatch.setenv("NAZORG_OFFICER_PASSWORD", PASSWORDS[name])


def rows(cfg, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(cfg.store.sqlite_path) as db:
        return db.execute(sql, args).fetchall()


def test_a_bsn_must_pass_the_eleven_proof():
    assert check_bsn(ANNA) == ANNA and check_bsn(" 12345672 ") == "012345672"  # 8 digits: a leading zero
    for bad in ("111222334", "12345", "abcdefghi", "000000000", ""):
        with pytest.raises(InvalidBsn) as e:
            check_bsn(bad)
        assert bad not in str(e.value) or not bad


def test_only_an_officer_with_the_right_password_passes(web_config):
    accounts = web_config.dashboard.accounts_file
    assert check_officer(accounts, "otto", PASSWORDS["otto"]).role == "officer"
    for name, password, why in (("olga", PASSWORDS["olga"], "role operator"), ("otto", "wrong", "wrong password"),
                                ("nobody", "x", "unknown account")):
        with pytest.raises(OfficerRefused) as e:
            check_officer(accounts, name, password)
        assert e.value.why.startswith(why)


async def test_the_overview_lists_exactly_the_subjects_messages_with_categories_from_the_own_copies(
        people, web_store, web_config, web_secrets):
    key = web_secrets.subject_key
    report = await access_report(web_store, subject=subject_of(key, ANNA), bsn=ANNA, officer="otto",
                                 identity=web_secrets.identity, trust=web_secrets.trust, parties=web_config.parties(),
                                 own_party=str(web_config.party.party), origin="test")
    by_id = {e.message_id: e for e in report.entries}
    assert set(by_id) == {people["a_basis"], people["a_melding"], people["a_in"], people["a_refused"]}
    assert people["b_melding"] not in by_id

    basis = by_id[people["a_basis"]]
    assert basis.source == "sealed"  # opened from the sealed entity with the own key
    spooled = (web_config.folders.spool / f"{people['a_basis']}.xml").read_bytes()
    assert basis.sections == top_sections(spooled)
    assert "identiteitsbewijs" not in basis.sections  # not screened: the type would list it, the copy does not
    assert "identiteitsbewijs" in TYPE_SECTIONS["basisdocument"]
    assert (basis.sender, basis.sender_name, basis.recipient, basis.state) == \
        ("pi:PI-VUGHT", "PI Vught", "gemeente:0772", "acknowledged")
    assert basis.recipient_name and basis.sent_at and basis.acknowledged_at and basis.created_at

    got = by_id[people["a_in"]]
    assert (got.direction, got.source, got.sender, got.sender_name, got.recipient) == \
        ("inbound", "inbox", "gemeente:0599", "Rotterdam", str(web_config.party.party))
    assert "zorg" in got.sections and got.created_at is not None
    refused = by_id[people["a_refused"]]
    assert refused.state == "refused" and refused.source == "type" and refused.sections == []  # no type known

    html = render_html(report)
    assert "src=" not in html and "href=" not in html and "<script" not in html  # self-contained
    assert ANNA not in html and "•" * 6 + ANNA[-3:] in html  # masked: the person recognises their own number
    for heading in ("a. Doeleinden", "b. Gegevens en categorieën", "c. Ontvangers", "d. Herkomst"):
        assert heading in html
    assert "PI Vught" in html and "Rotterdam" in html and "binnen twee werkdagen" in html
    assert "Bewaard voor de bewaking van de termijnen" not in html  # no deadline facts kept for these

    audit = await web_store.audit_rows(5, object=subject_of(key, ANNA)[:16])
    assert [(a["action"], a["result"], a["actor"]) for a in audit] == \
        [("subject.access", "messages=4 outbound=2 inbound=2", "otto")]


async def test_a_person_without_messages_gets_an_answer_too(people, web_store, web_config, web_secrets):
    report = await access_report(web_store, subject=subject_of(web_secrets.subject_key, NOBODY), bsn=NOBODY,
                                 officer="otto", identity=web_secrets.identity, trust=web_secrets.trust,
                                 parties=web_config.parties(), own_party=str(web_config.party.party), origin="test")
    assert report.entries == []
    assert "geen berichten over deze persoon gevonden" in render_html(report)


async def test_erase_removes_the_copies_keeps_metadata_and_audit_and_is_idempotent(
        people, web_store, web_config, web_secrets):
    key = web_secrets.subject_key
    anna, bert = subject_of(key, ANNA), subject_of(key, BERT)
    spool = web_config.folders.spool
    quarantined = rows(web_config, "SELECT quarantine_path FROM inbound WHERE message_id = ?", people["a_refused"])[0][0]
    inbox_copy = rows(web_config, "SELECT inbox_path FROM inbound WHERE message_id = ?", people["a_in"])[0][0]
    assert (spool / f"{people['a_melding']}.xml").exists()  # failed: its spool copy is still there
    await kept_dates(web_store, people["a_basis"])
    await kept_dates(web_store, people["b_melding"])
    before = await access_report(web_store, subject=anna, bsn=ANNA, officer="otto", identity=web_secrets.identity,
                                 trust=web_secrets.trust, parties=web_config.parties(),
                                 own_party=str(web_config.party.party), origin="test")
    assert "Bewaard voor de bewaking van de termijnen: aanvang detentie, status" in render_html(before)
    await write_checkpoint(web_store, web_secrets.identity)

    plan = await plan_erase(web_store, anna)
    assert plan.holds() == {"spool": 2, "sealed": 2, "quarantine": 1, "inbox": 0, "dates": 1} and not plan.in_flight
    done = await erase(web_store, anna, actor="otto", origin="test")
    assert done.done and done.removed == {"spool": 2, "sealed": 2, "quarantine": 1, "inbox": 0, "dates": 1}

    for mid in (people["a_basis"], people["a_melding"]):
        assert not (spool / f"{mid}.xml").exists()
        assert rows(web_config, "SELECT count(*) FROM sealed WHERE message_id = ?", mid) == [(0,)]
        # the metadata stays: type, parties, dates, state, and the timeline
        record = await web_store.get(mid)
        assert record is not None and record.spool_path is None and record.sender == "pi:PI-VUGHT"
        assert len(await web_store.timeline(mid)) >= 4
    from pathlib import Path
    assert not Path(quarantined).exists() and not Path(quarantined).with_suffix(".json").exists()
    assert Path(inbox_copy).exists()  # the inbox copy is the receiving systems': only with include_inbox
    assert rows(web_config, "SELECT count(*) FROM subject_index WHERE subject = ? AND erased_at IS NULL", anna) \
        == [(0,)]
    # Bert's copies are untouched
    assert (spool / f"{people['b_melding']}.xml").exists()
    assert rows(web_config, "SELECT count(*) FROM sealed WHERE message_id = ?", people["b_melding"]) == [(1,)]
    assert rows(web_config, "SELECT count(*) FROM subject_index WHERE subject = ? AND erased_at IS NULL", bert) \
        == [(1,)]

    again = await erase(web_store, anna, actor="otto", origin="test")  # idempotent
    assert again.done and again.removed == {"spool": 0, "sealed": 0, "quarantine": 0, "inbox": 0, "dates": 0}
    with_inbox = await erase(web_store, anna, actor="otto", origin="test", include_inbox=True)
    assert with_inbox.removed["inbox"] == 1 and not Path(inbox_copy).exists()

    report = await verify(web_store, [web_secrets.identity.cert])
    assert report.ok and report.checkpoints == 1, report.problems
    audit = [(a["action"], a["object"], a["result"]) for a in await web_store.audit_rows(20)
             if a["action"] == "subject.erase"]
    assert audit[-1] == ("subject.erase", anna[:16],
                         "messages=4 removed spool=2 sealed=2 quarantine=1 inbox=0 dates=1")
    assert len(audit) == 3

    # after the erasure the overview says no readable copy is left and gives the type's categories
    after = await access_report(web_store, subject=anna, bsn=ANNA, officer="otto", identity=web_secrets.identity,
                                trust=web_secrets.trust, parties=web_config.parties(),
                                own_party=str(web_config.party.party), origin="test")
    basis = next(e for e in after.entries if e.message_id == people["a_basis"])
    assert basis.source == "type" and basis.sections == list(TYPE_SECTIONS["basisdocument"]) and basis.erased_at
    assert basis.kept_dates == [] and rows(web_config, "SELECT message_id FROM deadline_facts") == \
        [(people["b_melding"],)]  # Bert's dates stay
    assert "geen leesbare kopie meer" in render_html(after)


async def test_erase_is_refused_while_a_message_is_in_flight(people, web_store, web_config, web_secrets):
    queued = await outbound(web_store, web_config, web_secrets, "03-basisdocument.xml", "basisdocument",
                            "gemeente:0599", ANNA)
    anna = subject_of(web_secrets.subject_key, ANNA)
    refused = await erase(web_store, anna, actor="otto", origin="test")
    assert not refused.done and [i.message_id for i in refused.in_flight] == [queued]
    assert (web_config.folders.spool / f"{people['a_basis']}.xml").exists()  # nothing removed
    assert rows(web_config, "SELECT count(*) FROM subject_index WHERE erased_at IS NOT NULL") == [(0,)]
    assert (await web_store.audit_rows(1))[0]["result"] == "refused: in flight=1 messages=5"
    await web_store.transition(queued, State.CANCELLED, reason="cancelled by test", actor="t")
    assert (await erase(web_store, anna, actor="otto", origin="test")).removed["sealed"] == 3


async def test_no_bsn_in_any_log_line_audit_row_or_output(people, web_store, web_config, web_secrets, caplog,
                                                          monkeypatch, tmp_path):
    caplog.set_level(logging.DEBUG)
    conf = str(web_config.path)
    officer_env(monkeypatch)
    with structlog.testing.capture_logs() as captured:
        anna = subject_of(web_secrets.subject_key, ANNA)
        await access_report(web_store, subject=anna, bsn=ANNA, officer="otto", identity=web_secrets.identity,
                            trust=web_secrets.trust, parties=web_config.parties(),
                            own_party=str(web_config.party.party), origin="test")
        await erase(web_store, anna, actor="otto", origin="test")
    outputs = [await run_cli("subject-access", "-c", conf, "--bsn", ANNA, "--officer", "otto", "--json"),
               await run_cli("subject-erase", "-c", conf, "--bsn", ANNA, "--officer", "otto", "--yes"),
               await run_cli("subject-access", "-c", conf, "--bsn", "111222334", "--officer", "otto")]
    assert [o.returncode for o in outputs] == [0, 0, 2]
    assert any(e["event"] == "subject.access" for e in captured) and any(e["event"] == "subject.erase"
                                                                         for e in captured)
    text = "\n".join([json.dumps(captured, default=str), caplog.text]
                     + [o.stdout + o.stderr for o in outputs]
                     + [" ".join(map(str, r)) for r in rows(web_config, "SELECT * FROM audit")])
    for bsn in (ANNA, "111222334"):
        assert bsn not in text
    for name in ("Oosterwijk", "1989-04-23"):  # nor the person's name or birth date from the messages
        assert name not in text


async def test_the_cli_writes_html_json_and_a_pdf_for_an_officer(people, web_config, monkeypatch, tmp_path):
    officer_env(monkeypatch)
    html, pdf = tmp_path / "overzicht.html", tmp_path / "overzicht.pdf"
    done = await run_cli("subject-access", "-c", str(web_config.path), "--bsn", ANNA, "--officer", "otto",
                         "--out", str(html), "--pdf", str(pdf), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == {"messages": 4, "outbound": 2, "inbound": 2}
    assert {e["message_id"] for e in report["entries"]} == {people[k] for k in ("a_basis", "a_melding", "a_in",
                                                                                "a_refused")}
    basis = next(e for e in report["entries"] if e["message_id"] == people["a_basis"])
    assert basis["purpose"].startswith("Wederzijdse informatie-uitwisseling")
    assert {"section": "zorg", "label": "Zorg en zorgverzekering (gezondheidsgegevens)",
            "covenant": "B: gezondheid (art. 1.9)"} not in basis["categories"]  # not screened: no care tab
    page = html.read_text()
    assert page.startswith("<!doctype html>") and people["a_basis"] in page and people["b_melding"] not in page
    assert oct(html.stat().st_mode & 0o777) == "0o600"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"/Type /Page" in data and oct(pdf.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("NAZORG_CHROMIUM", str(tmp_path / "no-such-browser"))
    done = await run_cli("subject-access", "-c", str(web_config.path), "--bsn", ANNA, "--officer", "otto",
                         "--pdf", str(tmp_path / "other.pdf"))
    assert done.returncode == 2 and "no headless Chromium" in done.stderr and not (tmp_path / "other.pdf").exists()


async def test_the_cli_refuses_who_is_not_an_officer_and_audits_it(people, web_config, web_secrets, monkeypatch):
    conf = str(web_config.path)
    anna = subject_hash(web_secrets.subject_key, ANNA)[:16]
    officer_env(monkeypatch, "olga")
    for command in (["subject-access"], ["subject-erase", "--yes"]):
        done = await run_cli(*command, "-c", conf, "--bsn", ANNA, "--officer", "olga")
        assert done.returncode == 1 and "refused" in done.stderr and "role operator" in done.stderr
    monkeypatch.setenv("NAZORG_OFFICER_PASSWORD", "not the password")
    done = await run_cli("subject-access", "-c", conf, "--bsn", ANNA, "--officer", "otto")
    assert done.returncode == 1
    monkeypatch.delenv("NAZORG_OFFICER_PASSWORD")
    done = await run_cli("subject-access", "-c", conf, "--bsn", ANNA, "--officer", "otto",
                         input=PASSWORDS["otto"] + "\n")  # prompted
    assert done.returncode == 0, done.stderr
    audit = rows(web_config, "SELECT action, result, actor FROM audit WHERE object = ? ORDER BY id", anna)
    assert audit == [("subject.access", "refused: role operator: only an officer may", "olga"),
                     ("subject.erase", "refused: role operator: only an officer may", "olga"),
                     ("subject.access", "refused: wrong password", "otto"),
                     ("subject.access", "messages=4 outbound=2 inbound=2", "otto")]
    assert (web_config.folders.spool / f"{people['a_basis']}.xml").exists()  # the refused erase removed nothing


async def test_the_cli_erase_asks_refuses_in_flight_and_erases(people, web_store, web_config, web_secrets,
                                                               monkeypatch):
    conf = str(web_config.path)
    officer_env(monkeypatch)
    done = await run_cli("subject-erase", "-c", conf, "--bsn", ANNA, "--officer", "otto", input="n\n")
    assert done.returncode == 1 and "nothing erased" in done.stdout
    assert people["a_basis"] in done.stdout and "remove" in done.stdout  # the plan was shown
    assert (web_config.folders.spool / f"{people['a_basis']}.xml").exists()

    queued = await outbound(web_store, web_config, web_secrets, "03-basisdocument.xml", "basisdocument",
                            "gemeente:0599", ANNA)
    done = await run_cli("subject-erase", "-c", conf, "--bsn", ANNA, "--officer", "otto", "--yes")
    assert done.returncode == 1 and f"{queued} (queued)" in done.stdout and "messages cancel" in done.stdout
    done = await run_cli("messages", "cancel", "-c", conf, queued, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    done = await run_cli("subject-erase", "-c", conf, "--bsn", ANNA, "--officer", "otto", input="y\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "erased: 5 message(s)" in done.stdout and "sealed 3" in done.stdout
    done = await run_cli("subject-erase", "-c", conf, "--bsn", ANNA, "--officer", "otto", "--yes", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["removed"]["sealed"] == 0
    actions = rows(web_config, "SELECT result FROM audit WHERE action = 'subject.erase' ORDER BY id")
    assert [r[0].split(" ")[0] for r in actions] == ["not", "refused:", "messages=5", "messages=5"]


async def test_the_index_the_pickup_writes_is_what_access_and_erase_find(web_store, web_config, web_secrets):
    """Through the real pick-up: the validation worker hashes the BSN with the subject key, the store keeps
    the index row and the detention dates with the message; the overview and the erasure find them."""
    from gateway.pipeline.pickup import Pickup
    from gateway.pipeline.validation import ValidationPool
    from test_ops_subjects_support import about

    cfg = web_config
    pool = ValidationPool(institutions=cfg.registries.institutions, municipalities=cfg.registries.municipalities,
                          max_bytes=cfg.limits.max_message_bytes, workers=1, subject_key=web_secrets.subject_key)
    try:
        dropped = {bsn: about("01-meldingsbericht.xml", bsn) for bsn in (ANNA, BERT)}
        for xml, mid in dropped.values():
            (cfg.folders.outbox / f"{mid}.xml").write_bytes(xml)
        pickup = Pickup(store=web_store, validation=pool, outbox=cfg.folders.outbox, spool=cfg.folders.spool,
                        rejected=cfg.folders.rejected, own_party=str(cfg.party.party),
                        max_bytes=cfg.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                        accepted=lambda _: None)
        await pickup.scan()
    finally:
        pool.close()
    anna_mid = dropped[ANNA][1]
    assert (await web_store.get(anna_mid)).state is State.RECEIVED
    await web_store.transition(anna_mid, State.CANCELLED, reason="test", actor="t")
    anna = subject_of(web_secrets.subject_key, ANNA)
    report = await access_report(web_store, subject=anna, bsn=ANNA, officer="otto", identity=web_secrets.identity,
                                 trust=web_secrets.trust, parties=web_config.parties(),
                                 own_party=str(web_config.party.party), origin="test")
    assert [e.message_id for e in report.entries] == [anna_mid]
    assert report.entries[0].kept_dates[:2] == ["start", "status"]  # aanvangDetentie and status, from pick-up
    done = await erase(web_store, anna, actor="otto", origin="test")
    assert done.removed["spool"] == 1 and done.removed["dates"] == 1 and done.removed["sealed"] == 0
    assert await web_store.deadline_facts("outbound", [anna_mid]) == {}
    assert list(await web_store.deadline_facts("outbound", [dropped[BERT][1]])) == [dropped[BERT][1]]
