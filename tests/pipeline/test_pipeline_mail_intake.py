"""The e-mail intake: mails sorted, sealed ones through the intake, the signed receipt sent back by SMTP
through a real Postfix (STARTTLS, AUTH) into the PI's Dovecot mailbox; the mails handed in are what IMAP
would fetch (CRLF). The whole way with IMAP and the PI's daemon: tests/e2e/test_e2e_mail_intake.py."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
from gateway.store import Filed, NewMessage, NewReceipt, ReceiptFiling, State
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


async def outbound(store, state: State, spool: Path, mic: str = "bWlj") -> str:
    """A message of 0599's own, sealed and taken to `state` (sent and beyond: a plaintext copy in `spool`)."""
    mid = str(uuid.uuid4())
    (spool / f"{mid}.xml").write_bytes(b"<x/>")
    await store.accept(NewMessage(message_id=mid, type="meldingsbericht", version="1.0", sender="gemeente:0599",
                                  recipient="pi:PI-VUGHT", dossier="D-1", replies_to=None, supersedes=None, priority=0,
                                  created_at=datetime.now(timezone.utc), file_name=f"{mid}.xml", size=4,
                                  sha256=hashlib.sha256(mid.encode()).hexdigest(), spool_path=str(spool / f"{mid}.xml")))
    await store.save_sealed(mid, b"sealed", mic, transport="email", address=PI, profile="compatible")
    path = {State.QUEUED: [], State.SENDING: [State.SENDING], State.SENT: [State.SENDING, State.SENT],
            State.DELIVERED: [State.SENDING, State.SENT, State.DELIVERED],
            State.FAILED: [State.SENDING, State.FAILED]}[state]
    for step in path:
        extra = {"lease_owner": "w", "lease_until": datetime.now(timezone.utc) + timedelta(minutes=5)} \
            if step is State.SENDING else {}
        await store.transition(mid, step, reason="test", actor="test", **extra)
    return mid


def dsn_mail(uid: int, envid: str, action: str = "delivered") -> FetchedMail:
    """A DSN as Postfix writes one (multipart/report, delivery-status), for `envid`."""
    status = {"delivered": "2.0.0", "failed": "5.1.1", "delayed": "4.4.1"}[action]
    return FetchedMail(uid, (
        f"From: MAILER-DAEMON@relay\r\nTo: {GEMEENTE}\r\nMessage-ID: <dsn-{uid}@relay>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
        f"--b\r\nContent-Type: text/plain\r\n\r\n{action}\r\n"
        f"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay\r\n"
        f"Original-Envelope-Id: {envid}\r\n\r\nFinal-Recipient: rfc822; {PI}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n--b--\r\n").encode())


