"""Numbered schema steps, applied in order in one transaction and recorded in ``schema_version``.

Each step is frozen once released: it builds its own ``Table`` objects (never the
ones in ``schema.py``, which describe the *current* shape), so a database created
years ago replays exactly the steps it missed. A change to the schema is a new
step here plus the same change in ``schema.py``; ``test_store_migrations`` checks
that the two agree.

A database whose version is newer than the last step known here is refused: old
code must not write rows a newer schema gives another meaning.

Steps are SQLAlchemy Core DDL, so they run on SQLite and PostgreSQL alike. On
SQLite, ALTER TABLE is limited: adding a nullable column is fine, anything else
needs the create-copy-drop-rename dance inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import (CheckConstraint, Column, Connection, Date, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text, bindparam, func, insert, inspect, select, update)

from .chain import GENESIS, row_hash
from .schema import UTCDateTime, schema_version
from .states import SchemaError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]  #: runs inside the migration transaction


def _v1_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "messages", md,
        Column("message_id", String, primary_key=True),
        Column("type", String, nullable=False),
        Column("version", String, nullable=False),
        Column("sender", String, nullable=False),
        Column("recipient", String, nullable=False),
        Column("dossier", String, nullable=False),
        Column("replies_to", String),
        Column("supersedes", String),
        Column("priority", Integer, nullable=False),
        Column("state", String, nullable=False),
        Column("reason", Text),
        Column("successor", String),
        Column("transport", String),
        Column("address", String),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", UTCDateTime),
        Column("lease_owner", String),
        Column("lease_until", UTCDateTime),
        Column("spool_path", String),
        Column("file_name", String, nullable=False),
        Column("size", Integer, nullable=False),
        Column("sha256", String, nullable=False),
        Column("mic", String),
        Column("mail_message_id", String),
        Column("created_at", UTCDateTime, nullable=False),
        Column("received_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("sent_at", UTCDateTime),
        Column("delivered_at", UTCDateTime),
        Column("acknowledged_at", UTCDateTime),
        Index("ix_messages_state_next", "state", "next_attempt_at"),
        Index("ix_messages_recipient", "recipient"),
        Index("ix_messages_mail_message_id", "mail_message_id"),
        Index("ix_messages_sha256", "sha256"),
        Index("ix_messages_received_at", "received_at", "message_id"),
        Index("ix_messages_sender", "sender"),
        CheckConstraint("(state IN ('queued', 'retry_wait')) = (next_attempt_at IS NOT NULL)",
                        name="ck_messages_due_when_waiting"),
    )
    m = md.tables["messages"]
    Index("ix_messages_due", m.c.priority.desc(), m.c.next_attempt_at, m.c.received_at, m.c.message_id,
          m.c.recipient, m.c.state,
          sqlite_where=m.c.next_attempt_at.is_not(None), postgresql_where=m.c.next_attempt_at.is_not(None))
    p = Table(
        "pickups", md,
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
        Column("file_name", String, nullable=False),
        Column("size", Integer, nullable=False),
        Column("sha256", String, nullable=False),
        Column("outcome", String, nullable=False),
        Column("message_id", String, ForeignKey("messages.message_id")),
        Column("declared_id", String),
        Column("declared_type", String),
        Column("kind", String),
        Column("reason", Text),
        Column("spool_path", String),
        Column("confirmed_at", UTCDateTime),
        Index("ix_pickups_sha256", "sha256"),
        Index("ix_pickups_outcome_confirmed", "outcome", "confirmed_at"),
    )
    Index("uq_pickups_accepted_sha256", p.c.sha256, unique=True,
          sqlite_where=p.c.outcome == "accepted", postgresql_where=p.c.outcome == "accepted")
    Table(
        "sealed", md,
        Column("message_id", String, ForeignKey("messages.message_id"), primary_key=True),
        Column("entity", LargeBinary, nullable=False),
        Column("mic", String, nullable=False),
        Column("profile", String, nullable=False),
        Column("sealed_at", UTCDateTime, nullable=False),
    )
    Table(
        "transitions", md,
        Column("id", Integer, primary_key=True),
        Column("message_id", String, ForeignKey("messages.message_id"), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("from_state", String),
        Column("to_state", String, nullable=False),
        Column("reason", Text),
        Column("attempt", Integer, nullable=False),
        Column("remote_reply", Text),
        Column("actor", String, nullable=False),
        Index("ix_transitions_message", "message_id", "id"),
    )
    Table(
        "audit", md,
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
        Column("action", String, nullable=False),
        Column("object", String, nullable=False),
        Column("result", Text, nullable=False),
        Column("origin", String, nullable=False),
        Column("actor", String, nullable=False),
        Index("ix_audit_object", "object"),
        sqlite_autoincrement=True,
    )
    Table(
        "receipts", md,
        Column("id", Integer, primary_key=True),
        Column("message_id", String, ForeignKey("messages.message_id"), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("kind", String, nullable=False),
        Column("verdict", String, nullable=False),
        Column("detail", Text, nullable=False),
        Index("ix_receipts_message", "message_id"),
    )
    Table(
        "schema_version", md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", String, nullable=False),
        Column("applied_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)


def _v2_inbound(conn: Connection) -> None:
    md = MetaData()
    Table(
        "inbound", md,
        Column("message_id", String, primary_key=True),
        Column("transport", String, nullable=False),
        Column("transport_message_id", String),
        Column("sender", String),
        Column("signer_fingerprint", String),
        Column("type", String),
        Column("dossier", String),
        Column("mic", String),
        Column("sha256", String, nullable=False),
        Column("received_at", UTCDateTime, nullable=False),
        Column("outcome", String, nullable=False),
        Column("reason_code", String),
        Column("reason", Text),
        Column("inbox_path", String),
        Column("quarantine_path", String),
        Column("receipt", LargeBinary),
        Index("ix_inbound_transport_id", "transport", "transport_message_id"),
        Index("ix_inbound_received_at", "received_at"),
        CheckConstraint("outcome IN ('accepted', 'refused')", name="ck_inbound_outcome"),
    )
    md.create_all(conn)


def _v3_audit_chain(conn: Connection) -> None:
    """Hash-chain the audit trail (existing rows chained in id order), checkpoints, monthly figures.

    SQLite cannot add a NOT NULL column, and ALTER TABLE ... ADD would leave DDL text other
    than a fresh database's: the old table is renamed aside, the new one created and filled.
    """
    md = MetaData()
    new = Table(
        "audit", md,
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
        Column("action", String, nullable=False),
        Column("object", String, nullable=False),
        Column("result", Text, nullable=False),
        Column("origin", String, nullable=False),
        Column("actor", String, nullable=False),
        Column("prev_hash", String, nullable=False),
        Column("hash", String, nullable=False),
        Index("ix_audit_object", "object"),
        sqlite_autoincrement=True,
    )
    Table(
        "audit_checkpoints", md,
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
        Column("up_to_id", Integer, nullable=False),
        Column("hash", String, nullable=False),
        Column("algorithm", String, nullable=False),
        Column("signature", LargeBinary, nullable=False),
        Column("cert_fingerprint", String, nullable=False),
        Column("certificate", LargeBinary, nullable=False),
    )
    Table(
        "monthly_figures", md,
        Column("month", String, primary_key=True),
        Column("direction", String, primary_key=True),
        Column("type", String, primary_key=True),
        Column("sender", String, primary_key=True),
        Column("recipient", String, primary_key=True),
        Column("messages", Integer, nullable=False),
        Column("sent", Integer, nullable=False),
        Column("acknowledged", Integer, nullable=False),
        Column("on_time", Integer),
    )
    sqlite = conn.dialect.name == "sqlite"
    seq = 0
    if sqlite:
        conn.exec_driver_sql("DROP INDEX ix_audit_object")
        conn.exec_driver_sql("ALTER TABLE audit RENAME TO audit_v2")
        seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'audit_v2'").scalar() or 0
        old = "audit_v2"
    else:
        conn.exec_driver_sql("ALTER TABLE audit ADD COLUMN prev_hash VARCHAR")
        conn.exec_driver_sql("ALTER TABLE audit ADD COLUMN hash VARCHAR")
        old = "audit"
    md.create_all(conn, tables=[t for t in md.sorted_tables if sqlite or t.name != "audit"])
    prev = GENESIS
    src = Table(old, MetaData(), Column("id", Integer), Column("at", UTCDateTime), Column("action", String),
                Column("object", String), Column("result", Text), Column("origin", String), Column("actor", String))
    batch: list[dict[str, object]] = []
    for row in conn.execute(select(src).order_by(src.c.id)):
        values = dict(row._mapping)
        values["prev_hash"], values["hash"] = prev, row_hash(prev, **values)
        prev = values["hash"]
        batch.append(values)
        if len(batch) >= 1000:
            _store_chained(conn, new, batch, sqlite)
            batch = []
    _store_chained(conn, new, batch, sqlite)
    if sqlite:
        conn.exec_driver_sql("DROP TABLE audit_v2")
        if seq:  # ids keep growing past any row deleted before the upgrade
            conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'audit'")
            conn.exec_driver_sql(f"INSERT INTO sqlite_sequence (name, seq) VALUES ('audit', {int(seq)})")
    else:
        conn.exec_driver_sql("ALTER TABLE audit ALTER COLUMN prev_hash SET NOT NULL")
        conn.exec_driver_sql("ALTER TABLE audit ALTER COLUMN hash SET NOT NULL")


def _store_chained(conn: Connection, table: Table, rows: list[dict[str, object]], insert_rows: bool) -> None:
    if not rows:
        return
    if insert_rows:
        conn.execute(insert(table), rows)
    else:
        conn.execute(update(table).where(table.c.id == bindparam("_id"))
                     .values(prev_hash=bindparam("_prev"), hash=bindparam("_hash")),
                     [{"_id": r["id"], "_prev": r["prev_hash"], "_hash": r["hash"]} for r in rows])


def _v4_facts_subjects(conn: Connection) -> None:
    """Deadline facts and the subject index (new tables), and two indexes for status at scale."""
    md = MetaData()
    Table(
        "deadline_facts", md,
        Column("direction", String, primary_key=True),
        Column("message_id", String, primary_key=True),
        Column("start", Date),
        Column("status", String),
        Column("expected_release", Date),
        Column("verdict", Date),
        Column("release_day", Date),
        CheckConstraint("direction IN ('outbound', 'inbound')", name="ck_deadline_facts_direction"),
    )
    Table(
        "subject_index", md,
        Column("id", Integer, primary_key=True),
        Column("subject", String, nullable=False),
        Column("direction", String, nullable=False),
        Column("message_id", String, nullable=False),
        Column("recorded_at", UTCDateTime, nullable=False),
        Column("erased_at", UTCDateTime),
        Index("ix_subject_index_subject", "subject"),
        Index("ix_subject_index_message", "message_id"),
        CheckConstraint("direction IN ('outbound', 'inbound')", name="ck_subject_index_direction"),
    )
    md.create_all(conn)
    conn.exec_driver_sql("CREATE INDEX ix_messages_state_type ON messages (state, type)")
    conn.exec_driver_sql("CREATE INDEX ix_messages_recipient_sent ON messages (recipient, sent_at)")


_V5_LATER = ("CASE WHEN excluded.{c} IS NOT NULL AND ({c} IS NULL OR excluded.{c} > {c}) "
             "THEN excluded.{c} ELSE {c} END")
_V5_UP = ("INSERT INTO message_counts (state, type, recipient, n) VALUES (NEW.state, NEW.type, NEW.recipient, 1) "
          "ON CONFLICT (state, type, recipient) DO UPDATE SET n = n + 1;")
_V5_DOWN = ("UPDATE message_counts SET n = n - 1 "
            "WHERE state = OLD.state AND type = OLD.type AND recipient = OLD.recipient;")
_V5_ACTIVITY = ("INSERT INTO recipient_activity (recipient, last_sent_at, last_acknowledged_at) "
                "VALUES (NEW.recipient, NEW.sent_at, NEW.acknowledged_at) ON CONFLICT (recipient) DO UPDATE SET "
                f"last_sent_at = {_V5_LATER.format(c='last_sent_at')}, "
                f"last_acknowledged_at = {_V5_LATER.format(c='last_acknowledged_at')};")
_V5_TRIGGERS = (
    f"CREATE TRIGGER tr_messages_counts_insert AFTER INSERT ON messages BEGIN {_V5_UP} END",
    f"CREATE TRIGGER tr_messages_counts_delete AFTER DELETE ON messages BEGIN {_V5_DOWN} END",
    "CREATE TRIGGER tr_messages_counts_update AFTER UPDATE OF state, type, recipient ON messages "
    "WHEN OLD.state IS NOT NEW.state OR OLD.type IS NOT NEW.type OR OLD.recipient IS NOT NEW.recipient "
    f"BEGIN {_V5_DOWN} {_V5_UP} END",
    f"CREATE TRIGGER tr_messages_activity_insert AFTER INSERT ON messages WHEN NEW.sent_at IS NOT NULL "
    f"BEGIN {_V5_ACTIVITY} END",
    "CREATE TRIGGER tr_messages_activity_update AFTER UPDATE OF sent_at, acknowledged_at ON messages "
    f"WHEN NEW.sent_at IS NOT NULL BEGIN {_V5_ACTIVITY} END",
)


def _v5_status_counters(conn: Connection) -> None:
    """Counts per (state, type, recipient) and the last delivery per recipient, kept by triggers (SQLite;
    other databases count at each look), filled from the messages already there."""
    md = MetaData()
    Table(
        "message_counts", md,
        Column("state", String, primary_key=True),
        Column("type", String, primary_key=True),
        Column("recipient", String, primary_key=True),
        Column("n", Integer, nullable=False),
    )
    Table(
        "recipient_activity", md,
        Column("recipient", String, primary_key=True),
        Column("last_sent_at", UTCDateTime),
        Column("last_acknowledged_at", UTCDateTime),
    )
    md.create_all(conn)
    conn.exec_driver_sql("DROP INDEX ix_messages_state_type")  # the counts come from message_counts now
    conn.exec_driver_sql("CREATE INDEX ix_messages_state_recipient_received ON messages (state, recipient, received_at)")
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("INSERT INTO message_counts (state, type, recipient, n) "
                         "SELECT state, type, recipient, count(*) FROM messages GROUP BY state, type, recipient")
    conn.exec_driver_sql("INSERT INTO recipient_activity (recipient, last_sent_at, last_acknowledged_at) "
                         "SELECT recipient, max(sent_at), max(acknowledged_at) FROM messages "
                         "WHERE sent_at IS NOT NULL GROUP BY recipient")
    for ddl in _V5_TRIGGERS:
        conn.exec_driver_sql(ddl)


_V6_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, float("inf"))


def _v6_bump(name: str, by: str = "1") -> str:
    return (f"INSERT INTO event_counts (name, value) VALUES ({name}, {by}) "
            f"ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;")


def _v6_latency_trigger(metric: str, stamp: str) -> str:
    seconds = f"((julianday(NEW.{stamp}) - julianday(NEW.received_at)) * 86400.0)"
    return (f"CREATE TRIGGER tr_messages_latency_{metric} AFTER UPDATE OF {stamp} ON messages "
            f"WHEN OLD.{stamp} IS NULL AND NEW.{stamp} IS NOT NULL BEGIN "
            f"UPDATE latency_buckets SET n = n + 1 WHERE metric = '{metric}' AND le >= {seconds}; "
            f"{_v6_bump(repr(metric + '_seconds_sum'), seconds)} {_v6_bump(repr(metric + '_count'))} END")


_V6_TRIGGERS = (
    "CREATE TRIGGER tr_transitions_retries AFTER INSERT ON transitions WHEN NEW.to_state = 'retry_wait' "
    f"BEGIN {_v6_bump(repr('retries'))} END",
    "CREATE TRIGGER tr_receipts_counts AFTER INSERT ON receipts BEGIN "
    + _v6_bump("'receipt:' || NEW.kind || ':' || NEW.verdict") + " END",
    _v6_latency_trigger("sent", "sent_at"),
    _v6_latency_trigger("acknowledged", "acknowledged_at"),
)


def _v6_metric_counters(conn: Connection) -> None:
    """/metrics' counters and latency histograms kept by triggers (SQLite; other databases compute them at
    each scrape), filled from what the store holds."""
    md = MetaData()
    Table("event_counts", md, Column("name", String, primary_key=True), Column("value", Float, nullable=False))
    Table("latency_buckets", md, Column("metric", String, primary_key=True), Column("le", Float, primary_key=True),
          Column("n", Integer, nullable=False))
    md.create_all(conn)
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("INSERT INTO event_counts (name, value) SELECT 'retries', count(*) FROM transitions "
                         "WHERE to_state = 'retry_wait'")
    conn.exec_driver_sql("INSERT INTO event_counts (name, value) SELECT 'receipt:' || kind || ':' || verdict, "
                         "count(*) FROM receipts GROUP BY kind, verdict")
    for metric, stamp in (("sent", "sent_at"), ("acknowledged", "acknowledged_at")):
        seconds = f"((julianday({stamp}) - julianday(received_at)) * 86400.0)"
        for le in _V6_BUCKETS:
            conn.exec_driver_sql(f"INSERT INTO latency_buckets (metric, le, n) SELECT ?, ?, count(*) FROM messages "
                                 f"WHERE {stamp} IS NOT NULL AND {seconds} <= ?", (metric, le, le))
        conn.exec_driver_sql(f"INSERT INTO event_counts (name, value) SELECT ?, coalesce(sum({seconds}), 0) "
                             f"FROM messages WHERE {stamp} IS NOT NULL", (f"{metric}_seconds_sum",))
        conn.exec_driver_sql(f"INSERT INTO event_counts (name, value) SELECT ?, count(*) FROM messages "
                             f"WHERE {stamp} IS NOT NULL", (f"{metric}_count",))
    for ddl in _V6_TRIGGERS:
        conn.exec_driver_sql(ddl)


def _v7_due_index_with_links(conn: Connection) -> None:
    """The claim's index also carries transport and address: while a destination is down the claims and
    the look for the next due time walk past its waiting messages in the index alone (before: a row read
    each, some 100-300 ms at 20,000)."""
    conn.exec_driver_sql("DROP INDEX ix_messages_due")
    m = Table("messages", MetaData(), autoload_with=conn)
    Index("ix_messages_due", m.c.priority.desc(), m.c.next_attempt_at, m.c.received_at, m.c.message_id,
          m.c.recipient, m.c.state, m.c.transport, m.c.address,
          sqlite_where=m.c.next_attempt_at.is_not(None), postgresql_where=m.c.next_attempt_at.is_not(None)).create(conn)


def _v8_dossier_indexes(conn: Connection) -> None:
    """Messages and arrivals by dossier: the deadline watch recomputes each dossier that changed (an ``IN``
    list of dossiers, in dossier order) by reading those dossiers' rows only, instead of a scan of every
    message ever stored and a sort."""
    conn.exec_driver_sql("CREATE INDEX ix_messages_dossier ON messages (dossier)")
    conn.exec_driver_sql("CREATE INDEX ix_inbound_dossier ON inbound (dossier)")


def _v9_destination_breakers(conn: Connection) -> None:
    """The dispatcher's breakers as the operator's processes see them: one row per destination."""
    md = MetaData()
    Table(
        "destination_breakers", md,
        Column("destination", String, primary_key=True),
        Column("transport", String, nullable=False),
        Column("address", String),
        Column("since", UTCDateTime, nullable=False),
        Column("reason", Text, nullable=False),
        Column("failures", Integer, nullable=False),
        Column("next_probe_at", UTCDateTime),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("closed_at", UTCDateTime),
        Column("closed_reason", Text),
    )
    md.create_all(conn)


def _v10_receipt_source(conn: Connection) -> None:
    """Receipts name their carrier (the receipt mail's Message-ID), unique per message and kind: a mail read
    again after a crash between filing and its IMAP move is not filed twice. Old rows keep NULL (distinct).

    On SQLite, ALTER TABLE ... ADD would leave DDL text other than a fresh database's: the table is renamed
    aside, created anew, filled (before its counting trigger exists: the counters count these rows already)."""
    md = MetaData()
    new = Table(
        "receipts", md,
        Column("id", Integer, primary_key=True),
        Column("message_id", String, ForeignKey("messages.message_id"), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("kind", String, nullable=False),
        Column("verdict", String, nullable=False),
        Column("detail", Text, nullable=False),
        Column("source", String),
        Index("ix_receipts_message", "message_id"),
        Index("uq_receipts_source", "message_id", "kind", "source", unique=True),
    )
    Table("messages", md, Column("message_id", String, primary_key=True))  # for the foreign key only
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql("ALTER TABLE receipts ADD COLUMN source VARCHAR")
        conn.exec_driver_sql("CREATE UNIQUE INDEX uq_receipts_source ON receipts (message_id, kind, source)")
        return
    conn.exec_driver_sql("DROP TRIGGER tr_receipts_counts")
    conn.exec_driver_sql("DROP INDEX ix_receipts_message")
    conn.exec_driver_sql("ALTER TABLE receipts RENAME TO receipts_v9")
    new.create(conn)
    conn.exec_driver_sql("INSERT INTO receipts (id, message_id, at, kind, verdict, detail) "
                         "SELECT id, message_id, at, kind, verdict, detail FROM receipts_v9 ORDER BY id")
    conn.exec_driver_sql("DROP TABLE receipts_v9")
    conn.exec_driver_sql(next(t for t in _V6_TRIGGERS if "tr_receipts_counts" in t))  # as migration 6 made it


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: messages, pickups, sealed, transitions, audit, receipts", _v1_initial),
    Migration(2, "inbound: the memory of received messages and their receipts", _v2_inbound),
    Migration(3, "audit hash chain, audit_checkpoints, monthly_figures", _v3_audit_chain),
    Migration(4, "deadline facts, subject index, status indexes", _v4_facts_subjects),
    Migration(5, "status counters kept by triggers, index for the oldest open message per destination",
              _v5_status_counters),
    Migration(6, "metric counters and latency histograms kept by triggers", _v6_metric_counters),
    Migration(7, "the claim's index carries transport and address (destinations that are down)",
              _v7_due_index_with_links),
    Migration(8, "messages and arrivals by dossier (the deadline watch's recomputation)", _v8_dossier_indexes),
    Migration(9, "destination_breakers: the dispatcher's circuit breakers, for status, dashboard and metrics",
              _v9_destination_breakers),
    Migration(10, "receipts.source: a receipt mail read again is not filed twice", _v10_receipt_source),
)


def current_version(conn: Connection) -> int:
    """The schema version of the database (0: empty); refuses a database that is not a gateway store."""
    tables = set(inspect(conn).get_table_names())
    if "schema_version" not in tables:
        if tables:
            raise SchemaError("the database holds tables but no schema_version: it is not a gateway store "
                              "(refusing to touch it)")
        return 0
    return conn.execute(select(func.max(schema_version.c.version))).scalar_one() or 0


def apply_migrations(conn: Connection, steps: Sequence[Migration], now: datetime) -> list[int]:
    """Bring the database up to the last of ``steps`` (inside the caller's write transaction)."""
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise SchemaError("migration steps must be numbered 1, 2, 3, ... without gaps")
    latest = len(steps)
    current = current_version(conn)
    if current > latest:
        raise SchemaError(f"the database schema is version {current}, newer than this gateway knows ({latest}): "
                          "run a newer gateway, or restore a backup made by this version")
    applied = []
    for step in steps[current:]:
        step.apply(conn)
        conn.execute(insert(schema_version).values(version=step.version, description=step.description,
                                                   applied_at=now))
        applied.append(step.version)
        log.info("store.migrated", version=step.version, description=step.description)
    return applied
