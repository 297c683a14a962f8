"""Every benchmark, one after the other, then one table and one JSON of all their figures.

Each benchmark runs as its own process (as `make bench` ran them before) and writes its own result
(`bench/results/<date>-<host>-<name>.json`); this collects their figures — each beside the baseline
measured in the same run, with the ratio and the goal — into `bench/results/<date>-<host>.json`
with the machine (cores, memory, CPU) and the library versions. Ratios are the headline: the
machine is shared and noisy, absolute rates are context. A benchmark that fails is reported as
failed in the table and the JSON, and the others still run; the exit status is then 1.

    .venv/bin/python bench/all.py [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (name, script arguments, the same with --quick): in the order they run
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("validate", ["bench/validate.py"], ["bench/validate.py", "--rounds", "5"]),
    ("crypto_seal", ["bench/crypto_seal.py"], ["bench/crypto_seal.py", "--rounds", "3"]),
    ("crypto_open", ["bench/crypto_open.py"], ["bench/crypto_open.py", "--rounds", "3", "--pool", "50"]),
    ("store", ["bench/store.py"], ["bench/store.py", "--rounds", "3"]),
    ("store_scale", ["bench/store_scale.py"], ["bench/store_scale.py", "--sizes", "20000"]),
    ("pipeline", ["bench/pipeline.py"], ["bench/pipeline.py", "-n", "500", "--latency-seconds", "5"]),
    ("intake", ["bench/intake.py"], ["bench/intake.py", "-n", "100"]),
    ("backlog", ["bench/backlog.py"], ["bench/backlog.py", "-n", "500"]),
    ("receipts", ["bench/receipts.py"], ["bench/receipts.py", "-n", "2000"]),
    ("exchange", ["bench/exchange.py"], ["bench/exchange.py", "-n", "100", "--latency-seconds", "10", "--rounds", "3"]),
    ("startup", ["bench/startup.py"], ["bench/startup.py", "--messages", "20000", "--files", "500"]),
]
LIBRARIES = ("cryptography", "asn1crypto", "lxml", "xmlschema", "SQLAlchemy", "aiosmtplib", "aioimaplib", "aiohttp",
             "structlog")


def machine() -> dict:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"host": socket.gethostname(), "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "cpu": cpu, "python": platform.python_version(), "libraries": versions,
            "load_average_at_start": os.getloadavg()}


def run_one(name: str, argv: list[str]) -> dict:
    """Run one benchmark; its figures (or why it failed)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    took = round(time.monotonic() - started, 1)
    sys.stdout.write(proc.stdout)
    written = re.findall(r"^written: (\S+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not written:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"benchmark": name, "ok": False, "seconds": took, "error": "\n".join(tail)}
    result = json.loads((ROOT / written[-1]).read_text())
    return {"benchmark": name, "ok": True, "seconds": took, "result_file": written[-1],
            "figures": result.get("figures", [])}


def met(figure: dict) -> bool | None:
    if "met" in figure:
        return bool(figure["met"])
    if figure.get("ratio") is not None and figure.get("goal") is not None:
        return figure["ratio"] >= figure["goal"]
    return None


def table(runs: list[dict]) -> str:
    lines = [f"{'benchmark / figure':46}{'value':>12}{'baseline':>12}{'ratio':>8}{'goal':>8}  verdict"]
    for run in runs:
        if not run["ok"]:
            lines.append(f"{run['benchmark']:46}{'FAILED':>12}  {run['error'].splitlines()[-1][:60] if run['error'] else ''}")
            continue
        for f in run["figures"]:
            verdict = {True: "MET", False: "NOT MET", None: ""}[met(f)]
            ratio = f"{f['ratio']:.2f}" if f.get("ratio") is not None else "-"
            baseline = f"{f['baseline']:g}" if isinstance(f.get("baseline"), (int, float)) else "-"
            goal = f"{f['goal']:g}" if isinstance(f.get("goal"), (int, float)) else "-"
            value = f"{f['value']:g} {f.get('unit', '')}".strip()
            lines.append(f"{(run['benchmark'] + ': ' + f['name'])[:46]:46}{value:>12}{baseline:>12}{ratio:>8}"
                         f"{goal:>8}  {verdict}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[b[0] for b in BENCHMARKS], help="run only these")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and messages (a smoke run, noisier)")
    args = ap.parse_args()

    about = machine()
    runs = []
    for name, full, quick in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name} ===", flush=True)
        runs.append(run_one(name, quick if args.quick else full))
    summary = table(runs)
    mem = about["memory_gib"]
    print(f"\n=== all figures === {about['host']}: {about['cores']} cores, {mem} GiB, {about['cpu']}; Python "
          f"{about['python']}; " + ", ".join(f"{k} {v}" for k, v in about["libraries"].items() if v))
    print(summary)
    out = ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
                               "machine": about, "runs": runs}, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