async def test_a_batch_of_delivery_reports_is_filed_with_one_store_write(mail_intake, rstore, tmp_path):
    """The watcher's batch (`handle_many`): each run of consecutive DSNs is one read and one write transaction of
    the store (filed one by one they were two writes each, each waiting for its group commit: 4-12 reports filed a
    second while the daemon sent 35), with the guarantees of one by one: a report that overtook `sent` stays in
    the mailbox, an unmatched one is unrecognised, a second report of a message changes nothing, a report the
    message has moved past keeps its receipt and moves nothing (also a failure after `delivered`, an edge the store
does not have: one by one it raised, and the mail was offered again forever); in UID order (a mail of another kind between two
    runs is handled between them)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    sent = [await outbound(rstore, State.SENT, spool) for _ in range(5)]
    early = await outbound(rstore, State.SENDING, spool)
    was_failed = await outbound(rstore, State.FAILED, spool)
    was_delivered = await outbound(rstore, State.DELIVERED, spool)
    plain = FetchedMail(30, b"From: <x@example.org>\r\nSubject: hallo\r\nContent-Type: text/plain\r\n\r\nhallo\r\n")
    mails = [dsn_mail(10, sent[0]), dsn_mail(11, sent[1]), dsn_mail(12, sent[0]), dsn_mail(13, early),
             dsn_mail(14, str(uuid.uuid4())), dsn_mail(15, was_failed), dsn_mail(16, was_delivered, "failed"),
             plain, dsn_mail(31, sent[2], "failed"), dsn_mail(32, sent[3], "delayed"), dsn_mail(33, sent[4])]
    writes = []
    write = rstore._run.write

    async def counted(fn, *args):
        writes.append(fn)
        return await write(fn, *args)

    rstore._run.write = counted
    try:
        outcomes = await mail_intake.handle_many(mails)
    finally:
        del rstore._run.write
    assert outcomes == [DONE, DONE, DONE, None, UNKNOWN, DONE, DONE, UNKNOWN, DONE, DONE, DONE]
    assert len(writes) == 2, "one write per run of reports"
    state = {mid: r.state for mid, r in (await rstore.records_of([*sent, early, was_failed, was_delivered])).items()}
    assert [state[mid] for mid in sent] == [State.DELIVERED, State.DELIVERED, State.FAILED, State.SENT,
                                            State.DELIVERED]
    assert (state[early], state[was_failed], state[was_delivered]) == (State.SENDING, State.FAILED, State.DELIVERED)
    # delivery proven: the plaintext copy is gone, its path cleared; not where nothing was proven
    assert sorted(p.name for p in spool.iterdir()) == sorted(f"{m}.xml" for m in (sent[2], sent[3], early, was_failed,
                                                                                   was_delivered))
    assert (await rstore.get(sent[0])).spool_path is None and (await rstore.get(sent[3])).spool_path
    assert [r.verdict for r in await rstore.receipts(sent[0])] == ["delivered", "delivered"]
    assert [t.to_state for t in await rstore.timeline(sent[0])][-1:] == [State.DELIVERED]
    assert sum(t.to_state is State.DELIVERED for t in await rstore.timeline(sent[0])) == 1
    assert [r.verdict for r in await rstore.receipts(was_failed)] == ["delivered"]  # kept, moved nothing
    assert [r.verdict for r in await rstore.receipts(was_delivered)] == ["failed"]
    assert await rstore.receipts(early) == [] and [r.verdict for r in await rstore.receipts(sent[3])] == ["delayed"]
    assert await rstore.file_receipts([ReceiptFiling("no-such-id", NewReceipt("dsn", "delivered", "2.0.0"),
                                                     State.DELIVERED, (State.SENT,))]) == [Filed("unknown")]


async def receipt_adds(store, mid: str) -> int:
    return sum(r["action"] == "receipt.add" for r in await store.audit_rows(1000, object=mid))


async def counted_receipts(store, name: str) -> float:
    """The trigger-kept /metrics counter of receipts of one kind and verdict."""
    def tx(conn):
        return conn.exec_driver_sql("SELECT value FROM event_counts WHERE name = ?", (name,)).scalar() or 0
    return await store.read_query(tx)


async def test_a_report_read_again_after_a_crash_before_its_move_is_filed_once(setup, mail_intake, rstore,
                                                                                tmp_path):
    """The watcher files a batch, then moves its mails: a crash in between offers the same mails again at the
    next start. The receipt's carrier (the mail's Message-ID; without one, the SHA-256 of its bytes) is unique
    per message and kind, so the second reading adds no receipt row, no audit row and no count; the state
    changed once. A signed MDN by mail read again likewise (the carrier of the receipt mail)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    mid, bare_mid = [await outbound(rstore, State.SENT, spool) for _ in range(2)]
    bare = dsn_mail(51, bare_mid)
    bare = FetchedMail(52, bare.data.replace(b"Message-ID: <dsn-51@relay>\r\n", b""))
    assert b"Message-ID" not in bare.data
    before = await counted_receipts(rstore, "receipt:dsn:delivered")
    assert await mail_intake.handle_many([dsn_mail(50, mid), bare]) == [DONE, DONE]
    assert await mail_intake.handle_many([dsn_mail(50, mid), bare]) == [DONE, DONE]  # the crash: read again
    for m in (mid, bare_mid):
        assert [(r.verdict, r.kind) for r in await rstore.receipts(m)] == [("delivered", "dsn")]
        assert await receipt_adds(rstore, m) == 1
        assert [t.to_state for t in await rstore.timeline(m)].count(State.DELIVERED) == 1
        assert (await rstore.get(m)).state is State.DELIVERED
    assert [r.source for r in await rstore.receipts(mid)] == ["<dsn-50@relay>"]
    assert [r.source for r in await rstore.receipts(bare_mid)] == ["sha256:" + hashlib.sha256(bare.data).hexdigest()]
    assert await counted_receipts(rstore, "receipt:dsn:delivered") == before + 2

    # a signed MDN by mail, as the PI's gateway sends one, its MIC what was sealed
    mic = base64.b64encode(hashlib.sha256(b"sealed").digest()).decode()
    acked = await outbound(rstore, State.DELIVERED, spool, mic)
    mdn = build_mdn(original_message_id=f"<{acked}@gemeente-0599.example.nl>", original_recipient=PI,
                    final_recipient=PI, disposition=Disposition.PROCESSED, reason_code=None, mic=mic,
                    signer=identity(setup, "PI-VUGHT"))
    mail = compose_receipt(mdn=mdn, from_address=PI, to_address=GEMEENTE, message_id=None,
                           date=datetime.now(timezone.utc), id_domain="pi-vught.example.nl")
    assert await mail_intake.handle(FetchedMail(53, mail.data)) == DONE
    assert await mail_intake.handle(FetchedMail(53, mail.data)) == DONE
    assert [(r.kind, r.verdict, r.source) for r in await rstore.receipts(acked)] == [
        ("mdn", ReceiptVerdict.MATCH.value, mail.mail_message_id)]
    assert await receipt_adds(rstore, acked) == 1
    assert [t.to_state for t in await rstore.timeline(acked)].count(State.ACKNOWLEDGED) == 1


