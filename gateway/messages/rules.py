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

from .catalogue import Layout, MessageType, SchemaVersion, element_parents, sequence_layouts
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
#: where a scanned name may instead be read directly (see ``_Plan.fixed``): the root's children, detentie's,
#: and persoon's last (geboortedatum)
_FIXED_PLACES = ((), ("detentie",), ("persoon",))
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


class _Placement:
    """The children of a schema-valid parent by local name, named from one XSD layout
    (``catalogue.sequence_layouts``) instead of from their tags.

    Reading a child's tag costs lxml a new "{namespace}name" string (~2.5k instructions, callgrind), and the
    rules run on every message. In a plain sequence a required child's name follows from its place, so a tag
    is read only where a loose child may be missing or repeated, and not at all when the count of children
    says that every loose child is there, or none is. Without a layout (choices, nested groups), every
    child's tag is read. For a repeated name the dict holds the last child: no rule reads repeated children.
    """

    __slots__ = ("_layout", "_required", "_every")

    def __init__(self, ns: str, layout: Layout | None):
        self._layout = None if layout is None else tuple((name, ns + name, loose, repeats)
                                                         for name, loose, repeats in layout)
        self._required = self._every = None
        if layout is not None:
            self._required = tuple(name for name, loose, _ in layout if not loose)
            if not any(repeats for *_, repeats in layout):
                self._every = tuple(name for name, *_ in layout)

    def children(self, parent: etree._Element, n: int) -> dict[str, etree._Element]:
        """``n``: the length of the namespace part of a tag, for the fallback that reads every tag."""
        kids = list(parent)
        if self._layout is None:
            return {child.tag[n:]: child for child in kids}
        if len(kids) == len(self._required):
            return dict(zip(self._required, kids))
        if self._every is not None and len(kids) == len(self._every):
            return dict(zip(self._every, kids))
        out: dict[str, etree._Element] = {}
        particles = iter(self._layout)
        name, tag, loose, repeats = next(particles)
        for child in kids:
            if loose:
                actual = child.tag  # read once: each read makes a new string
                while loose and actual != tag:  # a loose particle not (or no longer) present: the next one
                    name, tag, loose, repeats = next(particles)
            out[name] = child
            if not repeats:
                name, tag, loose, repeats = next(particles, (None, None, False, False))
        return out


class _Plan:
    """What the index needs to know of one schema version, worked out from its XSD on first use."""

    __slots__ = ("ns", "n", "placements", "fixed", "scan_kinds", "scan_tags")

    def __init__(self, version: SchemaVersion):
        self.ns = "{" + version.namespace + "}"
        self.n = len(self.ns)
        layouts = sequence_layouts(version)
        self.placements = {name: _Placement(self.ns, layout) for name, layout in layouts.items()}
        parents = element_parents(version)  # every name below the root: what this type can hold
        names = [name for name in _SCANNED if name in parents]

        def once_at(place: tuple[str, ...], name: str) -> bool:
            """``name`` occurs at most once in that place's plain sequence: the index's dict holds it."""
            layout = layouts.get(place[-1] if place else version.type.value)
            return layout is not None and any(n == name and not repeats for n, _, repeats in layout)

        # a name found only at a place the index reads anyway is read there: each name given to the scan
        # costs ~2.4k instructions to prepare, and each one it finds ~3k more
        self.fixed = tuple((place, name, _SCANNED[name]) for name in names
                           if len(parents[name]) == 1 and (place := next(iter(parents[name]))) in _FIXED_PLACES
                           and once_at(place, name) and (place != ("persoon",) or name == "geboortedatum"))
        scanned = [name for name in names if name not in {name for _, name, _ in self.fixed}]
        self.scan_kinds = {self.ns + name: _SCANNED[name] for name in scanned}
        self.scan_tags = tuple("{*}" + name for name in scanned)

    def children(self, parent: etree._Element, name: str) -> dict[str, etree._Element]:
        placement = self.placements.get(name)
        if placement is None:
            placement = self.placements[name] = _Placement(self.ns, None)
        return placement.children(parent, self.n)


