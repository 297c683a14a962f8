"""The data subject's rights (privacy covenant art. 12-15): the access overview and the erasure.

``access_report`` answers an access request (art. 13.3) from the gateway's own records: for each
message the subject index names (``Store.subjects_messages``: a keyed hash of the BSN, never the BSN), its
purpose, the categories of data it held, its origin and recipient (codes and registry names) and
its dates. The categories are read from a copy the gateway can still open: an outbound message's
sealed entity (every message is enveloped to the sender too, so the own key opens it) or an
inbound message's inbox copy; when retention or an erasure has removed both, the report says so
and gives the categories of the message type.

``erase`` (art. 14: deletion, shielding) removes what holds the person's data and is the
gateway's own: the plaintext spool copy, the sealed entity, the quarantined copy of a refused
arrival, the detention dates kept for the chain's deadlines (``deadline_facts``: read from the
message, special data, so shielded with it) and, only when asked, the inbox copy (once handed
over it is the receiving systems').
Metadata rows (ids, types, parties, dates, states) and the audit trail stay: they hold no
personal data and prove what happened. Messages still in flight are refused: cancel them first.

Both are for the ``officer`` role only (``check_officer``) and audited (``subject.access``,
``subject.erase``) with the first 16 hex digits of the subject hash as the object: never the BSN.
Nothing here logs or raises content or a BSN.

The reports are in Dutch: they are handed to the data subject, under a Dutch covenant.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, delete, select, update

from adapters.outbox_fs import fsync_dir, remove_plaintext
from gateway.messages.rules import bsn_is_valid
from gateway.ops.web_accounts import Account, load_accounts, verify_password
from gateway.privacy import normalise_bsn, subject_hash
from gateway.store import Store
from gateway.store.schema import deadline_facts, inbound, messages, sealed, subject_index

__all__ = ["AccessReport", "Entry", "ErasePlan", "InvalidBsn", "OfficerRefused", "PURPOSES", "SECTIONS",
           "access_report", "check_bsn", "check_officer", "erase", "plan_erase", "render_html", "render_pdf",
           "report_body", "subject_of"]

log = structlog.get_logger(__name__)

m = messages.c
si = subject_index.c
#: outbound states after which nothing more is sent or sealed: the copies may go
SETTLED = frozenset({"delivered", "acknowledged", "failed", "cancelled"})
CANCELLABLE = frozenset({"received", "held", "queued", "retry_wait"})


class InvalidBsn(ValueError):
    """Not a BSN (9 digits passing the 11-proof). Says nothing of the value."""

    def __init__(self) -> None:
        super().__init__("not a valid BSN: 9 digits that pass the 11-proof (elfproef)")


class OfficerRefused(Exception):
    """Not an officer: unknown name, wrong password, or another role (``why``)."""

    def __init__(self, why: str, account: Account | None):
        super().__init__(f"refused: {why}")
        self.why = why
        self.account = account


def check_bsn(bsn: str) -> str:
    """The 9-digit BSN, or ``InvalidBsn`` (the 11-proof of ``gateway.messages.rules``)."""
    try:
        digits = normalise_bsn(bsn)
    except ValueError:
        raise InvalidBsn() from None
    if not bsn_is_valid(digits):
        raise InvalidBsn()
    return digits


def subject_of(key: bytes, bsn: str) -> str:
    """The store's name for the person (hex HMAC); ``InvalidBsn`` for what is no BSN."""
    return subject_hash(key, check_bsn(bsn))


def check_officer(accounts_file: Path | None, name: str, password: str) -> Account:
    """The account when ``name`` is an officer and ``password`` is theirs; else ``OfficerRefused``."""
    account = load_accounts(accounts_file).get(name)
    if account is None:
        raise OfficerRefused("unknown account", None)
    if not verify_password(password, account.password_hash):
        raise OfficerRefused("wrong password", account)
    if account.role != "officer":
        raise OfficerRefused(f"role {account.role}: only an officer may", account)
    return account


def masked(bsn: str) -> str:
    """Enough for the person to recognise their own number, not enough for anyone else."""
    return "•" * 6 + bsn[-3:]


# -- what the source says: purposes per message type, and what each section of a message holds

#: the main aim of the collaboration model (source, section IV "Hoofddoelstelling")
MAIN_PURPOSE = ("Het terugdringen van recidive en overlast door het vergroten van re-integratiemogelijkheden van "
                "(ex-)gedetineerde burgers middels een sluitende nazorg op de primaire leefgebieden (huisvesting, "
                "inkomen/werk, schulden, zorg en identiteitsbewijs), zodat de ex-gedetineerde burger na detentie in "
                "een positief stabiele situatie komt (Samenwerkingsmodel Nazorg, IV).")

