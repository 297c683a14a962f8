"""`messages list/show/retry/cancel` against a real store with messages from the real pickup and sealer."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from gateway.store import State
from test_ops_cli_support import (run_cli, deliver, drop, ops_config, ops_setup, ops_store, ops_template,  # noqa: F401
                                  ops_validation, variant)


async def test_show_gives_the_whole_timeline_and_receipts(ops_setup, ops_config, ops_store, ops_validation):
    now = datetime.now(timezone.utc)
    [mid] = await drop(ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"))
    await deliver(ops_store, mid, sent_at=now)
    await ops_store.add_receipt(mid, kind="dsn", verdict="delivered", detail="2.0.0 delivered to mailbox")
    run = await run_cli("messages", "show", "-c", str(ops_setup / "gateway.toml"), mid, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["message"]["state"] == "sent" and data["message"]["recipient"] == "gemeente:0599"
    steps = [(t["from"], t["to"]) for t in data["timeline"]]
    assert steps == [(None, "received"), ("received", "queued"), ("queued", "sending"), ("sending", "sent")]
    sent = data["timeline"][-1]
    assert sent["remote_reply"] == "250 2.0.0 Ok: queued" and sent["attempt"] == 1
    assert [(r["kind"], r["verdict"]) for r in data["receipts"]] == [("dsn", "delivered")]
    text = await run_cli("messages", "show", "-c", str(ops_setup / "gateway.toml"), mid)
    assert "250 2.0.0 Ok: queued" in text.stdout and "Receipts" in text.stdout
    missing = await run_cli("messages", "show", "-c", str(ops_setup / "gateway.toml"), "no-such-id")
    assert missing.returncode == 1 and "no message" in missing.stderr


async def test_list_filters_by_type_party_and_time(ops_setup, ops_config, ops_store, ops_validation):
    melding, basis, transfer = await drop(ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"),
                                          variant("03-basisdocument.xml"), variant("04-overdrachtsdocument.xml"))
    config = str(ops_setup / "gateway.toml")

    async def ids(*args: str) -> set[str]:
        run = await run_cli("messages", "list", "-c", config, "--json", *args)
        assert run.returncode == 0, run.stderr
        return {r["message_id"] for r in json.loads(run.stdout)}

    assert await ids() == {melding, basis, transfer}
    assert await ids("--type", "basisdocument") == {basis}
    assert await ids("--party", "gemeente:0599") == {melding, basis}
    assert await ids("--party", "gemeente:0344", "--state", "queued") == {transfer}
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert await ids("--since", tomorrow) == set()
    assert await ids("--until", tomorrow, "--type", "meldingsbericht") == {melding}
    bad = await run_cli("messages", "list", "-c", config, "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


async def test_retry_puts_a_failed_message_back_under_the_same_id(ops_setup, ops_config, ops_store, ops_validation):
    failed, fine = await drop(ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"),
                              variant("03-basisdocument.xml"))
    await deliver(ops_store, failed, sent_at=datetime.now(timezone.utc), fail="550 5.1.1 mailbox unknown")
    config = str(ops_setup / "gateway.toml")
    run = await run_cli("messages", "retry", "-c", config, failed, fine, "--json")
    assert run.returncode == 1  # one of the two was not failed
    results = {r["message_id"]: r for r in json.loads(run.stdout)["results"]}
    assert results[failed]["ok"] and results[failed]["detail"] == "queued"
    assert not results[fine]["ok"] and "not failed (queued)" in results[fine]["detail"]
    record = await ops_store.get(failed)
    assert record.state is State.QUEUED and record.attempts == 0
    last = (await ops_store.timeline(failed))[-1]
    assert (last.from_state, last.to_state, last.reason) == (State.FAILED, State.QUEUED, "retry by operator")
    assert last.actor.startswith("operator:")
    nothing = await run_cli("messages", "retry", "-c", config)
    assert nothing.returncode == 2


async def test_cancel_by_filter_asks_first(ops_setup, ops_config, ops_store, ops_validation):
    a, b, other = await drop(ops_config, ops_store, ops_validation, variant("01-meldingsbericht.xml"),
                             variant("03-basisdocument.xml"), variant("04-overdrachtsdocument.xml"))
    config = str(ops_setup / "gateway.toml")
    cmd = ["messages", "cancel", "-c", config, "--party", "gemeente:0599"]
    declined = await run_cli(*cmd, input="n\n")
    assert declined.returncode == 0 and "cancel 2 message(s)?" in declined.stderr
    assert (await ops_store.get(a)).state is State.QUEUED
    script = await run_cli("messages", "cancel", "-c", config, "--party", "gemeente:0599", "--json")
    assert script.returncode == 2 and "--yes" in script.stderr  # a script must say so
    accepted = await run_cli(*cmd, input="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert {(await ops_store.get(m)).state for m in (a, b)} == {State.CANCELLED}
    assert (await ops_store.get(other)).state is State.QUEUED
    again = await run_cli("messages", "cancel", "-c", config, a, "--yes")
    assert again.returncode == 1 and "cannot be cancelled in state cancelled" in again.stdout
