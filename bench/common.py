"""What every benchmark here shares: a rate measured for a fixed time, and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path


def rate(fn: Callable[[], object], seconds: float, per_call: int = 1) -> float:
    """Items per second: fn handles `per_call` items per call, called for about `seconds`."""
    done, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            fn()
        done += 10 * per_call
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def machine() -> dict:
    return {"host": socket.gethostname(), "cores": os.cpu_count(), "python": platform.python_version()}


def print_figures(figures: list[dict], goal: float, unit: str) -> None:
    """One line per figure: rate and µs beside the baseline's, the ratio, its per-round range, and the goal."""
    print(f"{'':24}{unit:>12}{'µs':>8}{'bare msg/s':>12}{'µs':>8}{'ratio':>8}  per round")
    all_met = True
    for f in figures:
        met = f["ratio"] >= goal
        all_met &= met
        print(f"{f['name']:24}{f['value']:12}{f['per_message_us']:8.0f}{f['baseline']:12}"
              f"{f['baseline_per_message_us']:8.0f}{f['ratio']:8.2f}  {f['ratio_per_round_min']:.2f}-"
              f"{f['ratio_per_round_max']:.2f} {'MET' if met else 'NOT MET'}")
    print(f"goal ratio >= {goal}: {'MET' if all_met else 'NOT MET'} for all")


def write_result(root: Path, name: str, result: dict) -> Path:
    """bench/results/<date>-<host>-<name>.json, and say where."""
    out = root / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-{socket.gethostname()}-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out.relative_to(root)}")
    return out
