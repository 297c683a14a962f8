"""The audit trail proved intact: signed checkpoints of the hash chain, and their verification.

The store chains every audit row to the one before (``gateway.store.chain``), in the
transaction that writes it. That alone shows edits, removals and reorderings, but not
someone who rewrites the whole chain from some row on: a checkpoint signs the hash of
the last row with the gateway's own key (the party identity), so a rewrite of any row
at or before a checkpoint needs that key. ``checkpoint_service`` writes one
periodically in the daemon; ``verify`` walks the chain and checks every checkpoint.

``verify`` reads the whole trail in id order, in one pass, holding only the hashes the
checkpoints point at; it says where the first break is and what kind it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import Connection, insert, select

from gateway.crypto.identity import Identity
from gateway.store import Store
from gateway.store.chain import GENESIS, canonical_at, row_hash
from gateway.store.schema import audit, audit_checkpoints

log = structlog.get_logger(__name__)

_CONTEXT = "nazorg-gateway audit checkpoint v1"  #: domain separation: this signature means nothing else
_LAST_ROW = select(audit.c.id, audit.c.hash).order_by(audit.c.id.desc()).limit(1)
_LAST_CHECKPOINT = select(audit_checkpoints.c.up_to_id).order_by(audit_checkpoints.c.id.desc()).limit(1)
_CHAIN = select(audit.c.id, audit.c.at, audit.c.action, audit.c.object, audit.c.result, audit.c.origin,
                audit.c.actor, audit.c.prev_hash, audit.c.hash).order_by(audit.c.id)


@dataclass(frozen=True)
class Checkpoint:
    id: int
    at: datetime
    up_to_id: int
    hash: str
    cert_fingerprint: str


@dataclass(frozen=True)
class Problem:
    id: int  #: the audit row (or, for kind ``checkpoint-*``, the checkpoint) where it is wrong
    kind: str  #: edited | link-broken | removed | checkpoint-signature | checkpoint-signer | checkpoint-mismatch
    detail: str


@dataclass
class Report:
    rows: int = 0  #: audit rows read
    last_id: int | None = None
    checkpoints: int = 0  #: checkpoints whose signature and hash hold
    covered_up_to: int | None = None  #: the highest audit id a valid checkpoint vouches for
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> Problem | None:
        rows = [p for p in self.problems if not p.kind.startswith("checkpoint")]
        return min(rows, key=lambda p: p.id) if rows else (self.problems[0] if self.problems else None)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "last_id": self.last_id, "checkpoints": self.checkpoints,
                "covered_up_to": self.covered_up_to, "problems": [asdict(p) for p in self.problems]}


def _payload(up_to_id: int, hash: str, at: datetime, fingerprint: str) -> bytes:
    return json.dumps([_CONTEXT, up_to_id, hash, canonical_at(at), fingerprint], separators=(",", ":")).encode()


def _sign(identity: Identity, data: bytes) -> tuple[str, bytes]:
    key = identity.key
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa-pss-sha256", key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    return "ecdsa-sha256", key.sign(data, ec.ECDSA(hashes.SHA256()))


def _signature_holds(cert: x509.Certificate, algorithm: str, signature: bytes, data: bytes) -> bool:
    key = cert.public_key()
    try:
        if algorithm == "rsa-pss-sha256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif algorithm == "ecdsa-sha256" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


async def write_checkpoint(store: Store, identity: Identity) -> Checkpoint | None:
    """Sign the hash of the last audit row; None when there is no row, or none since the last checkpoint."""
    fingerprint = identity.fingerprint
    der = identity.cert.public_bytes(serialization.Encoding.DER)

    def tx(conn: Connection) -> Checkpoint | None:
        last = conn.execute(_LAST_ROW).first()
        if last is None or conn.execute(_LAST_CHECKPOINT).scalar() == last.id:
            return None
        at = store._now()
        algorithm, signature = _sign(identity, _payload(last.id, last.hash, at, fingerprint))
        cid = conn.execute(insert(audit_checkpoints).values(
            at=at, up_to_id=last.id, hash=last.hash, algorithm=algorithm, signature=signature,
            cert_fingerprint=fingerprint, certificate=der)).inserted_primary_key[0]
        return Checkpoint(cid, at, last.id, last.hash, fingerprint)

    checkpoint = await store.run_write(tx)
    if checkpoint is not None:
        log.info("audit.checkpoint", checkpoint=checkpoint.id, up_to_id=checkpoint.up_to_id)
    return checkpoint


async def checkpoint_service(store: Store, identity: Identity, every: timedelta | float) -> None:
    """Write a checkpoint now and then every ``every`` until cancelled; a failed one is logged and retried."""
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
    while True:
        try:
            await write_checkpoint(store, identity)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the store may be briefly busy; the next round tries again
            log.warning("audit.checkpoint_failed", error=type(e).__name__)
        await asyncio.sleep(seconds)


def _walk(conn: Connection, wanted: set[int], report: Report) -> dict[int, str]:
    """Check every row's link and hash in id order; return the stored hashes of the ``wanted`` ids."""
    found: dict[int, str] = {}
    prev, prev_id = GENESIS, 0
    for row in conn.execute(_CHAIN):
        report.rows += 1
        if row.id in wanted:
            found[row.id] = row.hash
        if row.id != prev_id + 1:  # ids are given without gaps (and never reused): rows were deleted
            report.problems.append(Problem(row.id, "removed", f"rows {prev_id + 1} to {row.id - 1} are missing"))
        elif row.prev_hash != prev:
            report.problems.append(Problem(row.id, "link-broken", "its prev_hash is not the hash of the row "
                                           "before: rows removed, reordered or inserted here"))
        if row_hash(row.prev_hash, row.id, row.at, row.action, row.object, row.result, row.origin,
                    row.actor) != row.hash:
            report.problems.append(Problem(row.id, "edited", "its content does not match its hash"))
        prev, prev_id = row.hash, row.id
    report.last_id = prev_id or None
    return found