#: per message type: why it is exchanged (source, section VI "Informatie-uitwisseling" 3, and the forms)
PURPOSES: dict[str, str] = {
    "meldingsbericht": "Melden aan het coördinatiepunt nazorg van de gemeente van herkomst dat betrokkene "
                       "gedetineerd is, binnen twee werkdagen na aanvang van de detentie, zodat de gemeente de "
                       "nazorg al tijdens de detentie kan voorbereiden (VI, 3; tabblad 1).",
    "gemeenteblad": "De bij de gemeente bekende gegevens over de leefgebieden aan de PI leveren voor de screening "
                    "en het basisdocument nazorg, binnen vijf dagen na de melding (tabblad 2).",
    "basisdocument": "Wederzijdse informatie-uitwisseling na de screening op de vijf leefgebieden, binnen tien "
                     "werkdagen na binnenkomst, en afspraken over de taakverdeling tussen PI en gemeente bij de "
                     "aanpak van gesignaleerde problemen (VI, 3; tabbladen 3-12).",
    "overdrachtsdocument": "Aanvullende informatie over de leefgebieden van een langverblijvende gedetineerde "
                           "overdragen aan de gemeente van vestiging, acht weken vóór ontslag (of zo snel "
                           "mogelijk), zodat de nazorg na detentie aansluit (VI, 3).",
    "ontslagbericht": "De gemeente van vestiging op de dag van ontslag uit de PI informeren, zodat de "
                      "basisvoorwaarden op de dag van ontslag op orde zijn (VI, 3).",
    "spoedontslagbericht": "De gemeente direct informeren zodra de PI op de hoogte is van een (onmiddellijke) "
                           "invrijheidsstelling (VI, 3).",
}

#: a message's top-level sections: what they hold, and the covenant's categories (art. 6.3; "B": special data)
SECTIONS: dict[str, tuple[str, str]] = {
    "penitentiaireInrichting": ("Verblijf in detentie: de penitentiaire inrichting", "m (B)"),
    "persoon": ("Identificerende gegevens: naam, geboortedatum, BSN", "a, c, g"),
    "gemeenteVanHerkomst": ("Gemeente van herkomst", "a"),
    "gemeenteVanVestiging": ("Gemeente van vestiging na detentie", "a"),
    "detentie": ("Detentiegegevens: aanvang, status, (verwachte) einddatum", "m (B)"),
    "aanvangDetentie": ("Detentiegegevens: aanvang van de detentie", "m (B)"),
    "ontslagdatum": ("Detentiegegevens: datum van ontslag", "m (B)"),
    "tijdstipInvrijheidstelling": ("Detentiegegevens: tijdstip van invrijheidstelling", "m (B)"),
    "reden": ("Reden van de invrijheidstelling", "h, m (B)"),
    "toelichting": ("Toelichting bij de invrijheidstelling", "m (B)"),
    "voorblad": ("Voorblad: einde detentie, vestiging en adres, ISD-maatregel, probleemstatus per leefgebied, "
                 "minderjarige kinderen, acties", "a, k, m (B), o"),
    "aanvullendePersoonsgegevens": ("Burgerlijke staat en minderjarige kinderen", "e, k"),
    "identiteitsbewijs": ("Identiteitsbewijs", "g"),
    "inkomenOpleidingSchulden": ("Inkomen, opleiding en schulden", "j, l"),
    "inkomenWerkDagbesteding": ("Inkomen, werk en dagbesteding", "j"),
    "schulden": ("Schulden", "j"),
    "huisvesting": ("Huisvesting", "k"),
    "zorg": ("Zorg en zorgverzekering (gezondheidsgegevens)", "B: gezondheid (art. 1.9)"),
    "reclasseringJustitieelKader": ("Reclassering en justitieel kader", "h (B)"),
    "justitieelKaderNaDetentie": ("Justitieel kader na detentie", "h (B)"),
    "brpAdresNaDetentie": ("Adres na detentie (BRP)", "a"),
    "verblijfadresNaOntslag": ("Verblijfadres na ontslag", "a"),
    "problemen": ("Probleemstatus per leefgebied", "o"),
    "acties": ("Afgesproken acties", "o"),
    "gewensteActie": ("Gewenste acties van de gemeente", "o"),
    "bijzonderheden": ("Bijzonderheden", "n"),
    "overigeBijzonderheden": ("Overige bijzonderheden", "n"),
    "notitiesMmd": ("Notities van de medewerker maatschappelijke dienstverlening", "n, o"),
    "miVragenBasis": ("Managementinformatie bij de screening", "o"),
    "miVragenOntslag": ("Managementinformatie bij ontslag", "o"),
    "medewerkerMmd": ("Contactgegevens van de medewerker van de PI (geen gegevens over betrokkene)", "–"),
    "gemeentelijkContactpersoon": ("Contactgegevens van de gemeente (geen gegevens over betrokkene)", "–"),
}
_NOT_SHOWN = frozenset({"berichtkop", "datum"})  #: the header and the form's date: about the message, not the person

