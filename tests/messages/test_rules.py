"""Every domain rule, broken on purpose: each case takes a valid example, changes one
thing, and expects exactly that rule (and only that rule) to reject it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from lxml import etree

from paths import DOSSIER, EXAMPLES

MELDING = DOSSIER / "01-meldingsbericht.xml"
BLAD = DOSSIER / "02-gemeenteblad.xml"
BASIS = DOSSIER / "03-basisdocument.xml"
OVERDRACHT = DOSSIER / "04-overdrachtsdocument.xml"
ONTSLAG = DOSSIER / "05-ontslagbericht.xml"


class Edit:
    """Namespace-free edits on a parsed example."""

    def __init__(self, root: etree._Element):
        self.root = root
        self.ns = "{" + etree.QName(root).namespace + "}"

    def el(self, path: str) -> etree._Element:
        found = self.root.find("/".join(self.ns + s for s in path.split("/")))
        assert found is not None, f"example lacks {path}"
        return found

    def has(self, path: str) -> bool:
        return self.root.find("/".join(self.ns + s for s in path.split("/"))) is not None

    def set(self, path: str, value: str) -> None:
        self.el(path).text = value

    def remove(self, path: str) -> None:
        el = self.el(path)
        el.getparent().remove(el)

    def add_after(self, path: str, name: str, value: str | None = None) -> etree._Element:
        anchor = self.el(path)
        new = etree.Element(self.ns + name)
        new.text = value
        anchor.addnext(new)
        return new

    def add_child(self, parent: str, name: str, value: str | None = None) -> etree._Element:
        new = etree.SubElement(self.el(parent), self.ns + name)
        new.text = value
        return new

    def id(self) -> str:
        return self.el("berichtkop/berichtId").text


def flip_last_digit(bsn: str) -> str:
    return bsn[:8] + str((int(bsn[8]) + 1) % 10)


def header_add(e: Edit, name: str, value: str | None = None) -> etree._Element:
    """Insert an optional header element in schema order."""
    order = ["berichtId", "berichttype", "schemaversie", "aanmaaktijdstip", "afzender", "ontvanger",
             "dossierreferentie", "antwoordOp", "vervangt"]
    kop = e.el("berichtkop")
    new = etree.Element(e.ns + name)
    new.text = value
    later = [c for c in kop if etree.QName(c).localname in order[order.index(name) + 1:]]
    (later[0].addprevious(new) if later else kop.append(new))
    return new


def ontvanger(e: Edit, kind: str, code: str) -> None:
    party = header_add(e, "ontvanger")
    etree.SubElement(party, e.ns + kind).text = code


def set_start(e: Edit, value: str) -> None:
    e.set("detentie/aanvangDetentie" if e.has("detentie") else "aanvangDetentie", value)


def detention(e: Edit, status: str, end: str | None = None, verdict: str | None = None) -> None:
    """Rewrite detentie in schema order: aanvangDetentie, status, einddatumDetentie?, datumVonnis?."""
    det = e.el("detentie")
    start = e.el("detentie/aanvangDetentie").text
    for child in list(det):
        det.remove(child)
    for name, value in (("aanvangDetentie", start), ("status", status), ("einddatumDetentie", end), ("datumVonnis", verdict)):
        if value is not None:
            etree.SubElement(det, e.ns + name).text = value


def housing(e: Edit, soort: str) -> None:
    """Make the situation before detention `soort`, with no details."""
    path = "huisvesting/situatieVoorDetentie"
    for child in list(e.el(path)):
        if etree.QName(child).localname != "soort":
            e.el(path).remove(child)
    e.set(path + "/soort", soort)


def children(e: Edit, count: int, dates: int) -> None:
    zorg = e.el("voorblad/dagelijkseZorgMinderjarigeKinderen")
    for c in list(zorg):
        zorg.remove(c)
    ja = etree.SubElement(zorg, e.ns + "ja")
    etree.SubElement(ja, e.ns + "aantalKinderen").text = str(count)
    for i in range(dates):
        etree.SubElement(ja, e.ns + "geboortedatumKind").text = f"201{i}-05-01"


@dataclass
class Case:
    id: str
    example: object
    edit: Callable[[Edit], None]
    code: str
    path_end: str  # the reported path must end with this
    says: str = ""  # a word the message must contain


CASES = [
    Case("bsn fails 11-proef", MELDING, lambda e: e.set("persoon/burgerservicenummer", flip_last_digit(e.el("persoon/burgerservicenummer").text)),
         "bsn-check", "persoon/burgerservicenummer", "11-proef"),
    Case("iban check digits", BLAD, lambda e: e.set("inkomenOpleidingSchulden/bankrekening/ja/iban",
                                                     e.el("inkomenOpleidingSchulden/bankrekening/ja/iban").text[:-1] + "9"
                                                     if not e.el("inkomenOpleidingSchulden/bankrekening/ja/iban").text.endswith("9")
                                                     else e.el("inkomenOpleidingSchulden/bankrekening/ja/iban").text[:-1] + "8"),
         "iban-check", "iban", "IBAN"),
    Case("municipality ended, successor named", MELDING, lambda e: e.set("gemeenteVanHerkomst", "0003"),
         "municipality", "gemeenteVanHerkomst", "1979"),
    Case("municipality unknown", BASIS, lambda e: e.set("gemeenteVanHerkomst", "9999"),
         "municipality", "gemeenteVanHerkomst", "9999"),
    Case("municipality RNI is not routable", ONTSLAG, lambda e: e.set("gemeenteVanVestiging", "1999"),
         "municipality", "gemeenteVanVestiging", "1999"),
    Case("PI unknown", BLAD, lambda e: e.set("penitentiaireInrichting/code", "PI-NERGENS"),
         "institution", "penitentiaireInrichting/code", "PI-NERGENS"),
    Case("berichttype disagrees with root", MELDING, lambda e: e.set("berichtkop/berichttype", "basisdocument"),
         "header-type", "berichtkop/berichttype", "meldingsbericht"),
    Case("vervangt itself", BASIS, lambda e: header_add(e, "vervangt", e.id()),
         "self-reference", "berichtkop/vervangt", "own"),
    Case("gemeenteblad without antwoordOp", BLAD, lambda e: e.remove("berichtkop/antwoordOp"),
         "reply-missing", "berichtkop", "antwoordOp"),
    Case("created in the future", MELDING, lambda e: e.set("berichtkop/aanmaaktijdstip", "2027-01-01T09:00:00+01:00"),
         "created-in-future", "berichtkop/aanmaaktijdstip", "clock"),
    Case("melding sent by another PI", MELDING, lambda e: e.set("berichtkop/afzender/piCode", "PI-HAAGLANDEN"),
         "sender", "berichtkop/afzender/piCode", "PI-HAAGLANDEN"),
    Case("gemeenteblad sent by another municipality", BLAD, lambda e: e.set("berichtkop/afzender/gemeentecode", "0363"),
         "sender", "berichtkop/afzender/gemeentecode", "origin"),
    Case("ontvanger is not the municipality of origin", MELDING, lambda e: ontvanger(e, "gemeentecode", "0363"),
         "recipient", "berichtkop/ontvanger/gemeentecode", "gemeenteVanHerkomst"),
    Case("ontvanger of an overdracht is the municipality of origin", OVERDRACHT,
         lambda e: ontvanger(e, "gemeentecode", e.el("gemeenteVanHerkomst").text if e.has("gemeenteVanHerkomst") else "0599"),
         "recipient", "berichtkop/ontvanger/gemeentecode", "gemeenteVanVestiging"),
    Case("ontvanger of a gemeenteblad is a municipality", BLAD, lambda e: ontvanger(e, "gemeentecode", "0599"),
         "recipient", "berichtkop/ontvanger/gemeentecode", "penitentiaireInrichting/code"),
    Case("pre-trial with an end date", MELDING, lambda e: (e.set("detentie/status", "preventiefGehecht"),
                                                           e.has("detentie/einddatumDetentie") or e.add_after("detentie/status", "einddatumDetentie", "2026-12-01")),
         "end-date-pretrial", "detentie/einddatumDetentie", "preventiefGehecht"),
    Case("sentence without an end date", BASIS, lambda e: (e.set("detentie/status", "veroordeeld"), e.remove("detentie/einddatumDetentie")
                                                           if e.has("detentie/einddatumDetentie") else None,
                                                           e.remove("detentie/datumVonnis") if e.has("detentie/datumVonnis") else None),
         "end-date-missing", "detentie/status", "einddatumDetentie"),
    Case("end before start", OVERDRACHT, lambda e: (e.set("detentie/einddatumDetentie", "2025-09-01"),
                                                    e.set("detentie/datumVonnis", "2025-04-01")),
         "date-order", "detentie/einddatumDetentie", "before the start"),
    Case("born on the day detention began", MELDING, lambda e: e.set("persoon/geboortedatum", e.el("detentie/aanvangDetentie").text),
         "date-order", "persoon/geboortedatum", "not before"),
    Case("form dated after the message was created", BASIS, lambda e: e.set("voorblad/datum", "2026-11-01"),
         "date-order", "voorblad/datum", "after the message was created"),
    Case("release before start", ONTSLAG, lambda e: e.set("ontslagdatum", "2025-01-01"),
         "date-order", "ontslagdatum", "before the start"),
    Case("verdict after the end date", BASIS, lambda e: detention(e, "veroordeeld", end="2025-09-20", verdict="2025-09-25"),
         "date-order", "detentie/datumVonnis", "after the end"),
    Case("overdracht for a short stay", OVERDRACHT, lambda e: e.set("detentie/einddatumDetentie", "2026-03-09"),
         "long-stay", "detentie/einddatumDetentie", "4 months"),
    Case("overdracht without a verdict date", OVERDRACHT, lambda e: e.remove("detentie/datumVonnis"),
         "long-stay", "detentie", "datumVonnis"),
    Case("overdracht for a pre-trial detainee", OVERDRACHT, lambda e: (e.set("detentie/status", "preventiefGehecht"),
                                                                       e.remove("detentie/einddatumDetentie"), e.remove("detentie/datumVonnis")),
         "transfer-status", "detentie/status", "convicted"),
    Case("homeless with postal address but no address", BASIS, lambda e: housing(e, "daklozeMetBriefadres"),
         "address-missing", "huisvesting/situatieVoorDetentie/soort", "adres"),
    Case("housing 'anders' without explanation", BLAD, lambda e: housing(e, "anders"),
         "explanation-missing", "huisvesting/situatieVoorDetentie/soort", "toelichting"),
    Case("screened but a tab is missing", BASIS, lambda e: e.remove("schulden"),
         "screening-incomplete", "miVragenBasis/gescreend", "schulden"),
    Case("child count disagrees with birth dates", BASIS, lambda e: children(e, 3, 2),
         "child-count", "aantalKinderen", "3"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_rule_rejects_its_case(validator, case: Case):
    """The edited example fails for exactly the expected rule, at the expected place."""
    root = etree.parse(str(case.example)).getroot()
    edit = Edit(root)
    if edit.has("berichtkop/ontvanger"):  # optional; kept out so that changing a recipient field breaks one rule only
        edit.remove("berichtkop/ontvanger")
    case.edit(edit)
    verdict = validator.validate_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"), case.id)
    assert not verdict.valid
    codes = [p.code for p in verdict.problems]
    assert codes == [case.code], [str(p) for p in verdict.problems]
    problem = verdict.problems[0]
    assert problem.path.endswith(case.path_end), problem.path
    assert problem.line and problem.line > 0
    assert case.says in problem.message, problem.message
    assert "{urn:" not in problem.message


@pytest.mark.parametrize("example", [MELDING, BLAD, BASIS, OVERDRACHT, ONTSLAG], ids=lambda p: p.name)
def test_unedited_examples_pass(validator, example):
    """The base of every case is valid, so each case's failure is its edit's doing."""
    verdict = validator.validate_file(example)
    assert verdict.valid, [str(p) for p in verdict.problems]


def test_long_stay_boundary_is_four_calendar_months(validator):
    """A remainder of exactly four months is long-stay; a day less is not."""
    def verdict_for(end: str):
        root = etree.parse(str(OVERDRACHT)).getroot()
        e = Edit(root)
        e.set("detentie/datumVonnis", "2025-12-10")
        e.set("detentie/einddatumDetentie", end)
        return validator.validate_bytes(etree.tostring(root))
    assert verdict_for("2026-04-10").valid
    assert [p.code for p in verdict_for("2026-04-09").problems] == ["long-stay"]


def test_spoed_release_before_start_is_refused(validator):
    """An immediate release cannot precede the start of detention."""
    spoed = next((EXAMPLES / "valid").glob("*spoed*.xml"))
    root = etree.parse(str(spoed)).getroot()
    e = Edit(root)
    e.set("tijdstipInvrijheidstelling", "2001-01-01T10:00:00+01:00")
    verdict = validator.validate_bytes(etree.tostring(root))
    assert [p.code for p in verdict.problems] == ["date-order"]
