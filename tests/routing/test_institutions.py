"""Tests for the PI table (gateway/routing/institutions.py), its example config and gateway/routing/parties.py."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway.routing import parties as parties_module
from gateway.routing.institutions import CODE_PATTERN, PROJECT_ROOT, Institution, InstitutionRegistry
from gateway.routing.municipalities import MunicipalityRegistry, RegistryError
from gateway.routing.parties import Parties

EXAMPLE = PROJECT_ROOT / "config" / "institutions.toml"

ENTRY = """
[[institution]]
code = "PI-VUGHT"
name = "PI Vught"
location = "Nieuw Vosseveld"
place = "Vught"
"""


def write(tmp_path: Path, text: str, name: str = "institutions.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def example() -> InstitutionRegistry:
    return InstitutionRegistry.load(EXAMPLE)


# --------------------------------------------------------------------------- the example table


def test_example_table_loads(example):
    """config/institutions.toml loads: 8 entries, well-formed unique codes, PI Vught complete."""
    assert len(example) == 8
    codes = [inst.code for inst in example]
    assert len(set(codes)) == len(codes)
    assert all(CODE_PATTERN.fullmatch(c) for c in codes)
    vught = example.get("PI-VUGHT")
    assert vught == Institution(
        code="PI-VUGHT",
        name="PI Vught",
        location="Nieuw Vosseveld",
        place="Vught",
        phone="0800-555 0101",
        email="nazorg.vught@example.nl",
        postal_address="Postbus 90001, 9999 ZA Vught (fictitious)",
        visiting_address="Voorbeeldstraat 1, 9999 ZA Vught (fictitious)",
        active=True,
    )
    assert example.get("PI-HAAGLANDEN").location == "Scheveningen"


def test_example_contact_details_are_fictitious(example):
    """Every contact detail in the example is visibly fictitious (example.nl, 0800-555, 'fictitious')."""
    for inst in example:
        assert inst.email is None or inst.email.endswith("@example.nl"), inst
        assert inst.phone is None or inst.phone.startswith("0800-555 "), inst
        for address in (inst.postal_address, inst.visiting_address):
            assert address is None or address.endswith("(fictitious)"), inst
    header = EXAMPLE.read_text(encoding="utf-8").splitlines()[0]
    assert "EXAMPLE" in header and "REPLACE" in header


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("PI-VUGHT", None),
        ("PI-HAAGLANDEN", None),
        ("PI-XYZ", "PI code PI-XYZ is not in the configured PI table (config/institutions.toml)"),
        (
            "PI-EXAMPLE",
            "PI code PI-EXAMPLE (PI Voorbeeld (fictitious, inactive)) is marked inactive "
            "in the configured PI table (config/institutions.toml)",
        ),
    ],
)
def test_check(example, code, expected):
    """Known active codes pass; unknown and inactive codes get one operator sentence naming the table."""
    assert example.check(code) == expected


@pytest.mark.parametrize("bad", ["pi-vught", "PI-V", "PI-ABCDEFGHIJKLM", "VUGHT", "PI_VUGHT", "PI-VUGHT\n", "PI-VÜGHT", "", None, 7])
def test_check_malformed_codes(example, bad):
    """Codes outside ^PI-[A-Z0-9]{2,12}$ are called malformed, with the value quoted safely."""
    problem = example.check(bad)
    assert problem is not None and "is malformed" in problem
    assert "\n" not in problem


def test_container_protocol(example):
    """len, iteration in file order, and `in` by exact code."""
    assert [inst.code for inst in example][:2] == ["PI-VUGHT", "PI-HAAGLANDEN"]
    assert "PI-ZWOLLE" in example
    assert "pi-zwolle" not in example
    assert None not in example
    assert example.get("PI-NOPE") is None


def test_optional_keys_default(tmp_path):
    """Optional contact keys may be left out (None) and active defaults to true."""
    reg = InstitutionRegistry.load(write(tmp_path, ENTRY))
    inst = reg.get("PI-VUGHT")
    assert (inst.phone, inst.email, inst.postal_address, inst.visiting_address, inst.active) == (
        None,
        None,
        None,
        None,
        True,
    )
    assert reg.check("PI-VUGHT") is None


# --------------------------------------------------------------------------- TOML errors

SECOND = """
[[institution]]
code = "PI-ZWOLLE"
name = "PI Zwolle"
location = "Zwolle"
place = "Zwolle"
"""


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ('fax = "0800-555 0000"\n', ["entry 2 (PI-ZWOLLE)", "line 8", "unknown key 'fax'"]),
        ('Phone = "0800-555 0000"\n', ["entry 2 (PI-ZWOLLE)", "unknown key 'Phone'"]),
        ("active = \"yes\"\n", ["entry 2 (PI-ZWOLLE)", "key 'active' must be true or false"]),
        ('email = "nazorg at example.nl"\n', ["entry 2 (PI-ZWOLLE)", "key 'email'", "not an e-mail address"]),
        ('phone = "call us"\n', ["entry 2 (PI-ZWOLLE)", "key 'phone'", "not a telephone number"]),
        ('postal_address = ""\n', ["entry 2 (PI-ZWOLLE)", "key 'postal_address' must be a non-empty string"]),
        ("visiting_address = 12\n", ["entry 2 (PI-ZWOLLE)", "key 'visiting_address' must be a non-empty string"]),
    ],
)
def test_bad_key_in_entry(tmp_path, extra, fragments):
    """A bad key in the second entry is reported with file, entry number, code, line and key."""
    path = write(tmp_path, ENTRY + SECOND + extra)
    with pytest.raises(RegistryError) as info:
        InstitutionRegistry.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        (SECOND.replace('name = "PI Zwolle"\n', ""), ["entry 2 (PI-ZWOLLE)", "missing required key 'name'"]),
        (SECOND.replace('place = "Zwolle"\n', ""), ["entry 2 (PI-ZWOLLE)", "missing required key 'place'"]),
        (SECOND.replace('code = "PI-ZWOLLE"\n', ""), ["entry 2, line 8", "missing required key 'code'"]),
        (SECOND.replace("PI-ZWOLLE", "PI-VUGHT"), ["entry 2 (PI-VUGHT)", "key 'code'", "duplicate PI code PI-VUGHT (first in entry 1)"]),
        (SECOND.replace("PI-ZWOLLE", "pi-zwolle"), ["entry 2 (pi-zwolle)", "key 'code'", "is malformed"]),
        (SECOND.replace("PI-ZWOLLE", "PI-Z"), ["entry 2 (PI-Z)", "key 'code'", "is malformed"]),
        (SECOND.replace("PI-ZWOLLE", "PI-ZWOLLEZWOLLEZ"), ["entry 2 (PI-ZWOLLEZWOLLEZ)", "key 'code'", "is malformed"]),
        (SECOND.replace("PI-ZWOLLE", "PI-ZWOLLE\\n"), ["entry 2 (PI-ZWOLLE\n)", "key 'code'", "is malformed"]),
        (SECOND.replace('"PI-ZWOLLE"', "42"), ["entry 2", "key 'code' must be a non-empty string"]),
        (SECOND.replace('name = "PI Zwolle"', 'name = "   "'), ["entry 2 (PI-ZWOLLE)", "key 'name' must be a non-empty string"]),
    ],
)
def test_bad_entry(tmp_path, entry, fragments):
    """Missing required keys, bad or duplicate codes are reported per entry and key."""
    path = write(tmp_path, ENTRY + entry)
    with pytest.raises(RegistryError) as info:
        InstitutionRegistry.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no [[institution]] tables found"),
        ('title = "PIs"\n' + ENTRY, "unknown top-level key(s) 'title'"),
        ('[institution]\ncode = "PI-VUGHT"\n', "must be written as [[institution]] tables"),
        ('institution = ["PI-VUGHT"]\n', "must be written as [[institution]] tables"),
        (ENTRY + 'name = "twice"\n', "not valid TOML"),
        ('[[institution]]\ncode = "PI-VUGHT\n', "not valid TOML"),
    ],
)
def test_bad_file(tmp_path, text, fragment):
    """Syntax errors, a wrong file structure and an empty table are refused with the file named."""
    path = write(tmp_path, text)
    with pytest.raises(RegistryError) as info:
        InstitutionRegistry.load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_every_problem_is_listed(tmp_path):
    """Several mistakes produce one error listing each of them."""
    path = write(tmp_path, ENTRY + 'fax = "1"\n' + SECOND.replace("PI-ZWOLLE", "zwolle"))
    with pytest.raises(RegistryError) as info:
        InstitutionRegistry.load(path)
    assert len(info.value.problems) == 2
    assert "2 problems" in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    """A missing file and a file that is not UTF-8 are RegistryErrors naming the file."""
    with pytest.raises(RegistryError, match="cannot be read"):
        InstitutionRegistry.load(tmp_path / "absent.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(ENTRY.replace("Vught", "V\xfcght").encode("latin-1"))
    with pytest.raises(RegistryError, match="not UTF-8"):
        InstitutionRegistry.load(path)


# --------------------------------------------------------------------------- Parties


def test_parties_default_load():
    """Parties.load() uses the shipped municipality file and config/institutions.toml."""
    parties = Parties.load()
    assert parties.municipality_problem("GM0363", date(2025, 1, 1)) is None
    assert "its successor is 1979 (Eemsdelta)" in parties.municipality_problem("0003", date(2025, 1, 1))
    assert parties.institution_problem("PI-VUGHT") is None
    assert "is not in the configured PI table" in parties.institution_problem("PI-NOWHERE")


def test_parties_with_operator_files(tmp_path):
    """Both registries can be replaced by files of the operator's choosing, without a code change."""
    gemeenten = tmp_path / "gemeenten.csv"
    gemeenten.write_text(
        "gemeentecode,gm_code,gemeentenaam,provincienaam,begindatum,einddatum,opvolger_gemeentecode\n"
        "0001,GM0001,Oudstad,Utrecht,1970-01-01,2027-01-01,2001\n"
        "2001,GM2001,Nieuwstad,Utrecht,2027-01-01,,\n",
        encoding="utf-8",
    )
    parties = Parties.load(gemeenten, write(tmp_path, ENTRY))
    assert parties.municipality_problem("0001", date(2026, 12, 31)) is None
    assert "its successor is 2001 (Nieuwstad)" in parties.municipality_problem("0001", date(2027, 1, 1))
    assert parties.municipality_problem("0363", date(2025, 1, 1)) == (
        "municipality code 0363 is not in the municipality registry"
    )
    assert parties.institution_problem("PI-VUGHT") is None
    assert parties.institution_problem("PI-ZWOLLE") == f"PI code PI-ZWOLLE is not in the configured PI table ({tmp_path / 'institutions.toml'})"


def test_parties_without_a_default_pi_table(tmp_path, monkeypatch):
    """If the default PI table is absent, loading fails with a sentence naming the expected file."""
    missing = tmp_path / "config" / "institutions.toml"
    monkeypatch.setattr(parties_module, "DEFAULT_INSTITUTIONS_PATH", missing)
    with pytest.raises(RegistryError, match="no PI table configured") as info:
        Parties.load()
    assert str(missing) in str(info.value)


def test_parties_wraps_given_registries():
    """Parties built from in-memory registries answers from them."""
    parties = Parties(
        MunicipalityRegistry.load(),
        InstitutionRegistry([Institution("PI-TEST", "PI Test", "Test", "Teststad", None, None, None, None, False)]),
    )
    assert parties.institution_problem("PI-TEST") == (
        "PI code PI-TEST (PI Test) is marked inactive in the configured PI table (<memory>)"
    )
    assert parties.municipality_problem("0518", date(2025, 1, 1)) is None
