"""The operator's commands: status, messages (list/show/retry/cancel), routes check, dossiers, report mi.

Registered on the main app by ``register`` (``gateway/cli.py``). Every command reads the store
through aggregate queries where it summarises (``status`` must stay fast on a big store), prints
ids, types, party codes, states and reasons only (never content), colours only on a terminal
(rich decides), and takes ``--json`` for scripts. Exit codes as in ``gateway/cli.py``: 0 good,
1 something found wrong (or refused), 2 usage.
"""

from __future__ import annotations

import asyncio
import csv
import getpass
import io
import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlparse

import structlog
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.ops.deadlines import AMSTERDAM, Dossier, load_dossiers, local_date, step_of

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
DEFAULT_WARN_DAYS = "60,30,7"
#: states an operator may cancel from (the store's edges into ``cancelled``)
CANCELLABLE = ("received", "held", "queued", "retry_wait")

ConfigOption = Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")]
WarnOption = Annotated[str, typer.Option("--warn-days", help="Warn when a certificate expires within these days "
                                                            "(comma-separated; the largest is the window).")]
TypeOption = Annotated[Optional[str], typer.Option("--type", help="Only this message type.")]
PartyOption = Annotated[Optional[str], typer.Option("--party", help="Only messages from or to this party code "
                                                                    "(e.g. gemeente:0599, pi:PI-VUGHT).")]
SinceOption = Annotated[Optional[str], typer.Option("--since", help="Received at or after (ISO date or time; "
                                                                    "a date is midnight in Amsterdam).")]
UntilOption = Annotated[Optional[str], typer.Option("--until", help="Received before (ISO date or time).")]


# -- plumbing

def _config(config: Path):
    from gateway.cli import _config_or_exit

    return _config_or_exit(config)


def _with_store(cfg, work: Callable[[Any], Any]) -> Any:
    """Open the store, run ``await work(store)``, close it."""
    from gateway.cli import _open_store

    async def go():
        store = await _open_store(cfg)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _console() -> Console:
    # piped: wide enough that tables never cut an id or a reason (rich would take 80 columns)
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def _when(value: str | None, option: str) -> datetime | None:
    """An ISO date (midnight, Amsterdam) or an ISO time (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), time(), AMSTERDAM).astimezone(timezone.utc)
        at = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option} must be an ISO date or time, not {value!r}")
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _warn_days(value: str) -> list[int]:
    try:
        days = sorted({int(x) for x in value.split(",") if x.strip()}, reverse=True)
    except ValueError:
        days = []
    if not days or days[-1] < 0:
        raise typer.BadParameter(f"--warn-days must be whole days, e.g. {DEFAULT_WARN_DAYS}")
    return days


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _actor() -> str:
    return f"operator:{getpass.getuser()}"


def _route_key(party: str) -> str:
    return party.split(":", 1)[1] if ":" in party else party


# -- certificates

def _certificate_rows(cfg, now: datetime, warn: list[int]) -> list[dict[str, Any]]:
    """The own certificate and every route's: expiry, days left, and the warning level reached."""
    from cryptography import x509

    wanted = [("own", str(cfg.party.party), cfg.identity.cert)]
    wanted += [("route", key, route.certificate) for key, route in sorted(cfg.routes.items())]
    rows = []
    for kind, party, path in wanted:
        row: dict[str, Any] = {"kind": kind, "party": party, "not_after": None, "days_left": None, "level": None,
                               "problem": None}
        try:
            cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
        except (OSError, ValueError) as e:
            row["problem"] = f"cannot read the certificate: {type(e).__name__}"
            rows.append(row)
            continue
        left = cert.not_valid_after_utc - now
        row["not_after"] = cert.not_valid_after_utc
        row["days_left"] = left.days
        if left <= timedelta(0):
            row["level"], row["problem"] = "expired", "expired"
        elif cert.not_valid_before_utc > now:
            row["level"], row["problem"] = "not-yet-valid", "not valid yet"
        else:
            reached = [d for d in warn if left <= timedelta(days=d)]
            row["level"] = f"within {reached[-1]} days" if reached else None
        rows.append(row)
    return rows


