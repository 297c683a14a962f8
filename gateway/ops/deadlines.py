"""The chain's deadlines per dossier (source section VI), computed from the messages themselves.

Calendar: Dutch working days in Europe/Amsterdam. The holiday set is ``holidays.NL`` (its module alone)
with the categories PUBLIC and OPTIONAL, i.e. the days of the Algemene termijnenwet: New Year, Good Friday,
Easter, King's Day (the Saturday before when 27 April is a Sunday), Liberation Day (5 May) EVERY
year, Ascension, Whitsun and Christmas. The package's PUBLIC set alone counts 5 May only in
lustrum years; statutory time limits count it every year, so a deadline never falls on it.

Facts (start of detention, expected release, verdict date, release day) are read from the
message when it is validated, at pick-up and at intake, and kept in the store's ``deadline_facts``
table: the plaintext copies (outbound spool, inbound inbox) do not last. Only a message stored
before that table (migration 4) has its facts read from its XML, as long as a copy exists. The
times come from the store. A superseding message (``vervangt``)
replaces the one it names: the facts are taken from the newest messages that are not superseded,
so a new start or release date moves the due dates.
"""

from __future__ import annotations

import heapq
import importlib.util
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
from lxml import etree

from gateway.messages.catalogue import BY_ROOT_TAG
from gateway.messages.rules import LONG_STAY_MONTHS, add_months
from gateway.messages.safe_parse import InputRejected, parse_message_bytes

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
#: open steps due within this many calendar days are "due-soon" (an alert before the miss)
DUE_SOON_DAYS = 2
#: the chain's steps, in order
STEPS = ("meldingsbericht", "gemeenteblad", "basisdocument", "overdrachtsdocument", "ontslagbericht")
#: the messages that end a dossier's chain: the detainee is released
RELEASES = ("ontslagbericht", "spoedontslagbericht")
#: how long the watch (the alert gauges, the dashboard's list, the daemon's memory) keeps what is history: a
#: step done late is an alert this many days after it was done; a released dossier (``RELEASES``) leaves the
#: alerts altogether this many days after the release. The dossier's own page shows its chain whatever its age.
ALERT_KEPT_DAYS = 92


def _netherlands() -> type[holidays.HolidayBase]:
    """The package's Netherlands class, loaded from its own module alone. ``holidays.NL`` (and any import
    of ``holidays.countries.netherlands``) runs ``holidays/countries/__init__.py``, which imports all ~250
    countries' modules: some 8-10 MB of memory for the life of the daemon, for one calendar."""
    name = "_gateway_holidays_nl"
    if name not in sys.modules:
        path = Path(holidays.__file__).parent / "countries" / "netherlands.py"
        if not path.is_file():  # another layout of the package: the same class, at the larger cost
            return holidays.NL
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].Netherlands


@lru_cache(maxsize=64)
def _holidays(year: int) -> holidays.HolidayBase:
    return _netherlands()(years=year, categories=(holidays.PUBLIC, holidays.OPTIONAL))


def holiday_name(d: date) -> str | None:
    return _holidays(d.year).get(d)


@lru_cache(maxsize=8192)
def is_working_day(d: date) -> bool:
    return d.weekday() < 5 and holiday_name(d) is None


@lru_cache(maxsize=16384)  # dossiers share start and receipt days: at scale most calls are repeats
def add_working_days(start: date, n: int) -> date:
    """The n-th working day after ``start`` (``start`` itself never counts)."""
    d = start
    while n > 0:
        d += timedelta(days=1)
        if is_working_day(d):
            n -= 1
    return d


def local_date(at: datetime) -> date:
    return at.astimezone(AMSTERDAM).date()


@dataclass(frozen=True, slots=True)
class Facts:
    """Dates a message states about the detention (None: not stated)."""

    start: date | None = None  #: aanvangDetentie
    status: str | None = None  #: preventiefGehecht | veroordeeld
    expected_release: date | None = None  #: einddatumDetentie
    verdict: date | None = None  #: datumVonnis
    release_day: date | None = None  #: ontslagdatum (ontslagbericht)

    def merged(self, older: Facts) -> Facts:
        """These facts, with what they leave out taken from ``older``."""
        return Facts(*(mine if mine is not None else theirs
                       for mine, theirs in zip(_astuple(self), _astuple(older))))


def _astuple(f: Facts) -> tuple:
    return (f.start, f.status, f.expected_release, f.verdict, f.release_day)


