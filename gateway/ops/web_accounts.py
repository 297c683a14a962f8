"""Dashboard accounts: one ``name:role:scrypt$n$r$p$salt$hash`` a line, in a file only the gateway reads.

scrypt (``hashlib.scrypt``) because it is in the standard library and memory-hard; the parameters
are stored with each hash so they can be raised later without invalidating existing accounts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROLES", "Account", "AccountError", "add_account", "hash_password", "load_accounts", "verify_password"]

ROLES = ("operator", "officer")  #: officer: may also see a message's content (personal data)
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_N, _R, _P = 2**14, 8, 1


class AccountError(Exception):
    pass


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 2**20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def load_accounts(path: Path | None) -> dict[str, Account]:
    """The accounts in ``path`` (none when it does not exist): malformed lines raise ``AccountError``."""
    if path is None or not path.exists():
        return {}
    out: dict[str, Account] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(":")
        if len(parts) != 3 or not NAME.fullmatch(parts[0]) or parts[1] not in ROLES:
            raise AccountError(f"{path}:{i}: not name:role:hash (role {' or '.join(ROLES)})")
        out[parts[0]] = Account(*parts)
    return out


def add_account(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace ``name`` (file created with mode 0600)."""
    if not NAME.fullmatch(name):
        raise AccountError("a name is 1 to 64 of A-Z a-z 0-9 . _ -")
    if role not in ROLES:
        raise AccountError(f"role must be {' or '.join(ROLES)}")
    if len(password) < 12:
        raise AccountError("a password needs at least 12 characters")
    accounts = load_accounts(path)
    accounts[name] = Account(name, role, hash_password(password))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{a.name}:{a.role}:{a.password_hash}\n" for a in accounts.values())
    os.replace(tmp, path)
