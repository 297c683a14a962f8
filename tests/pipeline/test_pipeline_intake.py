"""The intake on real parts: a development PKI shared by a PI and municipality 0599 (one `init`), messages
sealed by the PI as the sealer does it, the validation workers, a SQLite store, the inbox on disk.

The receiving gateway is the PI's set-up turned into 0599's (`become`): same PKI, own party 0599, a route
(hence a partner) for PI-VUGHT instead of the one for 0599."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from adapters.inbox_fs import InboxWriter
from adapters.smtp import compose_mail
from dropped import example, with_new_id
from gateway.config import load_config
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.crypto.profiles import COMPATIBLE, STRONG
from gateway.crypto.receipts import ReceiptVerdict, check_receipt, parse_mdn
from gateway.crypto.seal import Sealed, seal
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.pipeline.intake import Arrival, Intake, Partner, intake_from_config, partners_from_routes
from gateway.store import Store
from paths import EXAMPLES

PI = "nazorg@pi-vught.example.nl"
HAAGLANDEN = "nazorg@pi-haaglanden.example.nl"
GEMEENTE = "nazorg@gemeente-0599.example.nl"
BSN_IN_INVALID_EXAMPLE = "999998226"


def become(setup: Path, code: str, email: str, name: str, *, partner: str = "PI-VUGHT",
           partner_email: str = PI) -> Path:
    """Turn a local set-up into the one of party `code` (same PKI): own party and identity, and a route to
    `partner` in place of the route to `code`."""
    path = setup / "gateway.toml"
    text = path.read_text()
    kind = "pi" if code.startswith("PI-") else "gemeente"
    text = re.sub(r"\[party\]\ncode = \"[^\"]*\"\nkind = \"[^\"]*\"\nemail = \"[^\"]*\"\nname = \"[^\"]*\"",
                  f'[party]\ncode = "{code}"\nkind = "{kind}"\nemail = "{email}"\nname = "{name}"', text)
    text = text.replace(f"keys/parties/{partner}/", f"keys/parties/{code}/")
    route = (f'[routes."{partner}"]\ntransport = "email"\naddress = "{partner_email}"\n'
             f'certificate = "keys/parties/{partner}/cert.pem"\nprofile = "strong"\n')
    text, n = re.subn(rf'\[routes\."{code}"\][^\[]*', route, text)
    assert n == 1
    path.write_text(text)
    return path


def identity(setup: Path, code: str) -> Identity:
    folder = setup / "keys" / "parties" / code
    return load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")


def certificate(setup: Path, code: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((setup / "keys" / "parties" / code / "cert.pem").read_bytes())


def sealed_mail(setup: Path, xml: bytes, *, by: str = "PI-VUGHT", to: str = "0599", sender: str = PI,
                message_id: str | None = None) -> tuple[Sealed, bytes, str]:
    """(sealed, the mail as the PI's gateway sends it, its Message-ID)."""
    sealed = seal(xml, identity(setup, by), certificate(setup, to), COMPATIBLE,
                  content_filename="meldingsbericht.xml")
    mid = message_id or re.search(rb"<berichtId>([^<]+)</berichtId>", xml).group(1).decode()
    mail = compose_mail(sealed_entity=sealed.entity, message_id=mid, label="meldingsbericht", from_address=sender,
                        to_address=GEMEENTE, receipt_to=sender, date=datetime.now(timezone.utc),
                        id_domain=sender.split("@")[1])
    return sealed, mail.data, mail.mail_message_id


def by_mail(data: bytes, mail_id: str, sender: str = PI) -> Arrival:
    return Arrival(entity=data, transport="email", transport_message_id=mail_id, claimed_sender=sender,
                   reply_to=sender)


@pytest.fixture
def municipality(setup):
    cfg = load_config(become(setup, "0599", GEMEENTE, "Gemeente Rotterdam"))
    cfg.folders.create()
    cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
async def rstore(municipality):
    s = await Store.open(municipality.store.url)
    yield s
    await s.close()


@pytest.fixture
def pi_trust(setup) -> TrustStore:
    return TrustStore.from_bundle(setup / "keys" / "trust.pem", [setup / "keys" / "ca" / "issuing.crl.pem"])


def make_intake(municipality, store, validation, **overrides) -> Intake:
    """0599's intake as its configuration makes it, with `overrides` of Intake's arguments."""
    secrets = municipality.check_secrets()
    base = intake_from_config(municipality, store=store, identity=secrets.identity, trust=secrets.trust,
                              validation=validation)
    if not overrides:
        return base
    args = dict(store=store, identity=base.identity, trust=base.trust, validation=validation,
                own_party=base.own_party, partners=base.partners, inbox=base.inbox, quarantine=base.quarantine,
                own_names=base.own_names)
    return Intake(**{**args, **overrides})


@pytest.fixture
def intake(municipality, rstore, validation) -> Intake:
    return make_intake(municipality, rstore, validation)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def receipt_of(outcome, trust: TrustStore):
    return parse_mdn(outcome.mdn.entity, trust, expected_signer=PartyBinding(email=GEMEENTE))


async def test_a_sealed_message_is_opened_checked_put_in_the_inbox_and_receipted(
        setup, municipality, intake, rstore, pi_trust):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    outcome = await intake.receive(by_mail(data, mail_id))
    assert (outcome.accepted, outcome.duplicate, outcome.message_id, outcome.reason_code) == (True, False, mid, None)

    inbox = municipality.folders.inbox
    assert files(inbox) == [f"meldingsbericht/{mid}.json", f"meldingsbericht/{mid}.xml"]
    assert (inbox / "meldingsbericht" / f"{mid}.xml").read_bytes() == xml  # exactly what the PI signed
    meta = json.loads((inbox / "meldingsbericht" / f"{mid}.json").read_text())
    assert meta["sender"] == "pi:PI-VUGHT" and meta["recipient"] == "gemeente:0599"
    assert meta["signer_sha256"] == certificate(setup, "PI-VUGHT").fingerprint(hashes.SHA256()).hex()
    assert meta["mic"] == sealed.mic and meta["dossier"] == "VUG-2025-004711"
    assert meta["transport"] == "email" and meta["transport_message_id"] == mail_id
    assert datetime.fromisoformat(meta["received_at"]).tzinfo is not None
    assert files(municipality.folders.quarantine) == []

    # the receipt: signed by 0599, for the mail's Message-ID, processed, with the MIC the PI sealed
    receipt = receipt_of(outcome, pi_trust)
    assert check_receipt(receipt, message_id=mail_id, sealed_mic=sealed.mic).verdict is ReceiptVerdict.MATCH
    assert receipt.final_recipient == GEMEENTE

    row = await rstore.find_inbound(mid)
    assert (row.outcome, row.sender, row.type, row.mic, row.transport_message_id) == (
        "accepted", "pi:PI-VUGHT", "meldingsbericht", sealed.mic, mail_id)
    assert row.receipt == outcome.mdn.entity and row.inbox_path == str(inbox / "meldingsbericht" / f"{mid}.xml")
    assert [r["action"] for r in await rstore.audit_rows(object=mid)] == ["inbound.accept"]


async def test_an_arrival_s_own_names_are_never_interned(setup, municipality, intake, monkeypatch):
    """As on the sending side (tests/e2e/test_e2e_email.py): pathlib interns every name of a path, and a name
    per arrival would churn CPython's table of interned strings until it doubled. Filing arrivals (and
    their replays, which look the file up) interns no string holding a message's id."""
    arrivals = []
    for _ in range(3):
        xml, mid = with_new_id(example("01-meldingsbericht.xml"))
        arrivals.append((mid, by_mail(*sealed_mail(setup, xml)[1:])))
    interned: list[str] = []
    real_intern = sys.intern
    monkeypatch.setattr(sys, "intern", lambda s: interned.append(s) or real_intern(s))
    Path("/probe") / "pathlib-interns-this.xml"  # the control: this Python's pathlib interns through sys.intern
    assert "pathlib-interns-this.xml" in interned, "pathlib no longer interns: this test can no longer fail"
    for mid, arrival in arrivals + arrivals:
        outcome = await intake.receive(arrival)
        assert outcome.accepted and outcome.message_id == mid
    assert [s for s in interned if any(mid in s for mid, _ in arrivals)] == []


async def test_a_replay_gets_the_same_receipt_and_no_second_file(setup, municipality, intake, rstore, pi_trust):
    xml, mid = with_new_id(example("03-basisdocument.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    first = await intake.receive(by_mail(data, mail_id))
    xml_path = municipality.folders.inbox / "basisdocument" / f"{mid}.xml"
    before = os.stat(xml_path)

    again = await intake.receive(by_mail(data, mail_id))  # the same mail: known by its Message-ID
    assert (again.accepted, again.duplicate, again.message_id) == (True, True, mid)
    assert again.mdn.entity == first.mdn.entity  # byte for byte

    # sealed again and sent under another transport id (an AS2 peer's resend): known by its berichtId
    resealed, redata, _ = sealed_mail(setup, xml, message_id=mid)
    assert resealed.entity != sealed.entity and resealed.mic == sealed.mic
    other = await intake.receive(by_mail(redata, "<another-id@pi-vught.example.nl>"))
    assert (other.accepted, other.duplicate) == (True, True) and other.mdn.entity == first.mdn.entity

    after = os.stat(xml_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files(municipality.folders.inbox) == [f"basisdocument/{mid}.json", f"basisdocument/{mid}.xml"]
    assert [r["action"] for r in await rstore.audit_rows(object=mid)] == ["inbound.accept"]

    # another message under the accepted berichtId is refused, and the accepted one stays as it was
    changed = xml.replace(b"VUG-2025-004711", b"VUG-2025-004712", 1)
    assert changed != xml
    _, cdata, cmail = sealed_mail(setup, changed, message_id="x-" + mid)
    refused = await intake.receive(by_mail(cdata, cmail))
    assert (refused.accepted, refused.reason_code, refused.message_id) == (False, "duplicate", mid)
    assert receipt_of(refused, pi_trust).reason_code == "duplicate"
    assert xml_path.read_bytes() == xml
    assert (await rstore.find_inbound(mid)).receipt == first.mdn.entity
    assert [r["result"] for r in await rstore.audit_rows(object=mid)] == ["refused: duplicate", "accepted"]


async def refused(intake: Intake, municipality, arrival: Arrival, code: str, pi_trust: TrustStore, *,
                  with_mic: bool):
    """Receive `arrival`, expect it refused with `code`: nothing in the inbox, the entity in quarantine
    with its reason, a refused row, and a signed processed/error receipt naming the code."""
    outcome = await intake.receive(arrival)
    assert (outcome.accepted, outcome.duplicate, outcome.reason_code) == (False, False, code), outcome.reason
    assert files(municipality.folders.inbox) == []
    kept = sorted(municipality.folders.quarantine.glob("*.p7m"))
    assert len(kept) == 1 and kept[0].read_bytes() == arrival.entity
    report = json.loads(kept[0].with_suffix(".json").read_text())
    assert report["reason_code"] == code and report["reason"] == outcome.reason
    receipt = receipt_of(outcome, pi_trust)
    assert receipt.disposition == "processed/error" and receipt.reason_code == code
    assert receipt.original_message_id == arrival.transport_message_id.strip("<>")
    assert (receipt.mic is not None) == with_mic
    key = outcome.message_id or "sha256:" + hashlib.sha256(arrival.entity).hexdigest()
    row = await intake.store.find_inbound(key)
    assert (row.outcome, row.reason_code, row.quarantine_path, row.inbox_path) == ("refused", code, str(kept[0]), None)
    assert row.receipt == outcome.mdn.entity
    return outcome


async def test_sealed_for_another_municipality_is_not_for_us(setup, municipality, intake, pi_trust):
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml, to="0344")
    outcome = await refused(intake, municipality, by_mail(data, mail_id), "not-for-us", pi_trust, with_mic=False)
    assert outcome.message_id is None


async def test_a_signer_that_is_not_the_claimed_sender_is_refused(setup, municipality, intake, pi_trust):
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml, by="PI-HAAGLANDEN", sender=PI)  # From: PI-VUGHT, signed by another
    outcome = await refused(intake, municipality, by_mail(data, mail_id), "wrong-sender", pi_trust, with_mic=False)
    assert "wrong-sender" in outcome.reason


async def test_an_unknown_sender_is_refused_before_anything_is_opened(setup, municipality, intake, pi_trust):
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml)
    outcome = await refused(intake, municipality, by_mail(data, mail_id, sender="someone@example.org"),
                            "wrong-sender", pi_trust, with_mic=False)
    assert "not a known partner" in outcome.reason


async def test_a_tampered_body_is_refused(setup, municipality, intake, pi_trust):
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = body.split(b"\r\n")
    middle = len(lines) // 2
    lines[middle] = lines[middle][:10] + (b"A" if lines[middle][10:11] != b"A" else b"B") + lines[middle][11:]
    tampered = head + b"\r\n\r\n" + b"\r\n".join(lines)
    outcome = await intake.receive(by_mail(tampered, mail_id))
    assert not outcome.accepted
    assert outcome.reason_code in ("decryption-failed", "malformed", "content-altered", "signature-invalid")
    assert files(municipality.folders.inbox) == []
    assert len(list(municipality.folders.quarantine.glob("*.p7m"))) == 1
    assert receipt_of(outcome, pi_trust).reason_code == outcome.reason_code


async def test_invalid_xml_is_refused_without_quoting_it(setup, municipality, intake, pi_trust):
    xml = (EXAMPLES / "invalid" / "bsn-faalt-elfproef.xml").read_bytes()
    assert BSN_IN_INVALID_EXAMPLE.encode() in xml
    _, data, mail_id = sealed_mail(setup, xml)
    with structlog.testing.capture_logs() as logs:
        outcome = await refused(intake, municipality, by_mail(data, mail_id), "schema-invalid", pi_trust,
                                with_mic=True)
    assert outcome.message_id is None  # an invalid message's id is not trusted as its key
    assert "burgerservicenummer" in outcome.reason
    everything = repr(logs) + outcome.reason + "".join(
        p.read_text() for p in municipality.folders.quarantine.glob("*.json"))
    assert BSN_IN_INVALID_EXAMPLE not in everything and "Oosterwijk" not in everything


async def test_content_for_another_recipient_is_not_entitled(setup, municipality, intake, pi_trust):
    xml, mid = with_new_id(example("04-overdrachtsdocument.xml"))  # goes to 0344, sealed to 0599 by mistake
    _, data, mail_id = sealed_mail(setup, xml)
    outcome = await refused(intake, municipality, by_mail(data, mail_id), "not-entitled", pi_trust, with_mic=True)
    assert outcome.message_id == mid and "gemeente:0344" in outcome.reason


async def test_content_naming_another_sender_is_refused(setup, municipality, intake, pi_trust):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    as_haaglanden = xml.replace(b"PI-VUGHT", b"PI-HAAGLANDEN").replace(b"PI Vught", b"PI Haaglanden")
    _, data, mail_id = sealed_mail(setup, as_haaglanden)  # signed and sent by PI-VUGHT
    outcome = await refused(intake, municipality, by_mail(data, mail_id), "wrong-sender", pi_trust, with_mic=True)
    assert "pi:PI-HAAGLANDEN" in outcome.reason


async def test_a_refusal_is_not_final(setup, municipality, rstore, validation, pi_trust):
    """Refused while the partner had no route; after the route is added the same mail is accepted."""
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml)
    without = make_intake(municipality, rstore, validation, partners={})
    first = await without.receive(by_mail(data, mail_id))
    assert (first.accepted, first.reason_code) == (False, "wrong-sender")
    second = await make_intake(municipality, rstore, validation).receive(by_mail(data, mail_id))
    assert (second.accepted, second.duplicate) == (True, False)
    assert (await rstore.find_inbound_by_transport("email", mail_id)).outcome == "accepted"