def read_facts(path: str | Path | None) -> Facts | None:
    """The facts of a message file, or None when there is no readable, known message there.

    Only for messages stored before the ``deadline_facts`` table (migration 4): newer ones have a row."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        root = parse_message_bytes(data).getroot()
    except (OSError, InputRejected, etree.LxmlError):
        return None
    if root.tag not in BY_ROOT_TAG:
        return None
    return facts_of(root)


def _children(el: etree._Element, ns: int) -> dict[str, etree._Element]:
    return {child.tag[ns:]: child for child in el if isinstance(child.tag, str)}


def facts_of(root: etree._Element) -> Facts:
    """The facts a parsed message states (the validation worker calls this on the tree it validated)."""
    ns = root.tag.index("}") + 1 if root.tag.startswith("{") else 0
    top = _children(root, ns)
    detentie = top.get("detentie")
    parts = _children(detentie, ns) if detentie is not None else top

    def day(name: str, where: dict) -> date | None:
        el = where.get(name)
        return date.fromisoformat(el.text.strip()) if el is not None and el.text else None

    status = parts.get("status")
    return Facts(start=day("aanvangDetentie", parts), status=status.text.strip() if status is not None else None,
                 expected_release=day("einddatumDetentie", parts), verdict=day("datumVonnis", parts),
                 release_day=day("ontslagdatum", top))


@dataclass(frozen=True, slots=True)
class Event:
    """One message of a dossier, as the store knows it (outbound or inbound)."""

    message_id: str
    type: str
    created_at: datetime
    done_at: datetime | None  #: outbound: sent; inbound: received (None: not sent yet)
    received_at: datetime | None  #: when the other side had it: acknowledged/delivered, or inbound received
    supersedes: str | None = None
    facts: Facts | None = None
    party: str | None = None  #: the PI of the exchange (e.g. "pi:PI-VUGHT")
    municipality: str | None = None  #: the municipality of the exchange (e.g. "gemeente:0599")
    receipted: bool = False  #: acknowledged by a signed receipt (outbound) / accepted (inbound)


@dataclass(frozen=True, slots=True)
class Step:
    step: str  #: the message type of the step
    due: date | None
    done_at: datetime | None
    status: str  #: met | late | open | due-soon | overdue | unknown | n/a
    basis: str  #: what the due date was computed from (no personal data: dates and rules only)
    message_id: str | None = None  #: the message that did (or first did) the step

    @property
    def alert(self) -> bool:
        return self.status in ("overdue", "due-soon", "late")


@dataclass(frozen=True, slots=True)
class Dossier:
    dossier: str
    steps: tuple[Step, ...]
    facts: Facts = field(default_factory=Facts)

    @property
    def overdue(self) -> bool:
        return any(s.status in ("overdue", "late") for s in self.steps)


def current_facts(events: Iterable[Event]) -> Facts:
    """Facts of the newest messages not superseded by another; each fact from the newest that states it."""
    events = sorted(events, key=lambda e: e.created_at, reverse=True)
    superseded = {e.supersedes for e in events if e.supersedes}
    values: list = [None] * 5
    # the ones not superseded first, newest first; superseded ones fill what is left
    current = [e for e in events if e.message_id not in superseded]
    for e in current + [e for e in events if e.message_id in superseded]:
        if e.facts is not None:
            for k, v in enumerate(_astuple(e.facts)):
                if values[k] is None:
                    values[k] = v
    return Facts(*values)


def long_stay(f: Facts) -> bool | None:
    """Sentence remainder of 4 months or more (from the verdict, else from the start); None: not known yet."""
    if f.status == "preventiefGehecht":
        return False
    if f.status != "veroordeeld" or f.expected_release is None:
        return None
    since = f.verdict or f.start
    if since is None:
        return None
    return f.expected_release >= add_months(since, LONG_STAY_MONTHS)


def dossier_steps(dossier: str, events: Iterable[Event], today: date) -> Dossier:
    events = list(events)
    facts = current_facts(events)
    by_type: dict[str, list[Event]] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e)

    def first_done(mtype: str) -> Event | None:
        done = [e for e in by_type.get(mtype, ()) if e.done_at is not None]
        return min(done, key=lambda e: e.done_at) if done else None

    melding = by_type.get("meldingsbericht", [])
    melding_received = min((e.received_at for e in melding if e.received_at is not None), default=None)

    steps: list[Step] = []

    def add(mtype: str, due: date | None, basis: str, applicable: bool | None = True) -> None:
        done = first_done(mtype)
        if applicable is False:
            status = "n/a"
        else:
            status = _status(due, done.done_at if done else None, today)
        steps.append(Step(mtype, due if applicable is not False else None, done.done_at if done else None, status,
                          basis, done.message_id if done else None))

    if facts.start is not None:
        add("meldingsbericht", add_working_days(facts.start, 2), f"start of detention {facts.start} + 2 working days")
    else:
        add("meldingsbericht", None, "start of detention not known")
    if melding_received is not None:
        received = local_date(melding_received)
        add("gemeenteblad", received + timedelta(days=5), f"melding received {received} + 5 days")
        add("basisdocument", add_working_days(received, 10), f"intake (melding received {received}) + 10 working days")
    else:
        add("gemeenteblad", None, "melding not received yet")
        add("basisdocument", None, "melding not received yet")
    ls = long_stay(facts)
    if ls is False:
        add("overdrachtsdocument", None, "not a long-stay detainee", applicable=False)
    elif ls and facts.expected_release is not None:
        due = facts.expected_release - timedelta(weeks=8)
        add("overdrachtsdocument", due, f"expected release {facts.expected_release} - 8 weeks")
    else:
        add("overdrachtsdocument", None, "long stay not known (no sentence and end date)")
    release = facts.release_day or facts.expected_release
    if release is not None:
        add("ontslagbericht", release, f"release day {release}")
    else:
        add("ontslagbericht", None, "release day not known")
    return Dossier(dossier, tuple(steps), facts)


def _status(due: date | None, done_at: datetime | None, today: date) -> str:
    if done_at is not None:
        if due is None:
            return "met"
        return "met" if local_date(done_at) <= due else "late"
    if due is None:
        return "unknown"
    if due < today:
        return "overdue"
    return "due-soon" if (due - today).days <= DUE_SOON_DAYS else "open"


def step_of(dossier: Dossier, mtype: str) -> Step | None:
    return next((s for s in dossier.steps if s.step == mtype), None)


_FACT_COLUMNS = ("start", "status", "expected_release", "verdict", "release_day")


def _queries(dossiers: list[str] | None):
    """Outbound and inbound rows in dossier order, each with its ``deadline_facts`` row when there is one
    (outer join; the first date column None: a message stored before migration 4, whose XML holds its facts)."""
    from sqlalchemy import and_, select

    from gateway.store.schema import deadline_facts, inbound, messages

    m, i, d = messages.c, inbound.c, deadline_facts.c
    dates = [d[name] for name in _FACT_COLUMNS]
    out_q = (select(m.dossier, m.message_id, m.type, m.created_at, m.sent_at, m.delivered_at, m.acknowledged_at,
                    m.supersedes, m.spool_path, m.sender, m.recipient, d.message_id, *dates)
             .select_from(messages.outerjoin(deadline_facts, and_(d.direction == "outbound",
                                                                  d.message_id == m.message_id)))
             .where(m.state != "cancelled").order_by(m.dossier))
    in_q = (select(i.dossier, i.message_id, i.type, i.received_at, i.inbox_path, i.sender, d.message_id, *dates)
            .select_from(inbound.outerjoin(deadline_facts, and_(d.direction == "inbound",
                                                                d.message_id == i.message_id)))
            .where(i.outcome == "accepted", i.dossier.is_not(None)).order_by(i.dossier))
    if dossiers is not None:
        wanted = padded(dossiers)
        out_q, in_q = out_q.where(m.dossier.in_(wanted)), in_q.where(i.dossier.in_(wanted))
    return out_q, in_q


def padded(refs: list[str]) -> list[str]:
    """``refs`` lengthened to the next power of two by repeating its last one (an IN list's duplicates
    change nothing): so an IN list of any length is one of a few statement texts. SQLite prepares, and the
    driver caches (128 per connection), one statement per text: with one per length, the reader
    connections grew ~50 KB per length the watch's rounds happened to have (measured: 4.4 MB after 100
    lengths, and still growing in the soak's second half)."""
    if not refs:
        return refs
    size = 1 << (len(refs) - 1).bit_length()
    return [*refs, *[refs[-1]] * (size - len(refs))]


