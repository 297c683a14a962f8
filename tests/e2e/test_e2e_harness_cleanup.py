"""The harness's children do not outlive a test run that is killed (a CI timeout runs no teardown)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

RUNNER = r"""
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/e2e"]
from e2e_gateway import spawn_session
child = spawn_session(["sleep", "300"])
print(child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_runner_takes_its_daemon_sessions_with_it():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(TESTS)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(runner.stdout.readline())
    try:
        assert alive(child)
        runner.send_signal(signal.SIGKILL)  # no teardown, no atexit
        runner.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the session started by the killed runner is still running"
    finally:
        runner.stdout.close()
        for pid in (child, runner.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
