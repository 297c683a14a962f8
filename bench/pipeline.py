"""The whole outbound pipeline, drop → `sent`, beside Postfix's own load generator to the same peer.

The peer is a private Postfix (tests/mailservers.py) that accepts the mail and discards it, so both
streams measure the same thing: getting mail accepted by that SMTP server.
- gateway: `nazorg-gateway run` as its own process; N example messages (every type, fresh ids)
  dropped into the outbox at once; rate = N / (last `sent` − first drop); per message drop→sent
  latency from the store's `sent_at`; peak resident memory of the daemon (VmHWM).
- baseline: `smtp-source -d -s WORKERS -m N -l SIZE` (connections reused, as the gateway's), the same
  number of messages of the gateway's average mail size, to the same Postfix.
- latency at a fixed offered load (default 50 msg/s): p50/p95/p99 drop→sent.
What differs, and favours the baseline: smtp-source sends in plaintext without AUTH; the gateway
must use STARTTLS and AUTH (it never sends otherwise). The peer advertises no DSN here (for both),
so Postfix does not spend the run writing success reports.
Goals (issue 4): ratio ≥ 0.5; p99 drop→sent < 250 ms at 50 msg/s offered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from common import Daemon, count_in, discard_work, machine, percentile, wait_for_states, write_result  # noqa: E402
from dropped import OWN_EXAMPLES, example, with_new_id  # noqa: E402
from e2e_gateway import drop, make_setup  # noqa: E402
from mailservers import MailServers  # noqa: E402

from gateway.crypto.pki import DEV_PARTIES  # noqa: E402
from gateway.store import State, Store  # noqa: E402

RATIO_GOAL = 0.5
P99_GOAL_MS = 250


def messages(n: int) -> list[tuple[str, bytes]]:
    names = list(OWN_EXAMPLES)
    out = []
    for i in range(n):
        data, mid = with_new_id(example(names[i % len(names)]))
        out.append((mid, data))
    return out


THROUGH = [State.SENT, State.DELIVERED, State.ACKNOWLEDGED]


async def run_gateway(cfg_path: Path, outbox: Path, store_url: str, batch: list[tuple[str, bytes]],
                      rate: float | None, log: Path) -> dict:
    daemon = Daemon(cfg_path, log)
    daemon.start()
    store = await Store.open(store_url)
    try:
        # a running gateway is warm: validation workers started, SMTP connections open, caches filled
        warm = messages(20)
        baseline = await count_in(store, THROUGH)
        for mid, data in warm:
            drop(outbox, f"{mid}.xml", data)
        await wait_for_states(store, {mid for mid, _ in warm}, THROUGH, baseline=baseline, timeout=120)
        baseline += len(warm)
        dropped_at: dict[str, float] = {}
        cpu_before = daemon.cpu_seconds()
        start = time.time()
        for i, (mid, data) in enumerate(batch):
            if rate:
                delay = start + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            dropped_at[mid] = time.time()
            drop(outbox, f"{mid}.xml", data)
        sent = {mid: r.sent_at for mid, r in
                (await wait_for_states(store, set(dropped_at), THROUGH, baseline=baseline, timeout=600)).items()}
        cpu_ms = (daemon.cpu_seconds() - cpu_before) * 1000 / len(batch)
        latencies = [(sent[m].timestamp() - t) * 1000 for m, t in dropped_at.items()]
        first, last = min(dropped_at.values()), max(s.timestamp() for s in sent.values())
        sizes = [len(await store.sealed(m)) for m in list(dropped_at)[:50]]
        return {"rate": len(batch) / (last - first), "p50": percentile(latencies, 50),
                "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
                "peak_rss_mb": daemon.peak_rss_mb(), "mail_bytes": int(statistics.mean(sizes)) + 600,
                "cpu_ms_per_message": cpu_ms}
    finally:
        await store.close()
        daemon.stop()


def run_smtp_source(servers: MailServers, n: int, size: int, sessions: int, *, timeout: float = 600) -> float:
    started = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(size),
                    "-f", "nazorg@pi-vught.example.nl", "-t", "nazorg@gemeente-0599.example.nl",
                    f"{servers.smtp_host}:{servers.smtp_port}"], check=True, capture_output=True, timeout=timeout)
    return n / (time.perf_counter() - started)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages in the throughput run (default 5000)")
    parser.add_argument("--offered", type=float, default=50.0, help="offered load of the latency run, msg/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    args = parser.parse_args()

    users = {p.email: f"pw-{i}" for i, p in enumerate(DEV_PARTIES)}
    sink = {"virtual_transport": "discard:benchmark sink", "smtpd_tls_security_level": "may",
            "smtpd_discard_ehlo_keywords": "dsn"}
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    servers = MailServers.temporary(users, sorted({a.split("@")[1] for a in users}), postfix_settings=sink)
    results = {}
    try:
        servers.start()
        edits = {"stable_after = 0.05": "stable_after = 0.1"}
        cfg_path = make_setup(work / "gw", servers, users, edits=edits)
        text = cfg_path.read_text()
        cfg_path.write_text(text[:text.index("[imap]")] + text[text.index("[retry]"):])  # receipts not measured
        from gateway.config import load_config
        cfg = load_config(cfg_path)
        cfg.folders.create()
        cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        workers = cfg.limits.workers

        print(f"throughput: {args.n} messages dropped at once …", flush=True)
        ours = await run_gateway(cfg_path, cfg.folders.outbox, cfg.store.url, messages(args.n), None,
                                 work / "daemon.log")
        print(f"baseline: smtp-source, {args.n} messages of {ours['mail_bytes']} bytes, {workers} sessions …",
              flush=True)
        baseline = run_smtp_source(servers, args.n, ours["mail_bytes"], workers)
        n_latency = int(args.offered * args.latency_seconds)
        print(f"latency: {n_latency} messages offered at {args.offered:g}/s …", flush=True)
        paced = await run_gateway(cfg_path, cfg.folders.outbox, cfg.store.url, messages(n_latency), args.offered,
                                  work / "daemon.log")
        ratio = ours["rate"] / baseline
        figures = [
            {"name": "pipeline drop→sent", "unit": "msg/s", "value": round(ours["rate"], 1),
             "baseline_name": "smtp-source (Postfix), same peer, same size and count", "baseline": round(baseline, 1),
             "ratio": round(ratio, 3), "goal": RATIO_GOAL, "met": ratio >= RATIO_GOAL},
            {"name": f"p99 drop→sent at {args.offered:g}/s", "unit": "ms", "value": round(paced["p99"], 1),
             "p50": round(paced["p50"], 1), "p95": round(paced["p95"], 1), "goal": P99_GOAL_MS,
             "met": paced["p99"] < P99_GOAL_MS},
        ]
        results = {"benchmark": "pipeline", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": {**machine(), "postfix": _postfix_version()}, "n": args.n, "workers": workers,
                   "throughput_run": ours, "latency_run": paced, "figures": figures}
        print(f"\nmachine: {os.cpu_count()} cores, Python {platform.python_version()}, {_postfix_version()}")
        print(f"{'':34}{'gateway':>10}{'smtp-source':>13}{'ratio':>8}")
        print(f"{'messages/s (drop→sent)':34}{ours['rate']:10.1f}{baseline:13.1f}{ratio:8.2f}  goal ≥ {RATIO_GOAL}"
              f" {'MET' if ratio >= RATIO_GOAL else 'NOT MET'}")
        print(f"{'latency at once, p50/p95/p99 ms':34}{ours['p50']:.0f}/{ours['p95']:.0f}/{ours['p99']:.0f}")
        print(f"{f'latency at {args.offered:g}/s, p50/p95/p99 ms':34}{paced['p50']:.0f}/{paced['p95']:.0f}/"
              f"{paced['p99']:.0f}  goal p99 < {P99_GOAL_MS} ms {'MET' if paced['p99'] < P99_GOAL_MS else 'NOT MET'}")
        print(f"{'peak memory of the daemon, MB':34}{ours['peak_rss_mb']:10.0f}")
        print(f"{'CPU of the daemon per message, ms':34}{ours['cpu_ms_per_message']:10.1f}"
              f"   (2 cores shared with Postfix and this script)")
        write_result(ROOT, "pipeline", results)
    finally:
        servers.stop()
        discard_work(work)
    return 0


def _postfix_version() -> str:
    out = subprocess.run(["postconf", "-d", "mail_version"], capture_output=True, text=True).stdout
    return "Postfix " + out.split("=")[-1].strip()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
