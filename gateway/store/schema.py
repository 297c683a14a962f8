"""The tables of the store, as the code reads and writes them (the current schema).

The database gets this shape through ``migrations.py`` only; a test compares the
two, so change both together (add a migration step, never edit an applied one).

What is stored about a message is what routing, delivery and the operator need:
ids, type, party codes, the dossier reference, states and reasons, and the sealed
entity (encrypted bytes). No XML body and no personal data.

Datetimes are timezone-aware UTC in Python. SQLite has no time zones, so there
they are stored as naive UTC in SQLAlchemy's fixed-width ISO text
(``2026-11-29 12:00:00.000000``), which sorts and compares correctly as text;
PostgreSQL gets ``timestamptz``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (CheckConstraint, Column, Date, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text, TypeDecorator)
from sqlalchemy import DDL, event
from sqlalchemy.engine import Dialect


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; a naive datetime is a bug and is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to the store: pass timezone-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = MetaData()

messages = Table(
    "messages", metadata,
    Column("message_id", String, primary_key=True),
    Column("type", String, nullable=False),
    Column("version", String, nullable=False),
    Column("sender", String, nullable=False),  # party code, e.g. "pi:PI-VUGHT"
    Column("recipient", String, nullable=False),  # party code, e.g. "gemeente:0599"; the dispatcher's "destination"
    Column("dossier", String, nullable=False),
    Column("replies_to", String),
    Column("supersedes", String),
    Column("priority", Integer, nullable=False),
    Column("state", String, nullable=False),
    Column("reason", Text),  # why it is in this state (held, retry, failed, ...)
    Column("successor", String),  # the municipality code that took over an ended one
    Column("transport", String),  # "email" | "platform" (the route table's transports)
    Column("address", String),  # mailbox or AS2 URL of the recipient's gateway
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
    Column("created_at", UTCDateTime, nullable=False),  # from the message header
    Column("received_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("delivered_at", UTCDateTime),
    Column("acknowledged_at", UTCDateTime),
    Index("ix_messages_state_next", "state", "next_attempt_at"),
    Index("ix_messages_recipient", "recipient"),
    Index("ix_messages_mail_message_id", "mail_message_id"),
    Index("ix_messages_sha256", "sha256"),
    Index("ix_messages_received_at", "received_at", "message_id"),  # list(): newest first, paged
    Index("ix_messages_sender", "sender"),  # list(party=...) with ix_messages_recipient
    Index("ix_messages_dossier", "dossier"),  # the deadline watch: a changed dossier's messages (migration 8)
    # waiting (queued, retry_wait) exactly when due at some time: the claim's partial index relies on it
    CheckConstraint("(state IN ('queued', 'retry_wait')) = (next_attempt_at IS NOT NULL)",
                    name="ck_messages_due_when_waiting"),
)
# The claim walks this in dispatch order and stops at its limit: no sort of the whole backlog. It carries
# what the claim filters on (recipient, transport and address: per-destination limits, destinations that
# are down), so the walk past excluded messages reads the index only.
Index("ix_messages_due", messages.c.priority.desc(), messages.c.next_attempt_at, messages.c.received_at,
      messages.c.message_id, messages.c.recipient, messages.c.state, messages.c.transport, messages.c.address,
      sqlite_where=messages.c.next_attempt_at.is_not(None), postgresql_where=messages.c.next_attempt_at.is_not(None))

# One row per file taken from the outbox, whatever became of it.
pickups = Table(
    "pickups", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("file_name", String, nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String, nullable=False),
    Column("outcome", String, nullable=False),  # accepted | rejected | duplicate
    Column("message_id", String, ForeignKey("messages.message_id")),  # accepted: the new one; duplicate: the existing
    Column("declared_id", String),  # rejected: the id the file claimed, if it could be read
    Column("declared_type", String),
    Column("kind", String),  # duplicate: same-file | same-id
    Column("reason", Text),
    Column("spool_path", String),  # accepted: the spool copy; rejected: where the file was put
    Column("confirmed_at", UTCDateTime),  # the file move completed
    Index("ix_pickups_sha256", "sha256"),
    Index("ix_pickups_outcome_confirmed", "outcome", "confirmed_at"),
)
# A file is accepted at most once: this guards accept() against a second process (PostgreSQL).
Index("uq_pickups_accepted_sha256", pickups.c.sha256, unique=True,
      sqlite_where=pickups.c.outcome == "accepted", postgresql_where=pickups.c.outcome == "accepted")

sealed = Table(
    "sealed", metadata,
    Column("message_id", String, ForeignKey("messages.message_id"), primary_key=True),
    Column("entity", LargeBinary, nullable=False),  # the bytes as sent (encrypted)
    Column("mic", String, nullable=False),
    Column("profile", String, nullable=False),
    Column("sealed_at", UTCDateTime, nullable=False),
)

transitions = Table(
    "transitions", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", String, ForeignKey("messages.message_id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("from_state", String),  # None: the message was created
    Column("to_state", String, nullable=False),
    Column("reason", Text),
    Column("attempt", Integer, nullable=False),
    Column("remote_reply", Text),  # e.g. the SMTP reply line or HTTP status
    Column("actor", String, nullable=False),
    Index("ix_transitions_message", "message_id", "id"),
)

# BIO2 8.15: who did what to which object, from where, with what result. Append-only;
# ids only grow (AUTOINCREMENT), and each row holds the hash of the one before (``chain.py``):
# an edited, removed, reordered or inserted row breaks the chain (``gateway.ops.audit.verify``).
audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String, nullable=False),
    Column("object", String, nullable=False),
    Column("result", Text, nullable=False),
    Column("origin", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("prev_hash", String, nullable=False),  # hex SHA-256 of the row before (chain.GENESIS for the first)
    Column("hash", String, nullable=False),  # chain.row_hash of this row
    Index("ix_audit_object", "object"),
    sqlite_autoincrement=True,
)

# The chain anchored: the hash of audit row ``up_to_id``, signed with the gateway's own key. Someone who
# can rewrite the whole chain from some row on cannot forge a checkpoint after it without that key.
audit_checkpoints = Table(
    "audit_checkpoints", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("up_to_id", Integer, nullable=False),
    Column("hash", String, nullable=False),  # the audit row's hash
    Column("algorithm", String, nullable=False),  # rsa-pss-sha256 | ecdsa-sha256
    Column("signature", LargeBinary, nullable=False),
    Column("cert_fingerprint", String, nullable=False),  # hex SHA-256 of the signing certificate
    Column("certificate", LargeBinary, nullable=False),  # DER, so an old checkpoint outlives a key rollover
)

# Monitoring figures that outlive the retention purge (covenant art. 9 vs. the source's section VII):
# counts only, no message ids, added to by every purge for the messages it removes.
monthly_figures = Table(
    "monthly_figures", metadata,
    Column("month", String, primary_key=True),  # YYYY-MM of received_at (UTC)
    Column("direction", String, primary_key=True),  # out (messages) | in (inbound)
    Column("type", String, primary_key=True),
    Column("sender", String, primary_key=True),
    Column("recipient", String, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("sent", Integer, nullable=False),
    Column("acknowledged", Integer, nullable=False),  # receipted (signed receipt or inbound accepted)
    Column("on_time", Integer),  # None: not judged by the purge that stored the row
)

receipts = Table(
    "receipts", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", String, ForeignKey("messages.message_id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String, nullable=False),  # dsn | mdn | unsigned-mdn
    Column("verdict", String, nullable=False),
    Column("detail", Text, nullable=False),
    # the carrier: the receipt mail's Message-ID (or "sha256:" + digest of its bytes). A mail read again after
    # a crash before its IMAP move adds nothing; two reports with the same text (two "delayed") are two rows.
    # NULL (no carrier to recognise, old rows) never conflicts (store migration 10)
    Column("source", String),
    Index("ix_receipts_message", "message_id"),
    Index("uq_receipts_source", "message_id", "kind", "source", unique=True),
)

# The memory of what arrived (the receiving side): one row per message id, with the receipt it was given,
# so a duplicate gets the same receipt again and never a second inbox file. Rows are never purged by
# this version. A purge, when added, must keep every id at least as long as a sender may still resend
# it: (1 + retries) x interval, i.e. the longest retry horizon of any partner (5 days for this gateway's
# own senders, Postfix's maximal_queue_lifetime) plus a margin; keeping them for the retention period
# of the messages themselves is simpler and costs ~1 KB a message (the receipt).
inbound = Table(
    "inbound", metadata,
    Column("message_id", String, primary_key=True),  # the berichtId; "sha256:<hex>" for what could not be opened
    Column("transport", String, nullable=False),  # "email" | "as2"
    Column("transport_message_id", String),  # Message-ID of the mail or of the AS2 request, as received
    Column("sender", String),  # party code, once the signer is verified as that party
    Column("signer_fingerprint", String),  # hex SHA-256 of the signer's certificate
    Column("type", String),
    Column("dossier", String),
    Column("mic", String),  # base64 SHA-256 of the signed part: the receipt's Received-Content-MIC
    Column("sha256", String, nullable=False),  # of the entity as received
    Column("received_at", UTCDateTime, nullable=False),
    Column("outcome", String, nullable=False),  # accepted | refused
    Column("reason_code", String),  # refused: the receipt's reason slug
    Column("reason", Text),  # refused: why, for the operator (no content)
    Column("inbox_path", String),  # accepted: the .xml handed to the receiving systems
    Column("quarantine_path", String),  # refused: where the entity is kept
    Column("receipt", LargeBinary),  # the signed MDN entity as sent
    Index("ix_inbound_transport_id", "transport", "transport_message_id"),
    Index("ix_inbound_received_at", "received_at"),
    Index("ix_inbound_dossier", "dossier"),  # the deadline watch: a changed dossier's arrivals (migration 8)
    CheckConstraint("outcome IN ('accepted', 'refused')", name="ck_inbound_outcome"),
)

# The MI report and message lists at a million rows: per route, by the time sent.
# status: per destination the oldest open message (the few open rows, read from the index alone)
Index("ix_messages_state_recipient_received", messages.c.state, messages.c.recipient, messages.c.received_at)
Index("ix_messages_recipient_sent", messages.c.recipient, messages.c.sent_at)

# The dates a message states about the detention, kept at pick-up (outbound) and intake (inbound): the
# chain's due dates need them after the plaintext copy is gone. Dates only, keyed by the message id.
deadline_facts = Table(
    "deadline_facts", metadata,
    Column("direction", String, primary_key=True),  # outbound | inbound
    Column("message_id", String, primary_key=True),
    Column("start", Date),  # aanvangDetentie
    Column("status", String),  # preventiefGehecht | veroordeeld
    Column("expected_release", Date),  # einddatumDetentie
    Column("verdict", Date),  # datumVonnis
    Column("release_day", Date),  # ontslagdatum
    CheckConstraint("direction IN ('outbound', 'inbound')", name="ck_deadline_facts_direction"),
)

# The data subject's rights (covenant art. 12-15): which messages were about which person, without the
# person. ``subject`` is a keyed hash (HMAC-SHA256 under the gateway's own subject key) of the BSN: the
# store alone cannot tell whose it is; an officer who is given the BSN can find the messages.
subject_index = Table(
    "subject_index", metadata,
    Column("id", Integer, primary_key=True),
    Column("subject", String, nullable=False),  # hex HMAC-SHA256(subject key, BSN)
    Column("direction", String, nullable=False),  # outbound | inbound
    Column("message_id", String, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("erased_at", UTCDateTime),  # subject-erase shielded this message's data
    Index("ix_subject_index_subject", "subject"),
    Index("ix_subject_index_message", "message_id"),
    CheckConstraint("direction IN ('outbound', 'inbound')", name="ck_subject_index_direction"),
)

# What the daemon's circuit breakers last said (``gateway/pipeline/breaker.py``; written by the dispatcher
# when a destination goes down, at each failed probe, when it answers, and "closed at restart" at start):
# the daemon keeps its breakers in memory, and ``status``, the dashboard and /metrics run in other
# processes. One row per destination, its last outage; the history of outages is in the audit trail.
destination_breakers = Table(
    "destination_breakers", metadata,
    Column("destination", String, primary_key=True),  # e.g. "email relay 127.0.0.1:25": never personal data
    Column("transport", String, nullable=False),  # the dispatcher's transport name: email | platform
    Column("address", String),  # the AS2 URL; None: every address of the transport (the one relay)
    Column("since", UTCDateTime, nullable=False),  # when it went down
    Column("reason", Text, nullable=False),  # the failure that opened it, then the last failed probe's
    Column("failures", Integer, nullable=False),  # the failure that opened it and every failed probe since
    Column("next_probe_at", UTCDateTime),  # None once closed
    Column("updated_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),  # None: down now (as far as the daemon knew when it last wrote)
    Column("closed_reason", Text),  # why it closed: the destination answered, or the daemon restarted
)

# What `status` shows at a glance, kept current by triggers in the same transaction as every change of a
# message (SQLite; see COUNTER_TRIGGERS): counting a million rows at each look took seconds.
message_counts = Table(
    "message_counts", metadata,
    Column("state", String, primary_key=True),
    Column("type", String, primary_key=True),
    Column("recipient", String, primary_key=True),
    Column("n", Integer, nullable=False),  # may reach 0; never negative
)
recipient_activity = Table(
    "recipient_activity", metadata,
    Column("recipient", String, primary_key=True),
    Column("last_sent_at", UTCDateTime),
    Column("last_acknowledged_at", UTCDateTime),
)

_LATER = ("CASE WHEN excluded.{c} IS NOT NULL AND ({c} IS NULL OR excluded.{c} > {c}) "
          "THEN excluded.{c} ELSE {c} END")
_COUNT_UP = ("INSERT INTO message_counts (state, type, recipient, n) VALUES (NEW.state, NEW.type, NEW.recipient, 1) "
             "ON CONFLICT (state, type, recipient) DO UPDATE SET n = n + 1;")
_COUNT_DOWN = ("UPDATE message_counts SET n = n - 1 "
               "WHERE state = OLD.state AND type = OLD.type AND recipient = OLD.recipient;")
_ACTIVITY = ("INSERT INTO recipient_activity (recipient, last_sent_at, last_acknowledged_at) "
             "VALUES (NEW.recipient, NEW.sent_at, NEW.acknowledged_at) ON CONFLICT (recipient) DO UPDATE SET "
             f"last_sent_at = {_LATER.format(c='last_sent_at')}, "
             f"last_acknowledged_at = {_LATER.format(c='last_acknowledged_at')};")
#: SQLite triggers behind message_counts and recipient_activity (frozen copies live in migration 5)
COUNTER_TRIGGERS = (
    f"CREATE TRIGGER tr_messages_counts_insert AFTER INSERT ON messages BEGIN {_COUNT_UP} END",
    f"CREATE TRIGGER tr_messages_counts_delete AFTER DELETE ON messages BEGIN {_COUNT_DOWN} END",
    "CREATE TRIGGER tr_messages_counts_update AFTER UPDATE OF state, type, recipient ON messages "
    "WHEN OLD.state IS NOT NEW.state OR OLD.type IS NOT NEW.type OR OLD.recipient IS NOT NEW.recipient "
    f"BEGIN {_COUNT_DOWN} {_COUNT_UP} END",
    f"CREATE TRIGGER tr_messages_activity_insert AFTER INSERT ON messages WHEN NEW.sent_at IS NOT NULL "
    f"BEGIN {_ACTIVITY} END",
    "CREATE TRIGGER tr_messages_activity_update AFTER UPDATE OF sent_at, acknowledged_at ON messages "
    f"WHEN NEW.sent_at IS NOT NULL BEGIN {_ACTIVITY} END",
)

# The Prometheus counters and latency histograms of /metrics, kept by triggers (SQLite) so a scrape reads a
# few rows instead of every message, transition and receipt: ``event_counts`` (retries, receipts by kind and
# verdict, latency sums and counts) and ``latency_buckets`` (cumulative: n = messages whose drop -> sent or
# drop -> acknowledged took at most ``le`` seconds; le = +Inf for all). Counters only grow: a purge keeps them.
event_counts = Table(
    "event_counts", metadata,
    Column("name", String, primary_key=True),
    Column("value", Float, nullable=False),
)
latency_buckets = Table(
    "latency_buckets", metadata,
    Column("metric", String, primary_key=True),  # sent | acknowledged
    Column("le", Float, primary_key=True),
    Column("n", Integer, nullable=False),
)
#: the upper bounds of latency_buckets, seconds (rows for them are written by migration 6)
LATENCY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, float("inf"))


def _bump(name: str, by: str = "1") -> str:
    return (f"INSERT INTO event_counts (name, value) VALUES ({name}, {by}) "
            f"ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;")


def _latency_trigger(metric: str, stamp: str) -> str:
    seconds = f"((julianday(NEW.{stamp}) - julianday(NEW.received_at)) * 86400.0)"
    return (f"CREATE TRIGGER tr_messages_latency_{metric} AFTER UPDATE OF {stamp} ON messages "
            f"WHEN OLD.{stamp} IS NULL AND NEW.{stamp} IS NOT NULL BEGIN "
            f"UPDATE latency_buckets SET n = n + 1 WHERE metric = '{metric}' AND le >= {seconds}; "
            f"{_bump(repr(metric + '_seconds_sum'), seconds)} {_bump(repr(metric + '_count'))} END")


COUNTER_TRIGGERS += (
    "CREATE TRIGGER tr_transitions_retries AFTER INSERT ON transitions WHEN NEW.to_state = 'retry_wait' "
    f"BEGIN {_bump(repr('retries'))} END",
    f"CREATE TRIGGER tr_receipts_counts AFTER INSERT ON receipts BEGIN "
    f"{_bump(chr(39) + 'receipt:' + chr(39) + ' || NEW.kind || ' + chr(39) + ':' + chr(39) + ' || NEW.verdict')} END",
    _latency_trigger("sent", "sent_at"),
    _latency_trigger("acknowledged", "acknowledged_at"),
)
for _ddl in COUNTER_TRIGGERS:
    event.listen(metadata, "after_create", DDL(_ddl).execute_if(dialect="sqlite"))

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String, nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)
