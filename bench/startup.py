"""Benchmark: start-up of `run` with a large store and a full outbox — to `started`, and to the outbox taken.

The set-up is PI-VUGHT's local one (`init`, as the e2e tests make it) with a private Postfix that accepts
and discards (tests/mailservers.py, as bench/pipeline.py), so what the daemon picks up it also seals and
sends while the outbox is being taken, as after a real outage. Its store is filled (plain sqlite3 in one
transaction, `bench.store_scale.fill`, not timed) with M recorded messages (default 100,000) as years of
traffic leave them — afterwards nothing is in flight (queued, retry_wait, sent and delivered become
acknowledged: this is history, bench/backlog.py has a queued backlog) — and its outbox with F example
messages (default 5,000; every type, fresh ids). Then `python -m gateway run` is started as its own
process; from the moment before it is spawned:
- to `started` (the log event: configuration, keys, store opened and migrated, validation workers warm,
  reconcile done, every service wired);
- to the whole outbox taken: the last of the F `picked-up` log events (each file committed as `received`
  and moved into the spool); the pick-up rate between the first and the last;
- the daemon's peak resident memory (VmHWM) once the outbox is taken, and with its validation workers.
The same daemon started on the same set-up with an EMPTY store and outbox (before the fill; twice, the
faster counts) gives the figures that must not grow with the store: time to `started` and peak memory.

The baseline, measured in the same run, is the least start-up can do, by the plainest means, in one
fresh process (so the interpreter's own start is in it, as in `run`'s):
- to `started`: start Python, `import gateway.cli` (what `python -m gateway` imports first), open the
  SQLite file (WAL) and read its schema version, list the outbox;
- to the outbox taken: then, per file, read it, SHA-256, lxml parse + XSD validation (the compiled
  shipped schemas), insert one row into a SQLite table (WAL, synchronous=FULL, one transaction per 64
  files as the store's group commit), rename it into a spool folder, and fsync both folders per 64.
  One core, no domain rules, no keyed file-name digest, no subject index, no sealing or sending beside it.
It runs on a copy of the outbox (and its own database file beside the store), once before and once after
the daemon; the faster counts (it is a floor). `PRAGMA quick_check` of the store is timed too, as context
(the product does not run it; it says what an integrity check at start would cost at this size).
The ratios are baseline / gateway (1 = as fast as the bare floor). There is no goal yet (issue 7 asks for
the measurement).

What the first runs showed (2 shared cores): `started` after 2.0-2.6 s with 100,000 messages, no later than
with an empty store in these runs, against a bare ~0.45 s; most of the difference is importing the daemon's
modules (`import gateway.pipeline.daemon` costs ~1.2 s beyond `gateway.cli`: SQLAlchemy, aiohttp, the AS2
adapter, ops), then 0.5-0.7 s from `store.opened` to
`started` (validation workers warming up, services wired). The first file is taken 0.4-1.2 s after
`started` at 100,000 messages, each time just after the first retention purge's log line: the purge runs at
once and plans inside its write transaction (`_purge_tx`), holding the store's only writer while it reads
the store, even when nothing is due. Then pick-up runs at 42-50 files/s while the sealer and dispatcher work
beside it, against a bare 1,500-2,900/s on one core: the outbox of 5,000 takes 100-120 s. Memory grows a
little with the store and outbox (~100 → ~140 MB for the daemon).

    .venv/bin/python bench/startup.py [--messages 100000] [--files 5000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

BATCH = 64  #: the store's group commit: writes queued at once, one COMMIT


# -- the baseline, in its own fresh process ---------------------------------------------------------
def bare(outbox: Path, spool: Path, store_db: Path, bare_db: Path) -> dict:
    """What start-up and taking the outbox cost at the least; wall-clock times (time.time()) of each step."""
    import gateway.cli  # noqa: F401  what `python -m gateway` imports first
    imported = time.time()
    conn = sqlite3.connect(store_db)
    conn.execute("PRAGMA journal_mode=WAL")
    version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    conn.close()
    opened = time.time()
    names = sorted(e.name for e in os.scandir(outbox) if e.name.endswith(".xml") and e.is_file())
    listed = time.time()

    from lxml import etree

    from gateway.messages.catalogue import BY_ROOT_TAG, XSD_DIR
    from gateway.messages.safe_parse import load_trusted_schema
    schemas = {tag: load_trusted_schema(XSD_DIR / v.xsd_file) for tag, v in BY_ROOT_TAG.items()}
    db = sqlite3.connect(bare_db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS taken (id INTEGER PRIMARY KEY, name TEXT, sha256 TEXT UNIQUE, "
               "size INTEGER, at REAL)")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    folders = [os.open(outbox, os.O_RDONLY), os.open(spool, os.O_RDONLY)]
    for start in range(0, len(names), BATCH):
        chunk = names[start:start + BATCH]
        db.execute("BEGIN IMMEDIATE")
        for name in chunk:
            data = (outbox / name).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            tree = etree.fromstring(data, parser)
            if not schemas[tree.tag].validate(tree):
                raise SystemExit(f"bare: {name} is not valid")
            db.execute("INSERT INTO taken (name, sha256, size, at) VALUES (?, ?, ?, ?)",
                       (name, sha, len(data), time.time()))
        db.execute("COMMIT")
        for name in chunk:
            os.rename(outbox / name, spool / name)
        for fd in folders:
            os.fsync(fd)
    taken = time.time()
    for fd in folders:
        os.close(fd)
    db.close()
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"imported": imported, "opened": opened, "listed": listed, "taken": taken, "files": len(names),
            "schema_version": version, "peak_rss_mb": round(hwm / 1024, 1)}


def run_bare(outbox: Path, spool: Path, store_db: Path, bare_db: Path) -> dict:
    """The baseline once, in a fresh process: seconds from before its spawn to each step; files put back after."""
    bare_db.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(bare_db) + suffix).unlink(missing_ok=True)
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, "--bare", str(outbox), str(spool), str(store_db), str(bare_db)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"the bare baseline failed: {out.stderr.strip()[-500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    for entry in os.scandir(spool):  # the files back, for the next run
        os.rename(entry.path, outbox / entry.name)
    return {"to_imported_s": r["imported"] - t0, "to_store_opened_s": r["opened"] - t0,
            "to_ready_s": r["listed"] - t0, "to_taken_s": r["taken"] - t0, "files": r["files"],
            "schema_version": r["schema_version"], "peak_rss_mb": r["peak_rss_mb"]}


# -- the gateway --------------------------------------------------------------------------------------
def log_events(log: Path, names: set[str]) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and any(f'"event": "{n}"' in line for n in names):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def at(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_daemon(config: Path, log: Path, files: int, timeout: float) -> dict:
    """`run` from spawn to `started` and, when `files`, until that many are picked up; then stopped."""
    from bench.common import Daemon

    daemon = Daemon(config, log)
    t0 = time.time()
    daemon.start(timeout=timeout)
    started = at(log_events(log, {"started"})[-1])
    opened = at(log_events(log, {"store.opened"})[-1])  # config, secrets, keys and trust checked before it
    result = {"to_store_opened_s": opened - t0, "to_started_s": started - t0}
    try:
        deadline = time.monotonic() + timeout
        picked: list[dict] = []
        while files:
            picked = log_events(log, {"picked-up"})
            if len(picked) >= files:
                break
            if daemon.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"only {len(picked)} of {files} picked up (see {log})")
            time.sleep(0.25)
        if files:
            times = sorted(at(e) for e in picked)
            sealed = [at(e) for e in log_events(log, {"sealed"})]
            result.update(to_first_taken_s=times[0] - t0, to_taken_s=times[-1] - t0,
                          pickup_rate=(len(times) - 1) / max(1e-9, times[-1] - times[0]),
                          sealed_meanwhile=sum(1 for s in sealed if s <= times[-1]))
        else:
            time.sleep(2.0)  # what the first seconds of an idle daemon add (the purge, the checkpoint)
        result.update(peak_rss_mb=round(daemon.peak_rss_mb(), 1),
                      session_peak_rss_mb=round(daemon.peak_rss_mb(whole_session=True), 1))
        purges = log_events(log, {"retention.purge"})
        if purges:
            result["first_purge"] = {"at_s": round(at(purges[0]) - t0, 2),
                                     **{k: v for k, v in purges[0].items() if k not in ("event", "level", "timestamp")}}
    finally:
        daemon.stop()
    return result


def settle(db: Path) -> dict:
    """History, nothing in flight: queued, retry_wait, sent and delivered become acknowledged (the counters'
    triggers follow). What is left per state."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.execute("UPDATE messages SET state='acknowledged', next_attempt_at=NULL, "
                 "sent_at=coalesce(sent_at, received_at), delivered_at=coalesce(delivered_at, received_at), "
                 "acknowledged_at=coalesce(acknowledged_at, received_at) "
                 "WHERE state IN ('queued', 'retry_wait', 'sent', 'delivered')")
    conn.execute("COMMIT")
    counts = dict(conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())
    conn.close()
    return counts