async def test_two_reports_with_the_same_words_are_two_receipts(mail_intake, rstore, tmp_path):
    """Postfix sends a "delayed" report each time a message has waited long enough: two mails with the same
    text, hours apart, are two events, told apart by their Message-IDs (not deduplicated by content)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    mid = await outbound(rstore, State.SENT, spool)
    first, second = dsn_mail(60, mid, "delayed"), dsn_mail(61, mid, "delayed")
    assert first.data.replace(b"dsn-60", b"dsn-61") == second.data
    assert await mail_intake.handle_many([first]) == [DONE]
    assert await mail_intake.handle_many([second, first]) == [DONE, DONE]  # the first read again beside it
    assert [(r.verdict, r.detail, r.source) for r in await rstore.receipts(mid)] == [
        ("delayed", "4.4.1", "<dsn-60@relay>"), ("delayed", "4.4.1", "<dsn-61@relay>")]
    assert await receipt_adds(rstore, mid) == 2
    assert (await rstore.get(mid)).state is State.SENT


async def test_looking_up_batches_of_any_length_keeps_the_reader_connections_small(tmp_path):
    """The matcher looks up a batch's messages in one IN list as long as the batch (1 to 64 reports). SQLite
    prepares, and the driver keeps (128 per connection), one statement per text: unpadded, the 64 lengths grew
    SQLite's memory by 1.7 MB (on the store's two reader connections, 3.4 MB in time); padded to a power of two,
    7 texts: 0.4 MB."""
    import ctypes

    from gateway.store import Store

    sqlite = ctypes.CDLL("libsqlite3.so.0")  # the library the sqlite3 module links
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    try:
        ids = [await outbound(store, State.SENT, tmp_path) for _ in range(3)] + [str(uuid.uuid4()) for _ in range(61)]
        await store.records_of(ids[:1])
        before = sqlite.sqlite3_memory_used()
        for n in range(1, 65):
            assert set(await store.records_of(ids[:n])) == set(ids[:min(n, 3)])
        grown = sqlite.sqlite3_memory_used() - before
    finally:
        await store.close()
    assert grown < 1_000_000, f"SQLite's memory grew {grown} bytes over 64 lengths of IN list"
