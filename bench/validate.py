"""Benchmark: validation (hardened parse + XSD + domain rules) against bare lxml.

Both sides get the same bytes (every valid example, in memory) and the same
compiled schemas; the baseline is what a user would otherwise write:
``etree.fromstring(data)`` then ``schema.validate(tree)``. Rounds alternate
between the two so that machine noise hits both alike; the figure that counts
is the ratio of the medians. Goal: ratio >= 0.5.

    .venv/bin/python bench/validate.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, rate, write_result  # noqa: E402
from gateway.messages.catalogue import BY_ROOT_TAG  # noqa: E402
from gateway.messages.validate import Validator  # noqa: E402
from gateway.routing.parties import Parties  # noqa: E402

GOAL = 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.3, help="per side per round")
    args = ap.parse_args()

    files = sorted((ROOT / "examples" / "valid").rglob("*.xml"))
    corpus = [f.read_bytes() for f in files]
    validator = Validator(Parties.load())
    # the same compiled schemas for the baseline
    schemas = {tag: validator.schema(v) for tag, v in BY_ROOT_TAG.items()}
    for data in corpus:
        assert validator.validate_bytes(data).valid, "every benchmark input must be valid"

    def ours(data: bytes) -> None:
        validator.validate_bytes(data)

    def bare(data: bytes) -> None:
        tree = etree.fromstring(data)
        schemas[tree.tag].validate(tree)

    ours_rates, bare_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(rate(lambda: [bare(d) for d in corpus], args.seconds, len(corpus)))
        ours_rates.append(rate(lambda: [ours(d) for d in corpus], args.seconds, len(corpus)))
    o, b = statistics.median(ours_rates), statistics.median(bare_rates)
    ratio = o / b
    round_ratios = sorted(x / y for x, y in zip(ours_rates, bare_rates))  # each round's pair saw the same noise
    sizes = [len(d) for d in corpus]

    import lxml
    result = {
        "benchmark": "validate",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "lxml": lxml.__version__, "libxml2": ".".join(map(str, etree.LIBXML_VERSION))},
        "corpus": {"messages": len(corpus), "bytes_min": min(sizes), "bytes_median": int(statistics.median(sizes)),
                   "bytes_max": max(sizes)},
        "figures": [{"name": "validate (hardened parse + XSD + rules)", "unit": "msg/s", "value": round(o),
                     "baseline_name": "bare lxml fromstring + XMLSchema.validate", "baseline": round(b),
                     "ratio": round(ratio, 3), "goal": GOAL,
                     "ratio_per_round_min": round(round_ratios[0], 3), "ratio_per_round_max": round(round_ratios[-1], 3),
                     "per_message_us": round(1e6 / o, 1), "baseline_per_message_us": round(1e6 / b, 1)}],
    }
    print(f"machine: {result['machine']['cores']} cores, Python {result['machine']['python']}, "
          f"lxml {result['machine']['lxml']} (libxml2 {result['machine']['libxml2']})")
    print(f"corpus: {len(corpus)} messages, {min(sizes)}-{max(sizes)} bytes (median {int(statistics.median(sizes))})")
    print(f"{'':44}{'msg/s':>10}{'µs/msg':>10}")
    print(f"{'bare lxml parse + XSD (baseline)':44}{b:10.0f}{1e6 / b:10.1f}")
    print(f"{'gateway validate (hardened + XSD + rules)':44}{o:10.0f}{1e6 / o:10.1f}")
    print(f"ratio {ratio:.2f} (goal >= {GOAL}) {'MET' if ratio >= GOAL else 'NOT MET'}; "
          f"per round {round_ratios[0]:.2f}-{round_ratios[-1]:.2f} over {args.rounds} rounds")
    write_result(ROOT, "validate", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