async def test_an_as2_arrival_is_recognised_by_its_as2_name(setup, municipality, rstore, validation, pi_trust):
    partners = {"pi:PI-VUGHT": Partner("pi:PI-VUGHT", as2_id="PI-VUGHT-AS2",
                                       certificate=PartyBinding(subject_serial="PI-VUGHT"))}
    intake = make_intake(municipality, rstore, validation, partners=partners, own_names={"as2": "GEMEENTE-0599"})
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed = seal(xml, identity(setup, "PI-VUGHT"), certificate(setup, "0599"), STRONG)
    arrival = Arrival(entity=sealed.entity, transport="as2", transport_message_id="<as2-1@pi-vught>",
                      claimed_sender="PI-VUGHT-AS2", reply_to=None)
    outcome = await intake.receive(arrival)
    assert outcome.accepted and outcome.message_id == mid
    receipt = parse_mdn(outcome.mdn.entity, pi_trust, expected_signer=PartyBinding(subject_serial="0599"))
    assert receipt.final_recipient == "GEMEENTE-0599"
    assert check_receipt(receipt, message_id="<as2-1@pi-vught>", sealed_mic=sealed.mic).ok
    # the same name by mail is no one: the mail route knows PI-VUGHT by address only
    assert intake.partner_for("email", "PI-VUGHT-AS2") is None and intake.partner_for("as2", "pi-vught-as2") is None


