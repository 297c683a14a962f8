"""The e-mail route end to end: outbox → Postfix (STARTTLS, AUTH, real DSNs) → Dovecot mailboxes → receipts
read back over IMAP. Nothing here is mocked: the servers are private Postfix and Dovecot instances."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import sys
from pathlib import Path

import pytest

from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import drop, identity, make_setup, open_config, running, wait_for_states
from gateway.crypto.open import open_sealed
from gateway.crypto.receipts import Disposition, build_mdn
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.store import State, Store

PI = "nazorg@pi-vught.example.nl"


@pytest.fixture(scope="module")
def template(tmp_path_factory, shared_mail_servers, mail_users):
    """One `init` per module, pointed at the module's servers; tests copy it."""
    return make_setup(tmp_path_factory.mktemp("tpl") / "gw", shared_mail_servers, mail_users).parent


def municipality(recipient: str) -> str:
    return recipient.split(":")[1]


def address_of(code: str) -> str:
    return f"nazorg@gemeente-{code}.example.nl"


async def test_batch_of_every_type_is_delivered_opened_and_acknowledged(tmp_path, template, shared_mail_servers,
                                                                        mail_users):
    servers = shared_mail_servers
    config_path = make_setup(tmp_path / "gw", servers, mail_users, template=template)
    cfg = open_config(config_path)
    dropped = {}
    for name, recipient in OWN_EXAMPLES.items():
        data, mid = with_new_id(example(name))
        dropped[mid] = (recipient, data)
    before = {code: len(servers.messages(address_of(code), folder=None))
              for code in {municipality(r) for r, _ in dropped.values()}}

    async with running(cfg) as gateway:
        for mid, (_, data) in dropped.items():
            drop(cfg.folders.outbox, f"{mid}.xml", data)
        store = gateway.store
        # Postfix's success DSNs come back to the PI's mailbox and are matched by ENVID
        await wait_for_states(store, dropped, [State.DELIVERED, State.ACKNOWLEDGED], timeout=60)

        trust = TrustStore.from_bundle(template / "keys" / "trust.pem", [template / "keys" / "ca" / "issuing.crl.pem"])
        mails_by_id = {}
        for code in before:
            for raw in servers.messages(address_of(code), folder=None)[before[code]:]:
                mail = email.message_from_bytes(raw, policy=email.policy.compat32)
                mid = mail["X-Nazorg-Message-Id"]
                if mid in dropped:
                    mails_by_id[mid] = (code, raw, mail)
        assert sorted(mails_by_id) == sorted(dropped), "every message in exactly its recipient's mailbox"
        for mid, (code, raw, mail) in mails_by_id.items():
            recipient, data = dropped[mid]
            assert code == municipality(recipient)
            # no personal data in headers: type and id only
            assert mail["Subject"] == f"nazorg {(await store.get(mid)).type} {mid}"
            assert mail["Message-ID"] == f"<{mid}@pi-vught.example.nl>"
            assert mail["Disposition-Notification-To"] and "signed-receipt-micalg" in mail["Disposition-Notification-Options"]
            assert mail.get_content_type() == "application/pkcs7-mime"
            opened = open_sealed(raw, identity(template, code), trust, expected_sender=PartyBinding(email=PI))
            assert opened.xml == data
            # the municipality answers with a signed receipt over the MIC it computed
            mdn = build_mdn(original_message_id=mail["Message-ID"], original_recipient=address_of(code),
                            final_recipient=address_of(code), disposition=Disposition.PROCESSED, reason_code=None,
                            mic=opened.mic, signer=identity(template, code))
            servers.deliver(address_of(code), PI, _as_mail(mdn.entity, address_of(code), PI, mid))
        states = await wait_for_states(store, dropped, [State.ACKNOWLEDGED], timeout=60)
        assert set(states.values()) == {State.ACKNOWLEDGED}
        for mid in dropped:
            path = [t.to_state for t in await store.timeline(mid)]
            assert path == [State.RECEIVED, State.QUEUED, State.SENDING, State.SENT, State.DELIVERED,
                            State.ACKNOWLEDGED], (mid, path)
            kinds = {(r.kind, r.verdict) for r in await store.receipts(mid)}
            assert ("dsn", "delivered") in kinds and ("mdn", "match") in kinds
        # delivery proven: no plaintext copy is kept; the sealed entity (encrypted) is
        assert list(cfg.folders.spool.iterdir()) == []
        assert all([(await store.sealed(mid)) for mid in dropped])
    # receipts are filed, never deleted
    assert len(servers.messages(PI, folder="nazorg/verwerkt")) >= 2 * len(dropped)


