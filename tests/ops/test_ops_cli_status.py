"""`status`: aggregates of a real store (messages through the real pickup and sealer), certificates, routes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from gateway.store import State
from test_ops_cli_support import (cli, invoke, run_cli, deliver, drop, ops_config, ops_setup, ops_store, ops_template,  # noqa: F401
                                  ops_validation, variant)

BSN = "999998225"  # of the example messages: never in the operator's output


async def test_status_counts_oldest_stuck_overdue_certificates_and_last_delivery(ops_setup, ops_config, ops_store,
                                                                                 ops_validation):
    now = datetime.now(timezone.utc)
    acked, failed, held, waiting = await drop(
        ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"), variant("03-basisdocument.xml"),
        variant("01-meldingsbericht.xml"), variant("04-overdrachtsdocument.xml"))
    await deliver(ops_store, acked, sent_at=now - timedelta(hours=1), acknowledged_at=now - timedelta(minutes=50))
    await deliver(ops_store, failed, sent_at=now, fail="550 5.1.1 mailbox unknown")
    await ops_store.transition(held, State.HELD, reason="certificate of the recipient expired", actor="test")
    await deliver(ops_store, waiting, sent_at=now - timedelta(days=2))  # sent, no receipt for 2 days

    run = await run_cli("status", "-c", str(ops_setup / "gateway.toml"), "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    counts = {(r["state"], r["type"]): r["count"] for r in data["counts"]}
    assert counts == {("acknowledged", "meldingsbericht"): 1, ("failed", "basisdocument"): 1,
                      ("held", "meldingsbericht"): 1, ("sent", "overdrachtsdocument"): 1}
    pending = {r["destination"]: r["pending"] for r in data["oldest_unacknowledged"]}
    assert pending == {"gemeente:0599": 2, "gemeente:0344": 1}  # the acknowledged one is not pending
    assert {(r["state"], r["reason"]) for r in data["held_and_failed"]} == {
        ("failed", "550 5.1.1 mailbox unknown"), ("held", "certificate of the recipient expired")}
    assert data["receipts_overdue"]["count"] == 1
    last = {r["destination"]: r for r in data["last_delivery"]}
    assert last["gemeente:0599"]["route"] == "0599" and last["gemeente:0599"]["last_acknowledged_at"] is not None
    assert last["gemeente:0344"]["last_acknowledged_at"] is None
    certs = {(c["kind"], c["party"]): c for c in data["certificates"]}
    assert ("own", "pi:PI-VUGHT") in certs and ("route", "0599") in certs
    assert all(c["level"] is None and c["days_left"] > 60 for c in certs.values())

    # a warning window longer than the certificates live: every one is flagged
    wide = json.loads((await run_cli("status", "-c", str(ops_setup / "gateway.toml"), "--json", "--warn-days",
                          "5000,30")).stdout)
    assert {c["level"] for c in wide["certificates"]} == {"within 5000 days"}

    text = cli("status", "-c", str(ops_setup / "gateway.toml"))
    assert text.returncode == 0, text.stderr
    assert "\x1b[" not in text.stdout  # no colours when not on a terminal
    assert "mailbox unknown" in text.stdout and "receipts overdue" in text.stdout
    assert BSN not in text.stdout and BSN not in run.stdout


def test_status_refuses_bad_warning_days(ops_setup):
    run = invoke("status", "-c", str(ops_setup / "gateway.toml"), "--warn-days", "soon")
    assert run.returncode == 2 and "--warn-days" in run.stderr


def test_routes_check_flags_expired_and_revoked_certificates(ops_setup):
    config = ops_setup / "gateway.toml"
    good = invoke("routes", "check", "-c", str(config), "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True

    text = config.read_text()
    text = text.replace("keys/parties/0599/cert.pem", "keys/parties/TEST-EXPIRED/cert.pem")
    text = text.replace("keys/parties/0344/cert.pem", "keys/parties/TEST-REVOKED/cert.pem")
    config.write_text(text)
    bad = invoke("routes", "check", "-c", str(config), "--json")
    assert bad.returncode == 1
    routes = {r["route"]: r for r in json.loads(bad.stdout)["routes"]}
    assert any("certificate-expired" in p for p in routes["0599"]["problems"])
    assert any("certificate-revoked" in p for p in routes["0344"]["problems"])
    assert routes["0014"]["ok"] and routes["0014"]["problems"] == []
    # a warning window wider than the good certificates' lifetime makes them wrong too
    wide = invoke("routes", "check", "-c", str(config), "--json", "--warn-days", "5000")
    assert json.loads(wide.stdout)["routes"][0]["problems"][0].startswith("certificate: expires within 5000 days")
    human = invoke("routes", "check", "-c", str(config))
    assert human.returncode == 1 and "WRONG 0599" in human.stdout and "of 7 routes in order" in human.stdout
