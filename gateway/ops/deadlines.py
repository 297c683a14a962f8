"""The chain's deadlines per dossier (source section VI), computed from the messages themselves.

Calendar: Dutch working days in Europe/Amsterdam. The holiday set is ``holidays.NL`` with the
categories PUBLIC and OPTIONAL, i.e. the days of the Algemene termijnenwet: New Year, Good Friday,
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

from collections.abc import Iterable
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


@lru_cache(maxsize=64)
def _holidays(year: int) -> holidays.HolidayBase:
    return holidays.NL(years=year, categories=(holidays.PUBLIC, holidays.OPTIONAL))


def holiday_name(d: date) -> str | None:
    return _holidays(d.year).get(d)


def is_working_day(d: date) -> bool:
    return d.weekday() < 5 and holiday_name(d) is None


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
    events = list(events)
    superseded = {e.supersedes for e in events if e.supersedes}
    facts = Facts()
    for e in sorted(events, key=lambda e: e.created_at, reverse=True):
        if e.facts is not None and e.message_id not in superseded:
            facts = facts.merged(e.facts)
    for e in sorted(events, key=lambda e: e.created_at, reverse=True):  # superseded ones fill what is left
        if e.facts is not None and e.message_id in superseded:
            facts = facts.merged(e.facts)
    return facts


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


def _rows(conn, dossiers: list[str] | None):
    """Outbound and inbound rows, each with its ``deadline_facts`` row when there is one (outer join;
    ``has_facts`` None: a message stored before migration 4, whose facts only its XML holds)."""
    from sqlalchemy import and_, select

    from gateway.store.schema import deadline_facts, inbound, messages

    m, i, d = messages.c, inbound.c, deadline_facts.c
    dates = [d[name] for name in _FACT_COLUMNS]
    out_q = (select(m.message_id, m.type, m.dossier, m.created_at, m.sent_at, m.delivered_at, m.acknowledged_at,
                    m.supersedes, m.spool_path, m.sender, m.recipient, d.message_id.label("has_facts"), *dates)
             .select_from(messages.outerjoin(deadline_facts, and_(d.direction == "outbound",
                                                                  d.message_id == m.message_id)))
             .where(m.state != "cancelled"))
    in_q = (select(i.message_id, i.type, i.dossier, i.received_at, i.inbox_path, i.sender,
                   d.message_id.label("has_facts"), *dates)
            .select_from(inbound.outerjoin(deadline_facts, and_(d.direction == "inbound",
                                                                d.message_id == i.message_id)))
            .where(i.outcome == "accepted", i.dossier.is_not(None)))
    if dossiers is not None:
        out_q, in_q = out_q.where(m.dossier.in_(dossiers)), in_q.where(i.dossier.in_(dossiers))
    return conn.execute(out_q).all(), conn.execute(in_q).all()


def _facts(row, path: str | None) -> Facts | None:
    """The stored facts of a row; the XML's only for a message stored before they were kept."""
    if row.has_facts is not None:
        return Facts(row.start, row.status, row.expected_release, row.verdict, row.release_day)
    return read_facts(path)


def _split(a: str | None, b: str | None) -> tuple[str | None, str | None]:
    """(the PI, the municipality) of an exchange between parties ``a`` and ``b``."""
    pi = next((p for p in (a, b) if p and p.startswith("pi:")), None)
    return pi, next((p for p in (a, b) if p and p != pi), None)


async def load_events(store, dossiers: Iterable[str] | None = None) -> dict[str, list[Event]]:
    """Every message per dossier (outbound not cancelled, inbound accepted), with the facts kept for it."""
    import asyncio

    wanted = None if dossiers is None else list(dossiers)
    outbound, inbound_rows = await store.read_query(_rows, wanted)

    def build() -> dict[str, list[Event]]:
        by: dict[str, list[Event]] = {}
        for r in outbound:
            pi, town = _split(r.sender, r.recipient)
            by.setdefault(r.dossier, []).append(Event(
                r.message_id, r.type, r.created_at, r.sent_at, r.acknowledged_at or r.delivered_at, r.supersedes,
                _facts(r, r.spool_path), pi, town, r.acknowledged_at is not None))
        for r in inbound_rows:
            pi, town = _split(r.sender, None)
            by.setdefault(r.dossier, []).append(Event(
                r.message_id, r.type or "", r.received_at, r.received_at, r.received_at, None,
                _facts(r, r.inbox_path), pi, town, True))
        return by

    return await asyncio.to_thread(build)


async def load_dossiers(store, today: date, dossiers: Iterable[str] | None = None) -> list[Dossier]:
    """Each dossier's chain with due dates and whether they were met, sorted by dossier reference."""
    import asyncio

    events = await load_events(store, dossiers)
    # in a thread: at a million messages this is seconds of Python the event loop must not wait for
    return await asyncio.to_thread(lambda: [dossier_steps(d, evs, today) for d, evs in sorted(events.items())])


__all__ = ["AMSTERDAM", "DUE_SOON_DAYS", "STEPS", "Dossier", "Event", "Facts", "Step", "add_working_days",
           "current_facts", "dossier_steps", "facts_of", "holiday_name", "is_working_day", "local_date",
           "long_stay", "load_dossiers", "read_facts", "step_of"]
