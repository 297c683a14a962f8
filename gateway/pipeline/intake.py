"""The receiving side, whatever the transport: open, verify, check entitlement, hand over, answer.

`Intake.receive(Arrival)` is called by every transport (the IMAP mailbox through
`mail_intake.MailIntake`, the AS2 server) with the sealed entity as it arrived,
and returns an `Outcome` with the signed receipt (MDN) the transport sends back.
In this order, first failure wins:

1. Dedupe on the transport message id: an accepted one gets the SAME stored
   receipt again (``Outcome.duplicate``), nothing else happens.
2. The partner the transport claims (mail From / AS2-From) must be known
   (`Partner`, from the route table); its certificate binding is what the
   signer must match.
3. `open_sealed` with the own identity: decrypt, verify, chain, CRL, signer =
   that partner. A `CryptoError` refuses with its code (`REASON_CODES`).
4. Validate the XML (the validation pool): invalid → ``schema-invalid``.
5. Dedupe on the berichtId: the same message (same MIC) accepted before →
   the same receipt again; another message under an accepted id → refused
   ``duplicate`` (a corrected message needs a new berichtId).
6. Entitlement: the recipient the content names must be this gateway's
   party (``not-entitled``), the sender it names must be the partner whose
   certificate signed it (``wrong-sender``).
7. The inbox file (`adapters.inbox_fs`, .json then .xml, durable), then the
   row with its receipt in one store transaction. A crash between the two
   leaves a file without a row: the next arrival of that id finds the file
   and records it without writing again, and `reconcile` (at start) records
   every such file. A write that fails (a full disk) leaves nothing, records
   nothing and raises: the transport answers with an error, no receipt, and
   the sender sends again (alerted once per full period: ``inbound.inbox_full``).

A refused message is kept in quarantine (``<UTC time>-<sha256 prefix>.p7m`` +
``.json`` with the reason), recorded as refused, and answered with a signed
``processed/error`` receipt naming the reason code (the MIC when it could be
computed), even when decryption failed: the sender must learn it failed.
Nothing reaches the inbox unless every check passed.

Refusals are not remembered as final: the same message arriving again is
checked again (the cause, e.g. a stale CRL or a missing route, may have been
fixed). Accepted ids are remembered for good (see `gateway.store.schema`).

Reason codes are the slugs of `gateway.crypto.receipts.REASON_CODES`; trust
failures without a slug of their own (certificate-expired, -revoked, chain-broken,
revocation-unknown, certificate-policy …) are sent as ``signer-not-trusted``,
their own code kept in the store's reason and the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from adapters.inbox_fs import InboxWriter, quarantine, remove_temporaries
from gateway.crypto.errors import CryptoError
from gateway.crypto.identity import Identity
from gateway.crypto.open import Opened, open_sealed
from gateway.crypto.receipts import REASON_CODES, BuiltMdn, Disposition, build_mdn
from gateway.crypto.trust import PartyBinding, TrustStore, certificate_emails
from gateway.messages.safe_parse import MAX_MESSAGE_BYTES
from gateway.pipeline.disk import no_space
from gateway.pipeline.validation import Facts, ValidationPool
from gateway.store import Store
from gateway.store.states import DuplicateInbound, InboundRecord

log = structlog.get_logger(__name__)

TRANSPORTS = ("as2", "email")
#: a sealed entity is the message in base64 (4/3) inside CMS and MIME, plus certificates
DEFAULT_MAX_ENTITY_BYTES = 2 * MAX_MESSAGE_BYTES + 256 * 1024
_MUNICIPALITY = re.compile(r"[0-9]{4}\Z")


@dataclass(frozen=True)
class Arrival:
    entity: bytes  #: the sealed MIME entity as received (headers incl. Content-Type, CRLF CRLF, body)
    transport: str  #: "as2" | "email"
    #: AS2 Message-ID or the mail's Message-ID (with <>): what the MDN's Original-Message-ID names
    transport_message_id: str
    claimed_sender: str | None  #: AS2-From, or the mail's From address
    reply_to: str | None  #: where the receipt goes (Disposition-Notification-To); None: none asked

    def __repr__(self) -> str:  # never the content
        return f"<Arrival {self.transport} {self.transport_message_id!r} {len(self.entity)} bytes>"


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    duplicate: bool
    message_id: str | None  #: the berichtId, when the message could be opened and read
    reason_code: str | None  #: refused: a slug of REASON_CODES (no personal data)
    reason: str  #: for the operator (log, store); no personal data
    mdn: BuiltMdn | None  #: the signed receipt to send (None only when none could be built)


@dataclass(frozen=True)
class Partner:
    """A party that may send to this gateway, and how it is recognised."""

    party: str  #: as the messages name it: "pi:PI-VUGHT", "gemeente:0599"
    email: str | None = None  #: its mailbox (the mail's From)
    as2_id: str | None = None  #: its AS2 name (AS2-From)
    #: how its signing certificate is bound to it; default: its e-mail address
    certificate: PartyBinding | None = None

    @property
    def binding(self) -> PartyBinding:
        if self.certificate is not None:
            return self.certificate
        if self.email:
            return PartyBinding(email=self.email)
        raise ValueError(f"partner {self.party} has neither a certificate binding nor an e-mail address")


def party_of_route(code: str) -> str:
    """The route table's key ("0599", "PI-VUGHT") as the messages name the party."""
    return f"gemeente:{code}" if _MUNICIPALITY.match(code) else f"pi:{code}"


