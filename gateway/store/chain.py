"""The audit trail's hash chain: each row carries the hash of the row before it.

``hash = SHA-256(canonical(prev_hash, id, at, action, object, result, origin, actor))``.
The encoding is frozen (migration 3 chains the rows it finds with it, ``audit verify``
recomputes it): a JSON array, UTF-8, no spaces, keys in that order, ``at`` as UTC ISO
8601 with microseconds. JSON quotes every string, so no two different rows share an
encoding (a field cannot "borrow" a separator from its neighbour). The first row's
``prev_hash`` is ``GENESIS``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

GENESIS = "0" * 64  #: the prev_hash of the first audit row


def canonical_at(at: datetime) -> str:
    """The timestamp as hashed (aware UTC, microseconds): what the store gives back for what it stored."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit timestamps are aware UTC datetimes")
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def row_hash(prev_hash: str, id: int, at: datetime, action: str, object: str, result: str, origin: str,
             actor: str) -> str:
    """The hex SHA-256 of one audit row chained to ``prev_hash``."""
    encoded = json.dumps([prev_hash, int(id), canonical_at(at), action, object, result, origin, actor],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
