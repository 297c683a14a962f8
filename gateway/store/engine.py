"""How the store reaches its database: a synchronous engine, and the threads that use it.

Every public ``Store`` method is one synchronous function (a whole transaction,
or a read) handed to a thread once: the cost of a thread hand-off is paid per
transaction, not per statement (an async driver pays it per statement, ~15 times
for one ``accept``). Writes all run in one dedicated writer thread that owns the
write connection, so the writers of one process queue there, in order, instead
of on SQLite's sleeping busy handler. Reads run on a small pool of reader
threads, each with its own connection, so a read never waits behind a write
(nor behind another process's write lock: WAL). An in-memory SQLite database
(tests, demos) exists only inside its one connection: there the reads take
their turn in the writer thread, on that connection.

URLs: configuration names async drivers (``sqlite+aiosqlite:///…``,
``postgresql+asyncpg://…``) because the daemon is asyncio; the store maps them
to their synchronous twins (``+aiosqlite`` -> ``+pysqlite``, the stdlib
``sqlite3``; ``+asyncpg``/``+psycopg_async`` -> ``+psycopg``). Any other URL is
used as given.

SQLite connections, every one of them: WAL, ``synchronous=FULL`` (a commit
survives a power cut), foreign keys on, ``busy_timeout``. The driver's own
transaction handling is off (it would BEGIN only before DML); a write starts
with ``BEGIN IMMEDIATE``, so it holds the single writer lock before it reads
what it is about to change; a read takes no transaction (each SELECT sees its
own committed snapshot). PostgreSQL gets plain transactions (its own BEGIN).

Closing: ``Runner.close`` lets every call already handed over finish, then
closes the connections; a closed runner refuses new calls (``RuntimeError``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 15_000  #: how long a writer waits for another process's write before failing
READERS = 2  #: reader threads (and connections) per store
SYNC_DRIVERS = {"aiosqlite": "pysqlite", "asyncpg": "psycopg", "psycopg_async": "psycopg"}

T = TypeVar("T")


def sync_url(url: str | URL) -> URL:
    """The URL with its async driver swapped for the synchronous one (see the module docstring)."""
    u = make_url(url)
    backend, _, driver = u.drivername.partition("+")
    if driver in SYNC_DRIVERS:
        u = u.set(drivername=f"{backend}+{SYNC_DRIVERS[driver]}")
    return u


def in_memory(url: URL) -> bool:
    """A SQLite database that lives in its connection: every connection would open another, empty one."""
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory")


def make_engine(url: str | URL) -> Engine:
    """A synchronous engine with the store's connection settings (SQLite: pragmas and explicit BEGIN)."""
    u = sync_url(url)
    if in_memory(u):  # one connection, used by the writer thread alone (see Runner)
        engine = create_engine(u, poolclass=StaticPool, connect_args={"check_same_thread": False})
    elif u.get_backend_name() == "sqlite":
        # the connections are made and used in the store's threads, and closed from another one
        engine = create_engine(u, pool_size=READERS + 1, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(u, pool_size=READERS + 1)
    if u.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not BEGIN by itself: we do (see the docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        mode = cur.fetchone()[0]
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()
        if mode != "wal":  # an in-memory database; a file always takes WAL
            log.warning("store.no_wal", journal_mode=mode)


class Runner:
    """The writer thread with its connection, and the reader threads with theirs.

    ``write(fn, *args)`` runs ``fn(conn, *args)`` in one transaction in the writer thread
    (committed when ``fn`` returns, rolled back when it raises); ``read`` does the same on a
    reader connection. A call whose awaiting task is cancelled before its turn never runs;
    once running it finishes (commit or rollback), whatever the caller does meanwhile.
    """

    def __init__(self, engine: Engine, readers: int = READERS):
        self.engine = engine
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        # an in-memory database has one connection: its reads take their turn in the writer thread
        self._readers = self._writer if in_memory(engine.url) else ThreadPoolExecutor(
            readers, thread_name_prefix="store-reader")
        self._begin_write = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else None
        self._local = threading.local()  # each thread's own connection
        self._opened: list[Connection] = []
        self._opened_lock = threading.Lock()

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.engine.connect()
            with self._opened_lock:
                self._opened.append(conn)
            self._local.conn = conn
        return conn

    def _in_transaction(self, write: bool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._connection()
        with conn.begin():
            if write and self._begin_write:
                # here rather than from an engine "begin" event: any engine event makes SQLAlchemy
                # dispatch its execution events around every statement (~10 % of a write's CPU)
                conn.exec_driver_sql(self._begin_write)
            return fn(conn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._in_transaction, True, fn, args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._in_transaction, False, fn, args)

    def close(self) -> None:
        """Let queued calls finish, then close every connection (blocks: call it from a thread)."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self.engine.dispose()