def partners_from_routes(routes: Mapping[str, Any]) -> dict[str, Partner]:
    """Who may send here: every party with a route (`gateway.config.Route`).

    E-mail routes: the partner writes from its route address, and its certificate carries that address.
    Platform routes: the partner is named by its AS2 id, its certificate by the subject serialNumber of
    its route certificate (the OIN in PKIoverheid), else by that certificate's e-mail address."""
    partners = {}
    for code, route in routes.items():
        party = party_of_route(code)
        if route.transport == "email":
            partners[party] = Partner(party, email=route.address, as2_id=route.as2_id)
        else:
            cert = x509.load_pem_x509_certificate(Path(route.certificate).read_bytes())
            serials = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
            emails = sorted(certificate_emails(cert))
            binding = PartyBinding(subject_serial=str(serials[0])) if serials else \
                PartyBinding(email=emails[0]) if emails else None
            if binding is None:
                raise ValueError(f"routes.{code}: its certificate names no serialNumber and no e-mail address")
            partners[party] = Partner(party, as2_id=route.as2_id, certificate=binding)
    return partners


#: the error codes of gateway.crypto.errors that REASON_CODES has no slug for, and the slug sent instead
_CLOSEST = {"chain-broken": "signer-not-trusted", "certificate-expired": "signer-not-trusted",
            "certificate-not-yet-valid": "signer-not-trusted", "certificate-revoked": "signer-not-trusted",
            "revocation-unknown": "signer-not-trusted", "certificate-policy": "signer-not-trusted",
            "crypto-error": "malformed"}


def reason_code_of(error: CryptoError) -> str:
    code = error.code if error.code in REASON_CODES else _CLOSEST.get(error.code, "malformed")
    assert code in REASON_CODES
    return code


