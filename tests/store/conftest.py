"""Fixtures of the store tests: a real SQLite file per test, a clock the test moves, message factories."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.store import NewMessage, State, Store
from paths import NOW


class Clock:
    """The store's clock, moved by hand."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite+aiosqlite:///{db_path}"


@pytest.fixture
async def store(url: str, clock: Clock) -> AsyncIterator[Store]:
    s = await Store.open(url, clock=clock)
    yield s
    await s.close()


_seq = itertools.count(1)


def new_message(message_id: str | None = None, *, priority: int = 0, recipient: str = "gemeente:0599",
                sender: str = "pi:PI-VUGHT", type: str = "meldingsbericht", content: bytes | None = None,
                ) -> NewMessage:
    """A message as the pickup would hand it over; its file content (hence sha256) is unique unless given."""
    n = next(_seq)
    message_id = message_id or f"msg-{n:06d}"
    body = content if content is not None else f"<file {n} {message_id}/>".encode()
    return NewMessage(message_id=message_id, type=type, version="1.0", sender=sender, recipient=recipient,
                      dossier=f"DOS-{n}", replies_to=None, supersedes=None, priority=priority, created_at=NOW,
                      file_name=f"{message_id}.xml", size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                      spool_path=f"/var/spool/nazorg/{message_id}.xml")


@pytest.fixture
def make() -> Callable[..., NewMessage]:
    return new_message


async def queued(store: Store, msg: NewMessage) -> None:
    """Accept and seal: the message is due now."""
    await store.accept(msg)
    await store.save_sealed(msg.message_id, b"sealed:" + msg.message_id.encode(), "mic-" + msg.message_id,
                            transport="smtp", address="nazorg@gemeente.example", profile="compatible")


@pytest.fixture
def queue() -> Callable[..., object]:
    return queued


def raw(db_path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the store's file (what an operator's sqlite3 shell sees)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=OFF")  # test set-up only: the store's own writes stay FULL
    return conn


@pytest.fixture
def sql(db_path: Path):
    conns: list[sqlite3.Connection] = []

    def query(statement: str, *params: object) -> list[tuple]:
        if not conns:
            conns.append(raw(db_path))
        return conns[0].execute(statement, params).fetchall()

    yield query
    for c in conns:
        c.close()


def force_state(sql: Callable[..., list], message_id: str, state: State) -> None:
    """Put a message in a state by hand (tests of single edges), with a lease when it is sending."""
    sql("UPDATE messages SET state=?, lease_owner=?, lease_until=?, next_attempt_at=? WHERE message_id=?", state.value,
        "w0" if state is State.SENDING else None,
        "2099-01-01 00:00:00.000000" if state is State.SENDING else None,
        "2026-01-01 00:00:00.000000" if state in (State.QUEUED, State.RETRY_WAIT) else None, message_id)


@pytest.fixture
def force(sql):
    return lambda message_id, state: force_state(sql, message_id, state)