# -- status

def _status_queries(conn, overdue_before: datetime) -> dict[str, Any]:
    """Aggregates only: never a row per message, whatever the store's size."""
    from sqlalchemy import func, select, text

    from gateway.store import State
    from gateway.store.breakers import open_breakers_tx
    from gateway.store.schema import message_counts, messages, pickups, recipient_activity

    m = messages.c
    # named, not "NOT IN (final)": the planner then searches the state index for the few open rows
    open_states = [s.value for s in State if s.value not in ("acknowledged", "cancelled", "rejected")]
    # SQLite keeps the counts and the last delivery per destination by trigger (store migration 5):
    # counting a million rows at each look took over a second
    kept = conn.dialect.name == "sqlite"
    if kept:
        c = message_counts.c
        counts_q = select(c.state, c.type, func.sum(c.n)).where(c.n > 0).group_by(c.state, c.type)
    else:
        counts_q = select(m.state, m.type, func.count()).group_by(m.state, m.type)
    counts = [dict(state=s, type=t, count=n) for s, t, n in conn.execute(counts_q.order_by("state", "type"))]
    rejected = conn.execute(select(func.count()).select_from(pickups).where(pickups.c.outcome == "rejected")).scalar()
    oldest_q = select(m.recipient, func.min(m.received_at), func.count()).where(m.state.in_(open_states)) \
        .group_by(m.recipient).order_by(func.min(m.received_at))
    if kept:  # SQLite's planner takes the 8 states for most rows and walks a recipient index over all of them
        oldest_q = text(str(oldest_q.compile(conn, compile_kwargs={"literal_binds": True})).replace(
            "FROM messages", "FROM messages INDEXED BY ix_messages_state_recipient_received", 1)) \
            .columns(m.recipient, m.received_at, m.attempts)
    oldest = [dict(destination=d, oldest_received_at=at, pending=n) for d, at, n in conn.execute(oldest_q)]
    stuck = [dict(state=s, reason=r, count=n) for s, r, n in conn.execute(
        select(m.state, m.reason, func.count()).where(m.state.in_(("held", "failed")))
        .group_by(m.state, m.reason).order_by(m.state, func.count().desc()))]
    overdue = conn.execute(select(func.count(), func.min(m.sent_at)).where(
        m.state.in_(("sent", "delivered")), m.sent_at <= overdue_before)).one()
    if kept:
        a = recipient_activity.c
        last_q = select(a.recipient, a.last_sent_at, a.last_acknowledged_at).where(a.last_sent_at.is_not(None))
    else:
        last_q = select(m.recipient, func.max(m.sent_at), func.max(m.acknowledged_at)) \
            .where(m.sent_at.is_not(None)).group_by(m.recipient)
    last = [dict(destination=d, last_sent_at=s, last_acknowledged_at=a) for d, s, a in
            conn.execute(last_q.order_by(last_q.selected_columns[0]))]
    # what the daemon's breakers last wrote: why messages wait in queued/retry_wait (first in the output)
    down = [b.as_dict() for b in open_breakers_tx(conn)]
    return dict(destinations_down=down, counts=counts, rejected_pickups=rejected, oldest_unacknowledged=oldest,
                held_and_failed=stuck, receipts_overdue=dict(count=overdue[0], oldest_sent_at=overdue[1]),
                last_delivery=last)


