"""Filling a small file system to its last byte (the full-disk and full-inbox tests)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fill(path: Path) -> int:
    """Write `path` until the file system has no byte left (ever smaller chunks); its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e  # nothing else
    finally:
        os.close(fd)
    return path.stat().st_size