#: the sections each type may hold (its XSD, in order): what a report names when no copy is left
TYPE_SECTIONS: dict[str, tuple[str, ...]] = {
    "meldingsbericht": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "detentie", "bijzonderheden",
                        "medewerkerMmd"),
    "gemeenteblad": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "aanvullendePersoonsgegevens",
                     "identiteitsbewijs", "inkomenOpleidingSchulden", "huisvesting", "zorg", "bijzonderheden",
                     "gewensteActie", "gemeentelijkContactpersoon"),
    "basisdocument": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "detentie", "voorblad",
                      "identiteitsbewijs", "inkomenWerkDagbesteding", "schulden", "huisvesting", "zorg",
                      "reclasseringJustitieelKader", "overigeBijzonderheden", "notitiesMmd", "miVragenBasis"),
    "overdrachtsdocument": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "gemeenteVanVestiging",
                            "detentie", "voorblad", "identiteitsbewijs", "inkomenWerkDagbesteding", "schulden",
                            "huisvesting", "zorg", "reclasseringJustitieelKader", "overigeBijzonderheden",
                            "notitiesMmd", "miVragenOntslag"),
    "ontslagbericht": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "gemeenteVanVestiging",
                       "brpAdresNaDetentie", "aanvangDetentie", "ontslagdatum", "justitieelKaderNaDetentie",
                       "miVragenOntslag", "bijzonderheden", "medewerkerMmd"),
    "spoedontslagbericht": ("penitentiaireInrichting", "persoon", "gemeenteVanHerkomst", "gemeenteVanVestiging",
                            "aanvangDetentie", "tijdstipInvrijheidstelling", "reden", "toelichting", "problemen",
                            "verblijfadresNaOntslag", "acties", "medewerkerMmd"),
}

SOURCE_LABELS = {"sealed": "verzegelde kopie (geopend met de eigen sleutel)", "inbox": "kopie in de inbox",
                 "type": "geen leesbare kopie meer (bewaartermijn of afscherming): de categorieën van het berichttype"}


# -- the access overview


@dataclass
class Entry:
    """One message about the subject, as far as the gateway still knows it."""

    direction: str  #: outbound | inbound
    message_id: str
    type: str | None = None
    sender: str | None = None  #: party code: the origin
    sender_name: str | None = None
    recipient: str | None = None
    recipient_name: str | None = None
    dossier: str | None = None
    state: str | None = None  #: outbound: the store's state; inbound: accepted | refused
    created_at: datetime | None = None
    received_at: datetime | None = None  #: outbound: picked up from the outbox; inbound: arrived
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    acknowledged_at: datetime | None = None
    sections: list[str] = field(default_factory=list)
    source: str = "type"  #: sealed | inbox | type (see SOURCE_LABELS)
    on_record: bool = True  #: False: the metadata itself is gone (retention purge)
    erased_at: datetime | None = None
    kept_dates: list[str] = field(default_factory=list)  #: deadline_facts columns kept for the chain's deadlines


@dataclass
class AccessReport:
    subject_ref: str  #: the first 16 hex digits of the subject hash (what the audit trail names)
    bsn_masked: str
    generated_at: datetime
    officer: str
    own_party: str
    own_party_name: str | None
    entries: list[Entry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"messages": len(self.entries),
                "outbound": sum(e.direction == "outbound" for e in self.entries),
                "inbound": sum(e.direction == "inbound" for e in self.entries)}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for e in d["entries"]:
            for k, v in e.items():
                if isinstance(v, datetime):
                    e[k] = v.isoformat()
            e["purpose"] = PURPOSES.get(e["type"] or "")
            e["categories"] = [{"section": s, "label": SECTIONS.get(s, (s, ""))[0],
                                "covenant": SECTIONS.get(s, ("", ""))[1]} for s in e["sections"]]
        d["generated_at"] = self.generated_at.isoformat()
        d["counts"] = self.counts()
        return d


def party_name(parties: Any, code: str | None) -> str | None:
    """The registry name of a party code ("pi:PI-VUGHT", "gemeente:0599"), None when unknown."""
    if not code or ":" not in code:
        return None
    kind, _, key = code.partition(":")
    if kind == "pi":
        found = parties.institutions.get(key)
    elif kind == "gemeente":
        found = parties.municipalities.get(key)
    else:
        return None
    return None if found is None else found.name


