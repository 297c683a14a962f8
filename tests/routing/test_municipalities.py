"""Tests for the municipality registry (gateway/routing/municipalities.py) and its shipped data."""

from __future__ import annotations

import csv
import importlib.util
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.municipalities import (
    DEFAULT_PATH,
    Municipality,
    MunicipalityRegistry,
    RegistryError,
    normalise_code,
)

DATA = DEFAULT_PATH.parent
HEADER = "gemeentecode,gm_code,gemeentenaam,provincienaam,begindatum,einddatum,opvolger_gemeentecode"


@pytest.fixture(scope="module")
def registry() -> MunicipalityRegistry:
    return MunicipalityRegistry.load()


def write(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "gemeenten.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- codes in force


@pytest.mark.parametrize(
    ("code", "name", "province"),
    [
        ("0363", "Amsterdam", "Noord-Holland"),
        ("0599", "Rotterdam", "Zuid-Holland"),
        ("0518", "'s-Gravenhage", "Zuid-Holland"),
        ("1979", "Eemsdelta", "Groningen"),
    ],
)
def test_known_municipalities_are_in_force(registry, code, name, province):
    """Large municipalities are present with the right name and province and pass the check."""
    m = registry.get(code)
    assert m is not None
    assert (m.code, m.name, m.province, m.ends, m.successor) == (code, name, province, None, None)
    assert registry.check(code, date(2025, 1, 1)) is None
    assert registry.check(code, date(2030, 6, 1)) is None


@pytest.mark.parametrize("spelling", ["0363", "GM0363"])
def test_gm_prefix_is_normalised(registry, spelling):
    """"GM0363" and "0363" name the same municipality for get, check and `in`."""
    assert registry.get(spelling) is registry.get("0363")
    assert registry.check(spelling, date(2025, 1, 1)) is None
    assert spelling in registry


@pytest.mark.parametrize(
    "bad",
    ["363", "00363", "gm0363", "GM 0363", " 0363", "0363\n", "０３６３", "GM", "", "PI-VUGHT"],
)
def test_malformed_codes_are_refused_with_a_reason(registry, bad):
    """Anything but 4 ASCII digits (optionally GM-prefixed) is malformed, including full-width digits."""
    assert normalise_code(bad) is None
    assert registry.get(bad) is None
    assert bad not in registry
    problem = registry.check(bad, date(2025, 1, 1))
    assert problem is not None and "is malformed" in problem
    assert "\n" not in problem  # the untrusted value is quoted with repr, not echoed raw


def test_non_string_codes_are_refused(registry):
    """A code that is not a string (e.g. an int from a sloppy parser) is refused, not crashed on."""
    assert registry.check(363, date(2025, 1, 1)) is not None  # type: ignore[arg-type]
    assert 363 not in registry


# --------------------------------------------------------------------------- ended, not yet begun, refused


def test_ended_code_names_its_successor(registry):
    """0003 Appingedam merged into 1979 Eemsdelta on 2021-01-01: refused from that day on."""
    assert registry.check("0003", date(2021, 1, 1)) == (
        "municipality code 0003 (Appingedam) ended on 2021-01-01; its successor is 1979 (Eemsdelta)"
    )
    assert registry.check("GM0003", date(2025, 6, 1)) == registry.check("0003", date(2021, 1, 1))


def test_ended_code_is_in_force_the_day_before_its_end(registry):
    """einddatum is the first day a code no longer exists, so the day before it is still valid."""
    assert registry.check("0003", date(2020, 12, 31)) is None
    assert registry.check("1979", date(2020, 12, 31)) is not None  # Eemsdelta not yet begun


def test_mid_year_merger(registry):
    """0457 Weesp joined 0363 Amsterdam on 2022-03-24, not on 1 January: the exact date counts."""
    assert registry.check("0457", date(2022, 3, 23)) is None
    assert registry.check("0457", date(2022, 3, 24)) == (
        "municipality code 0457 (Weesp) ended on 2022-03-24; its successor is 0363 (Amsterdam)"
    )


def test_chain_of_two_mergers(registry):
    """0571 Nieuw-Lekkerland -> 1927 Molenwaard (2013) -> 1978 Molenlanden (2019) resolves by date."""
    assert registry.get("0571").successor == "1927"
    assert registry.get("1927").successor == "1978"
    assert registry.current_successor("0571", date(2012, 12, 31)).code == "0571"
    assert registry.current_successor("0571", date(2013, 1, 1)).code == "1927"
    assert registry.current_successor("0571", date(2018, 12, 31)).code == "1927"
    assert registry.current_successor("0571", date(2019, 1, 1)).code == "1978"
    assert registry.check("0571", date(2025, 6, 1)) == (
        "municipality code 0571 (Nieuw-Lekkerland) ended on 2013-01-01; "
        "its successor is 1978 (Molenlanden), via 1927 (Molenwaard)"
    )
    assert registry.check("0571", date(2014, 6, 1)) == (
        "municipality code 0571 (Nieuw-Lekkerland) ended on 2013-01-01; its successor is 1927 (Molenwaard)"
    )


def test_chain_of_three_mergers(registry):
    """0635 Zevenhoven -> 0573 Nieuwveen -> 1673 Liemeer -> 0569 Nieuwkoop (the longest chains are 3)."""
    assert registry.current_successor("0635", date(2025, 1, 1)).code == "0569"
    assert registry.current_successor("0635", date(2000, 1, 1)).code == "1673"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0000", "municipality code 0000 (onbekend) is not a municipality that can receive messages"),
        (
            "1999",
            "municipality code 1999 (RNI, registratie niet-ingezetenen) is not a municipality that can receive messages",
        ),
        (
            "GM1999",
            "municipality code 1999 (RNI, registratie niet-ingezetenen) is not a municipality that can receive messages",
        ),
        ("9999", "municipality code 9999 is not in the municipality registry"),
        ("GM0001", "municipality code 0001 is not in the municipality registry"),
    ],
)
def test_refused_codes(registry, code, expected):
    """0000/1999 are BRP codes but not recipients; codes never issued are unknown."""
    assert registry.check(code, date(2025, 1, 1)) == expected
    assert registry.get(code) is None
    assert registry.current_successor(code, date(2025, 1, 1)) is None


