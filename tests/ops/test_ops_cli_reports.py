"""`dossiers [--overdue]` and `report mi` from real messages in a real store."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

from test_ops_cli_support import (deliver, drop, ops_config, ops_setup, ops_store, ops_template,  # noqa: F401
                                  ops_validation, run_cli, variant)

LATE_DOSSIER, QUIET_DOSSIER = "VUG-2025-004711", "VUG-2025-000042"


def at(day: str, hour: int = 10) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)


async def chain(ops_config, ops_store, ops_validation) -> dict[str, str]:
    """A long-stay dossier with a late basisdocument, and a quiet one whose melding was sent on time."""
    melding, basis, transfer, quiet = await drop(
        ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"), variant("03-basisdocument.xml"),
        variant("04-overdrachtsdocument.xml"), variant("01-meldingsbericht.xml", dossierreferentie=QUIET_DOSSIER))
    await deliver(ops_store, melding, sent_at=at("2025-09-16"), acknowledged_at=at("2025-09-17"))
    await deliver(ops_store, basis, sent_at=at("2025-10-03"), acknowledged_at=at("2025-10-03", 12))  # due 1 Oct
    await deliver(ops_store, transfer, sent_at=at("2026-09-25"))  # due 25 Sep 2026, no receipt yet
    await deliver(ops_store, quiet, sent_at=at("2025-09-17"))  # due 17 Sep: met; not received yet
    return dict(melding=melding, basis=basis, transfer=transfer, quiet=quiet)


async def test_dossiers_show_each_step_and_overdue_filters(ops_setup, ops_config, ops_store, ops_validation):
    ids = await chain(ops_config, ops_store, ops_validation)
    config = str(ops_setup / "gateway.toml")
    run = await run_cli("dossiers", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    found = {d["dossier"]: d for d in json.loads(run.stdout)["dossiers"]}
    assert set(found) == {LATE_DOSSIER, QUIET_DOSSIER}
    steps = {s["step"]: s for s in found[LATE_DOSSIER]["steps"]}
    assert (steps["meldingsbericht"]["due"], steps["meldingsbericht"]["status"]) == ("2025-09-17", "met")
    assert (steps["basisdocument"]["due"], steps["basisdocument"]["status"]) == ("2025-10-01", "late")
    assert steps["basisdocument"]["message_id"] == ids["basis"]
    assert (steps["overdrachtsdocument"]["due"], steps["overdrachtsdocument"]["status"]) == ("2026-09-25", "met")
    assert steps["gemeenteblad"]["status"] == "overdue"  # none came within 5 days of the receipt
    assert found[LATE_DOSSIER]["overdue"] and not found[QUIET_DOSSIER]["overdue"]
    quiet = {s["step"]: s["status"] for s in found[QUIET_DOSSIER]["steps"]}
    assert quiet["meldingsbericht"] == "met" and quiet["gemeenteblad"] == "unknown"

    only = await run_cli("dossiers", "-c", config, "--overdue", "--json")
    assert [d["dossier"] for d in json.loads(only.stdout)["dossiers"]] == [LATE_DOSSIER]
    text = await run_cli("dossiers", "-c", config, "--overdue")
    assert text.returncode == 0 and "late" in text.stdout and "2025-10-01" in text.stdout


async def test_report_mi_counts_sent_on_time_receipted_per_month_pi_municipality(ops_setup, ops_config, ops_store,
                                                                                 ops_validation):
    ids = await chain(ops_config, ops_store, ops_validation)
    config = str(ops_setup / "gateway.toml")
    run = await run_cli("report", "mi", "-c", config, "--from", "2025-09-01", "--to", "2026-12-31", "--format", "json")
    assert run.returncode == 0, run.stderr
    rows = {(r["month"], r["municipality"], r["type"]): r for r in json.loads(run.stdout)["rows"]}
    assert set(rows) == {("2025-09", "gemeente:0599", "meldingsbericht"), ("2025-10", "gemeente:0599", "basisdocument"),
                         ("2026-09", "gemeente:0344", "overdrachtsdocument")}
    melding = rows[("2025-09", "gemeente:0599", "meldingsbericht")]
    assert (melding["pi"], melding["sent"], melding["on_time"], melding["receipted"]) == ("pi:PI-VUGHT", 2, 2, 1)
    basis = rows[("2025-10", "gemeente:0599", "basisdocument")]
    assert (basis["sent"], basis["on_time"], basis["late"], basis["receipted"]) == (1, 0, 1, 1)
    transfer = rows[("2026-09", "gemeente:0344", "overdrachtsdocument")]
    assert (transfer["sent"], transfer["on_time"], transfer["receipted"]) == (1, 1, 0)

    october = await run_cli("report", "mi", "-c", config, "--from", "2025-10-01", "--to", "2025-10-31")
    assert october.returncode == 0, october.stderr
    table = list(csv.DictReader(io.StringIO(october.stdout)))
    assert [(r["month"], r["type"], r["sent"], r["late"]) for r in table] == [("2025-10", "basisdocument", "1", "1")]
    for output in (run.stdout, october.stdout):  # aggregates only: no message, dossier or person
        assert not any(mid in output for mid in ids.values())
        assert LATE_DOSSIER not in output and QUIET_DOSSIER not in output and "999998225" not in output
    backwards = await run_cli("report", "mi", "-c", config, "--from", "2025-10-31", "--to", "2025-10-01")
    assert backwards.returncode == 2


async def test_mi_report_keeps_the_months_the_retention_purge_emptied(ops_store):
    """After a purge a month's messages are gone; its counts live on in monthly_figures and in the report."""
    from sqlalchemy import insert

    from gateway.ops.cli_operator import mi_figures
    from gateway.store.schema import monthly_figures

    def add(conn):
        conn.execute(insert(monthly_figures).values(month="2020-03", direction="out", type="meldingsbericht",
                                                    sender="pi:PI-VUGHT", recipient="gemeente:0599", messages=7,
                                                    sent=7, acknowledged=6, on_time=None))
    await ops_store.run_write(add)
    rows = await mi_figures(ops_store, datetime(2020, 1, 1, tzinfo=timezone.utc),
                            datetime(2020, 12, 31, tzinfo=timezone.utc))
    assert rows == [{"month": "2020-03", "pi": "pi:PI-VUGHT", "municipality": "gemeente:0599",
                     "type": "meldingsbericht", "sent": 7, "on_time": 0, "late": 0, "deadline_unknown": 7,
                     "receipted": 6}]