def _index_tx(conn: Connection, subject: str) -> list[tuple[str, str, datetime | None]]:
    """(direction, message id, erased_at) of every message about ``subject``, each once, oldest first."""
    seen: dict[tuple[str, str], datetime | None] = {}
    for direction, mid, erased_at in conn.execute(
            select(si.direction, si.message_id, si.erased_at).where(si.subject == subject).order_by(si.id)):
        key = (direction, mid)
        seen[key] = seen.get(key) or erased_at
    return [(d, mid, at) for (d, mid), at in seen.items()]


@dataclass
class _Found:
    """What the store holds about the subject's messages, read inside the erasure's write transaction (so
    under the writer lock: ``Store.subjects_messages`` would read outside it)."""

    rows: list[tuple[str, str, datetime | None]]  #: (direction, message id, erased_at)
    outs: dict[str, Any]  #: message id -> messages row
    seals: dict[str, tuple[bytes, datetime]]  #: message id -> (sealed entity, sealed_at)
    ins: dict[str, Any]  #: message id -> inbound row
    dates: dict[tuple[str, str], list[str]]  #: (direction, id) -> the deadline_facts columns holding a date


def _facts_tx(conn: Connection, subject: str) -> _Found:
    rows = _index_tx(conn, subject)
    out_ids = [mid for d, mid, _ in rows if d == "outbound"]
    in_ids = [mid for d, mid, _ in rows if d == "inbound"]
    found = _Found(rows, {}, {}, {}, {})
    for chunk in _chunks(out_ids):
        found.outs.update((r.message_id, r) for r in conn.execute(select(messages).where(m.message_id.in_(chunk))))
        found.seals.update((r.message_id, (bytes(r.entity), r.sealed_at)) for r in conn.execute(
            select(sealed.c.message_id, sealed.c.entity, sealed.c.sealed_at).where(sealed.c.message_id.in_(chunk))))
    for chunk in _chunks(in_ids):
        found.ins.update((r.message_id, r) for r in conn.execute(select(inbound).where(inbound.c.message_id.in_(chunk))))
    wanted = {(d, mid) for d, mid, _ in rows}
    for chunk in _chunks([mid for _, mid, _ in rows]):
        for r in conn.execute(select(deadline_facts).where(deadline_facts.c.message_id.in_(chunk))):
            kept = [name for name in _FACT_LABELS if r._mapping[name] is not None]
            if kept and (r.direction, r.message_id) in wanted:
                found.dates[(r.direction, r.message_id)] = kept
    return found


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    """Bounded IN lists (SQLite's variable limit)."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


#: deadline_facts: what each column keeps (detention data, cat. m (B)) for the chain's deadlines
_FACT_LABELS = {"start": "aanvang detentie", "status": "status (preventief gehecht / veroordeeld)",
                "expected_release": "verwachte einddatum", "verdict": "datum vonnis", "release_day": "ontslagdatum"}


def _sections_of(xml: bytes) -> tuple[list[str], datetime | None]:
    """The top-level sections present (in order, once each) and the header's creation time."""
    from lxml import etree

    from gateway.messages.safe_parse import parse_message_bytes

    root = parse_message_bytes(xml).getroot()
    names: list[str] = []
    created = None
    for child in root:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if name == "berichtkop":
            stamp = next((c.text for c in child if isinstance(c.tag, str)
                          and etree.QName(c).localname == "aanmaaktijdstip"), None)
            try:
                created = datetime.fromisoformat(stamp.strip()).astimezone(timezone.utc) if stamp else None
            except ValueError:
                created = None
        elif name not in _NOT_SHOWN and name not in names:
            names.append(name)
    return names, created


def _open_own(entity: bytes, sealed_at: datetime, identity: Any, trust: Any) -> bytes | None:
    """The XML of an own sealed copy, or None when it cannot be opened (key rolled over, certificate gone)."""
    from gateway.crypto.errors import CryptoError
    from gateway.crypto.open import open_sealed

    code = None
    for at in (None, sealed_at):  # now; else as it was when sealed (the own certificate may have expired since)
        try:
            return open_sealed(entity, identity, trust, at=at).xml
        except CryptoError as e:
            code = e.code
    log.warning("subject.copy_unreadable", code=code)
    return None


