"""DriverStatement: the store's hot statements run on the driver's cursor must write exactly what
SQLAlchemy would have written, and fail as SQLAlchemy would."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import (CheckConstraint, Column, Integer, LargeBinary, MetaData, String, Table, bindparam, create_engine,
                        insert, select, text, update)
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.store.engine import DriverStatement, make_engine
from gateway.store.schema import UTCDateTime

# tables shaped like the store's (its column types), without its foreign keys
metadata = MetaData()
transitions = Table(
    "transitions", metadata,
    Column("id", Integer, primary_key=True), Column("message_id", String, nullable=False),
    Column("at", UTCDateTime, nullable=False), Column("from_state", String), Column("to_state", String, nullable=False),
    Column("reason", String), Column("attempt", Integer, nullable=False), Column("remote_reply", String),
    Column("actor", String, nullable=False), Column("entity", LargeBinary))
pickups = Table(
    "pickups", metadata,
    Column("id", Integer, primary_key=True), Column("at", UTCDateTime, nullable=False),
    Column("file_name", String, nullable=False), Column("size", Integer, nullable=False),
    Column("sha256", String, nullable=False), Column("outcome", String, nullable=False),
    Column("confirmed_at", UTCDateTime),
    CheckConstraint("outcome IN ('accepted', 'rejected', 'duplicate')", name="ck_outcome"))

AT = datetime(2026, 3, 2, 9, 30, 0, 120000, tzinfo=timezone(timedelta(hours=1)))  # not UTC, with microseconds


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _raw_rows(engine, table: str) -> list[tuple]:
    with sqlite3.connect(engine.url.database) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def _transition(i: int, **over) -> dict:
    return dict(message_id=f"m-{i}", at=AT + timedelta(seconds=i), from_state=None, to_state="received",
                reason=None, attempt=0, remote_reply=None, actor="pickup", entity=None) | over


def test_rows_written_through_the_driver_equal_those_written_by_sqlalchemy(engine, tmp_path):
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    metadata.create_all(other)
    fast = DriverStatement(insert(transitions))
    rows = [_transition(1, entity=b"\x00\xffsealed"),
            _transition(2, reason="anders: één reden", from_state="received", to_state="held", entity=None)]
    with engine.begin() as conn:
        assert fast.execute(conn, rows[0]) == 1
        assert fast.execute(conn, [rows[1]]) == 1
    with other.begin() as conn:
        conn.execute(insert(transitions), rows[0])
        conn.execute(insert(transitions), [rows[1]])
    written = _raw_rows(engine, "transitions")
    assert written == _raw_rows(other, "transitions")
    assert written[0][2] == "2026-03-02 08:30:01.120000"  # UTC, as text: SQLAlchemy's conversion was applied
    assert written[0][9] == b"\x00\xffsealed"
    with engine.connect() as conn:  # and SQLAlchemy reads it back as the aware moment it was
        assert conn.execute(select(transitions.c.at).order_by(transitions.c.id)).scalars().first() == \
            AT + timedelta(seconds=1)
    other.dispose()


def test_a_literal_of_the_statement_keeps_its_value_and_rowcount_is_the_rows_changed(engine):
    with engine.begin() as conn:
        for outcome, sha in (("accepted", "a" * 64), ("rejected", "b" * 64)):
            conn.execute(insert(pickups), dict(at=AT, file_name="name:x", size=1, sha256=sha, outcome=outcome))
    confirm = DriverStatement(update(pickups).where(pickups.c.sha256 == bindparam("_sha"),
                                                    pickups.c.outcome == "accepted"))
    with engine.begin() as conn:
        assert confirm.execute(conn, {"_sha": "a" * 64, "confirmed_at": AT}) == 1
        assert confirm.execute(conn, {"_sha": "b" * 64, "confirmed_at": AT}) == 0  # rejected: not matched
    with engine.connect() as conn:
        confirmed = dict(conn.execute(select(pickups.c.sha256, pickups.c.confirmed_at)).all())
    assert confirmed == {"a" * 64: AT, "b" * 64: None}


def test_driver_errors_surface_as_sqlalchemy_errors(engine):
    fast = DriverStatement(insert(pickups))
    row = dict(at=AT, file_name="name:x", size=1, sha256="c" * 64, outcome="bogus-outcome")
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        fast.execute(conn, row)  # the CHECK constraint on outcome refuses it
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)
    with pytest.raises(OperationalError), engine.begin() as conn:
        DriverStatement(text("SELECT id FROM no_such_table WHERE id = :x")).first(conn, {"x": 1})


def test_first_returns_a_plain_tuple_or_none(engine):
    with engine.begin() as conn:
        conn.execute(insert(pickups), dict(at=AT, file_name="name:y", size=7, sha256="d" * 64, outcome="accepted"))
    read = DriverStatement(select(pickups.c.size, pickups.c.outcome).where(pickups.c.sha256 == bindparam("_sha")))
    with engine.connect() as conn:
        assert read.first(conn, {"_sha": "d" * 64}) == (7, "accepted")
        assert read.first(conn, {"_sha": "e" * 64}) is None


def test_expanding_parameters_are_refused_not_mistranslated(engine):
    many = DriverStatement(select(pickups.c.id).where(pickups.c.sha256.in_(bindparam("_shas", expanding=True))))
    with engine.connect() as conn, pytest.raises(TypeError, match="expanding"):
        many.first(conn, {"_shas": ["a" * 64]})


def test_other_dialects_go_through_sqlalchemy(tmp_path):
    """Only SQLite takes the driver path: a non-SQLite connection gets the statement itself (here an engine
    whose dialect name is changed on the instance stands in for PostgreSQL)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'pg-like.db'}")
    metadata.create_all(engine)
    engine.dialect.name = "postgresql-stand-in"  # instance attribute: this engine only
    fast = DriverStatement(insert(transitions))
    with engine.begin() as conn:
        assert fast.execute(conn, _transition(5)) == 1
        assert fast._forms == {}  # nothing compiled for the driver
    engine.dispose()
