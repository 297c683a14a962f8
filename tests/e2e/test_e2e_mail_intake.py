"""Both sides over real mail servers: the PI's daemon seals and sends to 0599 (Postfix → Dovecot); 0599's
mail intake reads its mailbox with `watch_mailbox` (IMAP, IDLE), puts the message in its inbox and sends the
signed receipt back; the PI's receipt matcher finds it: acknowledged. Both set-ups share one development PKI
(0599's is the PI's `init` turned into 0599's)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest

from adapters.imap import MailboxSettings, watch_mailbox
from adapters.smtp import RelaySettings, SmtpSender, compose_mail
from dropped import example, with_new_id
from e2e_gateway import drop, identity, make_setup, open_config, running, wait_for_states
from gateway.crypto.profiles import COMPATIBLE
from gateway.crypto.receipts import check_receipt, parse_mdn
from gateway.crypto.seal import seal
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.pipeline.intake import intake_from_config
from gateway.pipeline.mail_intake import MailIntake
from gateway.pipeline.receipt_matcher import ReceiptMatcher
from gateway.pipeline.validation import ValidationPool
from gateway.store import State, Store

PI = "nazorg@pi-vught.example.nl"
GEMEENTE = "nazorg@gemeente-0599.example.nl"
DONE, QUARANTINE, UNKNOWN = "nazorg/verwerkt", "nazorg/quarantaine", "nazorg/onbekend"


@pytest.fixture(scope="module")
def template(tmp_path_factory, shared_mail_servers, mail_users):
    return make_setup(tmp_path_factory.mktemp("tpl") / "gw", shared_mail_servers, mail_users).parent


def as_0599(template, folder):
    """The PI's set-up (same PKI) as 0599's: own party and identity, a route to PI-VUGHT instead of to 0599."""
    shutil.copytree(template, folder, symlinks=True)
    path = folder / "gateway.toml"
    text = path.read_text()
    text = re.sub(r'\[party\]\ncode = "PI-VUGHT"\nkind = "pi"\nemail = "[^"]*"\nname = "[^"]*"',
                  f'[party]\ncode = "0599"\nkind = "gemeente"\nemail = "{GEMEENTE}"\nname = "Gemeente Rotterdam"',
                  text)
    text = text.replace("keys/parties/PI-VUGHT/", "keys/parties/0599/")
    text, n = re.subn(r'\[routes\."0599"\][^\[]*', f'[routes."PI-VUGHT"]\ntransport = "email"\naddress = "{PI}"\n'
                      'certificate = "keys/parties/PI-VUGHT/cert.pem"\nprofile = "strong"\n', text)
    assert n == 1
    path.write_text(text)
    return open_config(path)


@asynccontextmanager
async def municipality_0599(cfg, servers, mail_users):
    """0599's receiving side: its store, validation, intake, receipt matcher and SMTP sender, watching its
    mailbox until the block ends."""
    secrets = cfg.check_secrets()
    store = await Store.open(cfg.store.url)
    validation = ValidationPool(institutions=cfg.registries.institutions, municipalities=None,
                                max_bytes=cfg.limits.max_message_bytes, workers=1)
    sender = SmtpSender(RelaySettings(host=servers.smtp_host, port=servers.smtp_port,
                                      ssl_context=servers.ssl_context(), username=GEMEENTE,
                                      password=mail_users[GEMEENTE], timeout=10))
    intake = intake_from_config(cfg, store=store, identity=secrets.identity, trust=secrets.trust,
                                validation=validation)
    await intake.reconcile()
    handler = MailIntake(intake=intake, smtp_sender=sender, own_email=GEMEENTE, processed_folder=DONE,
                         quarantine_folder=QUARANTINE, unrecognised_folder=UNKNOWN,
                         matcher=ReceiptMatcher(store=store, trust=secrets.trust, processed_folder=DONE,
                                                unrecognised_folder=UNKNOWN))
    mailbox = MailboxSettings(host=servers.imap_host, port=servers.imap_port, username=GEMEENTE,
                              password=mail_users[GEMEENTE], ssl_context=servers.ssl_context(), poll_interval=2.0)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_mailbox(mailbox, handler.handle, stop))
    try:
        yield store
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
        await sender.close()
        validation.close()
        await store.close()


async def until(predicate, timeout: float = 30.0):
    for _ in range(int(timeout / 0.1)):
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_a_message_from_the_pi_is_received_by_0599_and_acknowledged(tmp_path, template, shared_mail_servers,
                                                                          mail_users):
    servers = shared_mail_servers
    pi_cfg = open_config(make_setup(tmp_path / "pi", servers, mail_users, template=template))
    cfg = as_0599(template, tmp_path / "0599")
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(pi_cfg) as gateway, municipality_0599(cfg, servers, mail_users) as store:
        drop(pi_cfg.folders.outbox, f"{mid}.xml", xml)
        await wait_for_states(gateway.store, [mid], [State.ACKNOWLEDGED], timeout=60)
        record = await gateway.store.get(mid)
        assert (await store.find_inbound(mid)).outcome == "accepted"

    assert (cfg.folders.inbox / "meldingsbericht" / f"{mid}.xml").read_bytes() == xml
    meta = json.loads((cfg.folders.inbox / "meldingsbericht" / f"{mid}.json").read_text())
    assert meta["mic"] == record.mic and meta["transport_message_id"] == record.mail_message_id
    # the sealed mail was filed in 0599's mailbox, never deleted
    assert any(mid.encode() in m for m in servers.messages(GEMEENTE, folder=DONE))
    # the receipt as the PI's mailbox holds it: signed by 0599, processed, the MIC the PI sealed
    trust = TrustStore.from_bundle(template / "keys" / "trust.pem", [template / "keys" / "ca" / "issuing.crl.pem"])
    receipts = [m for m in servers.messages(PI, folder=DONE) if f"ontvangstbevestiging {mid}".encode() in m]
    assert len(receipts) == 1
    receipt = parse_mdn(receipts[0], trust, expected_signer=PartyBinding(email=GEMEENTE))
    assert check_receipt(receipt, message_id=record.mail_message_id, sealed_mic=record.mic).ok
    kinds = {(r.kind, r.verdict) for r in await _receipts(pi_cfg, mid)}
    assert ("mdn", "match") in kinds


async def _receipts(cfg, mid):
    async with await Store.open(cfg.store.url) as store:
        return await store.receipts(mid)


async def test_a_message_sealed_for_another_municipality_is_quarantined(tmp_path, template, shared_mail_servers,
                                                                        mail_users):
    servers = shared_mail_servers
    cfg = as_0599(template, tmp_path / "0599")
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed = seal(xml, identity(template, "PI-VUGHT"), identity(template, "0344").cert, COMPATIBLE)
    mail = compose_mail(sealed_entity=sealed.entity, message_id=mid, label="meldingsbericht",
                        from_address=PI, to_address=GEMEENTE, receipt_to=PI, date=datetime.now(timezone.utc),
                        id_domain="pi-vught.example.nl")
    before = len(servers.messages(PI, folder=None))
    servers.deliver(PI, GEMEENTE, mail.data)
    async with municipality_0599(cfg, servers, mail_users) as store:
        await until(lambda: _in(servers, GEMEENTE, QUARANTINE, mail.mail_message_id))
        row = await store.find_inbound_by_transport("email", mail.mail_message_id)
        assert (row.outcome, row.reason_code) == ("refused", "not-for-us")
    assert list(cfg.folders.inbox.rglob("*.xml")) == []
    assert len(list(cfg.folders.quarantine.glob("*.p7m"))) == 1
    # the PI learns it failed: a signed processed/error receipt (its daemon is not running: still in INBOX)
    got = await servers.wait_for_messages_async(PI, before + 1, folder=None)
    trust = TrustStore.from_bundle(template / "keys" / "trust.pem", [template / "keys" / "ca" / "issuing.crl.pem"])
    receipt = parse_mdn(got[-1], trust, expected_signer=PartyBinding(email=GEMEENTE))
    assert (receipt.disposition, receipt.reason_code) == ("processed/error", "not-for-us")
    assert receipt.original_message_id == mail.mail_message_id.strip("<>")


async def _in(servers, address, folder, mail_message_id) -> bool:
    return any(mail_message_id.encode() in m for m in servers.messages(address, folder=folder))