_UNREAD = object()


class MessageIndex:
    """One schema-valid message, indexed once for the rules and for reading its header.

    The rules run on every message and must stay cheap next to the XSD check
    (~50 µs for a 10 KB message). Every element touched from Python costs an
    lxml proxy object, every tag read a new string, and every tag given to a
    filtered ``iter`` costs about as much again to prepare (measured with
    callgrind: ~1.3k instructions per tag per call, ~1.5k per proxy, ~2.5k per
    tag read). So: children are named by their place in the XSD's sequence
    (``_Placement``), not by their tags; the header's party codes and texts
    are read once; the scanned names that sit at a place read anyway (the
    root's children, detentie's, persoon's birth date) are taken from there,
    and one C-level ``iter`` over the other scanned names that the message's
    type can hold (read from its XSD), written ``{*}name`` (the cheapest form
    to prepare; a schema-valid message has one namespace), collects the rest
    in document order; the recipient field is looked up once.
    """

    __slots__ = ("root", "ns", "_n", "_plan", "top", "kop", "pi_code", "persoon", "scan", "created", "_recipient",
                 "_parties", "_texts", "_detentie")

    #: root tag -> the plan of its schema version
    _plans: dict[str, _Plan] = {}

    def __init__(self, root: etree._Element, version: SchemaVersion):
        self.root = root
        plan = self._plans.get(version.root_tag)
        if plan is None:
            plan = self._plans[version.root_tag] = _Plan(version)
        self._plan, self.ns, self._n = plan, plan.ns, plan.n
        # berichtkop, penitentiaireInrichting (code first) and persoon open every message (XSD;
        # tests/messages/test_rule_locations.py)
        self.top = plan.children(root, version.type.value)
        self.kop = plan.children(root[0], "berichtkop")
        self.pi_code = root[1][0]
        self.persoon = root[2]
        self._detentie: dict[str, etree._Element] | None = None
        kinds = plan.scan_kinds
        self.scan = self._at_fixed_places()
        if plan.scan_tags:
            self.scan += [(kinds[el.tag], el) for el in root.iter(*plan.scan_tags)]
        self._recipient: tuple | None = None
        self._parties: dict[str, tuple[etree._Element, bool, str] | None] = {}
        self._texts: dict[str, str | None] = {}
        self.created = datetime.fromisoformat(self.header_text("aanmaaktijdstip").strip())

    def detentie(self) -> dict[str, etree._Element] | None:
        """The children of ``detentie`` by local name (read once), None in a message without it."""
        if self._detentie is None:
            el = self.top.get("detentie")
            self._detentie = {} if el is None else self._plan.children(el, "detentie")
        return self._detentie or None

    def _at_fixed_places(self) -> list[tuple[int, etree._Element]]:
        """(kind of check, element) for the scanned names read at their fixed places (``_Plan.fixed``)."""
        out = []
        for place, name, kind in self._plan.fixed:
            if not place:
                el = self.top.get(name)
            elif place == ("detentie",):
                el = (self.detentie() or {}).get(name)
            else:
                el = self.persoon[-1]  # geboortedatum is persoon's last field (XSD)
            if el is not None:
                out.append((kind, el))
        return out

    def header_text(self, name: str) -> str | None:
        """The text of a header field as written (read once), None when the field is absent."""
        text = self._texts.get(name, _UNREAD)  # not try/except: the optional fields are often absent
        if text is _UNREAD:
            el = self.kop.get(name)
            text = self._texts[name] = el.text if el is not None else None
        return text

    def party(self, name: str) -> tuple[etree._Element, bool, str] | None:
        """The header's ``afzender`` or ``ontvanger``: (its code element, whether it is a piCode, the code as
        written), read once; None when absent."""
        found = self._parties.get(name, _UNREAD)
        if found is _UNREAD:
            holder = self.kop.get(name)
            code = holder[0] if holder is not None else None
            found = self._parties[name] = None if code is None else (code, code.tag[self._n:] == "piCode", code.text)
        return found

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

    def children(self, el: etree._Element, name: str) -> dict[str, etree._Element]:
        """The children of ``el``, an element called ``name``, by local name."""
        return self._plan.children(el, name)

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
    declared = doc.header_text("berichttype")
    if declared != mtype.value:
        out.append(_problem("header-type", f"the header says berichttype '{declared}' but the message is a {mtype.value}",
                            kop["berichttype"], declared))
    own_id = doc.header_text("berichtId")
    for name in ("antwoordOp", "vervangt"):
        ref = doc.header_text(name)
        if ref is not None and ref == own_id:
            out.append(_problem("self-reference", f"{name} names this message's own berichtId; it must name an earlier message", kop[name], ref))
    if mtype is MessageType.GEMEENTEBLAD and "antwoordOp" not in kop:
        out.append(_problem("reply-missing", "a gemeenteblad answers a meldingsbericht: berichtkop/antwoordOp must give that message's berichtId",
                            doc.root[0]))
    if doc.created > now + CLOCK_SKEW:
        el = kop["aanmaaktijdstip"]
        out.append(_problem("created-in-future", "aanmaaktijdstip lies in the future; check the sending system's clock", el, el.text))

    # The sender must be the party the content speaks for.
    sender, sender_is_pi, sender_code = doc.party("afzender")
    sender_kind = PartyKind.INSTITUTION if sender_is_pi else PartyKind.MUNICIPALITY
    if sender_kind is not SENDER_KIND[mtype]:
        wanted = "a PI (piCode)" if SENDER_KIND[mtype] is PartyKind.INSTITUTION else "a municipality (gemeentecode)"
        out.append(_problem("sender", f"a {mtype.value} is sent by {wanted}", sender, sender_code))
    elif sender_kind is PartyKind.INSTITUTION:
        pi = doc.pi_code.text
        if sender_code != pi:
            out.append(_problem("sender", f"afzender {sender_code} is not the PI named in the message ({pi})", sender, sender_code))
    else:
        origin = doc.top["gemeenteVanHerkomst"].text
        if sender_code != origin:
            out.append(_problem("sender", f"a gemeenteblad comes from the municipality of origin ({origin}), not from {sender_code}", sender, sender_code))

    # A header may name the recipient, but only the one the content names.
    named = doc.party("ontvanger")
    if named is not None:
        named, named_is_pi, named_code = named
        rule = RECIPIENT_FIELDS[mtype]
        found = doc.recipient_field(mtype)
        derived = found[0].text.strip() if found else None
        named_kind = PartyKind.INSTITUTION if named_is_pi else PartyKind.MUNICIPALITY
        if named_kind is not rule.kind or named_code != derived:
            out.append(_problem("recipient", f"ontvanger {named_code} disagrees with the content: a {mtype.value} goes to "
                                f"{rule.describe()} ({derived})", named, named_code))
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
    parties_named = [(doc.pi_code, True, doc.pi_code.text)]
    for name in ("afzender", "ontvanger"):
        party = doc.party(name)
        if party is not None:
            parties_named.append(party)
    for el, is_pi, code in parties_named:
        if not is_pi:
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
    parts = doc.detentie() if detentie is not None else doc.top
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
    care = doc.children(doc.top["voorblad"], "voorblad").get("dagelijkseZorgMinderjarigeKinderen")
    care = doc.child(care, "ja")
    if care is not None:
        count = care[0]  # aantalKinderen comes first (XSD), the birth dates follow
        dates = len(care) - 1
        if int(count.text) != dates:
            out.append(_problem("child-count", f"aantalKinderen is {count.text} but {dates} geboortedatumKind are given", count, count.text))
    return out