def _split(a: str | None, b: str | None) -> tuple[str | None, str | None]:
    """(the PI, the municipality) of an exchange between parties ``a`` and ``b``."""
    pi = next((p for p in (a, b) if p and p.startswith("pi:")), None)
    return pi, next((p for p in (a, b) if p and p != pi), None)


def event_stream(conn, dossiers: list[str] | None = None) -> Iterator[tuple[str, list[Event]]]:
    """(dossier, its messages) in dossier order, outbound not cancelled and inbound accepted, each with the
    facts kept for it; on a reader connection (``store.read_query``), in chunks: one dossier's events at a
    time are in memory, not a million rows (measured: the whole list at 200k messages took 700 MB)."""
    parties: dict[tuple, tuple] = {}  # a handful of (sender, recipient) pairs

    def split(a: str | None, b: str | None) -> tuple[str | None, str | None]:
        got = parties.get((a, b))
        if got is None:
            got = parties[(a, b)] = _split(a, b)
        return got

    def stored(values: tuple, path: str | None) -> Facts | None:
        if values[0] is None:  # no deadline_facts row: a message from before migration 4
            return read_facts(path)
        return Facts(*values[1:])

    def outbound(rows) -> Iterator[tuple[str, Event]]:
        for (dossier, mid, mtype, created, sent, delivered, acked, supersedes, spool, sender, recipient,
             *values) in rows:
            pi, town = split(sender, recipient)
            yield dossier, Event(mid, mtype, created, sent, acked or delivered, supersedes,
                                 stored(tuple(values), spool), pi, town, acked is not None)

    def inbound(rows) -> Iterator[tuple[str, Event]]:
        for dossier, mid, mtype, received, inbox_path, sender, *values in rows:
            pi, town = split(sender, None)
            yield dossier, Event(mid, mtype or "", received, received, received, None,
                                 stored(tuple(values), inbox_path), pi, town, True)

    out_q, in_q = _queries(dossiers)
    out_rows = conn.execute(out_q.execution_options(yield_per=5000))
    in_rows = conn.execute(in_q.execution_options(yield_per=5000))
    try:
        merged = heapq.merge(outbound(out_rows), inbound(in_rows), key=lambda pair: pair[0])
        for dossier, pairs in itertools.groupby(merged, key=lambda pair: pair[0]):
            yield dossier, [event for _, event in pairs]
    finally:
        out_rows.close()
        in_rows.close()


