"""Migrations: a fresh file, an older database upgraded, a newer one refused; the schema matches the code."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import Column, Connection, Index, MetaData, String, Table, create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from gateway.store import MIGRATIONS, Migration, SchemaError, State, Store
from gateway.store.schema import metadata


def add_note_column(conn: Connection) -> None:
    """What a later step looks like: a nullable column and an index."""
    md = MetaData()
    conn.execute(text("ALTER TABLE messages ADD COLUMN note VARCHAR"))
    Index("ix_messages_note", Table("messages", md, Column("note", String)).c.note).create(conn)


LAST = len(MIGRATIONS)  #: the version this code knows
NEXT = Migration(LAST + 1, "test: messages.note", add_note_column)  #: what a later release would add


def applied(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as c:
        return c.execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()


async def test_a_fresh_file_gets_the_schema_and_the_pragmas(store, db_path):
    assert applied(db_path) == [(m.version, m.description) for m in MIGRATIONS]
    with sqlite3.connect(db_path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent, set by the store

    def pragmas(conn: Connection) -> dict:
        return {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                ("foreign_keys", "synchronous", "busy_timeout", "journal_mode")}

    # per-connection settings of the store's own connections: the writer's and every reader's
    want = {"foreign_keys": 1, "synchronous": 2, "busy_timeout": 15000, "journal_mode": "wal"}
    assert await store._run.write(pragmas) == want
    assert await asyncio.gather(*(store._run.read(pragmas) for _ in range(8))) == [want] * 8


def master(path) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                         "ORDER BY type, name").fetchall()


async def test_the_migrated_schema_is_the_schema_the_code_uses(store, db_path, tmp_path):
    """Replaying the steps gives, DDL for DDL, what ``schema.metadata`` would create today."""
    fresh = tmp_path / "from-metadata.db"
    engine = create_engine(f"sqlite:///{fresh}")
    metadata.create_all(engine)
    engine.dispose()
    migrated, current = master(db_path), master(fresh)
    assert [r[:3] for r in migrated] == [r[:3] for r in current]
    assert migrated == current
    ddl = {name: sql for _, name, _, sql in migrated}
    assert ddl["uq_pickups_accepted_sha256"].endswith("WHERE outcome = 'accepted'")
    assert ddl["ix_messages_due"].endswith("WHERE next_attempt_at IS NOT NULL")
    assert "CONSTRAINT ck_messages_due_when_waiting CHECK" in ddl["messages"]
    assert "AUTOINCREMENT" in ddl["audit"]


async def test_an_older_database_is_upgraded_and_keeps_its_rows(url, clock, make, db_path):
    s = await Store.open(url, clock=clock)  # the database as this version left it, with a message in it
    await s.accept(make("m1"))
    await s.close()
    s = await Store.open(url, clock=clock, migrations=(*MIGRATIONS, NEXT))
    try:
        assert [v for v, _ in applied(db_path)] == list(range(1, LAST + 2))
        assert (await s.get("m1")).state is State.RECEIVED
        with sqlite3.connect(db_path) as c:
            assert "note" in {r[1] for r in c.execute("PRAGMA table_info(messages)")}
    finally:
        await s.close()
    s = await Store.open(url, clock=clock, migrations=(*MIGRATIONS, NEXT))  # nothing left to do
    await s.close()
    assert [v for v, _ in applied(db_path)] == list(range(1, LAST + 2))


async def test_a_newer_database_is_refused(url, clock, db_path):
    s = await Store.open(url, clock=clock, migrations=(*MIGRATIONS, NEXT))
    await s.close()
    with pytest.raises(SchemaError, match=rf"schema is version {LAST + 1}, newer than this gateway knows \({LAST}\)"):
        await Store.open(url, clock=clock)
    assert [v for v, _ in applied(db_path)] == list(range(1, LAST + 2))


async def test_a_failing_step_changes_nothing(url, clock, db_path):
    s = await Store.open(url, clock=clock)
    await s.close()

    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE leftovers (x INTEGER)"))
        conn.execute(text("ALTER TABLE messages ADD COLUMN half VARCHAR"))
        raise RuntimeError("the step broke halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        await Store.open(url, clock=clock, migrations=(*MIGRATIONS, Migration(LAST + 1, "broken", half_done)))
    with sqlite3.connect(db_path) as c:  # SQLite DDL is transactional: the whole step rolled back
        assert c.execute("SELECT name FROM sqlite_master WHERE name='leftovers'").fetchall() == []
        assert "half" not in {r[1] for r in c.execute("PRAGMA table_info(messages)")}
    assert [v for v, _ in applied(db_path)] == list(range(1, LAST + 1))


async def test_a_foreign_database_is_not_touched(url, clock, db_path):
    with sqlite3.connect(db_path) as c:
        c.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(SchemaError, match="not a gateway store"):
        await Store.open(url, clock=clock)
    with sqlite3.connect(db_path) as c:
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]


async def test_steps_must_be_numbered_without_gaps(url, clock):
    with pytest.raises(SchemaError, match="without gaps"):
        await Store.open(url, clock=clock, migrations=(*MIGRATIONS, Migration(LAST + 2, "gap", add_note_column)))


def test_the_schema_compiles_for_postgresql():
    dialect = postgresql.dialect()
    ddl = "\n".join(str(CreateTable(t).compile(dialect=dialect)) for t in metadata.sorted_tables)
    ddl += "\n".join(str(CreateIndex(i).compile(dialect=dialect)) for t in metadata.sorted_tables for i in t.indexes)
    assert "next_attempt_at TIMESTAMP WITH TIME ZONE" in ddl and "entity BYTEA NOT NULL" in ddl
    assert "CREATE UNIQUE INDEX uq_pickups_accepted_sha256 ON pickups (sha256) WHERE outcome = 'accepted'" in ddl