def _certificates(trusted: x509.Certificate | Iterable[x509.Certificate]) -> dict[str, x509.Certificate]:
    certs = [trusted] if isinstance(trusted, x509.Certificate) else list(trusted)
    return {c.fingerprint(hashes.SHA256()).hex(): c for c in certs}


async def verify(store: Store, trusted: x509.Certificate | Sequence[x509.Certificate]) -> Report:
    """Walk the chain and check every checkpoint against ``trusted`` (the gateway's own certificate(s):
    the current one and those it replaced). A checkpoint by any other key is refused."""
    known = _certificates(trusted)

    def tx(conn: Connection) -> Report:
        report = Report()
        checkpoints = list(conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.id)))
        found = _walk(conn, {c.up_to_id for c in checkpoints}, report)
        for c in checkpoints:
            cert = known.get(c.cert_fingerprint)
            if cert is None or cert.public_bytes(serialization.Encoding.DER) != bytes(c.certificate):
                report.problems.append(Problem(c.id, "checkpoint-signer", f"checkpoint {c.id} (up to audit row "
                                               f"{c.up_to_id}) is signed by a certificate that is not trusted"))
                continue
            if not _signature_holds(cert, c.algorithm, bytes(c.signature),
                                    _payload(c.up_to_id, c.hash, c.at, c.cert_fingerprint)):
                report.problems.append(Problem(c.id, "checkpoint-signature", f"checkpoint {c.id} (up to audit row "
                                               f"{c.up_to_id}): the signature does not hold"))
                continue
            if c.up_to_id not in found:
                report.problems.append(Problem(c.up_to_id, "removed", f"checkpoint {c.id} vouches for audit row "
                                               f"{c.up_to_id}, which is gone (trail truncated or row deleted)"))
            elif found[c.up_to_id] != c.hash:
                report.problems.append(Problem(c.up_to_id, "checkpoint-mismatch", f"checkpoint {c.id} signed "
                                               "another hash for this row: the chain was rewritten up to here"))
            else:
                report.checkpoints += 1
                report.covered_up_to = max(report.covered_up_to or 0, c.up_to_id)
        report.problems.sort(key=lambda p: (p.kind.startswith("checkpoint-s"), p.id))
        return report

    report = await store.run_read(tx)
    log.info("audit.verified", ok=report.ok, rows=report.rows, checkpoints=report.checkpoints,
             problems=len(report.problems), first_bad=report.first_bad.id if report.first_bad else None)
    return report
