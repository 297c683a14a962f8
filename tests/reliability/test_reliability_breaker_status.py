"""The relay's circuit breaker as operators see it from outside the daemon: `status` (a process of its own,
text and JSON), the dashboard and /metrics show the relay down — since when, failures, the reason, the next
probe, the messages waiting — from what the daemon wrote to the store when the breaker opened and at each
failed probe; they show it up again once it answered; and a restart leaves no stale open breaker.

The relay is a gate on loopback in front of the private Postfix that answers `421 4.3.2` while down (as in
test_reliability_breaker_relay); the daemon runs in this process with its dashboard on a free port; retries
are the suite's quick ones (1 s, at most 2 s)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.ops.web_accounts import add_account
from gateway.store import State
from gateway.store.breakers import CLOSED_AT_RESTART, open_breakers
from gateway.store.schema import destination_breakers
from mailservers import free_port
from tcp_forward import RelayGate

MAILS = 6
BSN = "999998225"  #: the examples' person: never in what an operator is shown
PASSWORD = "operator-password-1"


async def test_status_dashboard_and_metrics_show_the_relay_down_and_up_and_a_restart_leaves_no_stale_breaker(
        tmp_path, mail_servers, mail_users, relay_gate):
    await _outage(tmp_path, mail_servers, mail_users, relay_gate)


async def _outage(tmp_path, mail_servers, mail_users, gate: RelayGate) -> None:
    path = make_setup(tmp_path / "pi", mail_servers, mail_users, smtp_port=gate.port)
    base = _with_dashboard(path)
    cfg = open_config(path)
    relay = f"email relay 127.0.0.1:{gate.port}"
    mails = dict(with_new_id(example("01-meldingsbericht.xml"))[::-1] for _ in range(MAILS))  # to 0599, by mail

    async with running(cfg) as gw, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        store = gw.store
        for mid, data in mails.items():
            drop(cfg.folders.outbox, f"{mid}.xml", data)
        [down] = await _until(lambda: open_breakers(store))
        assert (down.destination, down.transport, down.address) == (relay, "email", None)
        assert "421 4.3.2" in down.reason and down.next_probe_at > down.since
        await wait_for_states(store, list(mails), [State.QUEUED, State.RETRY_WAIT, State.SENDING], timeout=60)
        # a failed probe is written too: failures counts it, the next probe moves on
        [down] = await _until(lambda: _open_with(store, min_failures=2))
        assert down.since == (await open_breakers(store))[0].since

        status = json.loads(await _status(path, "--json"))
        [shown] = status["destinations_down"]
        assert shown["destination"] == relay and shown["failures"] >= 2 and "421 4.3.2" in shown["reason"]
        assert shown["next_probe_at"] and shown["since"] and shown["closed_at"] is None
        assert MAILS - 1 <= shown["waiting"] <= MAILS, "every mail waits but a probe in flight"
        text = await _status(path)
        assert "DESTINATIONS DOWN: 1" in text and relay in text and "421 4.3.2" in text, text
        assert text.index("DESTINATIONS DOWN") < text.index("Messages per state and type"), "first, not buried"

        await _login(web, base)
        overview = await (await web.get(f"{base}/")).text()
        assert "id='destinations-down'" in overview and relay in overview and "421 4.3.2" in overview
        assert f"destination {relay} is <strong>down</strong>" in overview, "among the alerts"
        got = await _metrics(web, base)
        assert got[("nazorg_destination_up", relay)] == 0
        assert got[("nazorg_destination_down_seconds", relay)] > 0
        assert got[("nazorg_destination_failures", relay)] >= 2
        assert MAILS - 1 <= got[("nazorg_destination_held_back_messages", relay)] <= MAILS
        assert BSN not in json.dumps(status) + text + overview

        gate.down = False  # the relay is back: the next probe gets through, the breaker closes
        await wait_for_states(store, list(mails), [State.SENT, State.DELIVERED], timeout=60)
        await _until(lambda: _closed(store, relay))
        [row] = await _rows(store)
        assert row["closed_reason"].startswith("the destination answered after ") and row["next_probe_at"] is None
        assert json.loads(await _status(path, "--json"))["destinations_down"] == []
        assert "destinations down: none" in await _status(path)
        overview = await (await web.get(f"{base}/")).text()
        assert "destinations-down" not in overview and "<strong>down</strong>" not in overview
        got = await _metrics(web, base)
        assert got[("nazorg_destination_up", relay)] == 1 and got[("nazorg_destination_down_seconds", relay)] == 0
        audited = [(r["action"], r["result"]) for r in reversed(await store.audit_rows(object=relay))]
        assert [a for a, _ in audited] == ["destination.down", "destination.up"], audited
        assert "421 4.3.2" in audited[0][1]

        # down again, and the daemon stops while it is: the row stays open (the last word the daemon had)
        gate.cut()
        again = dict(with_new_id(example("01-meldingsbericht.xml"))[::-1] for _ in range(1))
        for mid, data in again.items():
            drop(cfg.folders.outbox, f"{mid}.xml", data)
        await _until(lambda: open_breakers(store))
    assert [d["destination"] for d in json.loads(await _status(path, "--json"))["destinations_down"]] == [relay]

    gate.down = False
    async with running(cfg) as gw:  # a new run starts with every breaker closed, and says so in the store
        store = gw.store
        await wait_for_states(store, list(again), [State.SENT, State.DELIVERED], timeout=60)
        assert await open_breakers(store) == []
        [row] = await _rows(store)
        assert row["closed_reason"] == CLOSED_AT_RESTART
        assert (await store.audit_rows(object=relay, limit=1))[0]["action"] == "destination.reset"
    assert json.loads(await _status(path, "--json"))["destinations_down"] == []


def _with_dashboard(config_path: Path) -> str:
    """An operator account and a free loopback port: the daemon serves its dashboard; its base URL."""
    port = free_port()
    with config_path.open("a") as fh:
        fh.write(f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n')
    add_account(open_config(config_path).dashboard.accounts_file, "olga", "operator", PASSWORD)
    return f"http://127.0.0.1:{port}"


async def _until(look, timeout: float = 60.0):
    """Until ``await look()`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (found := await look()):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)
    return found


async def _open_with(store, *, min_failures: int):
    return [b for b in await open_breakers(store) if b.failures >= min_failures]


async def _rows(store) -> list[dict]:
    def tx(conn):
        return [dict(r._mapping) for r in conn.execute(select(destination_breakers))]
    return await store.run_read(tx)


async def _closed(store, destination: str) -> bool:
    return any(r["destination"] == destination and r["closed_at"] is not None for r in await _rows(store))


async def _status(config_path: Path, *args: str) -> str:
    """`nazorg-gateway status` as an operator runs it: a process of its own, reading the store."""
    run = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "status", "-c",
                                                   str(config_path), *args], capture_output=True, text=True,
                                  timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


async def _login(web: aiohttp.ClientSession, base: str) -> None:
    form = await (await web.get(f"{base}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    r = await web.post(f"{base}/login", data={"login_token": token, "name": "olga", "password": PASSWORD, "next": "/"})
    assert r.status == 200, r.status


async def _metrics(web: aiohttp.ClientSession, base: str) -> dict[tuple[str, str], float]:
    """The per-destination samples of /metrics: (name, destination) -> value."""
    r = await web.get(f"{base}/metrics")
    assert r.status == 200
    return {(s.name, s.labels["destination"]): s.value for family in text_string_to_metric_families(await r.text())
            for s in family.samples if "destination" in s.labels}
