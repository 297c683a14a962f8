"""`make demo`'s exchange runs as documented: three gateways, both routes, both directions, all acknowledged."""

from __future__ import annotations

import subprocess
import sys

from paths import ROOT


def test_demo_exchange_runs_to_acknowledged():
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "exchange.py"), "--clean"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every one delivered, opened by its entitled recipient and acknowledged" in done.stdout
    summary = done.stdout.split("== summary ==")[1]
    rows = [line for line in summary.splitlines() if " acknowledged " in line]
    assert len(rows) == 5
    assert sum(" platform " in r for r in rows) == 2 and sum(" e-mail " in r for r in rows) == 3
    assert any("0599 → PI-VUGHT" in r and "gemeenteblad" in r for r in rows)