def test_code_not_yet_begun(registry):
    """1992 Voorne aan Zee begins 2023-01-01: on the day before it is refused with its begin date."""
    assert registry.check("1992", date(2022, 12, 31)) == (
        "municipality code 1992 (Voorne aan Zee) does not exist yet on 2022-12-31; it begins on 2023-01-01"
    )
    assert registry.check("1992", date(2023, 1, 1)) is None
    assert registry.current_successor("1992", date(2022, 12, 31)) is None


def test_current_successor_of_a_municipality_in_force_is_itself(registry):
    """A code in force maps to itself; unknown and malformed codes map to nothing."""
    assert registry.current_successor("GM0363", date(2025, 1, 1)) is registry.get("0363")
    assert registry.current_successor("9999", date(2025, 1, 1)) is None
    assert registry.current_successor("36", date(2025, 1, 1)) is None


def test_current_successor_survives_a_cycle():
    """A registry built in memory with a cycle (load() rejects those) does not hang current_successor."""
    a = Municipality("0001", "A", "P", date(2000, 1, 1), date(2001, 1, 1), "0002")
    b = Municipality("0002", "B", "P", date(2000, 1, 1), date(2001, 1, 1), "0001")
    reg = MunicipalityRegistry([a, b])
    assert reg.current_successor("0001", date(2005, 1, 1)) is None


# --------------------------------------------------------------------------- the shipped data