def _read_copy(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _fill_from_copy(entry: Entry, xml: bytes | None, source: str) -> None:
    from gateway.messages.safe_parse import InputRejected

    if xml is None:
        return
    try:
        entry.sections, created = _sections_of(xml)
    except InputRejected:
        return
    entry.source = source
    entry.created_at = entry.created_at or created


def _copies_tx(conn: Connection, out_ids: list[str], in_ids: list[str]) -> tuple[dict, dict]:
    """The own sealed copies (entity, sealed_at) and the inbox paths of these messages."""
    seals: dict[str, tuple[bytes, datetime]] = {}
    inbox: dict[str, str | None] = {}
    for chunk in _chunks(out_ids):
        seals.update((r.message_id, (bytes(r.entity), r.sealed_at)) for r in conn.execute(
            select(sealed.c.message_id, sealed.c.entity, sealed.c.sealed_at).where(sealed.c.message_id.in_(chunk))))
    for chunk in _chunks(in_ids):
        inbox.update((mid, path) for mid, path in conn.execute(
            select(inbound.c.message_id, inbound.c.inbox_path).where(inbound.c.message_id.in_(chunk))))
    return seals, inbox


def _build(indexed: list[Any], seals: dict, inbox: dict, dates: dict, *, identity: Any, trust: Any,
           parties: Any, own_party: str) -> list[Entry]:
    """Entries from ``Store.subjects_messages`` rows (each message once); runs in a thread: opening sealed
    copies is CPU work."""
    entries: dict[tuple[str, str], Entry] = {}
    for r in indexed:
        key = (r.direction, r.message_id)
        if key in entries:  # indexed twice (two subject rows): one entry, erased if either says so
            entries[key].erased_at = entries[key].erased_at or r.erased_at
            continue
        e = entries[key] = Entry(r.direction, r.message_id, type=r.type, sender=r.sender,
                                 recipient=r.recipient if r.direction == "outbound" else own_party,
                                 dossier=r.dossier, state=r.state, created_at=r.created_at,
                                 received_at=r.received_at, sent_at=r.sent_at, delivered_at=r.delivered_at,
                                 acknowledged_at=r.acknowledged_at, erased_at=r.erased_at,
                                 kept_dates=dates.get(key, []))
        e.on_record = r.state is not None  # the outer join found no message row: purged
        if not e.on_record:
            e.recipient = None
        elif r.direction == "outbound" and r.message_id in seals:
            _fill_from_copy(e, _open_own(*seals[r.message_id], identity, trust), "sealed")
        elif r.direction == "inbound":
            _fill_from_copy(e, _read_copy(inbox.get(r.message_id)), "inbox")
        if e.source == "type":
            e.sections = list(TYPE_SECTIONS.get(e.type or "", ()))
        e.sender_name, e.recipient_name = party_name(parties, e.sender), party_name(parties, e.recipient)
    return list(entries.values())


async def _kept_dates(store: Store, indexed: list[Any]) -> dict[tuple[str, str], list[str]]:
    """(direction, id) -> the detention dates kept for the chain's deadlines (``Store.deadline_facts``)."""
    out: dict[tuple[str, str], list[str]] = {}
    for direction in ("outbound", "inbound"):
        ids = [r.message_id for r in indexed if r.direction == direction]
        for mid, facts in (await store.deadline_facts(direction, ids)).items():
            kept = [name for name in _FACT_LABELS if getattr(facts, name, None) is not None]
            if kept:
                out[(direction, mid)] = kept
    return out


async def access_report(store: Store, *, subject: str, bsn: str, officer: str, identity: Any, trust: Any,
                        parties: Any, own_party: str, origin: str, now: datetime | None = None) -> AccessReport:
    """The art. 13.3 overview of ``subject`` (audited as ``subject.access``; ``bsn`` only to show it masked)."""
    indexed = await store.subjects_messages(subject)
    seals, inbox = await store.run_read(_copies_tx, [r.message_id for r in indexed if r.direction == "outbound"],
                                        [r.message_id for r in indexed if r.direction == "inbound"])
    dates = await _kept_dates(store, indexed)
    entries = await asyncio.to_thread(_build, indexed, seals, inbox, dates, identity=identity, trust=trust,
                                      parties=parties, own_party=own_party)
    report = AccessReport(subject[:16], masked(bsn), now or datetime.now(timezone.utc), officer, own_party,
                          party_name(parties, own_party), entries)
    counts = report.counts()
    await store.audit(action="subject.access", object=report.subject_ref,
                      result=" ".join(f"{k}={v}" for k, v in counts.items()), origin=origin, actor=officer)
    log.info("subject.access", subject=report.subject_ref, officer=officer, origin=origin, **counts)
    return report


# -- HTML and PDF

_STYLE = """
@page{size:A4;margin:18mm}
body{font-family:"DejaVu Sans",Arial,sans-serif;font-size:10pt;color:#111;margin:0}
h1{font-size:15pt} h2{font-size:12pt;margin-top:1.2em;border-bottom:1px solid #999}
table{border-collapse:collapse;width:100%;margin:.4em 0;page-break-inside:auto}
tr{page-break-inside:avoid} td,th{border:1px solid #aaa;padding:.2em .4em;text-align:left;vertical-align:top}
th{background:#eee} .small{font-size:8.5pt;color:#333} ul{margin:.2em 0;padding-left:1.2em}
"""


def _when(at: datetime | None) -> str:
    return "–" if at is None else escape(at.astimezone(timezone.utc).strftime("%d-%m-%Y %H:%M UTC"))


def _party(code: str | None, name: str | None) -> str:
    if not code:
        return "onbekend"
    return escape(code) + (f"<br><span class='small'>{escape(name)}</span>" if name else "")


def _categories(e: Entry) -> str:
    items = "".join(f"<li>{escape(SECTIONS.get(s, (s, ''))[0])} <span class='small'>({escape(s)}; cat. "
                    f"{escape(SECTIONS.get(s, ('', '?'))[1])})</span></li>" for s in e.sections)
    if not e.sections:
        items = "<li>niet bekend: het bericht is niet gelezen en het berichttype is onbekend</li>"
    if e.kept_dates:
        items += ("<li>Bewaard voor de bewaking van de termijnen: "
                  + escape(", ".join(_FACT_LABELS[k] for k in e.kept_dates)) + " <span class='small'>(cat. m (B))"
                  "</span></li>")
    note = escape(SOURCE_LABELS[e.source])
    if e.erased_at is not None:
        note += f"; afgeschermd op {_when(e.erased_at)}"
    return f"<ul>{items}</ul><span class='small'>Bron: {note}</span>"


_DIRECTION = {"outbound": "verzonden", "inbound": "ontvangen"}


def report_body(report: AccessReport) -> str:
    """The overview as an HTML fragment (headings h2 and below): the dashboard embeds this."""
    own = _party(report.own_party, report.own_party_name)
    parts = [f"<p id='subject-meta'>Betrokkene: BSN {escape(report.bsn_masked)} (gemaskeerd). Opgesteld op "
             f"{_when(report.generated_at)} door {escape(report.officer)} (functionaris), uit de administratie van "
             f"de berichtengateway van {own}. Kenmerk van het verzoek: {escape(report.subject_ref)}.</p>"]
    if not report.entries:
        parts.append("<p id='no-messages'><strong>Er zijn in de administratie van deze gateway geen berichten over "
                     "deze persoon gevonden.</strong> De gateway heeft dus geen persoonsgegevens van betrokkene "
                     "verzonden of ontvangen, of die zijn na afloop van de bewaartermijn verwijderd.</p>")
        return "".join(parts)
    types = sorted({e.type for e in report.entries if e.type})
    parts.append("<h2>a. Doeleinden</h2><p>" + escape(MAIN_PURPOSE) + "</p>")
    parts.append("<table id='purposes'><thead><tr><th>bericht</th><th>doel</th></tr></thead><tbody>" + "".join(
        f"<tr><td>{escape(t)}</td><td>{escape(PURPOSES.get(t, 'onbekend berichttype'))}</td></tr>" for t in types)
        + "</tbody></table>")
    parts.append("<h2>b. Gegevens en categorieën van gegevens, per bericht</h2><p class='small'>Per bericht de "
                 "onderdelen die het bevatte, met de categorie van artikel 6.3 van het privacyconvenant (B: "
                 "bijzonder persoonsgegeven). De inhoud zelf staat niet in dit overzicht.</p>")
    rows = []
    for e in report.entries:
        if not e.on_record:
            rows.append(f"<tr><td>{escape(e.message_id)}</td><td>{_DIRECTION[e.direction]}</td>"
                        "<td colspan='5'>De gegevens van dit bericht zijn na afloop van de bewaartermijn "
                        "verwijderd.</td></tr>")
            continue
        dates = (f"aangemaakt {_when(e.created_at)}<br>"
                 + (f"aangeboden {_when(e.received_at)}<br>verzonden {_when(e.sent_at)}<br>afgeleverd "
                    f"{_when(e.delivered_at)}<br>ontvangst bevestigd {_when(e.acknowledged_at)}"
                    if e.direction == "outbound" else f"ontvangen {_when(e.received_at)}"))
        rows.append(f"<tr><td>{escape(e.message_id)}<br><span class='small'>dossier {escape(e.dossier or '–')}"
                    f"</span></td><td>{_DIRECTION[e.direction]}<br>{escape(e.type or '')}<br><span class='small'>"
                    f"status {escape(e.state or '–')}</span></td><td>{_party(e.sender, e.sender_name)}</td>"
                    f"<td>{_party(e.recipient, e.recipient_name)}</td><td>{dates}</td><td>{_categories(e)}</td></tr>")
    parts.append("<table id='messages'><thead><tr><th>bericht</th><th>soort</th><th>herkomst (afzender)</th>"
                 "<th>ontvanger</th><th>data</th><th>gegevens en categorieën</th></tr></thead><tbody>"
                 + "".join(rows) + "</tbody></table>")
    recipients = sorted({(e.recipient, e.recipient_name) for e in report.entries if e.recipient},
                        key=lambda p: p[0] or "")
    origins = sorted({(e.sender, e.sender_name) for e in report.entries if e.sender}, key=lambda p: p[0] or "")
    parts.append("<h2>c. Ontvangers</h2><ul id='recipients'>" + "".join(
        f"<li>{_party(c, n)}</li>" for c, n in recipients) + "</ul>")
    parts.append("<h2>d. Herkomst</h2><ul id='origins'>" + "".join(f"<li>{_party(c, n)}</li>" for c, n in origins)
                 + "</ul>")
    parts.append("<h2>e. Werkwijze</h2><p class='small'>De gateway verzendt berichten tussen penitentiaire "
                 "inrichtingen en gemeenten ondertekend en versleuteld (S/MIME), alleen aan de partij die volgens "
                 "het samenwerkingsmodel recht heeft op het bericht, en houdt van elk bericht kenmerken, partijen, "
                 "data en status bij, zonder de inhoud. Een leesbare kopie wordt kort bewaard; de versleutelde "
                 "kopie en de kenmerken ten hoogste vijf jaar na het laatste bericht in het dossier (artikel "
                 "9).</p>")
    return "".join(parts)


def render_html(report: AccessReport) -> str:
    """A complete, self-contained, printable document (no external assets; a CSP forbids loading any)."""
    return ("<!doctype html><html lang='nl'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<title>Overzicht persoonsgegevens (art. 13.3)</title>"
            f"<style>{_STYLE}</style></head><body><h1>Overzicht van verwerkte persoonsgegevens</h1>"
            "<p class='small'>Antwoord op een verzoek om inzage, artikel 13.3 van het privacyconvenant "
            "(Samenwerkingsmodel Nazorg).</p>" + report_body(report) + "</body></html>")


class PdfError(RuntimeError):
    pass


def chromium_binary() -> str:
    """``NAZORG_CHROMIUM`` when set, else the first of chromium / chromium-browser on PATH."""
    chosen = os.environ.get("NAZORG_CHROMIUM")
    for candidate in ([chosen] if chosen else ["chromium", "chromium-browser"]):
        if found := shutil.which(candidate):
            return found
    raise PdfError(f"no headless Chromium found ({'NAZORG_CHROMIUM names no program' if chosen else ''}"
                   f"{'' if chosen else 'install Debian package chromium, or set NAZORG_CHROMIUM'})")


def render_pdf(html: str, out: Path, *, timeout: float = 90.0) -> None:
    """Print ``html`` to ``out`` with headless Chromium, in a private folder that is removed after."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="nazorg-subject-") as tmp:  # mode 0700: the HTML is personal data
        page = Path(tmp) / "overzicht.html"
        page.write_text(html, encoding="utf-8")
        target = Path(tmp) / "overzicht.pdf"
        args = [binary, "--headless", "--disable-gpu", "--no-pdf-header-footer", "--no-first-run",
                f"--user-data-dir={Path(tmp) / 'profile'}", f"--print-to-pdf={target}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        try:
            done = subprocess.run([*args, page.as_uri()], capture_output=True, timeout=timeout,
                                  env={**os.environ, "HOME": tmp})
        except subprocess.TimeoutExpired:
            raise PdfError(f"Chromium did not finish within {timeout:.0f} s") from None
        if done.returncode != 0 or not target.is_file() or not target.read_bytes().startswith(b"%PDF"):
            raise PdfError(f"Chromium could not print the PDF (exit {done.returncode})")
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_private(out, target.read_bytes())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_html(path: Path, html: str) -> None:
    """Mode 0600: the overview names the person's messages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, html.encode("utf-8"))


# -- erasure


@dataclass
class EraseItem:
    direction: str
    message_id: str
    type: str | None
    state: str | None  #: None: no metadata row left
    spool: str | None = None  #: paths / flags of what is still there
    sealed: bool = False
    quarantine: str | None = None
    inbox: str | None = None
    erased_at: datetime | None = None
    dates: bool = False  #: a deadline_facts row with detention dates

    @property
    def in_flight(self) -> bool:
        return self.direction == "outbound" and self.state is not None and self.state not in SETTLED


@dataclass
class ErasePlan:
    subject_ref: str
    include_inbox: bool
    items: list[EraseItem] = field(default_factory=list)
    done: bool = False  #: the erasure ran (False: a plan, or refused)
    removed: dict[str, int] = field(default_factory=lambda: {"spool": 0, "sealed": 0, "quarantine": 0, "inbox": 0,
                                                             "dates": 0})

    @property
    def in_flight(self) -> list[EraseItem]:
        return [i for i in self.items if i.in_flight]

    def holds(self) -> dict[str, int]:
        """What is still kept, per kind (the inbox only counted when it is to be removed)."""
        return {"spool": sum(i.spool is not None for i in self.items), "sealed": sum(i.sealed for i in self.items),
                "quarantine": sum(i.quarantine is not None for i in self.items),
                "inbox": sum(i.inbox is not None for i in self.items), "dates": sum(i.dates for i in self.items)}

    def result(self) -> str:
        if self.in_flight:
            return f"refused: in flight={len(self.in_flight)} messages={len(self.items)}"
        removed = " ".join(f"{k}={v}" for k, v in self.removed.items())
        return f"messages={len(self.items)} removed {removed}" + (" (with inbox)" if self.include_inbox else "")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for item in d["items"]:
            item["erased_at"] = item["erased_at"].isoformat() if item["erased_at"] else None
            item["spool"], item["quarantine"] = item["spool"] is not None, item["quarantine"] is not None
            item["inbox"] = item["inbox"] is not None
        d["in_flight"] = [i.message_id for i in self.in_flight]
        return d


def _plan_tx(conn: Connection, subject: str, include_inbox: bool) -> ErasePlan:
    found = _facts_tx(conn, subject)
    plan = ErasePlan(subject[:16], include_inbox)
    for direction, mid, erased_at in found.rows:
        dates = (direction, mid) in found.dates
        if direction == "outbound":
            r = found.outs.get(mid)
            plan.items.append(EraseItem(direction, mid, r.type if r else None, r.state if r else None,
                                        spool=r.spool_path if r else None, sealed=mid in found.seals,
                                        erased_at=erased_at, dates=dates))
        else:
            r = found.ins.get(mid)
            plan.items.append(EraseItem(direction, mid, r.type if r else None, r.outcome if r else None,
                                        quarantine=r.quarantine_path if r else None,
                                        inbox=r.inbox_path if r and include_inbox else None, erased_at=erased_at,
                                        dates=dates))
    return plan


async def plan_erase(store: Store, subject: str, *, include_inbox: bool = False) -> ErasePlan:
    """What ``erase`` would remove (reads only; not audited)."""
    return await store.run_read(_plan_tx, subject, include_inbox)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    fsync_dir(path.parent)
    return 1


def _erase_tx(conn: Connection, store: Store, subject: str, include_inbox: bool, actor: str,
              origin: str) -> ErasePlan:
    plan = _plan_tx(conn, subject, include_inbox)  # again, inside the write lock: states may have moved
    if plan.in_flight:
        store.audit_in(conn, "subject.erase", plan.subject_ref, plan.result(), actor, origin)
        return plan
    now = store._now()
    # files first, inside the transaction (as the purge does): a failed commit leaves a row pointing at a
    # removed file, never a copy of the person's data without a row
    for item in plan.items:
        if item.spool is not None:
            plan.removed["spool"] += remove_plaintext(Path(item.spool))
            conn.execute(update(messages).where(m.message_id == item.message_id).values(spool_path=None))
        if item.sealed:
            plan.removed["sealed"] += conn.execute(
                delete(sealed).where(sealed.c.message_id == item.message_id)).rowcount
        if item.quarantine is not None:
            q = Path(item.quarantine)
            plan.removed["quarantine"] += _unlink(q)
            _unlink(q.with_suffix(".json"))  # its report beside it
            conn.execute(update(inbound).where(inbound.c.message_id == item.message_id).values(quarantine_path=None))
        if item.inbox is not None:
            x = Path(item.inbox)
            plan.removed["inbox"] += _unlink(x)
            _unlink(x.with_suffix(".json"))  # a .json without its .xml is no message: both go
            conn.execute(update(inbound).where(inbound.c.message_id == item.message_id).values(inbox_path=None))
        if item.dates:  # detention dates read from the message (cat. m, special data): shielded with it
            plan.removed["dates"] += conn.execute(delete(deadline_facts).where(
                deadline_facts.c.direction == item.direction, deadline_facts.c.message_id == item.message_id)).rowcount
    conn.execute(update(subject_index).where(si.subject == subject, si.erased_at.is_(None)).values(erased_at=now))
    for item in plan.items:
        item.erased_at = item.erased_at or now
    plan.done = True
    store.audit_in(conn, "subject.erase", plan.subject_ref, plan.result(), actor, origin)
    return plan


async def erase(store: Store, subject: str, *, actor: str, origin: str, include_inbox: bool = False) -> ErasePlan:
    """Remove the subject's copies (see the module docstring); refused (``done`` False) while any is in flight.

    Idempotent: a second run finds nothing left to remove and says so (and is audited too)."""
    plan = await store.run_write(_erase_tx, store, subject, include_inbox, actor, origin)
    log.info("subject.erase", subject=plan.subject_ref, officer=actor, origin=origin, done=plan.done,
             messages=len(plan.items), in_flight=len(plan.in_flight), **plan.removed)
    return plan
