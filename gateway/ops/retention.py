"""Retention: what the gateway keeps, for how long, and the purge that enforces it.

Two clocks (the covenant, art. 9, and the issue's defaults, ``[retention]`` in the config):

- the plaintext spool copy of a message goes ``plaintext_after`` (30 days) after the
  message was acknowledged (or delivered, for a route without signed receipts). The
  receipt matcher normally removes it at once; this is the backstop.
- everything else about a dossier — sealed entities, message rows, transitions,
  receipts, pickups, inbound rows and the quarantined copies of refused arrivals —
  goes ``keep_years`` (5) calendar years after the dossier's LAST message, outbound
  or inbound. Refused arrivals without a dossier, and rejected pickups, go
  ``keep_years`` after they arrived.

The audit trail is not purged: it holds ids, actions and results only, and its hash
chain must stay whole (``gateway.ops.audit``).

Monitoring figures survive: before message and inbound rows are deleted, their counts
are ADDED to ``monthly_figures`` (per UTC month of ``received_at``, direction, type,
sender, recipient: messages, sent, acknowledged) in the same transaction. ``on_time``
stays NULL there: whether a message met its chain deadline is judged by the reports
(``deadlines.py``), not by the purge. A report over a period therefore adds the live
rows and ``monthly_figures``; the two never overlap (a row is counted in figures only
as it is deleted).

The purge is one write transaction (files are removed inside it, before the commit: a
failed commit leaves rows pointing at removed files, never plaintext without a row),
audited with one row of counts and never content. ``dry_run`` reads the same plan and
changes nothing (not even the audit trail).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, and_, delete, func, insert, select, union_all, update

from adapters.outbox_fs import remove_plaintext
from gateway.store import State, Store
from gateway.store.schema import (deadline_facts, inbound, messages, monthly_figures, pickups, receipts, sealed,
                                  subject_index, transitions)

log = structlog.get_logger(__name__)

m = messages.c
DEFAULT_PLAINTEXT_AFTER = timedelta(days=30)
DEFAULT_KEEP_YEARS = 5
_PROVEN = [State.DELIVERED.value, State.ACKNOWLEDGED.value]
_CHUNK = 500  #: ids per IN (...) list: SQLite's variable limit is far above, PostgreSQL's too


def years_before(at: datetime, years: int) -> datetime:
    """The same moment ``years`` calendar years earlier (29 February becomes the 28th)."""
    try:
        return at.replace(year=at.year - years)
    except ValueError:
        return at.replace(year=at.year - years, day=28)


@dataclass
class PurgePlan:
    """What a purge removes (or, dry run, would remove): ids only, never content."""

    at: datetime
    plaintext_before: datetime  #: spool copies of messages acknowledged before this go
    records_before: datetime  #: dossiers whose last message is before this go
    plaintext: list[str] = field(default_factory=list)  #: message ids whose spool copy goes
    dossiers: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    inbound: list[str] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)  #: pickup ids of rejected files
    files_removed: int = 0  #: files actually removed (0 in a dry run)
    dry_run: bool = True

    def counts(self) -> dict[str, int]:
        return {"plaintext": len(self.plaintext), "dossiers": len(self.dossiers), "messages": len(self.messages),
                "inbound": len(self.inbound), "rejected": len(self.rejected), "files_removed": self.files_removed}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("at", "plaintext_before", "records_before"):
            d[k] = d[k].isoformat()
        return d | {"counts": self.counts()}


def _chunks(ids: list[Any]) -> list[list[Any]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _plan(conn: Connection, plan: PurgePlan) -> dict[str, list[str]]:
    """Fill ``plan`` and return the files that go with it (spool copies, quarantined entities, rejected files)."""
    files: dict[str, list[str]] = {"spool": [], "other": []}
    # a dossier's last message, outbound or inbound
    both = union_all(select(m.dossier.label("dossier"), m.received_at.label("at")),
                     select(inbound.c.dossier, inbound.c.received_at).where(inbound.c.dossier.is_not(None))).subquery()
    old = select(both.c.dossier).group_by(both.c.dossier).having(func.max(both.c.at) < plan.records_before)
    plan.dossiers = sorted(conn.execute(old).scalars())
    for chunk in _chunks(plan.dossiers):
        for mid, path in conn.execute(select(m.message_id, m.spool_path).where(m.dossier.in_(chunk))):
            plan.messages.append(mid)
            if path:
                files["spool"].append(path)
        for mid, path in conn.execute(select(inbound.c.message_id, inbound.c.quarantine_path)
                                      .where(inbound.c.dossier.in_(chunk))):
            plan.inbound.append(mid)
            if path:
                files["other"].append(path)
    going = set(plan.messages)  # their spool copies go with them: not counted twice
    proven_at = func.coalesce(m.acknowledged_at, m.delivered_at)
    for mid, path in conn.execute(select(m.message_id, m.spool_path).where(
            m.state.in_(_PROVEN), m.spool_path.is_not(None), proven_at < plan.plaintext_before)
            .order_by(m.message_id)):
        if mid not in going:
            plan.plaintext.append(mid)
            files["spool"].append(path)
    for mid, path in conn.execute(select(inbound.c.message_id, inbound.c.quarantine_path).where(
            inbound.c.dossier.is_(None), inbound.c.received_at < plan.records_before)):
        plan.inbound.append(mid)
        if path:
            files["other"].append(path)
    for pid, path in conn.execute(select(pickups.c.id, pickups.c.spool_path).where(
            pickups.c.outcome == "rejected", pickups.c.at < plan.records_before)):
        plan.rejected.append(pid)
        if path:
            files["other"].append(path)
    plan.messages.sort()
    plan.inbound.sort()
    return files


def _add_figures(conn: Connection, figures: Counter[tuple[str, ...]]) -> None:
    """Add per-group counts to ``monthly_figures`` (key: month, direction, type, sender, recipient, measure)."""
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for (*key, measure), n in figures.items():
        groups.setdefault(tuple(key), {"messages": 0, "sent": 0, "acknowledged": 0})[measure] += n
    f = monthly_figures.c
    for (month, direction, type_, sender, recipient), counts in groups.items():
        where = and_(f.month == month, f.direction == direction, f.type == type_, f.sender == sender,
                     f.recipient == recipient)
        done = conn.execute(update(monthly_figures).where(where).values(
            messages=f.messages + counts["messages"], sent=f.sent + counts["sent"],
            acknowledged=f.acknowledged + counts["acknowledged"])).rowcount
        if not done:
            conn.execute(insert(monthly_figures).values(month=month, direction=direction, type=type_, sender=sender,
                                                        recipient=recipient, on_time=None, **counts))


def _figures_of(conn: Connection, plan: PurgePlan) -> Counter[tuple[str, ...]]:
    figures: Counter[tuple[str, ...]] = Counter()
    for chunk in _chunks(plan.messages):
        for r in conn.execute(select(m.received_at, m.type, m.sender, m.recipient, m.sent_at, m.acknowledged_at)
                              .where(m.message_id.in_(chunk))):
            key = (r.received_at.strftime("%Y-%m"), "out", r.type, r.sender, r.recipient)
            figures[(*key, "messages")] += 1
            figures[(*key, "sent")] += r.sent_at is not None
            figures[(*key, "acknowledged")] += r.acknowledged_at is not None
    for chunk in _chunks(plan.inbound):
        for r in conn.execute(select(inbound.c.received_at, inbound.c.type, inbound.c.sender, inbound.c.outcome)
                              .where(inbound.c.message_id.in_(chunk))):
            key = (r.received_at.strftime("%Y-%m"), "in", r.type or "", r.sender or "", "")
            figures[(*key, "messages")] += 1
            figures[(*key, "sent")] += 0
            figures[(*key, "acknowledged")] += r.outcome == "accepted"
    return figures


def _remove(paths: list[str], *, plaintext: bool) -> int:
    removed = 0
    for p in paths:
        path = Path(p)
        if plaintext:
            removed += remove_plaintext(path)
            continue
        for each in (path, path.with_suffix(".json")):  # a quarantined entity has its report beside it
            try:
                each.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _purge_tx(conn: Connection, store: Store, plan: PurgePlan, actor: str) -> PurgePlan:
    files = _plan(conn, plan)
    _add_figures(conn, _figures_of(conn, plan))
    for chunk in _chunks(plan.plaintext):
        conn.execute(update(messages).where(m.message_id.in_(chunk)).values(spool_path=None))
    for direction, ids in (("outbound", plan.messages), ("inbound", plan.inbound)):
        for chunk in _chunks(ids):  # who and when the message was about goes with it (covenant art. 9)
            for table in (subject_index, deadline_facts):
                conn.execute(delete(table).where(table.c.direction == direction, table.c.message_id.in_(chunk)))
    for chunk in _chunks(plan.messages):
        for table in (sealed, receipts, transitions, pickups):
            conn.execute(delete(table).where(table.c.message_id.in_(chunk)))
        conn.execute(delete(messages).where(m.message_id.in_(chunk)))
    for chunk in _chunks(plan.inbound):
        conn.execute(delete(inbound).where(inbound.c.message_id.in_(chunk)))
    for chunk in _chunks(plan.rejected):
        conn.execute(delete(pickups).where(pickups.c.id.in_(chunk)))
    plan.files_removed = _remove(files["spool"], plaintext=True) + _remove(files["other"], plaintext=False)
    result = " ".join(f"{k}={v}" for k, v in plan.counts().items())
    store.audit_in(conn, "retention.purge", "store", result, actor)
    return plan


async def purge(store: Store, *, plaintext_after: timedelta = DEFAULT_PLAINTEXT_AFTER,
                keep_years: int = DEFAULT_KEEP_YEARS, dry_run: bool = False, actor: str = "retention",
                now: datetime | None = None) -> PurgePlan:
    """Remove what is past its time (see the module docstring); ``dry_run``: only say what that is."""
    at = (now or store._now()).astimezone(timezone.utc)
    plan = PurgePlan(at, at - plaintext_after, years_before(at, keep_years), dry_run=dry_run)
    # planning reads the whole store (seconds at a million messages): on a reader, so that the one
    # writer (pick-up, sealing, delivery) is held only when something is due, and then planned again
    # under its lock
    await store.run_read(_plan, plan)
    if not dry_run:
        if any(plan.counts().values()):
            plan = PurgePlan(at, plan.plaintext_before, plan.records_before, dry_run=False)
            await store.run_write(_purge_tx, store, plan, actor)
        else:  # nothing due: only the audit row that says the purge ran
            await store.audit(action="retention.purge", object="store", actor=actor,
                              result=" ".join(f"{k}={v}" for k, v in plan.counts().items()))
    log.info("retention.purge", dry_run=dry_run, **plan.counts())
    return plan


async def purge_service(store: Store, *, every: timedelta, plaintext_after: timedelta = DEFAULT_PLAINTEXT_AFTER,
                        keep_years: int = DEFAULT_KEEP_YEARS) -> None:
    """The daemon's scheduled purge: now and then every ``every`` until cancelled; a failure is logged."""
    while True:
        try:
            await purge(store, plaintext_after=plaintext_after, keep_years=keep_years, actor="retention-schedule")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("retention.purge_failed", error=type(e).__name__)
        await asyncio.sleep(every.total_seconds())
