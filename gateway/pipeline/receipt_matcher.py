"""The receipt matcher: what arrives in the party's mailbox, matched to the messages it concerns.

- DSN (RFC 3464, from the mail servers): `delivered` → state delivered;
  `failed` → failed with the remote reason; `delayed`/`relayed` → noted.
  Matched by ENVID (our message id), else by the returned Message-ID.
- Signed MDN (RFC 8098, from the recipient): verified (signature, chain,
  signer bound to the recipient's address) and its MIC compared with what
  was sealed → acknowledged; a mismatch or missing MIC is an integrity alert
  and proves nothing; `processed/error` means the recipient could not use it
  → failed with its reason code.
- Unsigned MDN (a mail client's read receipt): recorded, proves nothing.
Every mail is then moved to the processed or unrecognised folder (never
deleted). Handling is idempotent: a mail seen twice (after a crash between
handling and moving) changes no state the second time, and adds no second receipt:
each receipt names its carrier (`carrier`: the mail's Message-ID), unique per
message and kind in the store. Not its text: two "delayed" reports with the same
words, sent hours apart, are two events.

DSNs come back as fast as the daemon sends (one per message), so a window of
them is filed together (`file_dsns`): one read for their messages, one write
transaction for every receipt and transition (`Store.file_receipts`), then the
watcher's one move per folder. Filed one by one (a read and two writes each,
every write waiting for its group commit behind the dispatcher's) they came
at 4-12 a second while the daemon sent 35: a backlog of tens of thousands.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from datetime import datetime, timezone

import structlog

from adapters.imap import FetchedMail
from adapters.outbox_fs import remove_plaintext
from adapters.smtp import Dsn, DsnError, parse_dsn
from gateway.crypto.errors import CryptoError, MalformedMessage
from gateway.crypto.open import split_entity
from gateway.crypto.receipts import ReceiptVerdict, check_receipt, parse_mdn
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.store import MessageRecord, NewReceipt, ReceiptFiling, StaleState, State, Store

log = structlog.get_logger(__name__)

#: a receipt for a message in one of these states overtook the dispatcher's commit of `sent`
_NOT_YET_SENT = (State.QUEUED, State.SENDING, State.RETRY_WAIT)
_MSGID = re.compile(r"<[^<>\s]{1,994}>")


def carrier(data: bytes) -> str:
    """Who carried a receipt (``NewReceipt.source``): the mail's Message-ID, else "sha256:" and the digest of its
    bytes; either is the same when the mail is read again."""
    try:
        headers, _ = split_entity(data, "the mail")
    except MalformedMessage:
        headers = {}
    found = _MSGID.search(headers.get("message-id", ""))
    return found.group(0) if found else "sha256:" + hashlib.sha256(data).hexdigest()


def _raced(record: MessageRecord) -> None:
    """Leave the mail where it is: the mailbox offers it again, when the message is `sent`."""
    log.info("receipt-early", message_id=record.message_id, state=record.state.value)
    return None


class ReceiptMatcher:
    def __init__(self, *, store: Store, trust: TrustStore, processed_folder: str, unrecognised_folder: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.store = store
        self.trust = trust
        self.processed = processed_folder
        self.unrecognised = unrecognised_folder
        self._clock = clock

    async def handle(self, mail: FetchedMail) -> str | None:
        """The folder the mail goes to, after its effect is committed (None: not yet, see `_raced`)."""
        try:
            dsn = parse_dsn(mail.data)
        except DsnError as e:
            return self.broken_report(mail, e)
        if dsn is not None:
            return (await self.file_dsns([(mail, dsn)]))[0]
        return await self.file_mdn(mail)

    def broken_report(self, mail: FetchedMail, error: DsnError) -> str:
        log.warning("mail-unrecognised", uid=mail.uid, why=f"broken delivery report: {error}")
        return self.unrecognised

    async def handle_mdn(self, entity: bytes, *, origin: str) -> None:
        """An MDN that arrived another way than by mail (an AS2 asynchronous receipt)."""
        for _ in range(40):  # one that overtook the commit of `sent` is tried again for a few seconds
            if await self.file_mdn(FetchedMail(uid=0, data=entity)) is not None:
                break
            await asyncio.sleep(0.25)
        log.info("receipt-received", origin=origin)

    # -- delivery status notifications ------------------------------------------------------------

    async def file_dsns(self, reports: list[tuple[FetchedMail, Dsn]]) -> list[str | None]:
        """The folder of each report's mail, after the effects of all of them were committed in one write
        (None: not yet, see `_raced`). Raises when that write fails: then none of them was filed."""
        records = await self.store.records_of(d.envid for _, d in reports if d.envid)
        folders: list[str | None] = []
        filings: list[ReceiptFiling] = []
        about: list[tuple[int, MessageRecord, bool]] = []  # per filing: its report, its message, whether it alerts
        for i, (mail, dsn) in enumerate(reports):
            record = records.get(dsn.envid) if dsn.envid else None
            if record is None:
                record = await self._find(None, dsn.original_message_id)
            if record is None:
                log.warning("dsn-unmatched", uid=mail.uid, envid=dsn.envid)
                folders.append(self.unrecognised)
                continue
            if record.state in _NOT_YET_SENT:
                folders.append(_raced(record))
                continue
            folders.append(self.processed)
            source = carrier(mail.data)
            for n, r in enumerate(dsn.recipients):
                detail = " ".join(x for x in (r.status, r.diagnostic) if x) or r.action
                # a report on several recipients of the message: one receipt each, told apart by their place
                receipt = NewReceipt("dsn", r.action, detail[:500], source if n == 0 else f"{source} #{n + 1}")
                if r.action == "delivered":
                    filing = ReceiptFiling(record.message_id, receipt, State.DELIVERED, (State.SENT,),
                                           f"delivered to the recipient's mailbox ({r.status or 'no status'}, "
                                           f"reported by {dsn.reporting_mta or 'the mail server'})", detail,
                                           clear_spool=True)
                elif r.action == "failed":
                    filing = ReceiptFiling(record.message_id, receipt, State.FAILED, (State.SENT, State.DELIVERED),
                                           f"the mail server could not deliver it: {detail}", detail)
                else:
                    log.warning("dsn-" + r.action, message_id=record.message_id, recipient=record.recipient,
                                status=r.status)
                    filing = ReceiptFiling(record.message_id, receipt)
                filings.append(filing)
                about.append((i, record, r.action == "failed"))
        for filing, (i, record, alert), filed in zip(filings, about, await self.store.file_receipts(filings)):
            if filed.outcome == "unknown":  # gone since it was looked up (purged)
                log.warning("dsn-unmatched", uid=reports[i][0].uid, envid=reports[i][1].envid)
                folders[i] = self.unrecognised
                continue
            if filing.to is None or filed.outcome == "already":
                continue
            if filed.outcome != "moved":  # stale: the message moved on meanwhile
                log.info("receipt-late", message_id=record.message_id,
                         state=filed.state.value if filed.state else None, would_be=filing.to.value)
                continue
            if filed.spool_path:  # delivery is proven: the plaintext copy goes; the sealed entity stays in the store
                remove_plaintext(filed.spool_path)
            (log.error if alert else log.info)(filing.to.value, message_id=record.message_id, type=record.type,
                                               recipient=record.recipient, reason=filing.reason,
                                               **({"alert": True} if alert else {}))
        return folders

    # -- message disposition notifications --------------------------------------------------------

    async def file_mdn(self, mail: FetchedMail) -> str | None:
        """A mail that is no DSN: a signed or unsigned MDN, or unrecognised."""
        try:
            receipt = parse_mdn(mail.data, self.trust, at=self._clock(), allow_unsigned=True)
        except MalformedMessage as e:
            log.warning("mail-unrecognised", uid=mail.uid, why=str(e))
            return self.unrecognised
        except CryptoError as e:
            log.error("receipt-unverifiable", uid=mail.uid, error=type(e).__name__, why=str(e), alert=True)
            return self.unrecognised
        record = await self._find(None, receipt.original_message_id)
        if record is None:
            log.warning("mdn-unmatched", uid=mail.uid)
            return self.unrecognised
        if record.state in _NOT_YET_SENT:
            return _raced(record)
        source = carrier(mail.data)
        if receipt.signer is None:
            await self.store.add_receipt(record.message_id, kind="unsigned-mdn", verdict=receipt.disposition,
                                         detail="an unsigned receipt (read receipt of a mail client): proves nothing",
                                         source=source)
            log.info("unsigned-mdn", message_id=record.message_id, disposition=receipt.disposition)
            return self.processed
        bound = PartyBinding(email=record.address).mismatches(receipt.signer) if record.address else []
        if bound:
            await self.store.add_receipt(record.message_id, kind="mdn", verdict="wrong-signer",
                                         detail="the receipt is signed by a certificate of another party",
                                         source=source)
            log.error("receipt-wrong-signer", message_id=record.message_id, recipient=record.recipient, alert=True)
            return self.processed
        check = check_receipt(receipt, message_id=receipt.original_message_id, sealed_mic=record.mic)
        kept = await self.store.add_receipt(record.message_id, kind="mdn", verdict=check.verdict.value,
                                            detail=check.reason, source=source)
        # a mail read again (a crash before its move): the transitions below are idempotent, the audit row is not
        if check.ok:
            await self._move(record, State.ACKNOWLEDGED, [State.SENT, State.DELIVERED],
                             "signed receipt: processed, MIC matches", None)
        elif check.verdict is ReceiptVerdict.NOT_PROCESSED:
            await self._move(record, State.FAILED, [State.SENT, State.DELIVERED], check.reason, None, alert=True)
        else:
            log.error("receipt-integrity", message_id=record.message_id, verdict=check.verdict.value,
                      reason=check.reason, alert=True)
            if kept:
                await self.store.audit(action="receipt-check", object=record.message_id,
                                       result=check.verdict.value, origin="imap", actor="receipt-matcher")
        return self.processed

    # -- helpers ----------------------------------------------------------------------------------

    async def _find(self, envid: str | None, mail_message_id: str | None) -> MessageRecord | None:
        if envid:
            record = await self.store.get(envid)
            if record is not None:
                return record
        if mail_message_id:
            bare = mail_message_id.strip().strip("<>").strip()
            record = await self.store.by_mail_message_id(f"<{bare}>")
            if record is None and "@" in bare:
                # the receipt may come before the dispatcher recorded the Message-ID it sent (it is
                # <message id@own domain>): find the message by the id itself
                record = await self.store.get(bare.split("@", 1)[0])
            return record
        return None

    async def _move(self, record: MessageRecord, state: State, expect: list[State], reason: str,
                    reply: str | None, *, alert: bool = False) -> None:
        current = await self.store.get(record.message_id)
        if current is None or current.state is state:
            return
        proven = state in (State.DELIVERED, State.ACKNOWLEDGED) and current.spool_path
        try:
            await self.store.transition(record.message_id, state, reason=reason, actor="receipt-matcher",
                                        expect=expect, remote_reply=reply,
                                        **({"spool_path": None} if proven else {}))
        except StaleState:
            log.info("receipt-late", message_id=record.message_id, state=current.state.value, would_be=state.value)
            return
        if proven:  # delivery is proven: the plaintext copy goes; the sealed entity stays in the store
            remove_plaintext(current.spool_path)
        (log.error if alert else log.info)(state.value, message_id=record.message_id, type=record.type,
                                           recipient=record.recipient, reason=reason,
                                           **({"alert": True} if alert else {}))
