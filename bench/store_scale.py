"""Benchmark: the operator's queries on a big store — `status` and `messages list` at 100,000 and 1,000,000 messages.

For each size a fresh store (the real schema, by the store's own migrations) is filled with that many
messages as years of traffic leave them: 97 % acknowledged, the rest spread over sent, delivered, queued,
retry_wait, held and failed, over 6 message types and 40 destinations, received over the last five years,
plus one pickup row each. The fill uses plain sqlite3 in one transaction (not timed). Then, in a NEW
process (so its memory is what the query itself needs, not the fill's):
- `status`: the aggregate queries of `nazorg-gateway status` (`gateway.ops.cli_operator._status_queries`),
  through the store as the CLI runs them, timed over several runs (median; the first, cold, is shown too);
- `messages list`: the newest 100, then `--state held`, then `--party gemeente:0599 --since` a month ago;
- peak resident memory (VmHWM) of that process.
Baselines, measured in the same run: the same process's figures at the smallest size (memory must stay
flat, not grow with the store: ratio = memory at the smallest size / memory at this size, goal >= 0.8)
and the absolute goal of the issue: `status` under 200 ms at 1,000,000.

    .venv/bin/python bench/store_scale.py [--sizes 100000 1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_result  # noqa: E402

STATUS_GOAL_MS = 200
MEMORY_RATIO_GOAL = 0.8
TYPES = ("meldingsbericht", "gemeenteblad", "basisdocument", "overdrachtsdocument", "ontslagbericht",
         "spoedontslagbericht")
STATES = [("acknowledged", 9700), ("sent", 60), ("delivered", 100), ("queued", 40), ("retry_wait", 30),
          ("held", 40), ("failed", 30)]
DESTINATIONS = [f"gemeente:{code:04d}" for code in range(590, 630)]


def fill(db: Path, n: int) -> None:
    """`n` messages with their pickup rows, in the store's schema (made by the store itself)."""
    from gateway.store import Store

    async def migrate() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{db}")
        await store.close()

    asyncio.run(migrate())
    rng = random.Random(7)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    weights = [w for _, w in STATES]
    names = [s for s, _ in STATES]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")

    def fmt(at: datetime | None) -> str | None:
        return None if at is None else at.strftime("%Y-%m-%d %H:%M:%S.%f")

    batch_m, batch_p = [], []
    for i in range(n):
        state = rng.choices(names, weights)[0]
        received = now - timedelta(seconds=rng.uniform(0, 5 * 365 * 86400))
        sent = received + timedelta(seconds=5) if state in ("acknowledged", "sent", "delivered") else None
        delivered = sent + timedelta(seconds=30) if state in ("acknowledged", "delivered") else None
        acknowledged = delivered + timedelta(minutes=5) if state == "acknowledged" else None
        waiting = state in ("queued", "retry_wait")
        mid = f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
        sha = f"{rng.getrandbits(256):064x}"
        batch_m.append((mid, rng.choice(TYPES), "1.0", "pi:PI-VUGHT", rng.choice(DESTINATIONS), f"D-{i // 5}",
                        20, state, "no route" if state == "held" else ("550 refused" if state == "failed" else None),
                        0, fmt(received) if waiting else None, f"{mid}.xml", 5000, sha, fmt(received), fmt(received),
                        fmt(acknowledged or delivered or sent or received), fmt(sent), fmt(delivered),
                        fmt(acknowledged)))
        batch_p.append((fmt(received), f"{mid}.xml", 5000, sha, "accepted", mid, fmt(received)))
        if len(batch_m) == 10_000 or i == n - 1:
            conn.executemany(
                "INSERT INTO messages (message_id, type, version, sender, recipient, dossier, priority, state, "
                "reason, attempts, next_attempt_at, file_name, size, sha256, created_at, received_at, updated_at, "
                "sent_at, delivered_at, acknowledged_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch_m)
            conn.executemany("INSERT INTO pickups (at, file_name, size, sha256, outcome, message_id, confirmed_at) "
                             "VALUES (?,?,?,?,?,?,?)", batch_p)
            batch_m, batch_p = [], []
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def measure(db: Path, runs: int) -> dict:
    """In this process (started fresh): status and list timings and the peak memory."""
    from gateway.ops.cli_operator import _status_queries
    from gateway.store import State, Store

    async def go() -> dict:
        store = await Store.open(f"sqlite+aiosqlite:///{db}")
        try:
            now = datetime.now(timezone.utc)
            times: dict[str, list[float]] = {"status": [], "list newest 100": [], "list held": [],
                                             "list party+since": []}
            queries = {
                "status": lambda: store.read_query(_status_queries, now - timedelta(hours=24)),
                "list newest 100": lambda: store.list(limit=100),
                "list held": lambda: store.list(states=[State.HELD], limit=100),
                "list party+since": lambda: store.list(party="gemeente:0599", since=now - timedelta(days=30),
                                                       limit=100),
            }
            for _ in range(runs):
                for name, query in queries.items():
                    started = time.perf_counter()
                    await query()
                    times[name].append((time.perf_counter() - started) * 1000)
            return {name: {"cold_ms": round(t[0], 1), "median_ms": round(statistics.median(t[1:] or t), 1)}
                    for name, t in times.items()}
        finally:
            await store.close()

    result = asyncio.run(go())
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"queries": result, "peak_rss_mb": round(hwm / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temporary folder)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the fresh measuring process
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.runs)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-store-scale-", dir=args.dir))
    per_size = {}
    try:
        for n in sorted(args.sizes):
            db = work / f"store-{n}.db"
            started = time.perf_counter()
            fill(db, n)
            fill_s = time.perf_counter() - started
            out = subprocess.run([sys.executable, __file__, "--measure", str(db), "--runs", str(args.runs)],
                                 capture_output=True, text=True, check=True).stdout
            per_size[n] = {**json.loads(out.strip().splitlines()[-1]), "fill_seconds": round(fill_s, 1),
                           "db_mb": round(db.stat().st_size / 2**20, 1)}
            db.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    smallest, largest = min(per_size), max(per_size)
    figures = []
    for n, r in per_size.items():
        q = r["queries"]
        figures.append({"name": f"status at {n:,}", "unit": "ms", "value": q["status"]["median_ms"],
                        "cold_ms": q["status"]["cold_ms"], "goal": STATUS_GOAL_MS if n == largest else None,
                        "met": (q["status"]["median_ms"] < STATUS_GOAL_MS) if n == largest else None})
        for name in ("list newest 100", "list held", "list party+since"):
            figures.append({"name": f"{name} at {n:,}", "unit": "ms", "value": q[name]["median_ms"],
                            "cold_ms": q[name]["cold_ms"]})
        base = per_size[smallest]["peak_rss_mb"]
        figures.append({"name": f"peak memory at {n:,}", "unit": "MB", "value": r["peak_rss_mb"],
                        "baseline_name": f"peak memory at {smallest:,}", "baseline": base,
                        "ratio": round(base / r["peak_rss_mb"], 3), "goal": MEMORY_RATIO_GOAL})
    result = {"benchmark": "store_scale", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine(), "sqlite": sqlite3.sqlite_version}, "sizes": per_size, "figures": figures}
    print(f"machine: {result['machine']['cores']} cores, Python {result['machine']['python']}, "
          f"SQLite {sqlite3.sqlite_version}")
    print(f"{'':34}" + "".join(f"{n:>14,}" for n in per_size))
    for key in ("status", "list newest 100", "list held", "list party+since"):
        print(f"{key + ' ms (median/cold)':34}" + "".join(
            f"{r['queries'][key]['median_ms']:>8.1f}/{r['queries'][key]['cold_ms']:<5.0f}" for r in per_size.values()))
    print(f"{'peak memory of the query process MB':34}" + "".join(f"{r['peak_rss_mb']:>14.1f}" for r in per_size.values()))
    print(f"{'database MB / fill s':34}" + "".join(f"{r['db_mb']:>8.0f}/{r['fill_seconds']:<5.0f}"
                                                  for r in per_size.values()))
    status_ms = per_size[largest]["queries"]["status"]["median_ms"]
    print(f"status at {largest:,}: {status_ms:.0f} ms (goal < {STATUS_GOAL_MS} ms) "
          f"{'MET' if status_ms < STATUS_GOAL_MS else 'NOT MET'}; memory ratio "
          f"{per_size[smallest]['peak_rss_mb'] / per_size[largest]['peak_rss_mb']:.2f} (goal >= {MEMORY_RATIO_GOAL})")
    write_result(ROOT, "store_scale", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
