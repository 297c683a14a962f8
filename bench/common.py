"""What every benchmark here shares: a rate measured for a fixed time, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable


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
