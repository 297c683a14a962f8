"""What the store speaks: the states of an outbound message, the edges between them,
the records it takes and gives back, and its errors.

The transition table is the whole life cycle (docs/architecture.md, "States of an
outbound message"): the store refuses every edge that is not in it, so a bug
upstream cannot move a message backwards or out of a final state. ``rejected``
is a state of a *pickup* (the file never became a message) and has no edges here.

Errors carry message ids, states and kinds only: never content or personal data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType


class State(StrEnum):
    RECEIVED = "received"  #: accepted from the outbox, valid, not yet sealed
    REJECTED = "rejected"  #: never a message row: recorded on the pickup (see ``Store.record_rejection``)
    HELD = "held"  #: valid but undeliverable until an operator fixes the cause (no route, no certificate, ended code)
    QUEUED = "queued"  #: sealed, waiting for the dispatcher (``next_attempt_at``)
    SENDING = "sending"  #: claimed by a dispatcher under a lease
    RETRY_WAIT = "retry_wait"  #: a temporary failure; due again at ``next_attempt_at``
    SENT = "sent"  #: the next hop accepted it (SMTP 250, HTTP 2xx)
    DELIVERED = "delivered"  #: DSN "delivered" or a verified AS2 MDN
    ACKNOWLEDGED = "acknowledged"  #: a signed receipt whose MIC matches what was sealed (final)
    FAILED = "failed"  #: dead letter: permanent failure or retries exhausted; an operator may resend
    CANCELLED = "cancelled"  #: stopped by an operator (final)


S = State
TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType({
    S.RECEIVED: frozenset({S.HELD, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.REJECTED: frozenset(),
    S.HELD: frozenset({S.QUEUED, S.HELD, S.CANCELLED}),  # held -> held: a new reason
    # queued -> failed: the give-up horizon passed while its destination was down (never tried meanwhile)
    S.QUEUED: frozenset({S.SENDING, S.HELD, S.CANCELLED, S.FAILED}),
    # sending -> held: a security failure; -> queued: lease released on a graceful stop
    S.SENDING: frozenset({S.SENT, S.RETRY_WAIT, S.FAILED, S.HELD, S.QUEUED}),
    S.RETRY_WAIT: frozenset({S.SENDING, S.FAILED, S.HELD, S.CANCELLED, S.QUEUED}),
    # sent -> failed: a DSN failure; sent -> sent: a note (e.g. DSN delayed)
    S.SENT: frozenset({S.DELIVERED, S.ACKNOWLEDGED, S.FAILED, S.SENT}),
    S.DELIVERED: frozenset({S.ACKNOWLEDGED}),
    S.ACKNOWLEDGED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),  # operator resend, same message id
    S.CANCELLED: frozenset(),
})
FINAL: frozenset[State] = frozenset({S.ACKNOWLEDGED, S.CANCELLED})
#: states the dispatcher claims from once ``next_attempt_at`` has come
WAITING: frozenset[State] = frozenset({S.QUEUED, S.RETRY_WAIT})
del S


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message as the pickup hands it over (facts from its header; no body)."""

    message_id: str
    type: str
    version: str
    sender: str  #: party code, e.g. "pi:PI-VUGHT"
    recipient: str  #: party code, e.g. "gemeente:0599"
    dossier: str
    replies_to: str | None
    supersedes: str | None
    priority: int  #: higher goes first
    created_at: datetime  #: from the message header
    file_name: str
    size: int
    sha256: str  #: hex digest of the file as dropped
    spool_path: str


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One row of ``messages``, as read back (datetimes aware UTC)."""

    message_id: str
    type: str
    version: str
    sender: str
    recipient: str
    dossier: str
    priority: int
    state: State
    reason: str | None
    successor: str | None
    transport: str | None
    address: str | None
    attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    spool_path: str | None
    file_name: str
    sha256: str
    mic: str | None
    mail_message_id: str | None
    received_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    created_at: datetime
    replies_to: str | None
    supersedes: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Pickup:
    """One file taken from the outbox: ``accepted``, ``rejected`` or ``duplicate``."""

    id: int
    file_name: str
    size: int
    sha256: str
    message_id: str | None  #: accepted: the new message; duplicate: the one it duplicates
    outcome: str
    spool_path: str | None  #: accepted: the spool copy; rejected: where the file was put
    reason: str | None
    at: datetime
    declared_id: str | None
    declared_type: str | None
    kind: str | None  #: duplicate: same-file | same-id
    confirmed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Transition:
    message_id: str
    at: datetime
    from_state: State | None  #: None: the message was created
    to_state: State
    reason: str | None
    attempt: int
    remote_reply: str | None
    actor: str


@dataclass(frozen=True, slots=True)
class NewReceipt:
    kind: str  #: dsn | mdn | unsigned-mdn
    verdict: str
    detail: str
    #: its carrier (the receipt mail's Message-ID): a second receipt of a message and kind from the same carrier
    #: is not kept (the mail read again); None: always kept
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptFiling:
    """A receipt to keep and, when ``to`` is given, the transition it proves (``Store.file_receipts``)."""
    message_id: str
    receipt: NewReceipt
    to: State | None = None
    expect: tuple[State, ...] = ()  #: the states the transition may leave (compare-and-set)
    reason: str | None = None
    remote_reply: str | None = None
    clear_spool: bool = False  #: proven delivery: the plaintext copy's path is cleared (``Filed.spool_path``)


@dataclass(frozen=True, slots=True)
class Filed:
    """What became of one ``ReceiptFiling``: ``moved`` (transition written), ``already`` (the message was in
    ``to`` already), ``stale`` (it was in another state: ``state``), ``kept`` (no transition asked) or
    ``unknown`` (no such message: nothing written)."""
    outcome: str
    state: State | None = None  #: the message's state before
    spool_path: str | None = None  #: the plaintext copy whose path ``clear_spool`` cleared (the caller removes it)


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    at: datetime
    kind: str
    verdict: str
    detail: str
    source: str | None


#: what became of a message that arrived (``inbound.outcome``)
INBOUND_OUTCOMES = frozenset({"accepted", "refused"})


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One row of ``inbound``: the memory of a message that arrived, and the receipt it was given.

    ``message_id`` is the berichtId of an opened message; a message that could not be opened
    (or whose content was not valid) is kept under ``sha256:<hex of the entity>``."""

    message_id: str
    transport: str  #: "email" | "as2"
    transport_message_id: str | None  #: the mail's Message-ID or the AS2 Message-ID, as received
    sender: str | None  #: party code, e.g. "pi:PI-VUGHT" (None: not established)
    signer_fingerprint: str | None  #: hex SHA-256 of the signer's certificate (None: not verified)
    type: str | None
    dossier: str | None
    mic: str | None  #: base64 SHA-256 of the signed part (the MDN's Received-Content-MIC)
    sha256: str  #: hex digest of the entity as received
    received_at: datetime
    outcome: str  #: accepted | refused
    reason_code: str | None  #: refused: the receipt's reason slug
    reason: str | None  #: refused: for the operator (no content)
    inbox_path: str | None  #: accepted: the .xml in the inbox
    quarantine_path: str | None  #: refused: the entity kept in quarantine
    receipt: bytes | None  #: the signed MDN entity exactly as sent (a duplicate gets these bytes again)


