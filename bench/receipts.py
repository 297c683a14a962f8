"""Benchmark: delivery reports (DSNs) filed per second while the daemon sends, under the soak's load.

The soak's set-up (tests/reliability/test_reliability_load.py): a real daemon process against the private
Postfix and Dovecot, the soak's dossiers dropped in batches of 1,000, the next batch as soon as the last
is through (sent). Postfix delivers every mail to Dovecot and sends a DSN "delivered" back to the
gateway's own mailbox, which the daemon's mail watcher reads and files (`sent -> delivered`). Sampled every
5 s from the store's counters: messages through (sent or further) and delivered. Printed: the send rate,
the filing rate while sending, and after the last batch how long the backlog took to drain.

    .venv/bin/python bench/receipts.py [-n 6000] [--drain-timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT / "tests" / "reliability"), str(ROOT)]

from bench.common import machine, write_result  # noqa: E402
from dropped import with_new_id  # noqa: E402
from e2e_gateway import DaemonProcess, drop, make_setup, open_config  # noqa: E402
from mailservers import MailServers, dev_mail_users, domains_of  # noqa: E402
from test_reliability_load import all_through, dossiers  # noqa: E402

from gateway.store import State, Store  # noqa: E402


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=6_000, help="messages (default 6000, in batches of 1000)")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    args = ap.parse_args()
    users = dev_mail_users()
    work = Path(tempfile.mkdtemp(prefix="bench-receipts-"))
    with MailServers.temporary(users, domains_of(users)) as servers:
        config_path = make_setup(work / "gw", servers, users)
        cfg = open_config(config_path)
        daemon = DaemonProcess(config_path, work / "daemon.log")
        daemon.start()
        samples: list[tuple[float, int, int]] = []
        try:
            store = await Store.open(cfg.store.url)
            try:
                async def sample() -> tuple[int, int]:
                    c = await store.counts()
                    delivered = c[State.DELIVERED] + c[State.ACKNOWLEDGED]
                    return c[State.SENT] + delivered, delivered

                async def sampler(stop: asyncio.Event) -> None:
                    while not stop.is_set():
                        samples.append((time.monotonic(), *await sample()))
                        try:
                            await asyncio.wait_for(stop.wait(), 5)
                        except asyncio.TimeoutError:
                            pass

                stop = asyncio.Event()
                task = asyncio.create_task(sampler(stop))
                bodies = dossiers(args.n)
                t0 = time.monotonic()
                while True:
                    batch = []
                    for body in itertools.islice(bodies, 1000):
                        data, mid = with_new_id(body)
                        drop(cfg.folders.outbox, f"{mid}.xml", data)
                        batch.append(mid)
                    if not batch:
                        break
                    await all_through(store, batch, timeout=300)
                t_sent = time.monotonic()
                through_sent, delivered_sent = await sample()
                deadline = t_sent + args.drain_timeout
                while (d := (await sample())[1]) < args.n and time.monotonic() < deadline:
                    await asyncio.sleep(1)
                t_drained = time.monotonic()
                stop.set()
                await task
            finally:
                await store.close()
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
    sending = t_sent - t0
    result = {
        "machine": machine(), "messages": args.n,
        "sent_per_s": round(through_sent / sending, 1),
        "filed_per_s_while_sending": round(delivered_sent / sending, 1),
        "filed_while_sending": delivered_sent,
        "drain_s": round(t_drained - t_sent, 1), "delivered_at_end": d,
        "filed_per_s_overall": round(d / (t_drained - t0), 1),
        "samples": [(round(t - t0, 1), s, dl) for t, s, dl in samples],
    }
    # the baseline is the send rate of the same run: filing keeps up when the ratio is ~1 (no goal in an issue)
    result["figures"] = [{"name": "DSNs filed while sending", "unit": "DSN/s", "value": result["filed_per_s_while_sending"],
                          "baseline_name": "messages sent, same run", "baseline": result["sent_per_s"],
                          "ratio": round(delivered_sent / through_sent, 3) if through_sent else None, "goal": None}]
    print(f"{args.n} messages: sent {result['sent_per_s']}/s over {sending:.0f} s; DSNs filed while sending "
          f"{delivered_sent} ({result['filed_per_s_while_sending']}/s); the rest drained in "
          f"{result['drain_s']} s; {d} delivered in all ({result['filed_per_s_overall']}/s overall)")
    write_result(ROOT, "receipts", result)
    return 0 if d >= args.n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
