"""The e-mail side of the receiving gateway: a handler for `adapters.imap.watch_mailbox`.

Each mail in the own mailbox is sorted by its top-level Content-Type:

- a sealed message (``application/(x-)pkcs7-mime``, smime-type enveloped-data,
  authEnveloped-data or none) → `Intake.receive` (From = the claimed sender,
  Message-ID = the transport message id, Disposition-Notification-To = where the
  receipt goes); the signed MDN goes back by SMTP; the mail is then filed in the
  processed folder (accepted, or a duplicate of an accepted one) or in the
  quarantine folder (refused);
- a report (``multipart/report``: DSN or unsigned MDN) or ``multipart/signed``
  (a signed MDN) → the outbound side's `ReceiptMatcher.handle`, which says where
  it goes; except the delivery reports on our own receipts (ENVID
  ``nazorg-mdn-…``), which are only noted and filed as processed;
- anything else → the unrecognised folder.

`handle_many` takes the watcher's batch: each run of consecutive DSNs goes to
the matcher at once (`ReceiptMatcher.file_dsns`: one store write for all),
the rest one by one, in UID order; each mail's DSN is parsed once.

The receipt mail (`compose_receipt`) is small and carries no personal data:
From the own address, To the Disposition-Notification-To, Subject
``nazorg ontvangstbevestiging <message id>``, ``Auto-Submitted: auto-replied``
(RFC 3834: no auto-answer to it), a Message-ID derived from the receipt's bytes
(a receipt sent again is recognisably the same), and the MDN entity as built.
Receipts go only to a partner's mailbox (an address of the route table): the
gateway never sends signed mail to an address a stranger wrote into a header.

Crash and failure semantics: the mail is filed only after the intake's
outcome is committed and the receipt was handed to the relay. A temporary
SMTP failure leaves the mail in place (handler result None): it is offered
again, and then answered from the store (an accepted message gets the same
receipt; a refused one is checked again). A permanent or security failure of
the receipt is an alert; the mail is filed all the same (the receipt is in the
store); so is a gateway without an SMTP relay (``smtp_sender`` None). A
fault in the intake itself (a full inbox disk) propagates: `watch_mailbox` logs
its type and leaves the mail in place, offered again after a doubling delay of
its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from email.utils import format_datetime, getaddresses

import structlog

from adapters.imap import FetchedMail
from adapters.smtp import ComposedMail, Dsn, DsnError, SmtpFailure, SmtpSender, TemporaryFailure, parse_dsn
from adapters.smtp.compose import CRLF, check_address, check_domain, split_entity
from gateway.crypto.errors import MalformedMessage
from gateway.crypto.open import ENCRYPTED_SMIME_TYPES, PKCS7_MIME, content_type
from gateway.crypto.open import split_entity as split_mime
from gateway.crypto.receipts import BuiltMdn
from gateway.pipeline.intake import Arrival, Intake, Outcome
from gateway.pipeline.receipt_matcher import ReceiptMatcher

log = structlog.get_logger(__name__)

RECEIPT_ENVID_PREFIX = "nazorg-mdn-"
_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>\Z")


def compose_receipt(*, mdn: BuiltMdn, from_address: str, to_address: str, message_id: str | None,
                    date: datetime, id_domain: str) -> ComposedMail:
    """The mail that carries a signed MDN (see the module). `message_id` names the message in the subject
    (the berichtId, else the transport id); it is left out unless it is a plain id."""
    check_address(from_address, "from address")
    check_address(to_address, "to address")
    check_domain(id_domain, "id domain")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    entity_headers, body = split_entity(mdn.entity)
    shown = (message_id or "").strip().strip("<>")
    subject = "nazorg ontvangstbevestiging" + (f" {shown}" if _SUBJECT_ID.match(shown) else "")
    mail_message_id = f"<mdn-{hashlib.sha256(mdn.entity).hexdigest()[:32]}@{id_domain}>"
    headers = [f"From: {from_address}", f"To: {to_address}", f"Date: {format_datetime(date)}",
               f"Subject: {subject}", f"Message-ID: {mail_message_id}", "MIME-Version: 1.0",
               "Auto-Submitted: auto-replied"]
    data = CRLF.join([h.encode("ascii") for h in headers] + entity_headers) + CRLF + CRLF + body
    return ComposedMail(mail_message_id=mail_message_id, data=data)


def _single(headers: dict[str, str], name: str) -> str | None:
    """A header that occurs once (a repeated one is ambiguous: None)."""
    if any(k.startswith(name + "\0") for k in headers):
        return None
    return headers.get(name)


def _address(value: str | None) -> str | None:
    """The one bare address of an address header (None when there is not exactly one)."""
    if not value:
        return None
    found = [addr for _, addr in getaddresses([value]) if "@" in addr]
    return found[0].strip() if len(found) == 1 else None


class MailIntake:
    def __init__(self, *, intake: Intake, matcher: ReceiptMatcher, smtp_sender: SmtpSender | None, own_email: str,
                 processed_folder: str, quarantine_folder: str, unrecognised_folder: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.intake = intake
        self.matcher = matcher
        self.smtp = smtp_sender
        self.own_email = check_address(own_email, "own e-mail address")
        self.processed = processed_folder
        self.quarantine = quarantine_folder
        self.unrecognised = unrecognised_folder
        self._clock = clock

    async def handle(self, mail: FetchedMail) -> str | None:
        """The folder the mail goes to (None: leave it, it is offered again)."""
        [outcome] = await self.handle_many([mail])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def handle_many(self, mails: list[FetchedMail]) -> list[str | None | Exception]:
        """Per mail, in order: its folder (None: leave it, it is offered again) or the exception its handling raised
        (`watch_mailbox`'s batch handler)."""
        outcomes: list[str | None | Exception] = []
        reports: list[tuple[int, FetchedMail, Dsn]] = []

        async def file_reports() -> None:
            if not reports:
                return
            try:
                folders: list[str | None | Exception] = [*await self.matcher.file_dsns([(m, d) for _, m, d in reports])]
            except Exception as exc:
                folders = [exc] * len(reports)
            for (i, _, _), folder in zip(reports, folders):
                outcomes[i] = folder
            reports.clear()

        for mail in mails:
            outcomes.append(None)
            try:
                sorted_as = self._sort(mail)
                if isinstance(sorted_as, Dsn):
                    reports.append((len(outcomes) - 1, mail, sorted_as))
                    continue
                await file_reports()  # in UID order: the reports before this mail first
                outcomes[-1] = sorted_as if isinstance(sorted_as, str) else await sorted_as()
            except Exception as exc:
                outcomes[-1] = exc
        await file_reports()
        return outcomes

    def _sort(self, mail: FetchedMail) -> str | Dsn | Callable[[], Awaitable[str | None]]:
        """Its folder when known at once, the DSN it carries (filed with the others of the batch), or how to
        handle it."""
        try:
            headers, _ = split_mime(mail.data, "the mail")
        except MalformedMessage as e:
            log.warning("mail-unrecognised", uid=mail.uid, why=e.message)
            return self.unrecognised
        mtype, params = content_type(headers.get("content-type"))
        if mtype in PKCS7_MIME and params.get("smime-type", "enveloped-data").lower() in ENCRYPTED_SMIME_TYPES:
            return lambda: self._sealed(mail, headers)
        if mtype == "multipart/report":
            try:
                dsn = parse_dsn(mail.data)
            except DsnError as e:
                return self.matcher.broken_report(mail, e)
            if dsn is None:  # an MDN
                return lambda: self.matcher.file_mdn(mail)
            if self._our_receipts_report(dsn):
                return self.processed
            return dsn
        if mtype == "multipart/signed":
            return lambda: self.matcher.handle(mail)
        log.info("mail-unrecognised", uid=mail.uid, content_type=mtype[:60])
        return self.unrecognised

    def _our_receipts_report(self, dsn: Dsn) -> bool:
        if not (dsn.envid or "").startswith(RECEIPT_ENVID_PREFIX):
            return False
        for r in dsn.recipients:
            (log.info if r.action in ("delivered", "relayed") else log.warning)(
                "receipt-mail-" + r.action, envid=dsn.envid, status=r.status)
        return True

    async def _sealed(self, mail: FetchedMail, headers: dict[str, str]) -> str | None:
        mail_id = (_single(headers, "message-id") or "").strip()
        arrival = Arrival(entity=mail.data, transport="email",
                          transport_message_id=mail_id if _MESSAGE_ID.match(mail_id) else "",
                          claimed_sender=_address(_single(headers, "from")),
                          reply_to=_address(_single(headers, "disposition-notification-to")))
        outcome = await self.intake.receive(arrival)
        if not await self._send_receipt(mail, arrival, outcome):
            return None
        return self.processed if outcome.accepted else self.quarantine

    async def _send_receipt(self, mail: FetchedMail, arrival: Arrival, outcome: Outcome) -> bool:
        """False when the relay failed temporarily (try again with the mail)."""
        if outcome.mdn is None:
            return True
        to = arrival.reply_to
        if not to:
            log.info("receipt-not-asked", uid=mail.uid, message_id=outcome.message_id)
            return True
        if self.smtp is None:
            log.warning("receipt-not-sent", uid=mail.uid, message_id=outcome.message_id,
                        why="no SMTP relay is configured: receipts cannot be sent by mail")
            return True
        if not self.intake.is_partner_address(to):
            log.warning("receipt-not-sent", uid=mail.uid, message_id=outcome.message_id,
                        why="Disposition-Notification-To is not a partner's address")
            return True
        composed = compose_receipt(mdn=outcome.mdn, from_address=self.own_email, to_address=to,
                                   message_id=outcome.message_id or arrival.transport_message_id,
                                   date=self._clock(), id_domain=self.own_email.rsplit("@", 1)[1])
        envid = RECEIPT_ENVID_PREFIX + hashlib.sha256(outcome.mdn.entity).hexdigest()[:32]
        try:
            await self.smtp.send(envelope_from=self.own_email, recipient=to, data=composed.data, envid=envid)
        except TemporaryFailure as e:
            log.warning("receipt-deferred", uid=mail.uid, message_id=outcome.message_id, reason=e.reason)
            return False
        except SmtpFailure as e:
            log.error("receipt-not-delivered", uid=mail.uid, message_id=outcome.message_id,
                      kind=type(e).__name__, reason=e.reason, alert=True)
            return True
        log.info("receipt-sent", message_id=outcome.message_id, accepted=outcome.accepted,
                 duplicate=outcome.duplicate, reason_code=outcome.reason_code, mail_message_id=composed.mail_message_id)
        return True