class StoreError(Exception):
    """Something the store refused or could not do."""


class UnknownMessage(StoreError):
    def __init__(self, message_id: str):
        super().__init__(f"no message {message_id!r} in the store")
        self.message_id = message_id


class IllegalTransition(StoreError):
    """The edge is not in ``TRANSITIONS``: a bug upstream, never retried."""

    def __init__(self, message_id: str, from_state: State, to_state: State):
        super().__init__(f"message {message_id}: transition {from_state} -> {to_state} is not allowed")
        self.message_id, self.from_state, self.to_state = message_id, from_state, to_state


class StaleState(StoreError):
    """Compare-and-set failed: someone else moved the message (or took its lease) first."""

    def __init__(self, message_id: str, actual: State | None, expected: Iterable[State], detail: str = ""):
        names = "|".join(sorted(expected))
        super().__init__(f"message {message_id} is {actual}, expected {names}{detail}")
        self.message_id, self.actual, self.expected = message_id, actual, frozenset(expected)


class DuplicateMessage(StoreError):
    """A second drop of a file already accepted (``same-file``) or of a message id already known (``same-id``)."""

    def __init__(self, kind: str, message_id: str | None, pickup: Pickup | None):
        super().__init__(f"duplicate ({kind}) of message {message_id}")
        self.kind, self.message_id, self.pickup = kind, message_id, pickup


class DuplicateInbound(StoreError):
    """The message id was accepted before: its row stays as it is (``existing`` is that row)."""

    def __init__(self, existing: InboundRecord):
        super().__init__(f"message {existing.message_id} was accepted before")
        self.existing = existing


class SchemaError(StoreError):
    """The database is not one this code can use (newer schema, or not a gateway store)."""


def check_edge(message_id: str, from_state: State, to_state: State) -> None:
    if to_state not in TRANSITIONS[from_state]:
        raise IllegalTransition(message_id, from_state, to_state)