async def test_a_message_s_own_names_are_never_interned(tmp_path, template, shared_mail_servers, mail_users,
                                                       monkeypatch):
    """pathlib interns every part of a path it builds; a name per message (the outbox file, the spool copy)
    churned CPython's table of interned strings until it resized, which doubled it once at ~29,000
    messages: a step of ~4.5 MB in the soak. From pick-up to the removal of the spool copy on delivery,
    no string holding a message's id is interned."""
    interned: list[str] = []
    real_intern = sys.intern

    def recording(s: str) -> str:
        interned.append(s)
        return real_intern(s)

    monkeypatch.setattr(sys, "intern", recording)
    Path("/probe") / "pathlib-interns-this.xml"  # the control: this Python's pathlib interns through sys.intern
    assert "pathlib-interns-this.xml" in interned, "pathlib no longer interns: this test can no longer fail"
    cfg = open_config(make_setup(tmp_path / "gw", shared_mail_servers, mail_users, template=template))
    dropped = [with_new_id(example(name))[::-1] for name in OWN_EXAMPLES]
    outbox = os.fspath(cfg.folders.outbox)
    async with running(cfg) as gateway:
        for mid, data in dropped:  # as `drop` does, without building Paths here
            tmp = os.path.join(outbox, f"{mid}.xml.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.rename(tmp, os.path.join(outbox, f"{mid}.xml"))
        await wait_for_states(gateway.store, [mid for mid, _ in dropped], [State.DELIVERED, State.ACKNOWLEDGED])
        assert list(cfg.folders.spool.iterdir()) == []  # the spool copies were removed on delivery
    ids = [mid for mid, _ in dropped]
    assert [s for s in interned if any(mid in s for mid in ids)] == []


def _as_mail(entity: bytes, sender: str, to: str, mid: str) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: receipt {mid}\r\n"
            f"Message-ID: <mdn-{mid}@example.nl>\r\nMIME-Version: 1.0\r\n").encode()
    return head + entity


async def test_wrong_mic_is_an_integrity_alert_not_an_acknowledgement(tmp_path, template, shared_mail_servers,
                                                                       mail_users):
    servers = shared_mail_servers
    cfg = open_config(make_setup(tmp_path / "gw", servers, mail_users, template=template))
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [State.DELIVERED])
        wrong = build_mdn(original_message_id=f"<{mid}@pi-vught.example.nl>", original_recipient=address_of("0599"),
                          final_recipient=address_of("0599"), disposition=Disposition.PROCESSED, reason_code=None,
                          mic="A" * 43 + "=", signer=identity(template, "0599"))
        servers.deliver(address_of("0599"), PI, _as_mail(wrong.entity, address_of("0599"), PI, mid))
        for _ in range(100):
            receipts = await gateway.store.receipts(mid)
            if any(r.kind == "mdn" for r in receipts):
                break
            await asyncio.sleep(0.1)
        assert ("mdn", "mismatch") in {(r.kind, r.verdict) for r in receipts}
        assert (await gateway.store.get(mid)).state is State.DELIVERED
        # a mail client's read receipt (unsigned) is recorded and proves nothing
        servers.deliver(address_of("0599"), PI, _unsigned_mdn(mid))
        for _ in range(100):
            receipts = await gateway.store.receipts(mid)
            if any(r.kind == "unsigned-mdn" for r in receipts):
                break
            await asyncio.sleep(0.1)
        assert "unsigned-mdn" in {r.kind for r in receipts}
        assert (await gateway.store.get(mid)).state is State.DELIVERED


def _unsigned_mdn(mid: str) -> bytes:
    return (f"From: <nazorg@gemeente-0599.example.nl>\r\nTo: <{PI}>\r\nSubject: Gelezen: nazorg\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=disposition-notification; "
            f'boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nUw bericht is gelezen.\r\n'
            f"--b1\r\nContent-Type: message/disposition-notification\r\n\r\n"
            f"Reporting-UA: Mail client\r\nFinal-Recipient: rfc822; nazorg@gemeente-0599.example.nl\r\n"
            f"Original-Message-ID: <{mid}@pi-vught.example.nl>\r\n"
            f"Disposition: manual-action/MDN-sent-manually; displayed\r\n--b1--\r\n").encode()


