"""/metrics: the figures computed from a real store, parsed back with prometheus-client's own parser."""

from __future__ import annotations

import base64

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import metrics
from gateway.store import State
from ops_web_support import (PASSWORDS, bring_to, new_message, web_config, web_secrets, web_server,  # noqa: F401
                             web_setup, web_store, web_template)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_from_the_store(web_server, web_store, web_config):
    ids = {}
    for state in (State.FAILED, State.HELD, State.QUEUED, State.RETRY_WAIT, State.SENT, State.ACKNOWLEDGED):
        ids[state] = await new_message(web_store, web_config)
        await bring_to(web_store, ids[state], state)
    extra = await new_message(web_store, web_config, recipient="gemeente:0344", type_="ontslagbericht")
    await bring_to(web_store, extra, State.QUEUED)
    await web_store.record_rejection(file_name="x.xml", size=3, sha256="00" * 32, declared_id=None,
                                     declared_type=None, reason="xsd: element not allowed", rejected_path="/r/x")
    await web_store.record_rejection(file_name="y.xml", size=3, sha256="01" * 32, declared_id=None,
                                     declared_type=None, reason="xsd: missing element", rejected_path="/r/y")
    await web_store.add_receipt(ids[State.SENT], kind="mdn", verdict="mismatch", detail="other MIC")
    await web_store.add_receipt(ids[State.ACKNOWLEDGED], kind="mdn", verdict="match", detail="")

    auth = basic("olga", PASSWORDS["olga"])
    async with aiohttp.ClientSession() as client:
        wrong = await client.get(f"{web_server}/metrics", headers=basic("olga", "nope-nope-nope"))
        assert wrong.status == 401
        r = await client.get(f"{web_server}/metrics", headers=auth)
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        got = samples(await r.text())

    def one(name, **labels):
        return got[(name, tuple(sorted(labels.items())))]

    assert one("nazorg_messages", state="queued", type="meldingsbericht", route="gemeente:0599") == 1
    assert one("nazorg_messages", state="queued", type="ontslagbericht", route="gemeente:0344") == 1
    assert one("nazorg_messages_by_state", state="failed") == 1
    assert one("nazorg_messages_by_state", state="rejected") == 2
    assert one("nazorg_queue_depth") == 3  # two queued, one retry_wait
    assert one("nazorg_retries_total") == 1
    assert one("nazorg_rejections_total", reason="xsd") == 2
    assert one("nazorg_receipt_mismatches_total", verdict="mismatch") == 1
    assert ("nazorg_receipt_mismatches_total", (("verdict", "match"),)) not in got
    assert 0 <= one("nazorg_oldest_unacknowledged_age_seconds") < 60
    # every route's certificate and the own one; the development PKI's certificates are valid for long
    for party in ["own", *web_config.routes]:
        assert 30 < one("nazorg_certificate_expiry_days", party=party) < 4000
    # histograms: two messages reached sent (sent, acknowledged), one acknowledged, all within seconds
    assert one("nazorg_drop_to_sent_seconds_count") == 2
    assert one("nazorg_drop_to_sent_seconds_bucket", le="60.0") == 2
    assert one("nazorg_drop_to_sent_seconds_bucket", le="604800.0") == 2
    assert one("nazorg_drop_to_sent_seconds_bucket", le="+Inf") == 2
    assert one("nazorg_drop_to_acknowledged_seconds_count") == 1


def test_histogram_buckets_are_cumulative():
    from datetime import datetime, timezone

    f = metrics.Figures(at=datetime.now(timezone.utc), by_state_type_route=[], rejections={}, oldest_pending=None,
                        retries=0, receipt_mismatches={}, sent_latency=[0.5, 10.0, 100.0, 1e7], ack_latency=[])
    got = samples(metrics.render(f, []).decode())
    buckets = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == "nazorg_drop_to_sent_seconds_bucket"}
    assert buckets["1.0"] == 1 and buckets["15.0"] == 2 and buckets["300.0"] == 3 and buckets["604800.0"] == 3
    assert buckets["+Inf"] == 4
    assert got[("nazorg_drop_to_sent_seconds_sum", ())] == 0.5 + 10 + 100 + 1e7
    # a registry per call: two renders do not share state
    assert metrics.render(f, []) == metrics.render(f, [])
