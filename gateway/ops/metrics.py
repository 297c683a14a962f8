"""The gateway's figures, read from the store: for ``/metrics`` (Prometheus) and the dashboard's overview.

Everything is computed from the store at the moment of asking, so the figures are the same
whichever process asks (the daemon, a standalone dashboard) and survive restarts. Each call
renders into a fresh ``CollectorRegistry``: no module-level metric objects, no global state
but the deadline alerts kept per open store (below).
Aggregates only: states, types, party codes, reasons (the rule's name), never content.

The chain's deadline alerts (steps overdue, due soon, or done late; ``deadlines.py``) need every
dossier's messages: at a million messages that is half a minute of CPU, so they are kept per store
and brought up to date at most once a minute from the dossiers that changed (``deadline_alerts``),
and labelled by step type and status only (no dossier, no person). What is history is left out
(``deadlines.current_alerts``: a step done late, a released dossier, ``ALERT_KEPT_DAYS`` on), so the
alerts kept are bounded by the dossiers in custody and the recent past, not by every dossier ever seen.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import Connection, func, select, text

from gateway.ops.deadlines import STEPS, alerts_tx, local_date
from gateway.store import State, Store
from gateway.store.breakers import Breaker, open_breakers
from gateway.store.schema import (event_counts, inbound, latency_buckets, message_counts, messages, pickups,
                                  receipts, transitions)

log = structlog.get_logger(__name__)

__all__ = ["ALERT_STATUSES", "BUCKETS", "DEADLINE_CACHE_SECONDS", "CertificateInfo", "Figures", "alerting_dossiers",
           "certificates", "deadline_alerts", "deadline_watch", "gather", "render"]

m = messages.c
#: latency buckets in seconds: from a quick relay hand-over up to the days a receipt may take
BUCKETS: tuple[float, ...] = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400)
#: states a message is still waiting for something in (not acknowledged, not given up, not stopped)
PENDING = frozenset({State.RECEIVED, State.HELD, State.QUEUED, State.SENDING, State.RETRY_WAIT, State.SENT,
                     State.DELIVERED})
QUEUE = frozenset({State.QUEUED, State.RETRY_WAIT, State.SENDING})
#: the statuses of a chain step that are an alert (``deadlines.Step.alert``), each a gauge value per step
ALERT_STATUSES = ("overdue", "due-soon", "late")
#: how long computed deadline alerts are served before the changes since are computed
DEADLINE_CACHE_SECONDS = 60.0
#: every dossier is computed again this often (and when the day changes), whatever changed
DEADLINE_FULL_EVERY = 3600.0
#: how long a scrape waits for the computation before it gets the figures there are
DEADLINE_WAIT = 5.0
#: how far back from the marks a refresh looks for changes (see ``_changed_tx``)
CHANGE_MARGIN_IDS = 1000
CHANGE_MARGIN_TIME = timedelta(minutes=10)


@dataclass(frozen=True)
class CertificateInfo:
    party: str  #: "own" or the route's party code
    fingerprint: str  #: hex SHA-256, first 16 characters
    not_after: datetime
    days_left: float


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bound in seconds -> messages at or under it; +Inf included)."""

    buckets: dict[float, int]
    sum: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Histogram:
        return cls({b: sum(1 for v in values if v <= b) for b in (*BUCKETS, float("inf"))}, float(sum(values)),
                   len(values))


@dataclass(frozen=True)
class Figures:
    at: datetime
    by_state_type_route: list[tuple[str, str, str, int]]  #: (state, type, recipient, count)
    rejections: dict[str, int]  #: rejected pickups by reason (the rule's name)
    oldest_pending: tuple[str, datetime] | None  #: (message id, received_at) of the oldest pending message
    retries: int  #: transitions into retry_wait, ever
    receipt_mismatches: dict[str, int]  #: signed receipts that prove nothing, by verdict
    sent_latency: list[float]  #: drop -> sent, seconds, per message sent
    ack_latency: list[float]  #: drop -> acknowledged, seconds
    received_per_hour: list[int] = field(default_factory=list)  #: the last 24 hours, oldest first
    sent_per_hour: list[int] = field(default_factory=list)
    sent_latency_24h: list[float] = field(default_factory=list)
    ack_latency_24h: list[float] = field(default_factory=list)
    #: chain steps in an alert status: (status, step type) -> count; every pair present (0 when none)
    deadline_alerts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the histograms as the store keeps them (SQLite, migration 6); None: made from the latency lists
    sent_histogram: Histogram | None = None
    ack_histogram: Histogram | None = None
    #: destinations whose breaker is open, as the daemon last wrote them (``gateway/store/breakers.py``)
    destinations_down: list[Breaker] = field(default_factory=list)

    def by_state(self) -> dict[State, int]:
        out = dict.fromkeys((s for s in State if s is not State.REJECTED), 0)
        for state, _, _, n in self.by_state_type_route:
            out[State(state)] += n
        out[State.REJECTED] = sum(self.rejections.values())
        return out

    @property
    def queue_depth(self) -> int:
        return sum(n for s, _, _, n in self.by_state_type_route if State(s) in QUEUE)

    @property
    def oldest_pending_age(self) -> float:
        return 0.0 if self.oldest_pending is None else (self.at - self.oldest_pending[1]).total_seconds()


