"""Is this failure a full disk? Then the work waits for room instead of failing or stopping the daemon."""

from __future__ import annotations

import errno

SQLITE_FULL = 13  #: "database or disk is full"


def no_space(e: BaseException | None) -> str | None:
    """"disk-full" when `e` (or what it wraps) says the disk or the quota is full, else None."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk-full"
        if getattr(e, "sqlite_errorcode", None) == SQLITE_FULL:
            return "disk-full"
        e, seen = getattr(e, "orig", None) or e.__cause__, seen + 1
    return None
