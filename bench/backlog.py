"""Benchmark: a backlog that waited for a dead relay drains when it comes back; and start-up with it queued.

A private Postfix (tests/mailservers.py) that accepts and discards is the relay. Its SMTP service is
stopped; N example messages (every type, fresh ids) are dropped into the outbox of `nazorg-gateway run`
(its own process) and wait behind the dead relay: the first attempts find it gone, the dispatcher's
breaker for the relay opens, and the rest wait in `queued` unclaimed (one probe per retry interval;
"attempts while the relay was down" counts them all). Then:
- start-up: the daemon is stopped (SIGTERM) and started again with the whole backlog in its store:
  seconds until it says `started`;
- drain: the relay comes back; time from then until the last message is `sent`, the rate, and the
  daemon's peak resident memory (VmHWM) over the whole run (the backlog's growth must not be the
  daemon's: memory that grows with N is a leak).
The baseline, measured in the same run: `smtp-source` sending N mails of the gateway's average size to
the same Postfix (connections reused), as in bench/pipeline.py. Ratio = drain rate / smtp-source rate.
Retry timing is shortened for the run (first retry 20 s, at most 20 s), so the breaker's probe finds the
relay back within 20 s of its return and the whole backlog is due at once; that wait is in the drain time,
as it would be in production (where it is the retry schedule's).

    .venv/bin/python bench/backlog.py [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT)]

from bench.common import Daemon, count_in, discard_work, machine, wait_for_states, write_result  # noqa: E402
from bench.pipeline import messages, run_smtp_source  # noqa: E402
from e2e_gateway import drop, make_setup  # noqa: E402
from mailservers import MailServers  # noqa: E402

from gateway.crypto.pki import DEV_PARTIES  # noqa: E402
from gateway.store import State, Store  # noqa: E402

RATIO_GOAL = 0.5  #: the pipeline's goal (issue 4), here with a backlog


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="messages in the backlog (default 20000)")
    args = ap.parse_args()

    users = {p.email: f"pw-{i}" for i, p in enumerate(DEV_PARTIES)}
    sink = {"virtual_transport": "discard:benchmark sink", "smtpd_tls_security_level": "may",
            "smtpd_discard_ehlo_keywords": "dsn"}
    work = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    servers = MailServers.temporary(users, sorted({a.split("@")[1] for a in users}), postfix_settings=sink)
    try:
        servers.start()
        edits = {'first_delay = "1s"': 'first_delay = "20s"', 'max_delay = "2s"': 'max_delay = "20s"'}
        cfg_path = make_setup(work / "gw", servers, users, edits=edits)
        text = cfg_path.read_text()
        cfg_path.write_text(text[:text.index("[imap]")] + text[text.index("[retry]"):])  # receipts not measured
        from gateway.config import load_config
        cfg = load_config(cfg_path)
        batch = messages(args.n)
        ids = {mid for mid, _ in batch}

        servers.stop_smtp()
        daemon = Daemon(cfg_path, work / "daemon.log")
        daemon.start()
        store = await Store.open(cfg.store.url)
        try:
            print(f"backlog: {args.n} messages dropped while the relay is down …", flush=True)
            waiting_states = [State.QUEUED, State.RETRY_WAIT]
            baseline = await count_in(store, waiting_states)
            started = time.monotonic()
            for mid, data in batch:
                drop(cfg.folders.outbox, f"{mid}.xml", data)
            waiting = await wait_for_states(store, ids, waiting_states, baseline=baseline, timeout=max(600, args.n / 5),
                                            poll=0.5)
            queued_s = time.monotonic() - started
            tried_while_down = sum(r.attempts for r in waiting.values())
            peak_queueing = daemon.peak_rss_mb()

            print("start-up with the backlog in the store …", flush=True)
            daemon.stop()
            daemon = Daemon(cfg_path, work / "restarted.log")  # its own log: "started" of this run only
            restart_at = time.monotonic()
            daemon.start(timeout=600)
            startup_s = time.monotonic() - restart_at

            print("drain: the relay is back …", flush=True)
            through = [State.SENT, State.DELIVERED, State.ACKNOWLEDGED]
            baseline = await count_in(store, through)
            servers.start_smtp()
            back = time.time()
            sent = await wait_for_states(store, ids, through, baseline=baseline, timeout=max(600, args.n / 2), poll=0.5)
            last = max(r.sent_at.timestamp() for r in sent.values())
            first = min(r.sent_at.timestamp() for r in sent.values())
            attempts = statistics.mean(r.attempts for r in sent.values())
            peak = daemon.peak_rss_mb()
            sizes = [len(await store.sealed(m)) for m in list(ids)[:50]]
        finally:
            await store.close()
            daemon.stop()
        print(f"drained {args.n} in {last - back:.1f} s from the relay's return, {args.n / max(1e-9, last - first):.1f} "
              f"msg/s from the first to the last sent; start-up {startup_s:.2f} s; queued in {queued_s:.0f} s; "
              f"peak memory {peak:.0f} MB", flush=True)  # before the baseline: kept if that one fails
        mail_bytes = int(statistics.mean(sizes)) + 600
        print(f"baseline: smtp-source, {args.n} messages of {mail_bytes} bytes …", flush=True)
        baseline = run_smtp_source(servers, args.n, mail_bytes, cfg.limits.workers,
                                   timeout=max(600, args.n / 10))  # 20,000 of ~20 kB on a busy machine: > 600 s
    finally:
        servers.stop()
        discard_work(work)

    drain_s = last - back
    rate = args.n / max(1e-9, last - first)
    ratio = rate / baseline
    figures = [
        {"name": f"backlog drain rate ({args.n:,})", "unit": "msg/s", "value": round(rate, 1),
         "baseline_name": "smtp-source (Postfix), same peer, same size and count", "baseline": round(baseline, 1),
         "ratio": round(ratio, 3), "goal": RATIO_GOAL, "met": ratio >= RATIO_GOAL},
        {"name": "backlog drain time from the relay's return", "unit": "s", "value": round(drain_s, 1)},
        {"name": f"start-up of run with {args.n:,} queued", "unit": "s", "value": round(startup_s, 2)},
        {"name": "peak memory of the daemon", "unit": "MB", "value": round(peak, 1),
         "queueing_mb": round(peak_queueing, 1)},
    ]
    result = {"benchmark": "backlog", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "n": args.n, "queued_seconds": round(queued_s, 1),
              "mean_attempts": round(attempts, 2), "attempts_while_down": tried_while_down, "figures": figures}
    print(f"\nmachine: {os.cpu_count()} cores; {args.n} messages, queued behind the dead relay in {queued_s:.0f} s "
          f"({tried_while_down} attempts while the relay was down; mean attempts per message {attempts:.2f})")
    print(f"start-up of run with the backlog: {startup_s:.2f} s")
    print(f"drain: {drain_s:.1f} s from the relay's return (the breaker's probe up to 20 s later); {rate:.1f} msg/s "
          f"vs smtp-source {baseline:.1f} msg/s: ratio {ratio:.2f} (goal >= {RATIO_GOAL}) "
          f"{'MET' if ratio >= RATIO_GOAL else 'NOT MET'}")
    print(f"peak memory of the daemon: {peak:.0f} MB while draining (the restarted process), {peak_queueing:.0f} MB "
          "while queueing")
    write_result(ROOT, "backlog", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