class CrashBeforeRecord:
    """The store, but the process 'dies' when the inbound row is to be written (after the inbox file)."""

    def __init__(self, store: Store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def record_inbound(self, **kwargs):
        raise SystemExit("simulated crash between the inbox file and its row")


async def test_a_crash_between_file_and_row_never_gives_a_second_file(setup, municipality, rstore, validation,
                                                                      pi_trust):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    crashing = make_intake(municipality, CrashBeforeRecord(rstore), validation)
    with pytest.raises(SystemExit):
        await crashing.receive(by_mail(data, mail_id))
    xml_path = municipality.folders.inbox / "meldingsbericht" / f"{mid}.xml"
    before = os.stat(xml_path)
    assert await rstore.find_inbound(mid) is None

    # the mail is offered again (it was never moved): the file is found, recorded, not written again
    again = await make_intake(municipality, rstore, validation).receive(by_mail(data, mail_id))
    assert (again.accepted, again.duplicate) == (True, False)
    assert check_receipt(receipt_of(again, pi_trust), message_id=mail_id, sealed_mic=sealed.mic).ok
    after = os.stat(xml_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files(municipality.folders.inbox) == [f"meldingsbericht/{mid}.json", f"meldingsbericht/{mid}.xml"]


async def test_reconcile_records_what_a_crash_left_and_removes_half_writes(setup, municipality, rstore, validation,
                                                                           pi_trust):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    with pytest.raises(SystemExit):
        await make_intake(municipality, CrashBeforeRecord(rstore), validation).receive(by_mail(data, mail_id))
    folder = municipality.folders.inbox / "meldingsbericht"
    (folder / ".half.xml.0123456789abcdef.tmp").write_bytes(b"<half")  # a write cut short
    orphan_id = "0b0b0b0b-0000-4000-8000-000000000000"
    (folder / f"{orphan_id}.json").write_text("{}")  # its .xml never came

    restarted = make_intake(municipality, rstore, validation)
    assert await restarted.reconcile() == 1
    assert files(municipality.folders.inbox) == [f"meldingsbericht/{mid}.json", f"meldingsbericht/{mid}.xml"]
    row = await rstore.find_inbound(mid)
    assert row.outcome == "accepted" and row.mic == sealed.mic
    assert [r["actor"] for r in await rstore.audit_rows(object=mid)] == ["reconcile"]
    assert await restarted.reconcile() == 0  # idempotent

    again = await restarted.receive(by_mail(data, mail_id))
    assert (again.accepted, again.duplicate) == (True, True) and again.mdn.entity == row.receipt
    assert check_receipt(receipt_of(again, pi_trust), message_id=mail_id, sealed_mic=sealed.mic).ok


def test_partners_come_from_the_route_table(municipality, setup):
    partners = partners_from_routes(municipality.routes)
    assert partners["pi:PI-VUGHT"] == Partner("pi:PI-VUGHT", email=PI)
    assert partners["pi:PI-VUGHT"].binding == PartyBinding(email=PI)
    assert partners["gemeente:0344"].email == "nazorg@gemeente-0344.example.nl"
    assert "gemeente:0599" not in partners  # the own party has no route
    platform = type(municipality.routes["PI-VUGHT"])(
        party="PI-HAAGLANDEN", transport="platform", address="https://as2.example.nl/as2",
        certificate=setup / "keys" / "parties" / "PI-HAAGLANDEN" / "cert.pem", profile=STRONG, as2_id="PIHGL")
    got = partners_from_routes({"PI-HAAGLANDEN": platform})["pi:PI-HAAGLANDEN"]
    assert got == Partner("pi:PI-HAAGLANDEN", as2_id="PIHGL", certificate=PartyBinding(subject_serial="PI-HAAGLANDEN"))


def test_inbox_writer_is_the_configured_folder(intake, municipality):
    assert isinstance(intake.inbox, InboxWriter) and intake.inbox.root == municipality.folders.inbox