def _reason_label(reason: str | None) -> str:
    """The rule a rejection names, bounded (a label, so the set of values must stay small)."""
    return (reason or "unknown").split(":", 1)[0].strip()[:80] or "unknown"


#: a message sent in the last 24 hours was picked up at most this long before (the dashboard's 24-hour
#: figures read only these: an index range, not every message ever sent; one held longer is left out)
RECENT_PICKUP = timedelta(days=60)


def _kept_figures(conn: Connection) -> dict:
    """What the store keeps by trigger (migrations 5 and 6): a few rows whatever its size."""
    c = message_counts.c
    groups = [(s, t, r, int(n)) for s, t, r, n in conn.execute(
        select(c.state, c.type, c.recipient, c.n).where(c.n > 0).order_by(c.state, c.type, c.recipient))]
    counts = dict(conn.execute(select(event_counts.c.name, event_counts.c.value)).all())
    buckets: dict[str, dict[float, int]] = {"sent": {}, "acknowledged": {}}
    for metric, le, n in conn.execute(select(latency_buckets.c.metric, latency_buckets.c.le, latency_buckets.c.n)):
        buckets.setdefault(metric, {})[float(le)] = int(n)
    histograms = {metric: Histogram(b, float(counts.get(f"{metric}_seconds_sum", 0.0)),
                                    int(counts.get(f"{metric}_count", 0))) for metric, b in buckets.items()}
    mismatches = {name.split(":", 2)[2]: int(n) for name, n in counts.items()
                  if name.startswith("receipt:mdn:") and name != "receipt:mdn:match"}
    oldest = conn.execute(text(
        "SELECT message_id, received_at FROM messages INDEXED BY ix_messages_state_recipient_received "
        f"WHERE state IN ({', '.join(repr(s.value) for s in sorted(PENDING, key=lambda s: s.value))}) "
        "ORDER BY received_at, message_id LIMIT 1").columns(m.message_id, m.received_at)).first()
    return dict(groups=groups, retries=int(counts.get("retries", 0)), mismatches=mismatches, oldest=oldest,
                sent_histogram=histograms["sent"], ack_histogram=histograms["acknowledged"])


