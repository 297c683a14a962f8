"""Domain rules, checked in Python after the XSD has accepted the structure.

XSD 1.0 says what a message looks like; these rules say whether it makes
sense: the BSN passes the 11-proef, the municipality and PI codes exist on the
day we route, the dates tell a possible story, the header agrees with the
content, and the overdrachtsdocument is only sent for long-stay detainees.
(XSD 1.1 assertions could say some of this, but cost 50-70x more, cannot be
loaded by lxml and give worse messages: research-notes.md.)

The rules trust the tree to be schema-valid: they may assume required
elements exist and values have their lexical form. Each returns Problems; none
raises on bad content. Registry lookups go through ``PartyChecks`` so that
this room does not import routing.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import date, datetime, timedelta
from typing import Protocol

from lxml import etree

from .catalogue import BY_ROOT_TAG, MessageType, SchemaVersion, declared_element_names
from .entitlement import RECIPIENT_FIELDS, SENDER_KIND, PartyKind
from .problems import Problem

#: a message may be stamped slightly ahead of our clock (skew between hosts)
CLOCK_SKEW = timedelta(minutes=5)
#: long-stay: a sentence remainder of four months or more after the verdict
LONG_STAY_MONTHS = 4


class PartyChecks(Protocol):
    """The registries, as far as the rules need them (implemented in gateway.routing)."""

    def municipality_problem(self, code: str, on: date) -> str | None: ...

    def institution_problem(self, code: str) -> str | None: ...


def bsn_is_valid(bsn: str) -> bool:
    """The 11-proef: 9·d1 + 8·d2 + … + 2·d8 − 1·d9 is a multiple of 11, and not 0."""
    if len(bsn) != 9 or not bsn.isascii() or not bsn.isdigit():
        return False
    d = bsn.encode()  # runs on every message: spelled out, it costs a tenth of a generator over the digits
    total = 9 * d[0] + 8 * d[1] + 7 * d[2] + 6 * d[3] + 5 * d[4] + 4 * d[5] + 3 * d[6] + 2 * d[7] - d[8] - 48 * 43
    return total != 0 and total % 11 == 0


_IBAN_LETTERS = {ord(c): str(10 + i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def iban_is_valid(iban: str) -> bool:
    """ISO 13616 check digits: the rearranged number (A=10 … Z=35) mod 97 equals 1."""
    if not (15 <= len(iban) <= 34) or not iban.isascii() or not iban.isalnum() or not iban.isupper():
        return False
    return int((iban[4:] + iban[:4]).translate(_IBAN_LETTERS)) % 97 == 1


def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, monthrange(year, month)[1]))


def element_path(el: etree._Element) -> str:
    """Slash path of local names from the root, with [n] where siblings share a name."""
    steps = []
    while el is not None:
        name = etree.QName(el).localname
        parent = el.getparent()
        if parent is not None:
            same = [s for s in parent if s.tag == el.tag]
            if len(same) > 1:
                name += f"[{same.index(el) + 1}]"
        steps.append(name)
        el = parent
    return "/".join(reversed(steps))


def _problem(code: str, message: str, el: etree._Element | None, value: str | None = None) -> Problem:
    if el is None:
        return Problem(code, message)
    return Problem(code, message, el.sourceline, element_path(el), value)


def _date(el: etree._Element) -> date:
    return date.fromisoformat(el.text.strip())


# What the one scan over the whole tree picks up, by local name, and which check each gets.
# Fields with a fixed place are read there instead (cheaper than finding them):
# the header's parties (berichtkop/afzender|ontvanger, the only users of piCode and
# gemeentecode), persoon/burgerservicenummer and penitentiaireInrichting/code;
# tests/messages/test_rule_locations.py holds the XSDs to those places.
_IBAN, _MUNICIPALITY, _PAST_DATE, _CODED = range(4)
_SCANNED: dict[str, int] = {
    "iban": _IBAN,
    **dict.fromkeys(("gemeenteVanHerkomst", "gemeenteVanVestiging", "gemeente", "overgedragenAanGemeente"), _MUNICIPALITY),
    **dict.fromkeys(("datum", "aanvangDetentie", "geboortedatum", "geboortedatumKind", "datumVonnis", "afgerondOp"), _PAST_DATE),
    **dict.fromkeys(("soort", "reden", "prioriteit", "verblijfplaats"), _CODED),
}
#: coded values that need a closer look (everything else passes the scan untouched)
_ADDRESS_VALUES = frozenset({"daklozeMetBriefadres", "opAnderAdres"})
#: (parent, child) where the value "anders" must be explained in a sibling <toelichting>
_NEEDS_EXPLANATION = {
    ("situatieVoorDetentie", "soort"), ("verwachteSituatieNaDetentie", "soort"), ("verzorger", "soort"),
    ("uitkering", "soort"), ("laatsteUitkering", "soort"), ("redenNietGerealiseerd", "reden"),
    ("redenGeenOnderdak", "reden"), ("nee", "reden"), ("spoedontslagbericht", "reden"), ("ja", "prioriteit"),
}
#: basisdocument tabs 4-9: required once the detainee is screened, left out when not (too short, foreigner)
_SCREENING_TABS = ("identiteitsbewijs", "inkomenWerkDagbesteding", "schulden", "huisvesting", "zorg",
                   "reclasseringJustitieelKader")


class MessageIndex:
    """One schema-valid message, indexed once for the rules and for reading its header.

    The rules run on every message and must stay cheap next to the XSD check
    (~50 µs for a 10 KB message). Every element touched from Python costs an
    lxml proxy object and a new tag string, and every tag given to a filtered
    ``iter`` costs about as much again to prepare (measured with callgrind:
    ~1.3k instructions per tag per call, ~1.5k per proxy). So: the root's
    children (5-12) are read once, without a filter, into a dict and the fixed
    places the rules use (header, PI, person); one C-level ``iter`` over the
    scanned names that the message's type can hold (read from its XSD),
    written ``{*}name`` (the cheapest form to prepare; a schema-valid message
    has one namespace), collects the rest in document order; the recipient
    field is looked up once.
    """

    __slots__ = ("root", "ns", "_n", "top", "kop", "pi_code", "persoon", "scan", "created", "_recipient")

    def recipient_field(self, mtype: MessageType) -> tuple[etree._Element, tuple[str, ...]] | None:
        """The element that names the recipient under the entitlement table, and its path (looked up once)."""
        if self._recipient is not None:
            return self._recipient or None
        found: tuple = ()
        for path in RECIPIENT_FIELDS[mtype].fields:
            el = self.top.get(path[0])
            for step in path[1:]:
                el = self.child(el, step)
            if el is not None and el.text:
                found = (el, path)
                break
        self._recipient = found
        return found or None

    #: root tag -> ({full tag: kind of check}, the tags to scan for): the scanned names this type can hold
    _scan_plan: dict[str, tuple[dict[str, int], tuple[str, ...]]] = {}

    def __init__(self, root: etree._Element):
        self.root = root
        ns = self.ns = root.tag[: root.tag.index("}") + 1]
        n = self._n = len(ns)
        plan = self._scan_plan.get(root.tag)
        if plan is None:
            declared = declared_element_names(BY_ROOT_TAG[root.tag])
            names = [name for name in _SCANNED if name in declared]
            plan = self._scan_plan[root.tag] = ({ns + name: _SCANNED[name] for name in names},
                                                tuple("{*}" + name for name in names))
        kinds, scan_tags = plan
        children = list(root)
        # berichtkop, penitentiaireInrichting (code first) and persoon open every message (XSD;
        # tests/messages/test_rule_locations.py)
        header, institution, self.persoon = children[0], children[1], children[2]
        self.top = {child.tag[n:]: child for child in children[1:]}
        self.kop = {child.tag[n:]: child for child in header}
        self.pi_code = institution[0]
        self.scan = [(kinds[el.tag], el) for el in root.iter(*scan_tags)] if scan_tags else []
        self._recipient: tuple | None = None
        self.created = datetime.fromisoformat(self.kop["aanmaaktijdstip"].text.strip())

    def children(self, el: etree._Element) -> dict[str, etree._Element]:
        """Direct children by local name; for a repeated name, the last one: no rule reads repeated children."""
        n = self._n
        return {child.tag[n:]: child for child in el}

    def child(self, el: etree._Element | None, name: str) -> etree._Element | None:
        if el is None:
            return None
        tag = self.ns + name
        for c in el:
            if c.tag == tag:
                return c
        return None

    def local(self, el: etree._Element) -> str:
        return el.tag[self._n:]


def check_rules(schema: SchemaVersion, doc: MessageIndex, parties: PartyChecks,
                today: date, now: datetime) -> list[Problem]:
    """All domain rules for one schema-valid message (indexed once by the caller); empty means it passes."""
    mtype = schema.type
    problems = _header_rules(mtype, doc, now)
    problems += _scan_rules(doc, parties, today)
    problems += _date_rules(mtype, doc)
    if mtype is MessageType.BASISDOCUMENT:
        problems += _basisdocument_rules(doc)
    return problems


def _header_rules(mtype: MessageType, doc: MessageIndex, now: datetime) -> list[Problem]:
    out: list[Problem] = []
    kop = doc.kop
    declared = kop["berichttype"]
    if declared.text != mtype.value:
        out.append(_problem("header-type", f"the header says berichttype '{declared.text}' but the message is a {mtype.value}",
                            declared, declared.text))
    own_id = kop["berichtId"].text
    for name in ("antwoordOp", "vervangt"):
        ref = kop.get(name)
        if ref is not None and ref.text == own_id:
            out.append(_problem("self-reference", f"{name} names this message's own berichtId; it must name an earlier message", ref, ref.text))
    if mtype is MessageType.GEMEENTEBLAD and "antwoordOp" not in kop:
        out.append(_problem("reply-missing", "a gemeenteblad answers a meldingsbericht: berichtkop/antwoordOp must give that message's berichtId",
                            doc.root[0]))
    if doc.created > now + CLOCK_SKEW:
        el = kop["aanmaaktijdstip"]
        out.append(_problem("created-in-future", "aanmaaktijdstip lies in the future; check the sending system's clock", el, el.text))

    # The sender must be the party the content speaks for.
    sender = kop["afzender"][0]
    sender_kind = PartyKind.INSTITUTION if doc.local(sender) == "piCode" else PartyKind.MUNICIPALITY
    if sender_kind is not SENDER_KIND[mtype]:
        wanted = "a PI (piCode)" if SENDER_KIND[mtype] is PartyKind.INSTITUTION else "a municipality (gemeentecode)"
        out.append(_problem("sender", f"a {mtype.value} is sent by {wanted}", sender, sender.text))
    elif sender_kind is PartyKind.INSTITUTION:
        pi = doc.pi_code.text
        if sender.text != pi:
            out.append(_problem("sender", f"afzender {sender.text} is not the PI named in the message ({pi})", sender, sender.text))
    else:
        origin = doc.top["gemeenteVanHerkomst"].text
        if sender.text != origin:
            out.append(_problem("sender", f"a gemeenteblad comes from the municipality of origin ({origin}), not from {sender.text}", sender, sender.text))

    # A header may name the recipient, but only the one the content names.
    named = kop.get("ontvanger")
    if named is not None:
        named = named[0]
        rule = RECIPIENT_FIELDS[mtype]
        found = doc.recipient_field(mtype)
        derived = found[0].text.strip() if found else None
        named_kind = PartyKind.INSTITUTION if doc.local(named) == "piCode" else PartyKind.MUNICIPALITY
        if named_kind is not rule.kind or named.text != derived:
            out.append(_problem("recipient", f"ontvanger {named.text} disagrees with the content: a {mtype.value} goes to "
                                f"{rule.describe()} ({derived})", named, named.text))
    return out


def _scan_rules(doc: MessageIndex, parties: PartyChecks, today: date) -> list[Problem]:
    """The per-element checks, in one pass over the scanned elements."""
    out: list[Problem] = []
    latest = doc.created.date().isoformat()  # schema-valid dates are YYYY-MM-DD: compare as text
    municipality_problem = parties.municipality_problem
    for kind, el in doc.scan:
        value = el.text
        if kind == _MUNICIPALITY:
            reason = municipality_problem(value, today)
            if reason:
                out.append(_problem("municipality", reason, el, value))
        elif kind == _PAST_DATE:
            if value > latest:
                out.append(_problem("date-order", f"{doc.local(el)} {value} lies after the message was created ({latest})", el, value))
        elif kind == _CODED:
            if value == "anders":
                parent = el.getparent()
                pair = (doc.local(parent), doc.local(el))
                if pair in _NEEDS_EXPLANATION and doc.child(parent, "toelichting") is None:
                    out.append(_problem("explanation-missing", f"'{pair[0]}/{pair[1]}' is 'anders': say what in <toelichting>", el, value))
            elif value in _ADDRESS_VALUES and doc.child(el.getparent(), "adres") is None:
                out.append(_problem("address-missing", f"'{value}' needs the address in <adres>", el, value))
        elif not iban_is_valid(value):  # kind == _IBAN
            out.append(_problem("iban-check", "the IBAN's check digits are wrong (typing error?)", el, value))

    bsn = doc.persoon[0]  # the BSN, when known, is persoon's first field (XSD)
    if bsn.tag == doc.ns + "burgerservicenummer" and not bsn_is_valid(bsn.text):
        out.append(_problem("bsn-check", "the burgerservicenummer fails the 11-proef (typing error?)", bsn, bsn.text))
    parties_named = [doc.pi_code]
    for name in ("afzender", "ontvanger"):
        party = doc.kop.get(name)
        if party is not None:
            parties_named.append(party[0])
    for el in parties_named:
        code = el.text
        if doc.local(el) == "gemeentecode":
            reason = municipality_problem(code, today)
            if reason:
                out.append(_problem("municipality", reason, el, code))
        else:
            reason = parties.institution_problem(code)
            if reason:
                out.append(_problem("institution", reason, el, code))
    return out


def _date_rules(mtype: MessageType, doc: MessageIndex) -> list[Problem]:
    out: list[Problem] = []
    detentie = doc.top.get("detentie")
    parts = doc.children(detentie) if detentie is not None else doc.top
    start_el = parts.get("aanvangDetentie")
    start = _date(start_el) if start_el is not None else None
    birth = doc.persoon[-1]  # geboortedatum is persoon's last field (XSD)
    if start and _date(birth) >= start:
        out.append(_problem("date-order", f"geboortedatum {birth.text} is not before the start of detention ({start})", birth, birth.text))

    if detentie is not None:
        status_el, end_el, verdict_el = parts["status"], parts.get("einddatumDetentie"), parts.get("datumVonnis")
        status = status_el.text
        if status == "preventiefGehecht" and end_el is not None:
            out.append(_problem("end-date-pretrial", "pre-trial detention (preventiefGehecht) has no known end date: leave einddatumDetentie out",
                                end_el, end_el.text))
        if status == "veroordeeld" and end_el is None:
            out.append(_problem("end-date-missing", "a sentence (veroordeeld) has an end date: einddatumDetentie is required", status_el))
        if end_el is not None and _date(end_el) < start:
            out.append(_problem("date-order", f"einddatumDetentie {end_el.text} lies before the start of detention ({start})", end_el, end_el.text))
        if end_el is not None and verdict_el is not None and _date(verdict_el) > _date(end_el):
            out.append(_problem("date-order", f"datumVonnis {verdict_el.text} lies after the end of detention ({end_el.text})", verdict_el, verdict_el.text))
        if mtype is MessageType.OVERDRACHTSDOCUMENT:
            out += _long_stay_rules(detentie, status_el, end_el, verdict_el)

    if mtype is MessageType.ONTSLAGBERICHT:
        release = doc.top["ontslagdatum"]
        if _date(release) < start:
            out.append(_problem("date-order", f"ontslagdatum {release.text} lies before the start of detention ({start})", release, release.text))
    elif mtype is MessageType.SPOEDONTSLAGBERICHT:
        moment = doc.top["tijdstipInvrijheidstelling"]
        if datetime.fromisoformat(moment.text).date() < start:
            out.append(_problem("date-order", f"tijdstipInvrijheidstelling lies before the start of detention ({start})", moment, moment.text))
    return out


def _long_stay_rules(detentie, status_el, end_el, verdict_el) -> list[Problem]:
    if status_el.text != "veroordeeld":
        return [_problem("transfer-status", "an overdrachtsdocument is only for convicted long-stay detainees; status is "
                         f"'{status_el.text}'", status_el, status_el.text)]
    if end_el is None:
        return []  # reported as end-date-missing
    if verdict_el is None:
        return [_problem("long-stay", "an overdrachtsdocument needs datumVonnis to show a sentence remainder of "
                         f"{LONG_STAY_MONTHS} months or more", detentie)]
    threshold = add_months(_date(verdict_el), LONG_STAY_MONTHS)
    if _date(end_el) < threshold:
        return [_problem("long-stay", f"the sentence remainder after the verdict ({verdict_el.text} to {end_el.text}) is under "
                         f"{LONG_STAY_MONTHS} months: not a long-stay detainee, so no overdrachtsdocument", end_el, end_el.text)]
    return []


def _basisdocument_rules(doc: MessageIndex) -> list[Problem]:
    out: list[Problem] = []
    mi = doc.top["miVragenBasis"][0]
    if doc.local(mi) == "gescreend":
        missing = [tab for tab in _SCREENING_TABS if tab not in doc.top]
        if missing:
            out.append(_problem("screening-incomplete", "the detainee was screened (miVragenBasis/gescreend), so the basisdocument "
                                f"must carry every screening tab; missing: {', '.join(missing)}", mi))
    care = doc.child(doc.child(doc.top["voorblad"], "dagelijkseZorgMinderjarigeKinderen"), "ja")
    if care is not None:
        count = care[0]  # aantalKinderen comes first (XSD), the birth dates follow
        dates = len(care) - 1
        if int(count.text) != dates:
            out.append(_problem("child-count", f"aantalKinderen is {count.text} but {dates} geboortedatumKind are given", count, count.text))
    return out