class _Refusal(Exception):
    """A check failed: why, and what is known of the message by then."""

    def __init__(self, code: str, reason: str, *, opened: Opened | None = None, facts: Facts | None = None,
                 partner: Partner | None = None):
        super().__init__(reason)
        self.code, self.reason, self.opened, self.facts, self.partner = code, reason, opened, facts, partner


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Intake:
    def __init__(self, *, store: Store, identity: Identity, trust: TrustStore, validation: ValidationPool,
                 own_party: str, partners: Mapping[str, Partner], inbox: InboxWriter, quarantine: Path,
                 own_names: Mapping[str, str] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 max_entity_bytes: int = DEFAULT_MAX_ENTITY_BYTES):
        """`own_names`: transport → the name receipts give as Original-/Final-Recipient (the own e-mail
        address, the own AS2 id); `own_party` when a transport has none."""
        self.store = store
        self.identity = identity
        self.trust = trust
        self.validation = validation
        self.own_party = own_party
        self.partners = dict(partners)
        self.inbox = inbox
        self.quarantine = Path(quarantine)
        self.own_names = dict(own_names or {})
        self._clock = clock
        self.max_entity_bytes = max_entity_bytes
        self._locks = _KeyedLocks()
        self._inbox_full = False  #: the last inbox write failed for want of room (alerted once)
        self._by_email = {p.email.lower(): p for p in self.partners.values() if p.email}
        self._by_as2 = {p.as2_id: p for p in self.partners.values() if p.as2_id}

    def partner_for(self, transport: str, claimed_sender: str | None) -> Partner | None:
        """The partner a transport's sender name belongs to (e-mail: ignoring case; AS2: exact)."""
        if not claimed_sender:
            return None
        if transport == "email":
            return self._by_email.get(claimed_sender.strip().lower())
        return self._by_as2.get(claimed_sender.strip())

    def is_partner_address(self, address: str | None) -> bool:
        """Whether `address` is a partner's mailbox: receipts by mail go only there (never to strangers)."""
        return bool(address) and address.strip().lower() in self._by_email

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, arrival: Arrival) -> Outcome:
        if arrival.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        entity = bytes(arrival.entity)
        sha256 = hashlib.sha256(entity).hexdigest()
        tmid = arrival.transport_message_id
        if tmid:
            earlier = await self.store.find_inbound_by_transport(arrival.transport, tmid)
            if earlier is not None and earlier.outcome == "accepted":
                return self._again(earlier, arrival, "transport message id")
        try:
            return await self._checked(arrival, entity, sha256)
        except _Refusal as refusal:
            return await self._refuse(arrival, entity, sha256, refusal)

    async def _checked(self, arrival: Arrival, entity: bytes, sha256: str) -> Outcome:
        if len(entity) > self.max_entity_bytes:
            raise _Refusal("malformed", f"the message is larger than {self.max_entity_bytes} bytes")
        partner = self.partner_for(arrival.transport, arrival.claimed_sender)
        if partner is None:
            raise _Refusal("wrong-sender", f"the {arrival.transport} sender is not a known partner "
                                           "(no route names it)")
        now = self._clock()
        try:
            opened = await asyncio.to_thread(open_sealed, entity, self.identity, self.trust, at=now,
                                             expected_sender=partner.binding)
        except CryptoError as e:
            raise _Refusal(reason_code_of(e), f"[{e.code}] {e.message}", partner=partner) from None
        checked = await self.validation.check(opened.xml, f"{arrival.transport}:{sha256[:16]}")
        if not checked.valid:
            problems = checked.verdict.get("problems") or []
            said = ", ".join(f"{p.get('code')} at {p.get('path') or '-'}" for p in problems[:5])
            raise _Refusal("schema-invalid", f"the message is not valid ({len(problems)} problem(s): {said})",
                           opened=opened, partner=partner)
        facts = checked.facts
        assert facts is not None
        async with self._locks.hold(facts.message_id):
            earlier = await self.store.find_inbound(facts.message_id)
            if earlier is not None and earlier.outcome == "accepted":
                if earlier.mic == opened.mic:
                    return self._again(earlier, arrival, "berichtId")
                raise _Refusal("duplicate", "another message under a berichtId accepted before "
                                            "(a corrected message needs a new berichtId)",
                               opened=opened, facts=facts, partner=partner)
            if facts.recipient != self.own_party:
                raise _Refusal("not-entitled", f"the message is for {facts.recipient}, not for {self.own_party}",
                               opened=opened, facts=facts, partner=partner)
            if facts.sender != partner.party:
                raise _Refusal("wrong-sender", f"the message names {facts.sender} as its sender, but "
                                               f"{partner.party} signed it", opened=opened, facts=facts,
                               partner=partner)
            return await self._accept(arrival, sha256, opened, facts, partner)

    async def _accept(self, arrival: Arrival, sha256: str, opened: Opened, facts: Facts,
                      partner: Partner) -> Outcome:
        fingerprint = opened.signer.fingerprint(hashes.SHA256()).hex()
        received = self._clock()
        metadata = {
            "message_id": facts.message_id, "type": facts.type, "version": facts.version,
            "sender": partner.party, "recipient": facts.recipient, "dossier": facts.dossier,
            "signer_sha256": fingerprint, "mic": opened.mic, "mic_algorithm": "sha-256",
            "transport": arrival.transport, "transport_message_id": arrival.transport_message_id,
            "received_at": received.astimezone(timezone.utc).isoformat(), "entity_sha256": sha256,
        }
        found = await asyncio.to_thread(self.inbox.find, facts.type, facts.message_id)
        if found is not None and found.metadata.get("mic") != opened.mic:
            raise _Refusal("duplicate", "the inbox holds another message under this berichtId",
                           opened=opened, facts=facts, partner=partner)
        mdn = self._mdn(arrival.transport, arrival.transport_message_id, Disposition.PROCESSED, None, opened.mic)
        if found is None:
            try:
                entry = await asyncio.to_thread(self.inbox.deliver, facts.type, facts.message_id, opened.xml,
                                                metadata)
            except FileExistsError:  # another process wrote it a moment ago: the row decides below
                found = await asyncio.to_thread(self.inbox.find, facts.type, facts.message_id)
                if found is None or found.metadata.get("mic") != opened.mic:
                    raise
            except OSError as e:  # nothing was written: the transport answers with an error, the sender retries
                if no_space(e) is not None and not self._inbox_full:
                    self._inbox_full = True
                    log.error("inbound.inbox_full", message_id=facts.message_id, type=facts.type, alert=True,
                              why="the inbox has no room: arrivals are answered with an error (not a receipt) "
                                  "until there is room again; the senders send again")
                raise
            else:
                if self._inbox_full:
                    self._inbox_full = False
                    log.warning("inbound.inbox_room_again", message_id=facts.message_id, type=facts.type)
        if found is not None:  # a crash came between this file and its row: the file stays, the row is written now
            entry = found
            log.warning("inbound.file_recovered", message_id=facts.message_id, type=facts.type)
        try:
            await self.store.record_inbound(
                message_id=facts.message_id, transport=arrival.transport,
                transport_message_id=arrival.transport_message_id or None, sender=partner.party,
                signer_fingerprint=fingerprint, type=facts.type, dossier=facts.dossier, mic=opened.mic,
                sha256=sha256, outcome="accepted", inbox_path=entry.xml_file,
                receipt=None if mdn is None else mdn.entity, dates=facts.dates, subjects=facts.subjects)
        except DuplicateInbound as dup:  # another process recorded it meanwhile
            return self._again(dup.existing, arrival, "berichtId")
        log.info("inbound.accepted", message_id=facts.message_id, type=facts.type, sender=partner.party,
                 transport=arrival.transport, size=len(opened.xml))
        return Outcome(True, False, facts.message_id, None, "accepted: in the inbox", mdn)

    def _again(self, earlier: InboundRecord, arrival: Arrival, matched_on: str) -> Outcome:
        log.info("inbound.duplicate", message_id=earlier.message_id, type=earlier.type, sender=earlier.sender,
                 transport=arrival.transport, matched_on=matched_on)
        mdn = _built(earlier.receipt) if earlier.receipt else None
        return Outcome(True, True, earlier.message_id, None,
                       f"duplicate of a message accepted before (same {matched_on}): the same receipt again", mdn)

    async def _refuse(self, arrival: Arrival, entity: bytes, sha256: str, refusal: _Refusal) -> Outcome:
        opened, facts, partner = refusal.opened, refusal.facts, refusal.partner
        now = self._clock()
        key = facts.message_id if facts is not None else f"sha256:{sha256}"
        fingerprint = opened.signer.fingerprint(hashes.SHA256()).hex() if opened is not None else None
        report = {
            "received_at": now.astimezone(timezone.utc).isoformat(), "transport": arrival.transport,
            "transport_message_id": arrival.transport_message_id, "claimed_sender": arrival.claimed_sender,
            "entity_sha256": sha256, "reason_code": refusal.code, "reason": refusal.reason,
            "message_id": facts.message_id if facts else None, "type": facts.type if facts else None,
            "sender": partner.party if partner and opened else None, "signer_sha256": fingerprint,
            "mic": opened.mic if opened else None,
        }
        kept = await asyncio.to_thread(quarantine, self.quarantine, entity, report, now)
        mdn = self._mdn(arrival.transport, arrival.transport_message_id, Disposition.ERROR, refusal.code,
                        opened.mic if opened else None)
        try:
            await self.store.record_inbound(
                message_id=key, transport=arrival.transport,
                transport_message_id=arrival.transport_message_id or None,
                sender=partner.party if partner and opened else None, signer_fingerprint=fingerprint,
                type=facts.type if facts else None, dossier=facts.dossier if facts else None,
                mic=opened.mic if opened else None, sha256=sha256, outcome="refused", reason_code=refusal.code,
                reason=refusal.reason, quarantine_path=str(kept), receipt=None if mdn is None else mdn.entity)
        except DuplicateInbound:  # the id stays accepted; the refused copy is audited and kept in quarantine
            await self.store.audit(action="inbound.refuse", object=key, result=f"refused: {refusal.code}",
                                   origin=arrival.transport, actor="intake")
        log.warning("inbound.refused", message_id=facts.message_id if facts else None, entity_sha256=sha256[:16],
                    transport=arrival.transport, reason_code=refusal.code, reason=refusal.reason,
                    sender=partner.party if partner else None, quarantine=kept.name)
        return Outcome(False, False, facts.message_id if facts else None, refusal.code, refusal.reason, mdn)

    def _mdn(self, transport: str, transport_message_id: str, disposition: Disposition, reason_code: str | None,
             mic: str | None) -> BuiltMdn | None:
        name = self.own_names.get(transport) or self.own_party
        try:
            return build_mdn(original_message_id=transport_message_id, original_recipient=name,
                             final_recipient=name, disposition=disposition, reason_code=reason_code, mic=mic,
                             signer=self.identity)
        except ValueError as e:  # e.g. a Message-ID no receipt can name; the outcome stands without one
            log.warning("inbound.no_receipt", transport=transport, why=str(e))
            return None

    # -- start-up ---------------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Finish what a crash interrupted (call before the first arrival): temporary files go; an inbox
        message without its row gets its row and receipt; a .json whose .xml was never written goes.
        Returns the number of messages recorded."""
        await asyncio.to_thread(self.inbox.remove_leftovers)
        await asyncio.to_thread(remove_temporaries, self.quarantine)
        recorded = 0
        entries = await asyncio.to_thread(self.inbox.entries)
        recorded_before = await self.store.accepted_inbound(e.message_id for e in entries)
        for entry in entries:
            if entry.message_id in recorded_before:
                continue
            meta = entry.metadata
            needed = ("transport", "transport_message_id", "mic", "sender", "entity_sha256")
            if meta.get("message_id") != entry.message_id or not all(isinstance(meta.get(k), str) for k in needed) \
                    or meta["transport"] not in TRANSPORTS:
                log.error("inbound.unknown_file", type=entry.label, message_id=entry.message_id, alert=True,
                          why="an inbox message without a row and without readable metadata: check it by hand")
                continue
            mdn = self._mdn(meta["transport"], meta["transport_message_id"], Disposition.PROCESSED, None, meta["mic"])
            known = await self._facts_of_file(entry.xml_path, entry.message_id)
            try:
                await self.store.record_inbound(
                    message_id=entry.message_id, transport=meta["transport"],
                    transport_message_id=meta["transport_message_id"] or None, sender=meta["sender"],
                    signer_fingerprint=meta.get("signer_sha256"), type=entry.label, dossier=meta.get("dossier"),
                    mic=meta["mic"], sha256=meta["entity_sha256"], outcome="accepted",
                    inbox_path=entry.xml_file, receipt=None if mdn is None else mdn.entity, actor="reconcile",
                    dates=known.dates if known else None, subjects=known.subjects if known else ())
            except DuplicateInbound:
                continue
            recorded += 1
            log.warning("inbound.reconciled", message_id=entry.message_id, type=entry.label)
        for label, message_id, path in await asyncio.to_thread(self.inbox.orphans):
            earlier = await self.store.find_inbound(message_id)
            if earlier is None or earlier.outcome != "accepted":  # its .xml was never written: not a message
                await asyncio.to_thread(self.inbox.remove, path)
                log.info("inbound.orphan_removed", message_id=message_id, type=label)
        return recorded


    async def _facts_of_file(self, path: Path, message_id: str) -> Facts | None:
        """The dates and subject hashes of an inbox copy (crash recovery: the row was never written);
        None when it no longer passes (its row then has none: the deadlines read the file instead)."""
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
        except OSError:
            return None
        checked = await self.validation.check(data, f"inbox:{message_id}")
        return checked.facts if checked.valid and checked.facts.message_id == message_id else None


def _built(entity: bytes) -> BuiltMdn:
    head = entity[:entity.index(b"\r\n")]
    return BuiltMdn(entity, head[len(b"Content-Type: "):])


def intake_from_config(config: Any, *, store: Store, identity: Identity, trust: TrustStore,
                       validation: ValidationPool, clock: Callable[[], datetime] | None = None) -> Intake:
    """The intake of a `gateway.config.GatewayConfig`: own party, partners from its routes, its folders."""
    return Intake(store=store, identity=identity, trust=trust, validation=validation,
                  own_party=str(config.party.party), partners=partners_from_routes(config.routes),
                  inbox=InboxWriter(config.folders.inbox), quarantine=config.folders.quarantine,
                  own_names={"email": config.party.email},
                  max_entity_bytes=2 * config.limits.max_message_bytes + 256 * 1024,
                  **({"clock": clock} if clock is not None else {}))