def status(config: ConfigOption, as_json: JsonOption = False,
           warn_days: WarnOption = DEFAULT_WARN_DAYS) -> None:
    """At a glance: destinations down, counts, oldest pending per destination, held/failed reasons, overdue
    receipts, expiring certificates, last delivery per route."""
    cfg = _config(config)
    warn = _warn_days(warn_days)
    now = _now()

    async def work(store):
        return await store.read_query(_status_queries, now - cfg.limits.receipt_overdue)

    data = _with_store(cfg, work)
    routes_by_party = {f"{'pi' if not k.isdigit() else 'gemeente'}:{k}": k for k in cfg.routes}
    for row in data["last_delivery"]:
        row["route"] = routes_by_party.get(row["destination"])
    data["certificates"] = _certificate_rows(cfg, now, warn)
    data["receipts_overdue"]["after"] = str(cfg.limits.receipt_overdue)
    if as_json:
        _emit_json(data)
        return
    out = _console()
    _print_destinations_down(out, data["destinations_down"], now)
    table = Table(title="Messages per state and type")
    for col in ("state", "type", "count"):
        table.add_column(col)
    for row in data["counts"]:
        table.add_row(row["state"], row["type"], str(row["count"]))
    table.add_row("rejected", "(pickups)", str(data["rejected_pickups"]))
    out.print(table)
    table = Table(title="Oldest not acknowledged, per destination")
    for col in ("destination", "oldest received", "pending"):
        table.add_column(col)
    for row in data["oldest_unacknowledged"]:
        table.add_row(row["destination"], _iso(row["oldest_received_at"]), str(row["pending"]))
    out.print(table)
    if data["held_and_failed"]:
        table = Table(title="Held and failed, by reason")
        for col in ("state", "reason", "count"):
            table.add_column(col)
        for row in data["held_and_failed"]:
            colour = "red" if row["state"] == "failed" else "yellow"
            table.add_row(f"[{colour}]{row['state']}[/]", escape(row["reason"] or ""), str(row["count"]))
        out.print(table)
    od = data["receipts_overdue"]
    style = "bold red" if od["count"] else "green"
    out.print(f"[{style}]receipts overdue (no receipt after {od['after']}): {od['count']}[/]"
              + (f", oldest sent {_iso(od['oldest_sent_at'])}" if od["count"] else ""))
    table = Table(title=f"Certificates (warning at {', '.join(map(str, warn))} days)")
    for col in ("kind", "party", "expires", "days left", "warning"):
        table.add_column(col)
    for row in data["certificates"]:
        flag = row["problem"] or row["level"] or ""
        table.add_row(row["kind"], row["party"], _iso(row["not_after"]),
                      "" if row["days_left"] is None else str(row["days_left"]),
                      f"[red]{escape(flag)}[/]" if flag else "[green]ok[/]")
    out.print(table)
    table = Table(title="Last delivery per route")
    for col in ("destination", "route", "last sent", "last acknowledged"):
        table.add_column(col)
    for row in data["last_delivery"]:
        table.add_row(row["destination"], row["route"] or "(no route)", _iso(row["last_sent_at"]),
                      _iso(row["last_acknowledged_at"]))
    out.print(table)


def _print_destinations_down(out: Console, down: list[dict[str, Any]], now: datetime) -> None:
    if not down:
        out.print("[green]destinations down: none[/]")
        return
    table = Table(title=f"[bold red]DESTINATIONS DOWN: {len(down)}[/] (their messages wait unsent; "
                        "one probe at a time tells when they are back)", title_justify="left")
    for col in ("destination", "down since", "failures", "next probe", "waiting", "reason"):
        table.add_column(col)
    for row in down:
        table.add_row(f"[bold red]{escape(row['destination'])}[/]",
                      f"{_iso(row['since'])} ({_ago(now - row['since'])})", str(row["failures"]),
                      _iso(row["next_probe_at"]), str(row["waiting"]), escape(row["reason"]))
    out.print(table)