async def test_recipient_refused_with_550_fails_with_the_reason(tmp_path, template, mail_servers, mail_users):
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users))
    mail_servers.refuse(address_of("0599"), "550 5.7.1 Gemeente accepteert geen post van deze afzender")
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [State.FAILED])
        record = await gateway.store.get(mid)
        assert "550" in record.reason and "5.7.1" in record.reason and record.attempts == 1


async def test_unknown_mailbox_bounces_with_a_real_dsn_and_fails(tmp_path, template, mail_servers, mail_users):
    """Postfix accepts at RCPT (250 → sent), then its LMTP delivery fails: the bounce DSN → failed."""
    edits = {'address = "nazorg@gemeente-0599.example.nl"': 'address = "bestaat-niet@gemeente-0599.example.nl"'}
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, edits=edits))
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [State.FAILED])
        path = [t.to_state for t in await gateway.store.timeline(mid)]
        assert State.SENT in path and path[-1] is State.FAILED
        assert "5.1.1" in (await gateway.store.get(mid)).reason


async def test_451_is_retried_and_delivered_when_lifted(tmp_path, mail_servers, mail_users):
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users))
    mail_servers.refuse(address_of("0344"), "451 4.3.0 Tijdelijk niet beschikbaar")
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [State.RETRY_WAIT])
        assert "451" in (await gateway.store.get(mid)).reason
        mail_servers.lift(address_of("0344"))
        await wait_for_states(gateway.store, [mid], [State.DELIVERED])
        record = await gateway.store.get(mid)
        assert record.attempts >= 2
    copies = [m for m in mail_servers.messages(address_of("0344")) if mid.encode() in m]
    assert len(copies) == 1


async def test_relay_down_then_back(tmp_path, mail_servers, mail_users):
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users))
    mail_servers.stop_smtp()
    ids = []
    async with running(cfg) as gateway:
        for name in ("01-meldingsbericht.xml", "05-ontslagbericht.xml"):
            data, mid = with_new_id(example(name))
            ids.append(mid)
            drop(cfg.folders.outbox, name, data)
        await wait_for_states(gateway.store, ids, [State.RETRY_WAIT])
        await asyncio.sleep(2.5)  # the relay's breaker is open: a probe or two against it, one message each
        assert any(r.attempts >= 2 for r in [await gateway.store.get(m) for m in ids])
        mail_servers.start_smtp()
        await wait_for_states(gateway.store, ids, [State.DELIVERED])


async def test_relay_without_starttls_gets_nothing(tmp_path, template, mail_servers, mail_users, plain_smtp_peer):
    cfg = open_config(make_setup(tmp_path / "gw", mail_servers, mail_users, smtp_port=plain_smtp_peer.port))
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "a.xml", data)
        await wait_for_states(gateway.store, [mid], [State.HELD])
        assert "STARTTLS" in (await gateway.store.get(mid)).reason
    assert plain_smtp_peer.verbs and "MAIL" not in plain_smtp_peer.verbs and "DATA" not in plain_smtp_peer.verbs
    assert plain_smtp_peer.mails == []


async def test_a_municipality_sends_its_gemeenteblad_to_the_pi_of_the_dossier(tmp_path, shared_mail_servers,
                                                                              mail_users):
    """The other direction: a municipality's gateway (0599) answers the PI with a gemeenteblad; the PI
    named in the content is the only possible recipient."""
    servers = shared_mail_servers
    cfg = open_config(make_setup(tmp_path / "gw", servers, mail_users, party="0599"))
    data, mid = with_new_id(example("02-gemeenteblad.xml"))
    before = len(servers.messages(PI, folder=None))
    async with running(cfg) as gateway:
        drop(cfg.folders.outbox, "blad.xml", data)
        await wait_for_states(gateway.store, [mid], [State.DELIVERED])
        assert (await gateway.store.get(mid)).recipient == "pi:PI-VUGHT"
    got = [m for m in servers.messages(PI, folder=None)[before:] if mid.encode() in m and b"pkcs7-mime" in m]
    assert len(got) == 1
    trust = TrustStore.from_bundle(tmp_path / "gw" / "keys" / "trust.pem",
                                   [tmp_path / "gw" / "keys" / "ca" / "issuing.crl.pem"])
    opened = open_sealed(got[0], identity(tmp_path / "gw", "PI-VUGHT"), trust,
                         expected_sender=PartyBinding(email=address_of("0599")))
    assert opened.xml == data
