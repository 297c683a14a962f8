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

Group commit: a commit with ``synchronous=FULL`` waits for the disk (an fsync,
~2-5 ms), and a message takes five or six write transactions on its way, so one
commit per transaction caps the whole gateway at some tens of messages a second
whatever the CPU does. The writer thread therefore takes every write queued at
that moment (up to ``GROUP_MAX``), runs each in its own SAVEPOINT inside one
``BEGIN IMMEDIATE`` transaction, and commits once: a write that raises is rolled
back to its savepoint alone (its caller gets the exception, the others go on),
and no caller hears of success before the COMMIT returned. It never waits for
company: a lone write commits at once, and writes arriving during a commit make
up the next group. What each caller sees is unchanged: its function ran as one
transaction, committed when it returns, rolled back when it raises.

Closing: ``Runner.close`` lets every call already handed over finish, then
closes the connections; a closed runner refuses new calls (``RuntimeError``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 15_000  #: how long a writer waits for another process's write before failing
READERS = 2  #: reader threads (and connections) per store
GROUP_MAX = 64  #: most writes committed together (bounds how long the write lock is held at once)
#: SQLite page cache of each reader connection (SQLite's default: 2,000 KiB, as the writer keeps). In WAL a
#: reader's cache is dropped whenever another connection committed, i.e. at nearly every read under load, so a
#: larger one only helps within one statement; but one read over many rows (the overdue-receipt watch's, every
#: minute, over every message waiting for a receipt) filled it to the full 2 MB, on each reader in turn, and
#: what it freed stayed resident until the next trim (measured on the soak's store, 42,000 messages waiting:
#: 2,049 KiB after that read; the soak's RSS swung by up to ~4 MB in its second half). With 512 KiB that read,
#: the deadline watch's full round and the figures took as long (same store, back to back, 2 runs each).
READER_CACHE_KIB = 512
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


class DriverStatement:
    """A hot statement compiled once by SQLAlchemy, then run on the driver's own cursor (SQLite).

    SQLAlchemy's execution of even a cached Core statement costs ~40-60 µs of CPU (cache key,
    execution context, parameter processing, result set-up); the stdlib driver's ~5. The message
    path runs some thirty statements per message in the one writer thread, so for the plain ones
    (inserts, deletes, updates without RETURNING, and reads whose columns need no conversion) the
    store keeps SQLAlchemy's SQL text and bind processors and hands the rest to the driver. What
    lands in the database is what SQLAlchemy would have written (the same processors convert each
    value; tests/store/test_driver_statements.py holds the two equal). Other dialects run the
    statement through SQLAlchemy as before. Not for expanding (IN-list) parameters or RETURNING.
    """

    __slots__ = ("statement", "_forms")

    def __init__(self, statement: Any):
        self.statement = statement
        #: per set of parameter names: the SQL and, per positional bind, (name, converter, constant)
        self._forms: dict[tuple[str, ...], tuple[str, tuple[tuple[str, Any, Any], ...]]] = {}

    def _form(self, conn: Connection, keys: tuple[str, ...]) -> tuple[str, tuple[tuple[str, Any, Any], ...]]:
        form = self._forms.get(keys)
        if form is None:
            compiled = self.statement.compile(dialect=conn.dialect, column_keys=list(keys))
            if compiled.positiontup is None or compiled.post_compile_params:
                raise TypeError("DriverStatement needs positional binds without expanding parameters")
            processors = compiled._bind_processors  # SQLAlchemy's own conversions (UTCDateTime -> text)
            binds = []
            for name in compiled.positiontup:
                # a literal of the statement (outcome == "accepted") is a bind with its value built in
                constant = _FROM_PARAMS if name in keys else compiled.binds[name].effective_value
                binds.append((name, processors.get(name), constant))
            form = self._forms[keys] = (str(compiled), tuple(binds))
        return form

    @staticmethod
    def _values(binds: tuple[tuple[str, Any, Any], ...], params: dict[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, convert, constant in binds:
            value = params[name] if constant is _FROM_PARAMS else constant
            out.append(value if convert is None else convert(value))
        return tuple(out)

    def execute(self, conn: Connection, params: dict[str, Any] | list[dict[str, Any]]) -> int:
        """Run it with one dict of parameters, or many (same keys); the number of rows changed."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params).rowcount
        driver = conn.connection.dbapi_connection
        if isinstance(params, list):
            if not params:
                return 0
            sql, binds = self._form(conn, tuple(params[0]))
            values: Any = [self._values(binds, p) for p in params]
            run = driver.executemany
        else:
            sql, binds = self._form(conn, tuple(params))
            values, run = self._values(binds, params), driver.execute
        try:
            return run(sql, values).rowcount
        except conn.dialect.dbapi.Error as e:  # raised as SQLAlchemy would (IntegrityError, OperationalError …)
            raise DBAPIError.instance(sql, values, e, conn.dialect.dbapi.Error) from e

    def first(self, conn: Connection, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        """The first row of a read whose columns need no conversion (text, integers, bytes), as a tuple."""
        params = params or {}
        if conn.dialect.name != "sqlite":
            row = conn.execute(self.statement, params).first()
            return None if row is None else tuple(row)
        sql, binds = self._form(conn, tuple(params))
        values = self._values(binds, params)
        try:
            return conn.connection.dbapi_connection.execute(sql, values).fetchone()
        except conn.dialect.dbapi.Error as e:
            raise DBAPIError.instance(sql, values, e, conn.dialect.dbapi.Error) from e


_FROM_PARAMS = object()  #: marks a bind whose value comes from the caller's parameters


class _Call:
    __slots__ = ("future", "fn", "args")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.future: Future[Any] = Future()
        self.fn, self.args = fn, args


_CLOSE = object()  #: put on the writer's queue by close(): finish what is queued, then stop


class Runner:
    """The writer thread with its connection, and the reader threads with theirs.

    ``write(fn, *args)`` runs ``fn(conn, *args)`` as one transaction in the writer thread
    (committed when ``fn`` returns, rolled back when it raises; several are committed together:
    see "Group commit" in the module); ``read`` runs it on a reader connection. A call whose
    awaiting task is cancelled before its turn never runs; once running it finishes (commit or
    rollback), whatever the caller does meanwhile.
    """

    def __init__(self, engine: Engine, readers: int = READERS):
        self.engine = engine
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        # an in-memory database has one connection: its reads take their turn in the writer thread
        self._shared = in_memory(engine.url)
        self._readers = None if self._shared else ThreadPoolExecutor(readers, thread_name_prefix="store-reader")
        self._begin_write = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else None
        self._local = threading.local()  # each thread's own connection
        self._opened: list[Connection] = []
        self._opened_lock = threading.Lock()
        self._writer.start()

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.engine.connect()
            if self.engine.dialect.name == "sqlite" and threading.current_thread() is not self._writer:
                conn.connection.dbapi_connection.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            with self._opened_lock:
                self._opened.append(conn)
            self._local.conn = conn
        return conn

    def _in_transaction(self, write: bool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._connection()
        with conn.begin():
            return fn(conn, *args)

    # -- the writer thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            group, closing = [], first is _CLOSE
            if not closing:
                group.append(first)
            while len(group) < GROUP_MAX and not closing:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _CLOSE:
                    closing = True
                else:
                    group.append(more)
            running = [c for c in group if c.future.set_running_or_notify_cancel()]
            if running:
                self._commit_group(running)
            if closing:
                return

    def _commit_group(self, calls: list[_Call]) -> None:
        """Run each call in its savepoint of one transaction; settle every future after the COMMIT."""
        outcomes: list[tuple[_Call, bool, Any]] = []
        try:
            conn = self._connection()
            with conn.begin():
                # here rather than from an engine "begin" event: any engine event makes SQLAlchemy
                # dispatch its execution events around every statement (~10 % of a write's CPU)
                if self._begin_write:
                    conn.exec_driver_sql(self._begin_write)
                if len(calls) == 1:  # alone: the transaction is its own (no savepoint to pay for)
                    call = calls[0]
                    outcomes.append((call, True, call.fn(conn, *call.args)))
                else:
                    for call in calls:
                        outcomes.append(self._run_in_savepoint(conn, call))
        except BaseException as e:  # BEGIN, a savepoint's rollback or the COMMIT failed: nothing was kept
            for call in calls:
                call.future.set_exception(e)
            return
        for call, ok, value in outcomes:
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)

    @staticmethod
    def _run_in_savepoint(conn: Connection, call: _Call) -> tuple[_Call, bool, Any]:
        # the savepoint statements go straight to the driver: SQLAlchemy's begin_nested() costs ~10x
        # more CPU per call, and the calls never nest savepoints of their own (one level, one name)
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("SAVEPOINT group_call")
        try:
            value = call.fn(conn, *call.args)
        except Exception as e:
            cursor.execute("ROLLBACK TO SAVEPOINT group_call")  # this call's changes only (raises if that fails)
            cursor.execute("RELEASE SAVEPOINT group_call")
            return call, False, e
        cursor.execute("RELEASE SAVEPOINT group_call")
        return call, True, value

    # -- the callers' side ------------------------------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        call = _Call(fn, args)
        self._queue.put(call)
        return await asyncio.wrap_future(call.future)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            return await self.write(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._in_transaction, False, fn, args)

    def close(self) -> None:
        """Let queued calls finish, then close every connection (blocks: call it from a thread)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
        self._writer.join()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self.engine.dispose()
