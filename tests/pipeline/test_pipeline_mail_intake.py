"""The e-mail intake: mails sorted, sealed ones through the intake, the signed receipt sent back by SMTP
through a real Postfix (STARTTLS, AUTH) into the PI's Dovecot mailbox; the mails handed in are what IMAP
would fetch (CRLF). The whole way with IMAP and the PI's daemon: tests/e2e/test_e2e_mail_intake.py."""

from __future__ import annotations

import email
import email.policy
import hashlib
from datetime import datetime, timezone

import pytest
import structlog

from adapters.imap import FetchedMail
from adapters.smtp import RelaySettings, SmtpSender
from dropped import example, with_new_id
from gateway.crypto.pki import DEV_PARTIES
from gateway.crypto.receipts import Disposition, ReceiptVerdict, build_mdn, check_receipt, parse_mdn
from gateway.crypto.trust import PartyBinding
from gateway.pipeline.mail_intake import MailIntake, compose_receipt
from gateway.pipeline.receipt_matcher import ReceiptMatcher
from mailservers import MailServers
from test_pipeline_intake import (GEMEENTE, PI, identity, make_intake, municipality, pi_trust,  # noqa: F401
                                  rstore, sealed_mail)  # municipality, pi_trust, rstore: fixtures

PLATFORM = "as2@platform.example.nl"  # a mailbox, but no partner of 0599
DONE, QUARANTINE, UNKNOWN = "nazorg/verwerkt", "nazorg/quarantaine", "nazorg/onbekend"


@pytest.fixture(scope="module")
def servers():
    users = {p.email: "pw-" + p.code for p in DEV_PARTIES}
    with MailServers.temporary(users, sorted({a.split("@")[1] for a in users})) as s:
        yield s


@pytest.fixture
async def mail_intake(servers, municipality, rstore, validation):
    relay = RelaySettings(host=servers.smtp_host, port=servers.smtp_port, ssl_context=servers.ssl_context(),
                          username=GEMEENTE, password="pw-0599", timeout=10)
    sender = SmtpSender(relay)
    secrets = municipality.check_secrets()
    matcher = ReceiptMatcher(store=rstore, trust=secrets.trust, processed_folder=DONE, unrecognised_folder=UNKNOWN)
    handler = MailIntake(intake=make_intake(municipality, rstore, validation), matcher=matcher, smtp_sender=sender,
                         own_email=GEMEENTE, processed_folder=DONE, quarantine_folder=QUARANTINE,
                         unrecognised_folder=UNKNOWN)
    yield handler
    await sender.close()


