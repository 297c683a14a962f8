"""`make demo`'s exchange runs as documented: every example delivered and acknowledged, the broken one refused."""

from __future__ import annotations

import subprocess
import sys

from paths import ROOT


def test_demo_exchange_runs_to_acknowledged():
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "exchange.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== every message delivered and acknowledged ==" in done.stdout
    assert done.stdout.count(" acknowledged\n") == 7 and "[bsn-check]" in done.stdout
