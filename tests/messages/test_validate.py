"""The validator's verdict: the facts of a valid message, and how failures at each stage are reported."""

from __future__ import annotations

from lxml import etree

from paths import DOSSIER, EXAMPLES
from gateway.messages.catalogue import BY_ROOT_TAG, MessageType, XSD_DIR
from gateway.messages.entitlement import RECIPIENT_FIELDS, Party, PartyKind
from gateway.messages.problems import Problem


def test_valid_message_carries_the_routing_facts(validator):
    """A valid gemeenteblad names its sender (the municipality), recipient (the PI), dossier and the melding it answers."""
    melding = validator.validate_file(DOSSIER / "01-meldingsbericht.xml").message
    blad = validator.validate_file(DOSSIER / "02-gemeenteblad.xml").message
    assert melding.type is MessageType.MELDINGSBERICHT and blad.type is MessageType.GEMEENTEBLAD
    assert melding.sender == Party(PartyKind.INSTITUTION, "PI-VUGHT")
    assert melding.recipient == Party(PartyKind.MUNICIPALITY, "0599")
    assert blad.sender == Party(PartyKind.MUNICIPALITY, "0599")
    assert blad.recipient == Party(PartyKind.INSTITUTION, "PI-VUGHT")
    assert blad.replies_to == melding.message_id
    assert blad.dossier == melding.dossier
    assert melding.created.tzinfo is not None


def test_the_dossier_moves_from_origin_to_settlement(validator):
    """Screening goes to the municipality of origin, transfer and release to the municipality of settlement."""
    recipients = [validator.validate_file(f).message.recipient.code for f in sorted(DOSSIER.glob("*.xml"))]
    assert recipients == ["0599", "PI-VUGHT", "0599", "0344", "0344"]


def test_every_type_has_a_schema_and_a_recipient_rule():
    """The catalogue and the entitlement table cover the same six types, and every XSD file exists."""
    assert {v.type for v in BY_ROOT_TAG.values()} == set(MessageType) == set(RECIPIENT_FIELDS)
    for version in BY_ROOT_TAG.values():
        assert (XSD_DIR / version.xsd_file).is_file()
        schema_doc = etree.parse(str(XSD_DIR / version.xsd_file)).getroot()
        assert schema_doc.get("targetNamespace") == version.namespace


def test_unknown_namespace_names_the_known_ones(validator):
    """A root in an unknown version's namespace is refused, listing the versions this gateway reads."""
    data = (DOSSIER / "01-meldingsbericht.xml").read_bytes().replace(b"meldingsbericht:1.0", b"meldingsbericht:9.9")
    verdict = validator.validate_bytes(data)
    assert [p.code for p in verdict.problems] == ["unknown-message-type"]
    assert "urn:nl:nazorg:xsd:meldingsbericht:1.0" in verdict.problems[0].message
    assert verdict.declared_type == "meldingsbericht" and verdict.declared_id  # still says what it claimed to be


def test_input_rejection_becomes_a_problem(validator, tmp_path):
    """Failures before parsing are verdicts too, never exceptions."""
    empty = tmp_path / "x.xml"
    empty.write_bytes(b"")
    verdict = validator.validate_file(empty)
    assert not verdict.valid and verdict.problems[0].code == "empty"
    assert validator.validate_file(tmp_path / "missing.xml").problems[0].code == "unreadable"


def test_schema_problem_reports_value_and_readable_words(validator):
    """An XSD failure names the element path, the value, and the expected form in words, without namespaces."""
    data = (DOSSIER / "01-meldingsbericht.xml").read_bytes()
    root = etree.fromstring(data)
    ns = root.tag[: root.tag.index("}") + 1]
    root.find(f"{ns}gemeenteVanHerkomst").text = "GM0599"
    verdict = validator.validate_bytes(etree.tostring(root))
    problem = verdict.problems[0]
    assert (problem.code, problem.path, problem.value) == ("schema", "meldingsbericht/gemeenteVanHerkomst", "GM0599")
    assert "municipality code is 4 digits" in problem.message
    assert "{" not in problem.message


def test_problem_for_log_carries_no_values():
    """What may be logged of a problem: code, path, line — never the offending value or the message text."""
    p = Problem("bsn-check", "the burgerservicenummer fails the 11-proef", 12, "meldingsbericht/persoon/burgerservicenummer", "999998226")
    assert "999998226" not in repr(p.for_log())
    assert p.for_log() == {"code": "bsn-check", "path": "meldingsbericht/persoon/burgerservicenummer", "line": 12}


def test_a_message_is_checked_against_today_for_municipalities(parties):
    """A code is judged on the day of validation: after a 1 January merger the same message is refused, naming the successor."""
    from dataclasses import replace
    from datetime import date, datetime, timezone

    from gateway.messages.validate import Validator
    from gateway.routing.municipalities import Municipality, MunicipalityRegistry
    from gateway.routing.parties import Parties

    # The operator installs next year's list ahead of time: Rotterdam (0599) merges into a made-up 9001 on 2027-01-01.
    merged = [replace(m, ends=date(2027, 1, 1), successor="9001") if m.code == "0599" else m for m in parties.municipalities]
    merged.append(Municipality("9001", "Rijnmond", "Zuid-Holland", date(2027, 1, 1), None, None))
    future = Parties(MunicipalityRegistry(merged), parties.institutions)
    data = (DOSSIER / "01-meldingsbericht.xml").read_bytes()

    def on(day: datetime):
        return Validator(future, clock=lambda: day).validate_bytes(data)

    assert on(datetime(2026, 12, 31, 22, 59, tzinfo=timezone.utc)).valid  # 23:59 in Amsterdam, still 2026
    after = on(datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc))  # midnight in Amsterdam
    assert [p.code for p in after.problems] == ["municipality", "municipality"]  # header ontvanger and gemeenteVanHerkomst
    assert all("9001" in p.message and "2027-01-01" in p.message for p in after.problems)

    # one long-running validator (the daemon's) sees the day change, and a clock set back, on its next message
    clock = iter([datetime(2026, 12, 31, 22, 59, tzinfo=timezone.utc), datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc),
                  datetime(2026, 12, 31, 22, 59, 59, tzinfo=timezone.utc), datetime(2027, 3, 1, tzinfo=timezone.utc)])
    one = Validator(future, clock=lambda: next(clock))
    assert [one.validate_bytes(data).valid for _ in range(4)] == [True, False, True, False]


def test_deep_nesting_is_refused_by_name(validator):
    """A message nested 100 levels deep is refused as too deep, not as a schema puzzle."""
    deep = b'<meldingsbericht xmlns="urn:nl:nazorg:xsd:meldingsbericht:1.0">' + b"<a>" * 100 + b"</a>" * 100 + b"</meldingsbericht>"
    assert [p.code for p in validator.validate_bytes(deep).problems] == ["too-deep"]
    unknown = b"<x>" + b"<a>" * 100 + b"</a>" * 100 + b"</x>"
    assert [p.code for p in validator.validate_bytes(unknown).problems] == ["too-deep"]