def crlf(raw: bytes) -> bytes:
    """A mail as IMAP serves it (Dovecot's Maildir keeps LF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def next_mail(servers: MailServers, address: str, seen: int) -> bytes:
    return crlf((await servers.wait_for_messages_async(address, seen + 1))[seen])


async def test_a_sealed_mail_is_received_and_answered_with_a_signed_receipt(setup, servers, mail_intake, rstore,
                                                                           pi_trust, municipality):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    seen = len(servers.messages(PI))
    assert await mail_intake.handle(FetchedMail(1, data)) == DONE
    assert (municipality.folders.inbox / "meldingsbericht" / f"{mid}.xml").read_bytes() == xml

    raw = await next_mail(servers, PI, seen)
    head = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert head["From"] == GEMEENTE and head["To"] == PI
    assert head["Subject"] == f"nazorg ontvangstbevestiging {mid}"
    assert head["Auto-Submitted"] == "auto-replied" and head["Disposition-Notification-To"] is None
    assert head.get_content_type() == "multipart/signed"
    for personal in (b"Oosterwijk", b"999998225", b"1989-04-23"):
        assert personal not in raw
    receipt = parse_mdn(raw, pi_trust, expected_signer=PartyBinding(email=GEMEENTE))
    assert check_receipt(receipt, message_id=mail_id, sealed_mic=sealed.mic).verdict is ReceiptVerdict.MATCH

    # the same mail again (say the move to the folder was lost): the same receipt, the same Message-ID
    assert await mail_intake.handle(FetchedMail(1, data)) == DONE
    again = email.message_from_bytes(await next_mail(servers, PI, seen + 1), policy=email.policy.compat32)
    assert again["Message-ID"] == head["Message-ID"]
    assert (await rstore.find_inbound(mid)).receipt.split(b"\r\n\r\n", 1)[1] in crlf(raw)


async def test_a_refused_mail_goes_to_quarantine_and_its_sender_learns_why(setup, servers, mail_intake, pi_trust,
                                                                          municipality):
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml, to="0344")
    seen = len(servers.messages(PI))
    assert await mail_intake.handle(FetchedMail(2, data)) == QUARANTINE
    assert list(municipality.folders.inbox.rglob("*.xml")) == []
    receipt = parse_mdn(await next_mail(servers, PI, seen), pi_trust, expected_signer=PartyBinding(email=GEMEENTE))
    assert (receipt.disposition, receipt.reason_code) == ("processed/error", "not-for-us")
    assert check_receipt(receipt, message_id=mail_id, sealed_mic="A" * 43 + "=").verdict is \
        ReceiptVerdict.NOT_PROCESSED


async def test_receipts_go_to_partners_only(setup, servers, mail_intake):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    _, data, _ = sealed_mail(setup, xml)
    elsewhere = data.replace(f"Disposition-Notification-To: <{PI}>".encode(),
                             f"Disposition-Notification-To: <{PLATFORM}>".encode())
    assert elsewhere != data
    seen = len(servers.messages(PI))
    assert await mail_intake.handle(FetchedMail(3, elsewhere)) == DONE  # accepted, but no receipt goes there
    xml2, _ = with_new_id(example("03-basisdocument.xml"))
    _, data2, _ = sealed_mail(setup, xml2)
    assert await mail_intake.handle(FetchedMail(4, data2)) == DONE
    await next_mail(servers, PI, seen)  # the second one's receipt arrived ...
    assert servers.messages(PLATFORM, folder=None) == []  # ... and nothing went to the stranger
    no_ask = data.replace(f"Disposition-Notification-To: <{PI}>\r\n".encode(), b"")
    assert await mail_intake.handle(FetchedMail(3, no_ask)) == DONE  # (a duplicate now) nothing asked, none sent


async def test_a_relay_that_says_later_leaves_the_mail_for_the_next_round(setup, servers, mail_intake, rstore):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed, data, mail_id = sealed_mail(setup, xml)
    servers.refuse(PI, "451 4.3.0 try again later")
    try:
        assert await mail_intake.handle(FetchedMail(5, data)) is None
    finally:
        servers.lift(PI)
    await mail_intake.smtp.close()  # a running smtpd keeps the map it started with: a new session sees the lift
    assert (await rstore.find_inbound(mid)).outcome == "accepted"  # the outcome stands; the receipt waits
    seen = len(servers.messages(PI))
    assert await mail_intake.handle(FetchedMail(5, data)) == DONE
    raw = await next_mail(servers, PI, seen)
    assert (await rstore.find_inbound(mid)).receipt.split(b"\r\n\r\n", 1)[1] in raw


async def test_reports_go_to_the_receipt_matcher_and_the_rest_is_unrecognised(setup, servers, mail_intake):
    # Postfix's success DSN for one of our receipts (NOTIFY=SUCCESS) comes back to 0599's own mailbox
    seen = len(servers.messages(GEMEENTE))
    xml, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data, _ = sealed_mail(setup, xml)
    assert await mail_intake.handle(FetchedMail(6, data)) == DONE
    dsn = await next_mail(servers, GEMEENTE, seen)
    assert b"report-type=delivery-status" in dsn and b"nazorg-mdn-" in dsn
    assert await mail_intake.handle(FetchedMail(7, dsn)) == DONE

    # a DSN of something else, and a signed MDN for a message 0599 never sent: the matcher's verdict
    foreign_dsn = dsn.replace(b"nazorg-mdn-", b"other-envid-")
    assert await mail_intake.handle(FetchedMail(8, foreign_dsn)) == UNKNOWN
    xml2, _ = with_new_id(example("01-meldingsbericht.xml"))
    _, data2, _ = sealed_mail(setup, xml2)
    seen_pi = len(servers.messages(PI))
    assert await mail_intake.handle(FetchedMail(9, data2)) == DONE
    mdn_mail = await next_mail(servers, PI, seen_pi)  # a signed MDN, as 0599 would receive one
    assert await mail_intake.handle(FetchedMail(10, mdn_mail)) == UNKNOWN

    plain = b"From: <x@example.org>\r\nSubject: hallo\r\nContent-Type: text/plain\r\n\r\nhallo\r\n"
    assert await mail_intake.handle(FetchedMail(11, plain)) == UNKNOWN
    signed_only = b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n"
    assert await mail_intake.handle(FetchedMail(12, signed_only)) == UNKNOWN
    assert await mail_intake.handle(FetchedMail(13, b"no headers at all")) == UNKNOWN


def test_the_receipt_mail_names_no_content(setup):
    mdn = build_mdn(original_message_id="<a@b.nl>", original_recipient=GEMEENTE, final_recipient=GEMEENTE,
                    disposition=Disposition.PROCESSED, reason_code=None, mic=None, signer=identity(setup, "0599"))
    at = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)
    one = compose_receipt(mdn=mdn, from_address=GEMEENTE, to_address=PI, message_id="<a@b.nl>", date=at,
                          id_domain="gemeente-0599.example.nl")
    assert one.mail_message_id == f"<mdn-{hashlib.sha256(mdn.entity).hexdigest()[:32]}@gemeente-0599.example.nl>"
    assert b"Subject: nazorg ontvangstbevestiging a@b.nl\r\n" in one.data
    assert one.data.endswith(mdn.entity.split(b"\r\n\r\n", 1)[1])
    odd = compose_receipt(mdn=mdn, from_address=GEMEENTE, to_address=PI, message_id="Jan Jansen <x>", date=at,
                          id_domain="gemeente-0599.example.nl")
    assert b"Subject: nazorg ontvangstbevestiging\r\n" in odd.data and b"Jansen" not in odd.data
    with pytest.raises(ValueError):
        compose_receipt(mdn=mdn, from_address=GEMEENTE, to_address="a@b.nl\r\nBcc: c@d.nl", message_id=None,
                        date=at, id_domain="gemeente-0599.example.nl")


async def test_without_a_relay_or_a_message_id_the_message_is_still_received(setup, rstore, mail_intake):
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    _, data, mail_id = sealed_mail(setup, xml)
    no_relay = MailIntake(intake=mail_intake.intake, matcher=mail_intake.matcher, smtp_sender=None,
                          own_email=GEMEENTE, processed_folder=DONE, quarantine_folder=QUARANTINE,
                          unrecognised_folder=UNKNOWN)
    assert await no_relay.handle(FetchedMail(20, data)) == DONE
    assert (await rstore.find_inbound(mid)).outcome == "accepted"
    # a new message without a Message-ID: accepted, but a receipt could name nothing, so none is sent
    xml2, mid2 = with_new_id(example("03-basisdocument.xml"))
    _, data2, mail_id2 = sealed_mail(setup, xml2)
    anonymous = data2.replace(f"Message-ID: {mail_id2}\r\n".encode(), b"")
    assert anonymous != data2
    with structlog.testing.capture_logs() as logs:
        assert await mail_intake.handle(FetchedMail(21, anonymous)) == DONE
    assert "inbound.no_receipt" in {e["event"] for e in logs}
    assert "receipt-sent" not in {e["event"] for e in logs}
    row = await rstore.find_inbound(mid2)
    assert (row.outcome, row.transport_message_id, row.receipt) == ("accepted", None, None)
