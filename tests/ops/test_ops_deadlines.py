"""Chain deadlines in Dutch working days, from real messages in a real store."""

from __future__ import annotations

from datetime import date, datetime, timezone

from gateway.ops.deadlines import add_working_days, is_working_day, load_dossiers, step_of
from test_ops_cli_support import (deliver, drop, ops_config, ops_setup, ops_store, ops_template,  # noqa: F401
                                  ops_validation, variant)

DOSSIER = "VUG-2025-004711"


def test_easter_good_friday_and_easter_monday_are_skipped():
    # Thursday 2 April 2026 + 2 working days: Good Friday 3/4 and Easter Monday 6/4 are holidays
    assert add_working_days(date(2026, 4, 2), 2) == date(2026, 4, 8)
    assert not is_working_day(date(2026, 4, 3)) and not is_working_day(date(2026, 4, 6))


def test_kings_day_on_a_sunday_moves_to_saturday_so_monday_is_a_working_day():
    # 27 April 2031 is a Sunday: King's Day is Saturday 26 April; Monday 28 April is an ordinary day
    assert not is_working_day(date(2031, 4, 26)) and is_working_day(date(2031, 4, 28))
    assert add_working_days(date(2031, 4, 25), 1) == date(2031, 4, 28)
    # and on a weekday (Monday 27 April 2026) it is skipped
    assert add_working_days(date(2026, 4, 24), 1) == date(2026, 4, 28)


def test_christmas_and_boxing_day_are_skipped():
    # Wednesday 24 December 2025 + 2: 25 and 26 are holidays, 27-28 the weekend
    assert add_working_days(date(2025, 12, 24), 2) == date(2025, 12, 30)


def test_liberation_day_counts_every_year_not_only_in_lustrum_years():
    # 5 May 2026 (a Tuesday, 2026 not divisible by 5): the Algemene termijnenwet counts it anyway
    assert not is_working_day(date(2026, 5, 5))
    assert add_working_days(date(2026, 5, 4), 1) == date(2026, 5, 6)
    assert not is_working_day(date(2025, 5, 5))


def test_the_calendar_is_the_packages_dutch_one_without_loading_every_country():
    """Only the Netherlands module of ``holidays`` is loaded (``holidays.NL`` imports all ~250 countries,
    ~10 MB for the daemon's life); the days and their names are those of ``holidays.NL``."""
    import subprocess
    import sys

    import holidays

    from gateway.ops.deadlines import _holidays
    for year in range(1990, 2061):
        assert dict(_holidays(year)) == dict(holidays.NL(years=year, categories=(holidays.PUBLIC, holidays.OPTIONAL)))
    probe = ("import sys; from datetime import date; from gateway.ops.deadlines import is_working_day; "
             "assert not is_working_day(date(2026, 5, 5)); "
             "print(sorted(m for m in sys.modules if m.startswith('holidays.countries')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


NOW = datetime(2025, 9, 20, 12, tzinfo=timezone.utc)


async def test_melding_on_time_then_a_superseding_melding_moves_the_due_date(ops_config, ops_store, ops_validation):
    first = variant("01-meldingsbericht.xml")  # start of detention Monday 15 September 2025
    [mid] = await drop(ops_config, ops_store, ops_validation, first)
    await deliver(ops_store, mid, sent_at=datetime(2025, 9, 17, 14, tzinfo=timezone.utc),
                  acknowledged_at=datetime(2025, 9, 17, 15, tzinfo=timezone.utc))
    [d] = await load_dossiers(ops_store, date(2025, 9, 20))
    melding = step_of(d, "meldingsbericht")
    assert d.dossier == DOSSIER
    assert (melding.due, melding.status, melding.message_id) == (date(2025, 9, 17), "met", mid)
    blad, basis = step_of(d, "gemeenteblad"), step_of(d, "basisdocument")
    assert (blad.due, blad.status) == (date(2025, 9, 22), "due-soon")  # 5 calendar days after receipt
    assert (basis.due, basis.status) == (date(2025, 10, 1), "open")  # 10 working days after intake
    assert step_of(d, "overdrachtsdocument").status == "n/a"  # pre-trial: no long stay
    assert step_of(d, "ontslagbericht").status == "unknown"  # pre-trial: no end date

    # the start of detention was Friday 12 September after all: the correction supersedes the melding
    fixed = variant("01-meldingsbericht.xml", supersedes=mid, aanvangDetentie="2025-09-12")
    await drop(ops_config, ops_store, ops_validation, fixed)
    [d] = await load_dossiers(ops_store, date(2025, 9, 20))
    melding = step_of(d, "meldingsbericht")
    assert d.facts.start == date(2025, 9, 12)
    assert (melding.due, melding.status) == (date(2025, 9, 16), "late")  # first sent the 17th


async def test_long_stay_transfer_and_release_day_and_overdue(ops_config, ops_store, ops_validation):
    transfer = variant("04-overdrachtsdocument.xml")  # convicted, verdict 2025-12-10, end 2026-11-20
    release = variant("05-ontslagbericht.xml")  # ontslagdatum 2026-11-20
    ids = await drop(ops_config, ops_store, ops_validation, transfer, release)
    await deliver(ops_store, ids[0], sent_at=datetime(2026, 9, 25, 8, tzinfo=timezone.utc))
    [d] = await load_dossiers(ops_store, date(2026, 11, 21))
    over, ontslag = step_of(d, "overdrachtsdocument"), step_of(d, "ontslagbericht")
    assert (over.due, over.status) == (date(2026, 9, 25), "met")  # 8 weeks before 20 November
    assert (ontslag.due, ontslag.status) == (date(2026, 11, 20), "overdue")  # queued, never sent
    assert d.overdue
    # the spool copies go once delivered: the facts kept at pick-up (deadline_facts) still give the due dates
    for p in ops_config.folders.spool.glob("*.xml"):
        p.unlink()
    [d] = await load_dossiers(ops_store, date(2026, 11, 21))
    assert (step_of(d, "ontslagbericht").due, step_of(d, "ontslagbericht").status) == (date(2026, 11, 20), "overdue")
    assert step_of(d, "overdrachtsdocument").due == date(2026, 9, 25)