def _figures_tx(conn: Connection, now: datetime) -> Figures:
    since = now - timedelta(hours=24)
    if conn.dialect.name == "sqlite":
        kept = _kept_figures(conn)
        rejections: Counter[str] = Counter()
        for reason, n in conn.execute(select(pickups.c.reason, func.count()).where(pickups.c.outcome == "rejected")
                                      .group_by(pickups.c.reason)):
            rejections[_reason_label(reason)] += n
        sent24, acked24, sent_hours, recv_hours = _last_day(conn, since)
        return Figures(at=now, by_state_type_route=kept["groups"], rejections=dict(rejections),
                       oldest_pending=None if kept["oldest"] is None else (kept["oldest"][0], kept["oldest"][1]),
                       retries=kept["retries"], receipt_mismatches=kept["mismatches"], sent_latency=[],
                       ack_latency=[], received_per_hour=recv_hours, sent_per_hour=sent_hours,
                       sent_latency_24h=sent24, ack_latency_24h=acked24, sent_histogram=kept["sent_histogram"],
                       ack_histogram=kept["ack_histogram"])
    groups = [(s, t, r, n) for s, t, r, n in conn.execute(
        select(m.state, m.type, m.recipient, func.count()).group_by(m.state, m.type, m.recipient)
        .order_by(m.state, m.type, m.recipient))]
    rejections: Counter[str] = Counter()
    for reason, n in conn.execute(select(pickups.c.reason, func.count()).where(pickups.c.outcome == "rejected")
                                  .group_by(pickups.c.reason)):
        rejections[_reason_label(reason)] += n
    oldest = conn.execute(select(m.message_id, m.received_at).where(m.state.in_([s.value for s in PENDING]))
                          .order_by(m.received_at, m.message_id).limit(1)).first()
    retries = conn.execute(select(func.count()).select_from(transitions)
                           .where(transitions.c.to_state == State.RETRY_WAIT.value)).scalar_one()
    mismatches = dict(conn.execute(select(receipts.c.verdict, func.count())
                                   .where(receipts.c.kind == "mdn", receipts.c.verdict != "match")
                                   .group_by(receipts.c.verdict)).all())
    sent, acked, sent24, acked24 = [], [], [], []
    sent_hours, recv_hours = [0] * 24, [0] * 24
    for received_at, sent_at, acknowledged_at in conn.execute(
            select(m.received_at, m.sent_at, m.acknowledged_at).where(m.sent_at.is_not(None))):
        sent.append((sent_at - received_at).total_seconds())
        if sent_at >= since:
            sent24.append(sent[-1])
            sent_hours[min(23, int((sent_at - since).total_seconds() // 3600))] += 1
        if acknowledged_at is not None:
            acked.append((acknowledged_at - received_at).total_seconds())
            if acknowledged_at >= since:
                acked24.append(acked[-1])
    for (received_at,) in conn.execute(select(m.received_at).where(m.received_at >= since)):
        recv_hours[min(23, int((received_at - since).total_seconds() // 3600))] += 1
    return Figures(at=now, by_state_type_route=groups, rejections=dict(rejections),
                   oldest_pending=None if oldest is None else (oldest[0], oldest[1]), retries=retries,
                   receipt_mismatches=mismatches, sent_latency=sent, ack_latency=acked,
                   received_per_hour=recv_hours, sent_per_hour=sent_hours, sent_latency_24h=sent24,
                   ack_latency_24h=acked24)


async def gather(store: Store, now: datetime | None = None, *, deadlines: bool = True) -> Figures:
    """Every figure in one read (one reader connection, one snapshot per statement); with ``deadlines``
    the chain's alerts too (at most ``DEADLINE_CACHE_SECONDS`` old)."""
    now = now or datetime.now(timezone.utc)
    figures = await store.read_query(_figures_tx, now)
    figures = replace(figures, destinations_down=await open_breakers(store))
    if deadlines:
        figures = replace(figures, deadline_alerts=await deadline_alerts(store, now))
    return figures


class _AlertCache:
    """The deadline alerts of one store: per dossier with alerts its (status, step) pairs, the totals, and
    how far the store had got when they were computed (the last transition id, the last inbound arrival).

    ``per_dossier`` is replaced by each computation, never changed in place: a caller may hold the one it
    got (``alerting_dossiers``: the watch compares the last round's with this round's) without a copy of
    its own (one entry per dossier with an alert: three copies cost ~0.13 KiB per alerting dossier, the one
    kept ~0.03 KiB beside its reference)."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None  #: the computation running now
        self.at: float | None = None  #: time.monotonic() of the last computation (whole or of changes)
        self.full_at: float | None = None  #: ... of the last one over every dossier
        self.today: date | None = None
        self.marks: tuple[int | None, datetime | None] | None = None
        self.per_dossier: dict[str, tuple[tuple[str, str], ...]] = {}
        self.totals: dict[tuple[str, str], int] = {}


#: per open store; weak, so a closed and dropped store takes its cache with it
_ALERTS: weakref.WeakKeyDictionary[Store, _AlertCache] = weakref.WeakKeyDictionary()


async def deadline_alerts(store: Store, now: datetime | None = None, *, max_age: float = DEADLINE_CACHE_SECONDS,
                          wait: float = DEADLINE_WAIT) -> dict[tuple[str, str], int]:
    """Chain steps per (status, step type) for the alert statuses, every pair present; {} before the first
    computation has finished.

    Older than ``max_age`` seconds, the figures are brought up to date in one task however many scrapes
    ask: only the dossiers whose messages changed since (transitions, arrivals) are computed again; every
    dossier when the day changed (due dates turn overdue by the calendar) or once an hour. A scrape waits
    at most ``wait`` seconds for it, then gets the figures it has (a full run at a million messages takes
    longer than a scraper waits)."""
    today = local_date(now or datetime.now(timezone.utc))
    cache = _ALERTS.setdefault(store, _AlertCache())
    stale = cache.at is None or cache.today != today or time.monotonic() - cache.at >= max_age
    if cache.task is None and stale:
        cache.task = asyncio.create_task(_refresh(store, cache, today))
        cache.task.add_done_callback(lambda task: _refreshed(cache, task))
    if cache.task is not None:
        try:
            await asyncio.wait_for(asyncio.shield(cache.task), wait)
        except (asyncio.TimeoutError, Exception):  # a failure is logged by _refreshed; the last figures stay
            pass
    return dict(cache.totals)


async def alerting_dossiers(store: Store, now: datetime | None = None) -> Mapping[str, tuple[tuple[str, str], ...]]:
    """The dossiers with an alert and their (status, step) pairs, as ``deadline_alerts`` keeps them: the kept
    mapping itself, read-only, which later computations replace rather than change (no copy per caller)."""
    await deadline_alerts(store, now)
    return MappingProxyType(_ALERTS[store].per_dossier)


async def deadline_watch(store: Store, every: float = DEADLINE_CACHE_SECONDS,
                         clock: Callable[[], datetime] | None = None,
                         after_round: Callable[[], object] | None = None) -> None:
    """The daemon's eye on the chain's deadlines, whether or not anyone looks at the dashboard: every
    ``every`` seconds the alerts are brought up to date, and each step that newly turned overdue, due soon
    or late is logged once (dossier reference, step, status: no person) as an alert. ``after_round`` is
    called after each round (the daemon gives the round's freed memory back). Runs until cancelled."""
    # what was logged: the alerts of the last round as the cache kept them (its mapping, not a copy)
    known: Mapping[str, tuple[tuple[str, str], ...]] = {}
    while True:
        try:
            known = await _watch_round(store, clock() if clock else datetime.now(timezone.utc), known)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the store may be busy; the next round tries again
            log.warning("deadline.watch_failed", error=type(e).__name__)
        if after_round is not None:
            after_round()
        await asyncio.sleep(every)


async def _watch_round(store: Store, now: datetime, known: Mapping[str, tuple[tuple[str, str], ...]]
                       ) -> Mapping[str, tuple[tuple[str, str], ...]]:
    """Log each alert that is new since ``known``; what is logged now (``known`` until a first full
    computation has finished). Nothing of the round is left referenced while the watch sleeps."""
    current = await alerting_dossiers(store, now)
    if _ALERTS[store].full_at is None:
        return known
    for ref, status, step in _new_alerts(known, current):
        log.warning("deadline.alert", dossier=ref, step=step, status=status, alert=True)
    return current


def _new_alerts(before: Mapping[str, tuple[tuple[str, str], ...]],
                current: Mapping[str, tuple[tuple[str, str], ...]]) -> list[tuple[str, str, str]]:
    """(dossier, status, step) of each alert in ``current`` that ``before`` did not have, in order."""
    return [(ref, status, step)
            for ref in sorted(ref for ref, pairs in current.items() if before.get(ref) != pairs)
            for status, step in sorted(set(current[ref]) - set(before.get(ref, ())))]


def _refreshed(cache: _AlertCache, task: asyncio.Task) -> None:
    cache.task = None
    if not task.cancelled() and task.exception() is not None:
        log.warning("deadline-alerts-failed", error=type(task.exception()).__name__)


async def _refresh(store: Store, cache: _AlertCache, today: date) -> None:
    marks = await store.read_query(_marks_tx)  # before the computation: what changes meanwhile comes next time
    full = cache.full_at is None or cache.today != today or time.monotonic() - cache.full_at >= DEADLINE_FULL_EVERY
    if full:
        started = time.monotonic()
        cache.per_dossier = await store.read_query(alerts_tx, today)
        cache.full_at = started
        log.info("deadline-alerts-computed", dossiers_alerting=len(cache.per_dossier),
                 seconds=round(time.monotonic() - started, 2))
    else:
        changed = sorted(await store.read_query(_changed_tx, cache.marks))
        if changed:  # a new mapping: the one handed out stays as it was (see _AlertCache)
            cache.per_dossier = await _recomputed(store, cache.per_dossier, changed, today)
    totals = dict.fromkeys(((status, step) for status in ALERT_STATUSES for step in STEPS), 0)
    for alerts in cache.per_dossier.values():
        for pair in alerts:
            totals[pair] = totals.get(pair, 0) + 1
    cache.totals, cache.marks, cache.today, cache.at = totals, marks, today, time.monotonic()


async def _recomputed(store: Store, kept: Mapping[str, tuple[tuple[str, str], ...]], changed: list[str],
                      today: date) -> dict[str, tuple[tuple[str, str], ...]]:
    """``kept`` with the ``changed`` dossiers computed again (those without an alert now left out)."""
    out = dict(kept)
    for start in range(0, len(changed), 512):  # bounded IN lists (a power of two: ``deadlines.padded``)
        chunk = changed[start:start + 512]
        got = await store.read_query(alerts_tx, today, chunk)
        for dossier in chunk:
            out.pop(dossier, None)
        out.update(got)
    return out


def _marks_tx(conn: Connection) -> tuple[int | None, datetime | None]:
    """The newest transition id and inbound arrival (primary key and index: no scan)."""
    return (conn.execute(select(func.max(transitions.c.id))).scalar(),
            conn.execute(select(func.max(inbound.c.received_at))).scalar())


def _changed_tx(conn: Connection, marks: tuple[int | None, datetime | None]) -> set[str]:
    """Dossiers with a transition or an arrival after ``marks``, with a margin back: ids and times of
    transactions that committed out of order (PostgreSQL sequences, a clock read before the commit)
    are caught; a dossier computed again needlessly costs nothing but time."""
    last_id, last_arrival = marks
    t = transitions.c
    out = select(m.dossier).distinct().select_from(transitions.join(messages, m.message_id == t.message_id))
    if last_id is not None:
        out = out.where(t.id > last_id - CHANGE_MARGIN_IDS)
    arrived = select(inbound.c.dossier).distinct().where(inbound.c.dossier.is_not(None))
    if last_arrival is not None:
        arrived = arrived.where(inbound.c.received_at >= last_arrival - CHANGE_MARGIN_TIME)
    return {d for (d,) in conn.execute(out)} | {d for (d,) in conn.execute(arrived)}


def certificates(own_cert: x509.Certificate | None, routes: Mapping[str, Any],
                 now: datetime | None = None) -> list[CertificateInfo]:
    """The own certificate and each route's, with the days left (negative: expired). Unreadable: left out."""
    now = now or datetime.now(timezone.utc)
    found: list[tuple[str, x509.Certificate]] = []
    if own_cert is not None:
        found.append(("own", own_cert))
    for code, route in sorted(routes.items()):
        try:
            found.append((code, x509.load_pem_x509_certificate(Path(route.certificate).read_bytes())))
        except (OSError, ValueError):
            continue
    out = []
    for party, cert in found:
        not_after = cert.not_valid_after_utc
        out.append(CertificateInfo(party, cert.fingerprint(_sha256()).hex()[:16], not_after,
                                   (not_after - now).total_seconds() / 86400))
    return out


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _last_day(conn: Connection, since: datetime) -> tuple[list[float], list[float], list[int], list[int]]:
    """Latencies of what was sent / acknowledged in the last 24 hours, and sent / received per hour."""
    sent24, acked24, sent_hours, recv_hours = [], [], [0] * 24, [0] * 24
    for received_at, sent_at, acknowledged_at in conn.execute(
            select(m.received_at, m.sent_at, m.acknowledged_at)
            .where(m.received_at >= since - RECENT_PICKUP, m.sent_at.is_not(None))):
        if sent_at >= since:
            sent24.append((sent_at - received_at).total_seconds())
            sent_hours[min(23, int((sent_at - since).total_seconds() // 3600))] += 1
        if acknowledged_at is not None and acknowledged_at >= since:
            acked24.append((acknowledged_at - received_at).total_seconds())
    for (received_at,) in conn.execute(select(m.received_at).where(m.received_at >= since)):
        recv_hours[min(23, int((received_at - since).total_seconds() // 3600))] += 1
    return sent24, acked24, sent_hours, recv_hours


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(_le(b), float(h.buckets.get(float(b), 0))) for b in BUCKETS]
    buckets.append(("+Inf", float(h.buckets.get(float("inf"), h.count))))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def _le(b: float) -> str:
    return str(float(b))


class _Snapshot:
    """A collector over one ``Figures``: registered in a fresh registry per scrape."""

    def __init__(self, figures: Figures, certs: Iterable[CertificateInfo], destinations: Iterable[str] = ()):
        self.figures, self.certs, self.destinations = figures, list(certs), list(destinations)

    def _destinations(self):
        """Per destination (the configured ones, and any the store says is down): up or down, since when,
        failures, messages held back. Labels: the destination's key (relay host:port, AS2 URL), bounded by
        the configuration."""
        f = self.figures
        down = {b.destination: b for b in f.destinations_down}
        up = GaugeMetricFamily("nazorg_destination_up", "1 while the destination (the relay, an AS2 URL) is taken "
                               "to be up, 0 while its circuit breaker is open.", labels=["destination"])
        since = GaugeMetricFamily("nazorg_destination_down_seconds", "How long the destination has been down "
                                  "(0 when up).", labels=["destination"])
        failures = GaugeMetricFamily("nazorg_destination_failures", "Failures since the destination went down: "
                                     "the one that opened its breaker and every failed probe (0 when up).",
                                     labels=["destination"])
        held = GaugeMetricFamily("nazorg_destination_held_back_messages", "Messages waiting unsent because their "
                                 "destination is down (0 when up).", labels=["destination"])
        for key in sorted(set(self.destinations) | down.keys()):
            b = down.get(key)
            up.add_metric([key], 0 if b else 1)
            since.add_metric([key], max(0.0, (f.at - b.since).total_seconds()) if b else 0)
            failures.add_metric([key], b.failures if b else 0)
            held.add_metric([key], b.waiting if b else 0)
        yield from (up, since, failures, held)

    def collect(self):
        f = self.figures
        msgs = GaugeMetricFamily("nazorg_messages", "Messages in the store by state, type and route (recipient).",
                                 labels=["state", "type", "route"])
        for state, type_, recipient, n in f.by_state_type_route:
            msgs.add_metric([state, type_, recipient], n)
        yield msgs
        states = GaugeMetricFamily("nazorg_messages_by_state", "Messages per state (rejected: rejected files).",
                                   labels=["state"])
        for state, n in f.by_state().items():
            states.add_metric([state.value], n)
        yield states
        yield GaugeMetricFamily("nazorg_queue_depth", "Messages queued, waiting for a retry, or being sent.",
                                value=f.queue_depth)
        yield GaugeMetricFamily("nazorg_oldest_unacknowledged_age_seconds",
                                "Age of the oldest message not yet acknowledged (nor failed or cancelled).",
                                value=f.oldest_pending_age)
        yield CounterMetricFamily("nazorg_retries", "Temporary failures that led to a retry.", value=f.retries)
        rej = CounterMetricFamily("nazorg_rejections", "Dropped files rejected, by reason.", labels=["reason"])
        for reason, n in sorted(f.rejections.items()):
            rej.add_metric([reason], n)
        yield rej
        mis = CounterMetricFamily("nazorg_receipt_mismatches", "Signed receipts that do not prove delivery, "
                                  "by verdict.", labels=["verdict"])
        for verdict, n in sorted(f.receipt_mismatches.items()):
            mis.add_metric([verdict], n)
        yield mis
        days = GaugeMetricFamily("nazorg_certificate_expiry_days", "Days until the certificate expires "
                                 "(negative: expired).", labels=["party"])
        for c in self.certs:
            days.add_metric([c.party], round(c.days_left, 3))
        yield days
        steps = GaugeMetricFamily("nazorg_chain_steps_alerting", "Chain steps (deadlines of section VI) that are "
                                  "overdue, due within two days, or were done late, by status and step type.",
                                  labels=["status", "step"])
        for (status, step), n in sorted(f.deadline_alerts.items()):
            steps.add_metric([status, step], n)
        yield steps
        yield from self._destinations()
        yield _histogram("nazorg_drop_to_sent_seconds", "From pick-up to the next hop's acceptance.",
                         f.sent_histogram or Histogram.of(f.sent_latency))
        yield _histogram("nazorg_drop_to_acknowledged_seconds", "From pick-up to the signed receipt.",
                         f.ack_histogram or Histogram.of(f.ack_latency))


def render(figures: Figures, certs: Iterable[CertificateInfo], destinations: Iterable[str] = ()) -> bytes:
    """The Prometheus text exposition of one snapshot; ``destinations``: the configured destinations' keys
    (``transports.configured_destinations``), reported up unless the store says they are down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(figures, certs, destinations))
    return generate_latest(registry)