def _ago(span: timedelta) -> str:
    minutes = max(0, int(span.total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes < 48 * 60 else f"{minutes // 1440} days"


def _iso(at: datetime | None) -> str:
    return at.astimezone(AMSTERDAM).isoformat(timespec="seconds") if at else "-"


# -- messages

def _message_dict(r) -> dict[str, Any]:
    return {"message_id": r.message_id, "type": r.type, "sender": r.sender, "recipient": r.recipient,
            "dossier": r.dossier, "state": r.state.value, "reason": r.reason, "successor": r.successor,
            "transport": r.transport, "attempts": r.attempts, "received_at": r.received_at,
            "sent_at": r.sent_at, "delivered_at": r.delivered_at, "acknowledged_at": r.acknowledged_at,
            "next_attempt_at": r.next_attempt_at, "supersedes": r.supersedes, "replies_to": r.replies_to}


async def _select(store, *, ids: list[str] | None, states: Iterable[str] | None, type_: str | None,
                  party: str | None, since: datetime | None, until: datetime | None, limit: int | None = None):
    """The messages named by id, or every one matching the filter (paged through, newest first)."""
    from gateway.store import State

    if ids:
        return [r for r in [await store.get(i) for i in ids] if r is not None]
    wanted = [State(s) for s in states] if states else None
    found, after = [], None
    while limit is None or len(found) < limit:
        page_size = 500 if limit is None else min(500, limit - len(found))
        page = await store.list(states=wanted, type=type_, party=party, since=since, until=until,
                                limit=page_size, after=after)
        found += page
        if len(page) < page_size:
            break
        after = page[-1].message_id
    return found


def messages_list(
    config: ConfigOption,
    state: Annotated[Optional[list[str]], typer.Option(help="Only these states (repeatable), e.g. held.")] = None,
    type_: TypeOption = None, party: PartyOption = None, since: SinceOption = None, until: UntilOption = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Messages with their state and reason (ids, types, parties: never content)."""
    from gateway.store import State

    cfg = _config(config)
    try:
        states = [State(s).value for s in state] if state else None
    except ValueError:
        raise typer.BadParameter(f"states are: {', '.join(s.value for s in State)}")
    start, end = _when(since, "--since"), _when(until, "--until")
    records = _with_store(cfg, lambda store: _select(store, ids=None, states=states, type_=type_, party=party,
                                                      since=start, until=end, limit=limit))
    if as_json:
        _emit_json([_message_dict(r) for r in records])
        return
    out = _console()
    for r in records:
        out.print(f"{r.message_id}  {r.type:20} {r.recipient:20} {r.state.value:12} {escape(r.reason or '')}")


def messages_show(
    config: ConfigOption,
    message_id: Annotated[str, typer.Argument(help="The message id (berichtId).")],
    as_json: JsonOption = False,
) -> None:
    """One message and its whole timeline: every transition (time, reason, attempt, remote reply) and receipts."""
    cfg = _config(config)

    async def work(store):
        record = await store.get(message_id)
        if record is None:
            return None
        return record, await store.timeline(message_id), await store.receipts(message_id)

    found = _with_store(cfg, work)
    if found is None:
        typer.echo(f"error: no message {message_id}", err=True)
        raise typer.Exit(EXIT_INVALID)
    record, timeline, receipts = found
    data = {"message": _message_dict(record),
            "timeline": [{"at": t.at, "from": t.from_state.value if t.from_state else None, "to": t.to_state.value,
                          "reason": t.reason, "attempt": t.attempt, "remote_reply": t.remote_reply,
                          "actor": t.actor} for t in timeline],
            "receipts": [{"at": r.at, "kind": r.kind, "verdict": r.verdict, "detail": r.detail} for r in receipts]}
    if as_json:
        _emit_json(data)
        return
    out = _console()
    msg = data["message"]
    out.print(f"[bold]{msg['message_id']}[/]  {msg['type']}  {msg['sender']} -> {msg['recipient']}  "
              f"dossier {escape(msg['dossier'])}")
    out.print(f"state: [bold]{msg['state']}[/]" + (f" ({escape(msg['reason'])})" if msg["reason"] else "")
              + f"  attempts: {msg['attempts']}")
    table = Table(title="Timeline")
    for col in ("at", "from", "to", "attempt", "reason", "remote reply", "actor"):
        table.add_column(col)
    for t in data["timeline"]:
        table.add_row(_iso(t["at"]), t["from"] or "-", t["to"], str(t["attempt"]), escape(t["reason"] or ""),
                      escape(t["remote_reply"] or ""), escape(t["actor"]))
    out.print(table)
    if data["receipts"]:
        table = Table(title="Receipts")
        for col in ("at", "kind", "verdict", "detail"):
            table.add_column(col)
        for r in data["receipts"]:
            table.add_row(_iso(r["at"]), r["kind"], r["verdict"], escape(r["detail"]))
        out.print(table)


def _act(cfg, *, verb: str, ids: list[str] | None, states: tuple[str, ...], type_: str | None, party: str | None,
         since: str | None, until: str | None, yes: bool, as_json: bool,
         apply: Callable[[Any, Any], Any]) -> None:
    """Select by ids or filter, confirm (a filter without ``--yes``), apply to each; exit 1 if any was refused."""
    if not ids and not any((type_, party, since, until)):
        raise typer.BadParameter(f"name message ids, or a filter (--type, --party, --since, --until) to {verb}")
    start, end = _when(since, "--since"), _when(until, "--until")

    async def work(store):
        chosen = await _select(store, ids=ids, states=None if ids else states, type_=type_, party=party,
                               since=start, until=end)
        unknown = sorted(set(ids or ()) - {r.message_id for r in chosen})
        if not ids and chosen and not yes:
            if as_json:
                return None, chosen, unknown  # scripts must say --yes
            prompt = f"{verb} {len(chosen)} message(s)?"
            if not await asyncio.to_thread(typer.confirm, prompt, err=True):
                return [], chosen, unknown
        results = []
        for r in _progress(chosen, f"{verb} messages", show=not as_json):
            results.append(await apply(store, r))
        return results, chosen, unknown

    results, chosen, unknown = _with_store(cfg, work)
    if results is None:
        typer.echo(f"error: {len(chosen)} message(s) match: add --yes to {verb} them from a script", err=True)
        raise typer.Exit(EXIT_USAGE)
    results = list(results) + [{"message_id": u, "ok": False, "detail": "unknown id"} for u in unknown]
    if as_json:
        _emit_json({"matched": len(chosen), "results": results})
    else:
        if not results:
            typer.echo("nothing done" if chosen else "no message matches")
        for r in results:
            typer.echo(f"{r['message_id']}: {r['detail']}")
    raise typer.Exit(EXIT_OK if all(r["ok"] for r in results) else EXIT_INVALID)


def _progress(items: list[Any], what: str, *, show: bool) -> Iterable[Any]:
    """A progress bar on stderr for long runs, on a terminal only (never in a script's output)."""
    if not show or len(items) < 20 or not sys.stderr.isatty():
        return items
    from rich.progress import track

    return track(items, description=what, console=Console(stderr=True), transient=True)


async def _retry_one(store, record) -> dict[str, Any]:
    from gateway.store import State, StoreError

    if record.state is not State.FAILED:
        return {"message_id": record.message_id, "ok": False, "detail": f"not failed ({record.state.value})"}
    try:
        await store.sealed(record.message_id)
    except StoreError:  # failed before it was sealed: routing and sealing must run again
        return {"message_id": record.message_id, "ok": False,
                "detail": "failed before sealing: nothing to resend (drop the file again)"}
    try:  # the same message id, a fresh count of attempts: the retry policy starts over
        await store.transition(record.message_id, State.QUEUED, reason="retry by operator", actor=_actor(),
                               expect=State.FAILED, attempts=0)
    except StoreError as e:
        return {"message_id": record.message_id, "ok": False, "detail": str(e)}
    log.info("operator.retry", message_id=record.message_id, type=record.type, recipient=record.recipient)
    return {"message_id": record.message_id, "ok": True, "detail": "queued"}


async def _cancel_one(store, record) -> dict[str, Any]:
    from gateway.store import State, StoreError

    if record.state.value not in CANCELLABLE:
        return {"message_id": record.message_id, "ok": False,
                "detail": f"cannot be cancelled in state {record.state.value}"}
    try:
        await store.transition(record.message_id, State.CANCELLED, reason="cancelled by operator", actor=_actor(),
                               expect=[State(s) for s in CANCELLABLE])
    except StoreError as e:
        return {"message_id": record.message_id, "ok": False, "detail": str(e)}
    log.info("operator.cancel", message_id=record.message_id, type=record.type, recipient=record.recipient)
    return {"message_id": record.message_id, "ok": True, "detail": "cancelled"}


YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
IdsArgument = Annotated[Optional[list[str]], typer.Argument(help="Message ids (or use a filter).", show_default=False)]


def messages_retry(config: ConfigOption, message_ids: IdsArgument = None, type_: TypeOption = None,
                   party: PartyOption = None, since: SinceOption = None, until: UntilOption = None,
                   yes: YesOption = False, as_json: JsonOption = False) -> None:
    """Send failed messages again (failed -> queued, the same message id and sealed bytes)."""
    _act(_config(config), verb="retry", ids=message_ids, states=("failed",), type_=type_, party=party,
         since=since, until=until, yes=yes, as_json=as_json, apply=_retry_one)


def messages_cancel(config: ConfigOption, message_ids: IdsArgument = None, type_: TypeOption = None,
                    party: PartyOption = None, since: SinceOption = None, until: UntilOption = None,
                    yes: YesOption = False, as_json: JsonOption = False) -> None:
    """Stop messages that were not sent yet (received, held, queued, retry_wait -> cancelled; final)."""
    _act(_config(config), verb="cancel", ids=message_ids, states=CANCELLABLE, type_=type_, party=party,
         since=since, until=until, yes=yes, as_json=as_json, apply=_cancel_one)


# -- routes

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _route_problems(cfg, secrets, key: str, route, now: datetime, window: int) -> tuple[list[str], dict[str, Any]]:
    from cryptography import x509

    from gateway.crypto.errors import CryptoError

    problems: list[str] = []
    info: dict[str, Any] = {"not_after": None, "days_left": None}
    parties = cfg.parties()
    on = local_date(now)
    reason = parties.municipality_problem(key, on) if key.isdigit() else parties.institution_problem(key)
    if reason:
        problems.append(f"party: {reason}")
    if route.transport == "email":
        if not _EMAIL.fullmatch(route.address):
            problems.append("address: not an e-mail address")
        if cfg.smtp is None:
            problems.append("transport: e-mail route but no [smtp] relay configured")
    else:
        url = urlparse(route.address)
        if url.scheme != "https" or not url.netloc:
            problems.append("address: a platform route needs an https URL")
        if cfg.as2 is None:
            problems.append("transport: platform route but no [as2] configured")
    try:
        cert = x509.load_pem_x509_certificates(Path(route.certificate).read_bytes())[0]
    except (OSError, ValueError) as e:
        problems.append(f"certificate: cannot be read ({type(e).__name__})")
        return problems, info
    info.update(not_after=cert.not_valid_after_utc, days_left=(cert.not_valid_after_utc - now).days)
    try:
        secrets.trust.check(cert, [], now, usage="encrypt")
    except CryptoError as e:
        problems.append(f"certificate: {e.code}: {e.message}")
    else:
        if cert.not_valid_after_utc - now <= timedelta(days=window):
            problems.append(f"certificate: expires within {window} days ({info['days_left']} left)")
    return problems, info


def routes_check(config: ConfigOption, as_json: JsonOption = False,
                 warn_days: WarnOption = DEFAULT_WARN_DAYS) -> None:
    """Every route: party in the registry, address form, transport configured, certificate trusted,
    not revoked and not expiring within the warning window. Exit 1 when anything is wrong."""
    from gateway.config import ConfigError

    cfg = _config(config)
    window = _warn_days(warn_days)[0]
    try:
        secrets = cfg.check_secrets()
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    now = _now()
    rows = []
    for key, route in sorted(cfg.routes.items()):
        problems, info = _route_problems(cfg, secrets, key, route, now, window)
        rows.append({"route": key, "transport": route.transport, "address": route.address, **info,
                     "ok": not problems, "problems": problems})
    bad = [r for r in rows if not r["ok"]]
    if as_json:
        _emit_json({"ok": not bad, "window_days": window, "routes": rows})
    else:
        out = _console()
        for r in rows:
            mark = "[green]OK[/]" if r["ok"] else "[bold red]WRONG[/]"
            out.print(f"{mark} {r['route']:15} {r['transport']:9} {escape(r['address'])}  expires "
                      f"{_iso(r['not_after'])}")
            for p in r["problems"]:
                out.print(f"    {escape(p)}")
        out.print(f"{len(rows) - len(bad)} of {len(rows)} routes in order")
    raise typer.Exit(EXIT_INVALID if bad else EXIT_OK)


# -- dossiers

def _dossier_dict(d: Dossier) -> dict[str, Any]:
    return {"dossier": d.dossier, "overdue": d.overdue,
            "steps": [{"step": s.step, "due": s.due, "done_at": s.done_at, "status": s.status, "basis": s.basis,
                       "message_id": s.message_id} for s in d.steps]}


_STATUS_STYLE = {"met": "green", "late": "red", "overdue": "bold red", "due-soon": "yellow", "open": "",
                 "unknown": "dim", "n/a": "dim"}


def dossiers(config: ConfigOption,
             overdue: Annotated[bool, typer.Option("--overdue", help="Only dossiers with a missed step.")] = False,
             dossier: Annotated[Optional[list[str]], typer.Option(help="Only these dossier references.")] = None,
             as_json: JsonOption = False) -> None:
    """Per dossier, each step of the chain with its due date (Dutch working days) and whether it was met."""
    cfg = _config(config)
    today = local_date(_now())
    keep = (lambda d: d.overdue) if overdue else None
    found = _with_store(cfg, lambda store: load_dossiers(store, today, dossier, keep))
    for d in found:
        for s in d.steps:
            if s.alert:
                log.warning("deadline.alert", dossier=d.dossier, step=s.step, status=s.status,
                            due=s.due.isoformat() if s.due else None)
    if as_json:
        _emit_json({"today": today, "dossiers": [_dossier_dict(d) for d in found]})
        return
    out = _console()
    for d in found:
        table = Table(title=f"dossier {escape(d.dossier)}")
        for col in ("step", "due", "done", "status", "basis"):
            table.add_column(col)
        for s in d.steps:
            style = _STATUS_STYLE.get(s.status, "")
            table.add_row(s.step, s.due.isoformat() if s.due else "-", _iso(s.done_at),
                          f"[{style}]{s.status}[/]" if style else s.status, escape(s.basis))
        out.print(table)
    if not found:
        out.print("no dossiers" + (" with a missed deadline" if overdue else ""))


# -- report mi

MI_COLUMNS = ("month", "pi", "municipality", "type", "sent", "on_time", "late", "deadline_unknown", "receipted")


def _sent_rows(conn, start: datetime, end: datetime):
    from sqlalchemy import select

    from gateway.store.schema import messages

    m = messages.c
    return conn.execute(select(m.message_id, m.type, m.dossier, m.sender, m.recipient, m.sent_at,
                               m.acknowledged_at).where(m.sent_at >= start, m.sent_at < end)).all()


def _purged_rows(conn, first_month: str, last_month: str):
    from sqlalchemy import select

    from gateway.store.schema import monthly_figures

    f = monthly_figures.c
    return conn.execute(select(f.month, f.type, f.sender, f.recipient, f.sent, f.acknowledged, f.on_time)
                        .where(f.direction == "out", f.month >= first_month, f.month <= last_month)).all()


async def mi_figures(store, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Messages sent in [start, end): counts per month (Amsterdam), PI, municipality and type; aggregates only.

    Months the retention purge has emptied come from its `monthly_figures` (their month is the UTC month
    the messages were received in; whether they were on time is unknown unless the purge judged it)."""
    rows = await store.read_query(_sent_rows, start, end)
    purged = await store.read_query(_purged_rows, start.strftime("%Y-%m"),
                                    (end - timedelta(microseconds=1)).strftime("%Y-%m"))
    chains = {d.dossier: d for d in await load_dossiers(store, local_date(_now()), {r.dossier for r in rows})}
    figures: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in rows:
        pi = r.sender if r.sender.startswith("pi:") else r.recipient
        town = r.recipient if pi == r.sender else r.sender
        key = (local_date(r.sent_at).strftime("%Y-%m"), pi, town, r.type)
        f = figures.setdefault(key, dict(zip(MI_COLUMNS, key)) | dict.fromkeys(MI_COLUMNS[4:], 0))
        f["sent"] += 1
        f["receipted"] += r.acknowledged_at is not None
        chain = chains.get(r.dossier)
        step = step_of(chain, r.type) if chain else None
        if step is None or step.due is None:
            f["deadline_unknown"] += 1
        elif local_date(r.sent_at) <= step.due:
            f["on_time"] += 1
        else:
            f["late"] += 1
    for p in purged:
        if not p.sent:
            continue
        pi = p.sender if p.sender.startswith("pi:") else p.recipient
        town = p.recipient if pi == p.sender else p.sender
        key = (p.month, pi, town, p.type)
        f = figures.setdefault(key, dict(zip(MI_COLUMNS, key)) | dict.fromkeys(MI_COLUMNS[4:], 0))
        f["sent"] += p.sent
        f["receipted"] += p.acknowledged
        f["on_time"] += p.on_time or 0
        f["deadline_unknown"] += p.sent - (p.on_time or 0)
    return [figures[k] for k in sorted(figures)]


def report_mi(config: ConfigOption,
              from_: Annotated[str, typer.Option("--from", help="First day (ISO date, Amsterdam).")],
              to: Annotated[str, typer.Option("--to", help="Last day, included (ISO date, Amsterdam).")],
              format_: Annotated[str, typer.Option("--format", help="csv | json")] = "csv",
              as_json: JsonOption = False) -> None:
    """Monitoring figures (source section VII, tab 12): messages sent, on time, receipted per month,
    PI and municipality. Aggregates only, never a person."""
    if as_json:
        format_ = "json"
    if format_ not in ("csv", "json"):
        raise typer.BadParameter("--format is csv or json")
    try:
        first, last = date.fromisoformat(from_), date.fromisoformat(to)
    except ValueError:
        raise typer.BadParameter("--from and --to are ISO dates (YYYY-MM-DD)")
    if last < first:
        raise typer.BadParameter("--to lies before --from")
    start = datetime.combine(first, time(), AMSTERDAM).astimezone(timezone.utc)
    end = datetime.combine(last + timedelta(days=1), time(), AMSTERDAM).astimezone(timezone.utc)
    cfg = _config(config)
    figures = _with_store(cfg, lambda store: mi_figures(store, start, end))
    if format_ == "json":
        _emit_json({"from": first, "to": last, "rows": figures})
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MI_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(figures)
    sys.stdout.write(buffer.getvalue())


# -- registration

def register(app: typer.Typer, messages_app: typer.Typer) -> None:
    """Add the operator's commands to the main app and its ``messages`` group."""
    app.command("status")(status)
    app.command("dossiers")(dossiers)
    routes_app = typer.Typer(no_args_is_help=True, help="Routes to the partners.")
    routes_app.command("check")(routes_check)
    app.add_typer(routes_app, name="routes")
    report_app = typer.Typer(no_args_is_help=True, help="Reports (aggregates only).")
    report_app.command("mi")(report_mi)
    app.add_typer(report_app, name="report")
    messages_app.command("list")(messages_list)
    messages_app.command("show")(messages_show)
    messages_app.command("retry")(messages_retry)
    messages_app.command("cancel")(messages_cancel)


__all__ = ["CANCELLABLE", "MI_COLUMNS", "dossiers", "messages_cancel", "messages_list", "messages_retry",
           "messages_show", "mi_figures", "register", "report_mi", "routes_check", "status"]
