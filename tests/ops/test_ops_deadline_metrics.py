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


async def test_the_watch_forgets_history_so_its_state_is_bounded(web_config, web_store, ops_validation):
    """The watch's memory is one entry per dossier with an alert: it must not grow with every dossier ever
    seen. A released dossier (its ontslagbericht sent) leaves the alerts ALERT_KEPT_DAYS after the release,
    whatever it still lacks; a step done late stops being an alert ALERT_KEPT_DAYS after it was done, while
    an open step overdue in a dossier in custody stays one."""
    from datetime import timedelta

    ALERT_KEPT_DAYS = 92

    released_at = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)  # the examples' release day
    releases = [variant("05-ontslagbericht.xml", dossierreferentie=f"VUG-2026-{n:06d}") for n in range(1, 21)]
    for mid in await drop(web_config, web_store, ops_validation, *releases):
        await deliver(web_store, mid, sent_at=released_at)
    # a dossier in custody: its transfer sent late (due 2026-09-25), no melding ever (overdue since 2025)
    [transfer] = await drop(web_config, web_store, ops_validation, variant("04-overdrachtsdocument.xml"))
    await deliver(web_store, transfer, sent_at=datetime(2026, 10, 1, 9, tzinfo=timezone.utc))

    # the week after the release: every released dossier alerts (its melding never came), the transfer is late
    soon = await metrics.alerting_dossiers(web_store, datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    assert len(soon) == 21 and all(("overdue", "meldingsbericht") in pairs for pairs in soon.values())
    assert ("late", "overdrachtsdocument") in soon["VUG-2025-004711"]
    # the last day kept, and the day after: the released dossiers are history, the dossier in custody is not
    last = datetime.combine(released_at.date() + timedelta(days=ALERT_KEPT_DAYS), datetime.min.time(), timezone.utc)
    assert len(await metrics.alerting_dossiers(web_store, last + timedelta(hours=12))) == 21
    later = await metrics.alerting_dossiers(web_store, last + timedelta(days=1, hours=12))
    assert list(later) == ["VUG-2025-004711"]
    assert ("overdue", "meldingsbericht") in later["VUG-2025-004711"]
    assert ("late", "overdrachtsdocument") not in later["VUG-2025-004711"]  # done 1 October: long enough ago
    assert len(metrics._ALERTS[web_store].per_dossier) == 1
    totals = await metrics.deadline_alerts(web_store, last + timedelta(days=1, hours=12))
    assert totals[("late", "overdrachtsdocument")] == 0 and totals[("overdue", "meldingsbericht")] == 1
