"""Property-based tests: the 11-proef against an independent implementation, and
"the recipient a message routes to is always the one its content names"."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree
from stdnum.nl import bsn as stdnum_bsn

from paths import DOSSIER, EXAMPLES
from gateway.messages.catalogue import MessageType
from gateway.messages.entitlement import PartyKind
from gateway.messages.rules import add_months, bsn_is_valid, iban_is_valid

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


@given(nine_digits)
def test_bsn_rule_agrees_with_python_stdnum(candidate):
    """For every 9-digit string our 11-proef agrees with python-stdnum's (which also refuses all zeros)."""
    assert bsn_is_valid(candidate) == stdnum_bsn.is_valid(candidate)


@given(st.text(alphabet="0123456789", min_size=8, max_size=8), st.integers(0, 8), st.integers(1, 9))
def test_bsn_rule_catches_every_single_digit_error(head, position, delta):
    """The 11-proef detects any one mistyped digit: a valid BSN with one digit changed fails."""
    check = sum((9 - i) * int(d) for i, d in enumerate(head)) % 11  # the last digit that makes it pass
    assume(check <= 9 and head != "00000000")
    bsn = head + str(check)
    assert bsn_is_valid(bsn)
    changed = bsn[:position] + str((int(bsn[position]) + delta) % 10) + bsn[position + 1:]
    assert not bsn_is_valid(changed)


@given(st.text(max_size=12))
def test_bsn_rule_refuses_anything_but_nine_ascii_digits(text):
    """Separators, padding, other scripts' digits: never valid (stdnum would strip or pad them)."""
    if len(text) != 9 or not all(c in "0123456789" for c in text):
        assert not bsn_is_valid(text)


@given(st.text(alphabet="0123456789", min_size=10, max_size=10), st.sampled_from(["ABNA", "INGB", "RABO", "TRIO"]),
       st.integers(1, 99))
def test_iban_rule_accepts_computed_check_digits_only(account, bank, delta):
    """An NL IBAN whose check digits are computed per ISO 13616 passes; other check digits fail
    (unless congruent mod 97, which ISO 13616 cannot tell apart)."""
    base = bank + account + "NL00"
    check = 98 - int("".join(str(int(c, 36)) for c in base)) % 97
    assert iban_is_valid(f"NL{check:02d}{bank}{account}")
    other = (check + delta) % 100
    assert iban_is_valid(f"NL{other:02d}{bank}{account}") == (other % 97 == check % 97)


@given(st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 1, 1)), st.integers(0, 48))
def test_add_months_lands_in_the_right_month(d, months):
    """Adding n months moves the month by n and never overshoots the day of month."""
    result = add_months(d, months)
    assert (result.year * 12 + result.month) - (d.year * 12 + d.month) == months
    assert result.day <= d.day


# ---- recipient = the party the content names --------------------------------------------

#: written out independently of gateway.messages.entitlement: the source's rule in plain words
EXPECTED_RECIPIENT = {
    "meldingsbericht": ("gemeente", "herkomst"),
    "basisdocument": ("gemeente", "herkomst"),
    "overdrachtsdocument": ("gemeente", "vestiging"),
    "ontslagbericht": ("gemeente", "vestiging"),
    "spoedontslagbericht": ("gemeente", "vestiging-else-herkomst"),
    "gemeenteblad": ("pi", "pi"),
}


def _examples_by_type() -> dict[str, list]:
    by_type: dict[str, list] = {}
    for f in sorted((EXAMPLES / "valid").rglob("*.xml")):
        by_type.setdefault(etree.QName(etree.parse(str(f)).getroot()).localname, []).append(f)
    return by_type


EXAMPLES_BY_TYPE = _examples_by_type()


def test_every_type_has_examples_for_the_property():
    """The property below draws from the valid examples: every message type must be there."""
    assert set(EXAMPLES_BY_TYPE) == {t.value for t in MessageType}


def _retarget(root, herkomst: str, vestiging: str | None, pi: str, ontvanger: tuple[str, str] | None):
    ns = "{" + etree.QName(root).namespace + "}"
    kind = etree.QName(root).localname
    origin = root.find(ns + "gemeenteVanHerkomst")  # optional in overdracht and ontslag
    if origin is not None:
        origin.text = herkomst
    settle = root.find(ns + "gemeenteVanVestiging")
    if kind == "spoedontslagbericht":  # optional there: present exactly when drawn
        if settle is not None:
            root.remove(settle)
        if vestiging is not None:
            root.find(ns + "gemeenteVanHerkomst").addnext(etree.Element(ns + "gemeenteVanVestiging"))
            root.find(ns + "gemeenteVanVestiging").text = vestiging
    elif settle is not None:
        settle.text = vestiging
    root.find(f"{ns}penitentiaireInrichting/{ns}code").text = pi
    sender = root.find(f"{ns}berichtkop/{ns}afzender")[0]
    sender.text = herkomst if kind == "gemeenteblad" else pi
    kop = root.find(ns + "berichtkop")
    old = kop.find(ns + "ontvanger")
    if old is not None:
        kop.remove(old)
    if ontvanger:
        party = etree.Element(ns + "ontvanger")
        etree.SubElement(party, ns + ontvanger[0]).text = ontvanger[1]
        kop.find(ns + "afzender").addnext(party)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_recipient_is_always_the_party_the_content_names(validator, parties, data):
    """Whatever municipalities and PI a message names, the validator routes it to exactly the one
    its type's rule picks from the content; a header ontvanger that disagrees gets it refused."""
    in_force = [m.code for m in parties.municipalities.in_force(date(2026, 11, 29))]
    pis = [i.code for i in parties.institutions if i.active]
    kind = data.draw(st.sampled_from(sorted(EXAMPLES_BY_TYPE)))
    example = data.draw(st.sampled_from(EXAMPLES_BY_TYPE[kind]))
    herkomst = data.draw(st.sampled_from(in_force))
    vestiging = data.draw(st.sampled_from(in_force))
    if kind == "spoedontslagbericht" and data.draw(st.booleans()):
        vestiging = None
    pi = data.draw(st.sampled_from(pis))
    party_kind, field = EXPECTED_RECIPIENT[kind]
    expected = {"herkomst": herkomst, "vestiging": vestiging, "pi": pi,
                "vestiging-else-herkomst": vestiging or herkomst}[field]
    # a header recipient: none, the right one, or any other party
    claim = data.draw(st.sampled_from(["none", "right", "other"]))
    ontvanger = None
    if claim == "right":
        ontvanger = ("piCode" if party_kind == "pi" else "gemeentecode", expected)
    elif claim == "other":
        other = data.draw(st.sampled_from([c for c in in_force if c != expected] + [p for p in pis if p != expected]))
        ontvanger = ("piCode" if other.startswith("PI-") else "gemeentecode", other)

    root = etree.parse(str(example)).getroot()
    _retarget(root, herkomst, vestiging, pi, ontvanger)
    verdict = validator.validate_bytes(etree.tostring(root))

    if claim == "other":
        assert [p.code for p in verdict.problems] == ["recipient"]
        return
    assert verdict.valid, [str(p) for p in verdict.problems]
    assert verdict.message.recipient.kind == PartyKind(party_kind)
    assert verdict.message.recipient.code == expected