def quick_check_seconds(db: Path) -> float:
    conn = sqlite3.connect(db)
    started = time.perf_counter()
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    took = time.perf_counter() - started
    conn.close()
    if result != "ok":
        raise SystemExit(f"quick_check: {result}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000, help="messages recorded in the store (default 100000)")
    ap.add_argument("--files", type=int, default=5_000, help="files in the outbox (default 5000)")
    ap.add_argument("--bare", nargs=4, type=Path, help=argparse.SUPPRESS)  # internal: the baseline process
    args = ap.parse_args()
    if args.bare:
        print(json.dumps(bare(*args.bare)))
        return 0

    from bench.common import discard_work, machine, write_result
    from bench.store_scale import fill
    from dropped import OWN_EXAMPLES, example, with_new_id
    from e2e_gateway import drop, make_setup
    from gateway.config import load_config
    from gateway.crypto.pki import DEV_PARTIES
    from mailservers import MailServers

    users = {p.email: f"pw-{i}" for i, p in enumerate(DEV_PARTIES)}
    sink = {"virtual_transport": "discard:benchmark sink", "smtpd_tls_security_level": "may",
            "smtpd_discard_ehlo_keywords": "dsn"}
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    servers = MailServers.temporary(users, sorted({a.split("@")[1] for a in users}), postfix_settings=sink)
    load_before = os.getloadavg()[0]
    try:
        servers.start()
        cfg_path = make_setup(work / "gw", servers, users, edits={"stable_after = 0.05": "stable_after = 0.1"})
        text = cfg_path.read_text()
        cfg_path.write_text(text[:text.index("[imap]")] + text[text.index("[retry]"):])  # no receipts here
        cfg = load_config(cfg_path)
        db = cfg.store.sqlite_path

        print("start-up with an empty store and outbox …", flush=True)
        # twice: the first start after the set-up is the machine's coldest (the faster one counts)
        empty = min((run_daemon(cfg_path, work / f"empty-{i}.log", 0, timeout=120) for i in range(2)),
                    key=lambda r: r["to_started_s"])

        print(f"filling the store with {args.messages:,} messages …", flush=True)
        started = time.perf_counter()
        fill(db, args.messages)
        states = settle(db)
        fill_s = time.perf_counter() - started
        names = list(OWN_EXAMPLES)
        bare_outbox, bare_spool = work / "bare-outbox", work / "bare-spool"
        bare_outbox.mkdir()
        bare_spool.mkdir()
        print(f"filling the outbox with {args.files:,} files …", flush=True)
        sizes = []
        for i in range(args.files):
            data, mid = with_new_id(example(names[i % len(names)]))
            drop(cfg.folders.outbox, f"{mid}.xml", data)
            drop(bare_outbox, f"{mid}.xml", data)
            sizes.append(len(data))
        os.sync()  # the fill's and the files' writes are on disk, not in the timed runs' way
        quick_check_s = quick_check_seconds(db)

        print("baseline: bare start and take …", flush=True)
        bare_runs = [run_bare(bare_outbox, bare_spool, db, work / "bare.db")]
        print(f"start-up with {args.messages:,} in the store and {args.files:,} in the outbox …", flush=True)
        ours = run_daemon(cfg_path, work / "full.log", args.files, timeout=600)
        print("baseline: bare start and take, again …", flush=True)
        bare_runs.append(run_bare(bare_outbox, bare_spool, db, work / "bare.db"))
        db_mb = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    finally:
        servers.stop()
        discard_work(work)

    best_ready = min(r["to_ready_s"] for r in bare_runs)
    best_taken = min(r["to_taken_s"] for r in bare_runs)
    def short(n: int) -> str:
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"
    size = f"{short(args.messages)} stored, {short(args.files)} files"
    figures = [
        {"name": f"to started ({size})", "unit": "s", "value": round(ours["to_started_s"], 2),
         "baseline_name": "python + import gateway.cli + open SQLite, read schema version + list outbox",
         "baseline": round(best_ready, 2), "ratio": round(best_ready / ours["to_started_s"], 3), "goal": None,
         "empty_store_s": round(empty["to_started_s"], 2)},
        {"name": f"outbox taken ({size})", "unit": "s", "value": round(ours["to_taken_s"], 2),
         "baseline_name": "the above + per file read, SHA-256, lxml parse + XSD, SQLite row (64 per commit), "
                          "rename, fsync (one core)",
         "baseline": round(best_taken, 2), "ratio": round(best_taken / ours["to_taken_s"], 3), "goal": None,
         "first_taken_s": round(ours["to_first_taken_s"], 2), "pickup_rate_msg_per_s": round(ours["pickup_rate"], 1),
         "sealed_meanwhile": ours["sealed_meanwhile"],
         "bare_take_rate_msg_per_s": round(args.files / (best_taken - best_ready), 1)},
        {"name": f"peak memory ({size})", "unit": "MB", "value": ours["peak_rss_mb"],
         "baseline_name": "the same daemon's peak, started with an empty store and outbox",
         "baseline": empty["peak_rss_mb"], "ratio": round(empty["peak_rss_mb"] / ours["peak_rss_mb"], 3),
         "goal": None, "session_mb": ours["session_peak_rss_mb"],
         "empty_session_mb": empty["session_peak_rss_mb"]},
    ]
    result = {"benchmark": "startup", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine(), "sqlite": sqlite3.sqlite_version,
                          "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
              "messages": args.messages, "files": args.files, "states": states, "store_mb": round(db_mb, 1),
              "fill_seconds": round(fill_s, 1), "xml_bytes_mean": round(sum(sizes) / len(sizes)),
              "quick_check_seconds": round(quick_check_s, 2), "gateway": ours, "empty": empty,
              "bare_runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in bare_runs],
              "figures": figures}
    print(f"\nmachine: {os.cpu_count()} cores; store {db_mb:.0f} MB ({args.messages:,} messages, filled in "
          f"{fill_s:.0f} s), outbox {args.files:,} files of {result['xml_bytes_mean']} B on average")
    print(f"{'seconds from spawn':42}{'gateway':>10}{'bare':>8}{'ratio':>8}{'empty store':>13}")
    print(f"{'to `started`':42}{ours['to_started_s']:10.2f}{best_ready:8.2f}{best_ready / ours['to_started_s']:8.2f}"
          f"{empty['to_started_s']:13.2f}")
    print(f"{'to `store.opened` (config, keys checked)':42}{ours['to_store_opened_s']:10.2f}"
          f"{bare_runs[0]['to_store_opened_s']:8.2f}{'':8}{empty['to_store_opened_s']:13.2f}")
    print(f"{'to the first file taken':42}{ours['to_first_taken_s']:10.2f}")
    print(f"{'to the whole outbox taken':42}{ours['to_taken_s']:10.2f}{best_taken:8.2f}"
          f"{best_taken / ours['to_taken_s']:8.2f}")
    print(f"pick-up rate {ours['pickup_rate']:.0f} files/s (bare take {args.files / (best_taken - best_ready):.0f}/s, "
          f"one core); meanwhile the daemon sealed {ours['sealed_meanwhile']:,} of them (and sent what it could)")
    print(f"peak memory of the daemon: {ours['peak_rss_mb']:.0f} MB (with its validation workers "
          f"{ours['session_peak_rss_mb']:.0f}); empty store and outbox: {empty['peak_rss_mb']:.0f} MB "
          f"({empty['session_peak_rss_mb']:.0f}); the bare process {bare_runs[0]['peak_rss_mb']:.0f} MB")
    print(f"PRAGMA quick_check of the store: {quick_check_s:.2f} s (not done by the product; context)")
    if "first_purge" in ours:
        print(f"first retention purge: {ours['first_purge']}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    write_result(ROOT, "startup", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
