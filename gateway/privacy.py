"""The subject key: how the store remembers *which* person a message was about without the person.

A message names its subject by BSN. The store keeps only ``subject_hash(key, bsn)``: a keyed
HMAC-SHA256, so the store (or a backup of it) alone cannot tell whose messages it holds, and a
dictionary of all 10^9 BSNs is useless without the key. An officer who is given a BSN by the data
subject computes the same hash and finds the messages (covenant art. 12-15: access and erasure).

The key is 32 random bytes, written hex-encoded to a secret file by ``init``
(``[privacy] subject_key_file``). Losing it makes the index unreadable, not the messages:
keep it with the private key's backup.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SUBJECT_KEY_BYTES = 32
_BSN = re.compile(r"\d{9}")


class SubjectKeyError(ValueError):
    """The subject key file does not hold 64 hex digits."""


def new_subject_key() -> str:
    """A fresh key, as the secret file holds it (64 hex digits)."""
    return secrets.token_hex(SUBJECT_KEY_BYTES)


def parse_subject_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != SUBJECT_KEY_BYTES:
        raise SubjectKeyError(f"must hold {SUBJECT_KEY_BYTES * 2} hex digits ({SUBJECT_KEY_BYTES} random bytes)")
    return key


def normalise_bsn(bsn: str) -> str:
    """The 9-digit form (an 8-digit BSN written without its leading zero gets it); ValueError otherwise."""
    digits = bsn.strip()
    if digits.isdigit() and len(digits) == 8:
        digits = "0" + digits
    if not _BSN.fullmatch(digits):
        raise ValueError("a BSN is 9 digits")
    return digits


def subject_hash(key: bytes, bsn: str) -> str:
    """The store's name for the person with this BSN (hex HMAC-SHA256)."""
    return hmac.new(key, normalise_bsn(bsn).encode("ascii"), hashlib.sha256).hexdigest()
