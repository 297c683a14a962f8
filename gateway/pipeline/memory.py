"""The daemon's memory under glibc's malloc: few arenas, and free pages given back.

What the soak measured (tests/reliability/test_reliability_load.py): the daemon's Python objects and the
bytes glibc has in use stay flat, but its resident memory crept up batch after batch. glibc gives each thread
that allocates an arena of its own (up to eight per core): the default executor's threads (sealing, file
work), the store's reader threads and writer thread each grew an arena to their own high-water mark, and
freed memory inside an arena (between chunks still in use) stays resident. Two remedies, both only where the
C library is glibc (elsewhere nothing happens):

- ``limit_arenas``: at most ``ARENAS`` arenas (``mallopt(M_ARENA_MAX)``, as ``MALLOC_ARENA_MAX`` would; an
  operator's own ``MALLOC_ARENA_MAX`` is left as it is). Threads share them: one high-water mark, not one
  per thread.
- ``give_back``: ``malloc_trim(0)``, which returns the free pages of every arena to the kernel (also those
  between chunks in use), after a round that allocated much and freed it (the deadline watch's refresh).
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache

#: malloc arenas the daemon's threads share (glibc's default: eight per core)
ARENAS = 2
M_ARENA_MAX = -8  #: mallopt's parameter (malloc.h)


@lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has mallopt and malloc_trim does not exist)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads that have one keep it); False: not glibc, or the
    operator set ``MALLOC_ARENA_MAX`` (which glibc already follows)."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return libc.mallopt(M_ARENA_MAX, arenas) == 1


def give_back() -> bool:
    """Return the free pages of every malloc arena to the kernel; True when some were."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


__all__ = ["ARENAS", "give_back", "limit_arenas"]
