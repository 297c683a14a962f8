"""/metrics carries the chain's deadline alerts: steps overdue, due soon or done late, per step type, from
real messages taken by the real pickup; computed once a minute at most, never labelled by dossier or person."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import metrics
from gateway.ops.deadlines import STEPS
from gateway.store import State
from ops_web_support import (PASSWORDS, web_config, web_secrets, web_server, web_setup, web_store,  # noqa: F401
                             web_template)
from test_ops_cli_support import deliver, drop, ops_template, ops_validation, variant  # noqa: F401

FAMILY = "nazorg_chain_steps_alerting"


async def scrape(base: str) -> list:
    auth = base64.b64encode(f"olga:{PASSWORDS['olga']}".encode()).decode()
    async with aiohttp.ClientSession() as client:
        r = await client.get(f"{base}/metrics", headers={"Authorization": f"Basic {auth}"})
        assert r.status == 200
        text = await r.text()
    return [s for family in text_string_to_metric_families(text) if family.name == FAMILY for s in family.samples]


def gauge(samples, status: str, step: str) -> float:
    [value] = [s.value for s in samples if s.labels == {"status": status, "step": step}]
    return value


async def test_overdue_steps_are_gauges_by_status_and_step(web_server, web_config, web_store, ops_validation):
    # dossier VUG-2025-004711: release day 2026-11-20, transfer due 2026-09-25, melding due 2025-09-17;
    # queued, never sent, and today (the dashboard's clock) is later than all of them
    transfer, release = variant("04-overdrachtsdocument.xml"), variant("05-ontslagbericht.xml")
    ids = await drop(web_config, web_store, ops_validation, transfer, release)
    samples = await scrape(web_server)
    assert gauge(samples, "overdue", "ontslagbericht") == 1
    assert gauge(samples, "overdue", "overdrachtsdocument") == 1
    assert gauge(samples, "overdue", "meldingsbericht") == 1
    assert gauge(samples, "due-soon", "ontslagbericht") == 0 and gauge(samples, "late", "ontslagbericht") == 0
    # every (status, step) pair is there, so an alert resolves to 0; no label names a dossier or a person
    assert {(s.labels["status"], s.labels["step"]) for s in samples} == {
        (status, step) for status in ("overdue", "due-soon", "late") for step in STEPS}
    assert all(set(s.labels) == {"status", "step"} for s in samples)

    # a second dossier's release within the minute: the scrape is served from the cache ...
    other = variant("05-ontslagbericht.xml", dossierreferentie="VUG-2025-004712")
    [other_id] = await drop(web_config, web_store, ops_validation, other)
    assert gauge(await scrape(web_server), "overdue", "ontslagbericht") == 1
    # ... and counted when the cache is renewed (only the dossier that changed is computed again)
    assert (await metrics.deadline_alerts(web_store, max_age=0))[("overdue", "ontslagbericht")] == 2
    # a cancelled message is no step of its dossier: that dossier's alert goes at the next refresh
    await web_store.transition(other_id, State.CANCELLED, reason="sent by mistake", actor="olga")
    assert (await metrics.deadline_alerts(web_store, max_age=0))[("overdue", "ontslagbericht")] == 1

    # on 19 November the release is due soon (the next day); the transfer sent after its due date is late
    await deliver(web_store, ids[0], sent_at=datetime(2026, 10, 1, 9, tzinfo=timezone.utc))
    then = datetime(2026, 11, 19, 12, tzinfo=timezone.utc)
    figures = await metrics.gather(web_store, then)  # another day: computed again whatever its age
    assert figures.deadline_alerts[("due-soon", "ontslagbericht")] == 1
    assert figures.deadline_alerts[("late", "overdrachtsdocument")] == 1
    assert figures.deadline_alerts[("overdue", "ontslagbericht")] == 0
    rendered = {(s.labels["status"], s.labels["step"]): s.value
                for family in text_string_to_metric_families(metrics.render(figures, []).decode())
                if family.name == FAMILY for s in family.samples}
    assert rendered[("late", "overdrachtsdocument")] == 1 and rendered[("due-soon", "ontslagbericht")] == 1


async def test_the_watch_logs_each_new_alert_once(web_config, web_store, ops_validation):
    """Without any scrape, the daemon's watch logs a step that is overdue once (dossier, step, status: no
    person), not again at the next round; a step that turns overdue later is logged when it does."""
    import asyncio

    from structlog.testing import capture_logs

    await drop(web_config, web_store, ops_validation, variant("05-ontslagbericht.xml"))
    with capture_logs() as logs:
        watch = asyncio.create_task(metrics.deadline_watch(web_store, every=0.05))
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if sum(1 for e in logs if e["event"] == "deadline.alert") >= 2:
                    break
            await asyncio.sleep(0.3)  # more rounds: nothing is logged twice
            first = [(e["dossier"], e["step"], e["status"]) for e in logs if e["event"] == "deadline.alert"]
            other = variant("05-ontslagbericht.xml", dossierreferentie="VUG-2025-004712")
            await drop(web_config, web_store, ops_validation, other)
            await metrics.deadline_alerts(web_store, max_age=0)
            await asyncio.sleep(0.3)
        finally:
            watch.cancel()
    alerts = [(e["dossier"], e["step"], e["status"]) for e in logs if e["event"] == "deadline.alert"]
    assert ("VUG-2025-004711", "ontslagbericht", "overdue") in first and len(first) == len(set(first))
    assert alerts[len(first):] and all(a[0] == "VUG-2025-004712" for a in alerts[len(first):])
    assert all(e.get("alert") is True and "999" not in str(e) for e in logs if e["event"] == "deadline.alert")