def test_all_2025_municipalities_are_in_force_on_2025_01_01(registry):
    """Every row of gemeenten-2025.csv (342) is in force on 2025-01-01, and nothing else is."""
    with (DATA / "gemeenten-2025.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 342
    for row in rows:
        assert registry.check(row["gm_code"], date(2025, 1, 1)) is None, row
        assert registry.get(row["gemeentecode"]).name == row["gemeentenaam"]
    assert {m.code for m in registry.in_force(date(2025, 1, 1))} == {r["gemeentecode"] for r in rows}


def test_every_successor_resolves_to_a_municipality_in_force(registry):
    """Following successors from any ended code reaches a municipality in force on 2025-06-01."""
    on = date(2025, 6, 1)
    ended = [m for m in registry if m.ends is not None]
    assert len(ended) == 446
    for m in ended:
        assert m.successor in registry, m
        current = registry.current_successor(m.code, on)
        assert current is not None and current.in_force_on(on), m
        assert current.code in registry.check(m.code, on)


def test_shipped_file_counts(registry):
    """788 distinct codes: 342 in force, 446 ended (the 789 history rows list 0620 Vianen twice)."""
    assert len(registry) == 788
    assert len(registry.in_force(date(2025, 1, 1))) == 342
    vianen = registry.get("0620")
    assert (vianen.begins, vianen.ends, vianen.successor, vianen.province) == (
        date(1970, 1, 1),
        date(2019, 1, 1),
        "1961",
        "Utrecht",
    )


def test_shipped_file_is_reproducible_from_the_sources():
    """build_gemeenten.py regenerates gemeenten.csv byte for byte from the two source files."""
    spec = importlib.util.spec_from_file_location("build_gemeenten", DATA / "build_gemeenten.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(module.build()) == DEFAULT_PATH.read_text(encoding="utf-8")


def test_load_time(registry):
    """Loading the shipped file is fast (measured and printed; < 1 s is only a sanity bound)."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        MunicipalityRegistry.load()
        runs.append(time.perf_counter() - start)
    print(f"\nMunicipalityRegistry.load(): best {min(runs) * 1000:.1f} ms, worst {max(runs) * 1000:.1f} ms")
    assert min(runs) < 1.0


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=787),
    on=st.dates(min_value=date(1990, 1, 1), max_value=date(2030, 12, 31)),
    prefixed=st.booleans(),
)
def test_check_agrees_with_in_force_and_current_successor(registry, index, on, prefixed):
    """For any code and date: check passes exactly when the code is in force, i.e. is its own successor."""
    m = list(registry)[index]
    code = "GM" + m.code if prefixed else m.code
    assert (registry.check(code, on) is None) == m.in_force_on(on) == (registry.current_successor(code, on) is m)


# --------------------------------------------------------------------------- operator replacement


def test_operator_file_with_a_future_merger(tmp_path):
    """A file installed in advance: 0001 and 0002 merge into 2001 on 1 January 2027, exactly on that day."""
    path = write(
        tmp_path,
        "0363,GM0363,Amsterdam,Noord-Holland,1970-01-01,,",
        "0001,GM0001,Oudstad,Zuid-Holland,1970-01-01,2027-01-01,2001",
        "0002,GM0002,Nieuwdorp,Zuid-Holland,1980-01-01,2027-01-01,2001",
        "2001,GM2001,\"Samenland, aan de Maas\",Zuid-Holland,2027-01-01,,",
    )
    reg = MunicipalityRegistry.load(path)
    before, on = date(2026, 12, 31), date(2027, 1, 1)
    assert reg.check("0001", before) is None
    assert reg.check("GM0002", before) is None
    assert reg.check("2001", before) == (
        "municipality code 2001 (Samenland, aan de Maas) does not exist yet on 2026-12-31; it begins on 2027-01-01"
    )
    for old, name in [("0001", "Oudstad"), ("0002", "Nieuwdorp")]:
        for day in (on, on + timedelta(days=400)):
            assert reg.check(old, day) == (
                f"municipality code {old} ({name}) ended on 2027-01-01; its successor is 2001 (Samenland, aan de Maas)"
            )
    assert reg.check("2001", on) is None
    assert [m.code for m in reg.in_force(before)] == ["0001", "0002", "0363"]
    assert [m.code for m in reg.in_force(on)] == ["0363", "2001"]


def test_operator_file_tolerates_bom_crlf_extra_columns_and_column_order(tmp_path):
    """A file saved by a spreadsheet (BOM, CRLF, reordered and extra columns) loads."""
    path = tmp_path / "gemeenten.csv"
    path.write_bytes(
        "\ufeffgemeentenaam,gemeentecode,gm_code,provinciecode,provincienaam,begindatum,einddatum,opvolger_gemeentecode\r\n"
        "Amsterdam,0363,GM0363,27,Noord-Holland,1970-01-01,,\r\n".encode("utf-8")
    )
    reg = MunicipalityRegistry.load(path)
    assert reg.get("0363").name == "Amsterdam"
    assert len(reg) == 1


# --------------------------------------------------------------------------- malformed files

GOOD_2 = "0363,GM0363,Amsterdam,Noord-Holland,1970-01-01,,"
GOOD_4 = "0599,GM0599,Rotterdam,Zuid-Holland,1970-01-01,,"


@pytest.mark.parametrize(
    ("broken_row", "fragment"),
    [
        ("363,GM363,Kort,Noord-Holland,1970-01-01,,", "bad gemeentecode '363'"),
        ("03a3,GM03a3,Letter,Noord-Holland,1970-01-01,,", "bad gemeentecode '03a3'"),
        ("0001,GM0002,Verkeerd,Noord-Holland,1970-01-01,,", "gm_code 'GM0002' does not match"),
        ("0001,GM0001,,Noord-Holland,1970-01-01,,", "gemeentenaam is empty"),
        ("0001,GM0001,Naam,,1970-01-01,,", "provincienaam is empty"),
        ("0001,GM0001,Naam,Utrecht,2021-13-01,,", "bad begindatum '2021-13-01'"),
        ("0001,GM0001,Naam,Utrecht,01-01-2021,,", "bad begindatum '01-01-2021'"),
        ("0001,GM0001,Naam,Utrecht,20210101,,", "bad begindatum '20210101'"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01,2021-02-30,0363", "bad einddatum '2021-02-30'"),
        ("0001,GM0001,Naam,Utrecht,2021-01-01,2020-01-01,0363", "einddatum 2020-01-01 is not after begindatum"),
        ("0001,GM0001,Naam,Utrecht,2021-01-01,2021-01-01,0363", "einddatum 2021-01-01 is not after begindatum"),
        ("0363,GM0363,Amsterdam,Noord-Holland,1970-01-01,,", "duplicate gemeentecode 0363 (first on line 2)"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01,2021-01-01,7777", "successor 7777 of code 0001 is not in the file"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01,2021-01-01,77", "bad opvolger_gemeentecode '77'"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01,2021-01-01,0001", "names itself as its successor"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01,,0363", "has successor 0363 but no einddatum"),
        ("1999,GM1999,RNI,Den Haag,1994-10-01,,", "gemeentecode 1999 (RNI, registratie niet-ingezetenen) is not a municipality"),
        ("0000,GM0000,Onbekend,-,1970-01-01,,", "gemeentecode 0000 (onbekend) is not a municipality"),
        ("0001,GM0001,Naam,Utrecht,1970-01-01", "expected 7 fields like the header, found 5"),
    ],
)
def test_malformed_row_is_reported_with_file_and_line(tmp_path, broken_row, fragment):
    """Each kind of broken row raises RegistryError naming the file, line 3 and the problem."""
    path = write(tmp_path, GOOD_2, broken_row, GOOD_4)
    with pytest.raises(RegistryError) as info:
        MunicipalityRegistry.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3: " in message
    assert fragment in message
    assert info.value.line == 3
    assert isinstance(info.value, ValueError)


def test_all_problems_are_reported_at_once(tmp_path):
    """Two broken rows: both lines appear in one error, so the operator fixes the file in one pass."""
    path = write(tmp_path, "036,GM036,A,P,1970-01-01,,", GOOD_2, "0001,GM0001,B,P,1970-01-01,2000-01-01,4444")
    with pytest.raises(RegistryError) as info:
        MunicipalityRegistry.load(path)
    assert "2 problems" in str(info.value)
    assert [p.split(":")[0] for p in info.value.problems] == ["line 2", "line 4"]


def test_successor_cycle_is_rejected(tmp_path):
    """0001 -> 0002 -> 0001 would make successor chains endless: rejected on load."""
    path = write(
        tmp_path,
        "0001,GM0001,A,P,1970-01-01,2000-01-01,0002",
        "0002,GM0002,B,P,1970-01-01,2000-01-01,0001",
    )
    with pytest.raises(RegistryError, match=r"successor cycle 0001 -> 0002 -> 0001"):
        MunicipalityRegistry.load(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "the file is empty"),
        (HEADER.encode() + b"\n", "no municipality rows"),
        (b"gemeentecode,gemeentenaam\n0363,Amsterdam\n", "line 1: header lacks column(s) gm_code, provincienaam"),
        ((HEADER + ",gemeentecode\n").encode(), "line 1: column(s) gemeentecode appear more than once"),
        ((HEADER + "\n0363,GM0363,Amst\xe9rdam,NH,1970-01-01,,\n").encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_malformed_file_is_reported(tmp_path, content, fragment):
    """Empty files, missing header columns and non-UTF-8 files are refused with the file named."""
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(RegistryError) as info:
        MunicipalityRegistry.load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_registry_error(tmp_path):
    """A path that does not exist is reported as a RegistryError naming it."""
    with pytest.raises(RegistryError, match="cannot be read"):
        MunicipalityRegistry.load(tmp_path / "nope.csv")