async def load_events(store, dossiers: Iterable[str] | None = None) -> dict[str, list[Event]]:
    """Every message per dossier (outbound not cancelled, inbound accepted), with the facts kept for it."""
    wanted = None if dossiers is None else list(dossiers)
    return await store.read_query(lambda conn: dict(event_stream(conn, wanted)))


async def load_dossiers(store, today: date, dossiers: Iterable[str] | None = None,
                        keep: Callable[[Dossier], bool] | None = None) -> list[Dossier]:
    """Each dossier's chain with due dates and whether they were met, sorted by dossier reference; only those
    ``keep`` says yes to, when given (decided as they are read: the others are never all in memory at once)."""
    wanted = None if dossiers is None else list(dossiers)

    def read(conn) -> list[Dossier]:
        # on the reader thread, one dossier at a time: at a million messages this is seconds of Python
        chains = (dossier_steps(d, evs, today) for d, evs in event_stream(conn, wanted))
        return [d for d in chains if keep is None or keep(d)]
    return await store.read_query(read)


def released_on(events: Iterable[Event]) -> date | None:
    """The day of the dossier's last release message (``RELEASES``, sent or received), or None."""
    done = [e.done_at for e in events if e.type in RELEASES and e.done_at is not None]
    return local_date(max(done)) if done else None


def current_alerts(d: Dossier, events: Iterable[Event], today: date) -> tuple[tuple[str, str], ...]:
    """The dossier's alerts the watch keeps, as (status, step type) pairs: its steps' alerts (``Step.alert``)
    but what is history (``ALERT_KEPT_DAYS``): none for a dossier released longer ago, and no step done late
    longer ago. So the watch's state is bounded by the dossiers in custody and the recent past, not by every
    dossier ever seen (at ~34,000 detentions a year a daemon that runs for years would otherwise keep each
    dossier that ever had a step done late, and its released dossiers' steps that never came)."""
    since = today - timedelta(days=ALERT_KEPT_DAYS)
    released = released_on(events)
    if released is not None and released < since:
        return ()
    return tuple((s.status, s.step) for s in d.steps
                 if s.alert and not (s.status == "late" and local_date(s.done_at) < since))


def alerts_tx(conn, today: date, dossiers: list[str] | None = None) -> dict[str, tuple[tuple[str, str], ...]]:
    """Per dossier with an alert, its alerting steps as (status, step type) pairs (``current_alerts``); on a
    reader connection. What the metrics count, without keeping any dossier's chain in memory."""
    out = {}
    for dossier, events in event_stream(conn, dossiers):
        alerts = current_alerts(dossier_steps(dossier, events, today), events, today)
        if alerts:
            out[dossier] = _ALERT_PAIRS.setdefault(alerts, alerts)
    return out


#: each distinct combination of alerts once for the daemon's life, whichever round computed it: the watch
#: keeps a dossier's alerts for months, and a tuple of its own per alerting dossier was ~0.1 KiB each. Bounded:
#: each of the five steps has at most one of the three alert statuses (at most 4 ** 5 combinations; a few in use)
_ALERT_PAIRS: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}


__all__ = ["ALERT_KEPT_DAYS", "AMSTERDAM", "DUE_SOON_DAYS", "RELEASES", "STEPS", "Dossier", "Event", "Facts", "Step",
           "add_working_days", "alerts_tx", "current_alerts", "current_facts", "dossier_steps", "event_stream",
           "facts_of", "holiday_name", "is_working_day", "local_date", "long_stay", "load_dossiers", "padded",
           "read_facts", "released_on", "step_of"]
