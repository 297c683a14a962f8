"""The operator's web dashboard: aiohttp, server-rendered HTML, no JavaScript, nothing fetched from outside.

Pages: overview (states, last 24 hours, oldest pending, alerts), message search and timeline, held and
failed lists with retry/release/cancel (POST + CSRF token), routes and certificates, subject access
(officer only: ``gateway.ops.subjects``); ``/metrics``
(Prometheus), ``/healthz`` and ``/readyz``. Everything but the two health probes needs a login
(accounts: ``web_accounts.py``); ``/metrics`` also takes HTTP Basic for a scraper. Every page view and
every action is written to the audit trail with the operator's name (origin ``dashboard``).

No page shows personal data: the store holds ids, types, party codes, states and reasons only, and
no XML is read except by the message content view, which only the ``officer`` role may open.

Run standalone (``nazorg-gateway dashboard``) or inside the daemon (``serve_dashboard``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import re
import secrets as secrets_mod
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from cryptography import x509

from gateway.ops import metrics as metrics_mod
from gateway.ops.web_accounts import Account, load_accounts, verify_password
from gateway.pipeline.transports import configured_destinations
from gateway.store import IllegalTransition, StaleState, State, Store, StoreError

__all__ = ["SESSION_COOKIE", "make_dashboard", "serve_dashboard"]

log = structlog.get_logger(__name__)

SESSION_COOKIE = "nazorg_session"
LOGIN_COOKIE = "nazorg_login"
SESSION_IDLE = timedelta(minutes=30)
ORIGIN = "dashboard"
Clock = Callable[[], datetime]
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'")
_PUBLIC = frozenset({"/healthz", "/readyz", "/login"})


@dataclass
class Session:
    name: str
    role: str
    csrf: str
    expires: float
    flash: str | None = None


@dataclass
class Dashboard:
    """What the handlers share (one per application: no module-level state)."""

    config: Any  #: GatewayConfig
    store: Store
    secrets: Any  #: LoadedSecrets
    clock: Clock
    queued: Callable[[], None]
    sessions: dict[str, Session] = field(default_factory=dict)
    _sealer: Any = None

    def accounts(self) -> dict[str, Account]:
        return load_accounts(self.config.dashboard.accounts_file)

    def sealer(self):
        if self._sealer is None:
            from gateway.pipeline.sealer import Sealer

            certificates = {c: x509.load_pem_x509_certificate(r.certificate.read_bytes())
                            for c, r in self.config.routes.items()}
            self._sealer = Sealer(store=self.store, identity=self.secrets.identity, trust=self.secrets.trust,
                                  parties=self.config.parties(), routes=self.config.routes,
                                  certificates=certificates, queued=self.queued, clock=self.clock)
        return self._sealer

    async def audit(self, action: str, obj: str, result: str, actor: str) -> None:
        await self.store.audit(action=action, object=obj[:200], result=result[:500], origin=ORIGIN, actor=actor)


KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)
SESSION: web.RequestKey[Session] = web.RequestKey("session", Session)


def make_dashboard(config, store: Store, secrets, *, clock: Clock | None = None,
                   queued: Callable[[], None] = lambda: None) -> web.Application:
    """The dashboard as an application (``queued``: wakes the daemon's dispatcher after a release/retry)."""
    app = web.Application(middlewares=[_headers, _authenticate], client_max_size=64 * 1024)
    app[KEY] = Dashboard(config, store, secrets, clock or (lambda: datetime.now(timezone.utc)), queued)
    app.add_routes([
        web.get("/healthz", healthz), web.get("/readyz", readyz),
        web.get("/login", login_form), web.post("/login", login), web.post("/logout", logout),
        web.get("/", overview), web.get("/messages", search), web.get("/messages/{id}", message),
        web.get("/messages/{id}/content", message_content),
        web.post("/messages/{id}/{action:retry|release|cancel}", act),
        web.get("/held", held), web.get("/failed", failed), web.get("/routes", routes),
        web.get("/metrics", metrics),
        web.get("/subjects", subjects_page), web.post("/subjects", subjects_page),
    ])
    from gateway.ops.web_dossiers import add_routes as add_dossier_routes  # it uses this module's helpers

    add_dossier_routes(app)
    return app


async def serve_dashboard(config, store: Store, secrets, *, stop: asyncio.Event,
                          queued: Callable[[], None] = lambda: None, ready: asyncio.Event | None = None) -> None:
    """Serve on ``config.dashboard.listen`` until ``stop`` is set."""
    runner = web.AppRunner(make_dashboard(config, store, secrets, queued=queued), access_log=None)
    await runner.setup()
    host, port = config.dashboard.listen
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        log.info("dashboard.listening", host=host, port=port)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()


# -- middleware: headers, sessions, CSRF


@web.middleware
async def _headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        response = await handler(request)
    except web.HTTPException as e:  # redirects and refusals are raised: they get the headers too
        _secure_headers(e.headers)
        raise
    _secure_headers(response.headers)
    return response


def _secure_headers(headers) -> None:
    headers.setdefault("Content-Security-Policy", _CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cache-Control", "no-store")


def _session(request: web.Request) -> Session | None:
    dash = request.app[KEY]
    token = request.cookies.get(SESSION_COOKIE)
    session = dash.sessions.get(token) if token else None
    if session is None:
        return None
    if session.expires < time.monotonic():
        dash.sessions.pop(token, None)
        return None
    session.expires = time.monotonic() + SESSION_IDLE.total_seconds()
    return session


@web.middleware
async def _authenticate(request: web.Request, handler):
    if request.path in _PUBLIC or request.path == "/metrics":  # /metrics checks for itself (Basic or session)
        return await handler(request)
    session = _session(request)
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        raise web.HTTPForbidden(text="not logged in")
    if request.method == "POST":
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            await request.app[KEY].audit("dashboard.csrf", request.path, "refused", session.name)
            raise web.HTTPForbidden(text="the form is stale or forged (CSRF token): reload the page")
    request[SESSION] = session
    return await handler(request)


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Strict",
                        secure=request.secure)


# -- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#234;color:#fff;padding:.5em 1em;display:flex;gap:1em;align-items:center}
header a{color:#fff} header form{margin-left:auto}
main{padding:1em} table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top} .alert{background:#fee;border:1px solid #c00;padding:.5em;margin:.5em 0}
.ok{background:#efe;border:1px solid #0a0;padding:.5em;margin:.5em 0} form.inline{display:inline}
"""


def _page(title: str, body: str, session: Session | None, status: int = 200) -> web.Response:
    nav = ""
    if session is not None:
        nav = ("<a href='/'>Overview</a><a href='/messages'>Messages</a><a href='/held'>Held</a>"
               "<a href='/failed'>Failed</a><a href='/dossiers'>Dossiers</a>"
               "<a href='/routes'>Routes &amp; certificates</a>"
               + ("<a href='/subjects'>Subject access</a>" if session.role == "officer" else "") +
               f"<form method='post' action='/logout'>{_csrf(session)}<span>{escape(session.name)} "
               f"({escape(session.role)})</span> <button>Log out</button></form>")
    flash = ""
    if session is not None and session.flash:
        flash, session.flash = f"<p class='ok' id='flash'>{escape(session.flash)}</p>", None
    html = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)} · nazorg gateway"
            f"</title><style>{_STYLE}</style></head><body><header><strong>nazorg gateway</strong>{nav}</header>"
            f"<main><h1>{escape(title)}</h1>{flash}{body}</main></body></html>")
    return web.Response(text=html, content_type="text/html", status=status)


def _csrf(session: Session) -> str:
    return f"<input type='hidden' name='csrf' value='{escape(session.csrf)}'>"


def _table(headers: list[str], rows: list[list[str]], table_id: str = "") -> str:
    """Cells are HTML already (escape when building them)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body or ''}</tbody></table>" + (
        "" if rows else "<p>None.</p>")


def _when(at: datetime | None) -> str:
    return "" if at is None else escape(at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _link(mid: str) -> str:
    return f"<a href='/messages/{escape(mid)}'>{escape(mid)}</a>"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- health (no login)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers and the outbox can be listed."""
    dash = request.app[KEY]
    problems = []
    try:
        await asyncio.wait_for(dash.store.next_due(), 5)
    except Exception as e:  # any failure means not ready; the probe says which part
        problems.append(f"store: {type(e).__name__}")
    outbox = dash.config.folders.outbox
    try:
        await asyncio.to_thread(lambda: next(os.scandir(outbox), None))
    except OSError as e:
        problems.append(f"outbox: {e.strerror}")
    if problems:
        return web.Response(text="not ready\n" + "\n".join(problems) + "\n", status=503)
    return web.Response(text="ready\n")


# -- login


async def login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    token = secrets_mod.token_urlsafe(24)
    nxt = request.query.get("next", "/") if request.method == "GET" else "/"
    body = (f"{f'<p class=alert>{escape(error)}</p>' if error else ''}"
            "<form method='post' action='/login'>"
            f"<input type='hidden' name='login_token' value='{token}'>"
            f"<input type='hidden' name='next' value='{escape(nxt)}'>"
            "<p><label>Name <input name='name' id='name' autocomplete='username' required></label></p>"
            "<p><label>Password <input name='password' id='password' type='password' "
            "autocomplete='current-password' required></label></p><p><button id='login'>Log in</button></p></form>")
    response = _page("Log in", body, None, status)
    _set_cookie(request, response, LOGIN_COOKIE, token, 600)
    return response


#: where a login may lead: a path of printable ASCII, not starting "//" or "/\\" (a browser reads "\\" as "/"
#: and drops tabs and line breaks, so "/\\host" and "/<tab>/host" would be another host)
_LOCAL_PATH = re.compile(r"/(?![/\\])[!-\[\]-~]*")


async def login(request: web.Request) -> web.StreamResponse:
    dash = request.app[KEY]
    form = await request.post()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(str(form.get("login_token", "")), cookie):
        return await login_form(request, "The login form expired: try again.", 403)
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
    account = dash.accounts().get(name)
    ok = account is not None and await asyncio.to_thread(verify_password, password, account.password_hash)
    if not ok:  # an unknown name is not recorded: it may be a password typed in the wrong field
        await dash.audit("dashboard.login", "dashboard", "refused", name if account is not None else "(unknown)")
        log.warning("dashboard.login_refused")
        await asyncio.sleep(0.5)  # slows guessing; the scrypt hash costs the rest
        return await login_form(request, "Wrong name or password.", 401)
    token = secrets_mod.token_urlsafe(32)
    now = time.monotonic()
    for old in [t for t, x in dash.sessions.items() if x.expires < now]:
        del dash.sessions[old]
    dash.sessions[token] = Session(account.name, account.role, secrets_mod.token_urlsafe(32),
                                   time.monotonic() + SESSION_IDLE.total_seconds())
    await dash.audit("dashboard.login", "dashboard", "ok", account.name)
    nxt = str(form.get("next", "/"))
    if not _LOCAL_PATH.fullmatch(nxt):  # only a path on this dashboard: no "//host", "/\\host", tabs, line breaks
        nxt = "/"
    response = web.HTTPSeeOther(nxt)
    _set_cookie(request, response, SESSION_COOKIE, token, int(SESSION_IDLE.total_seconds()))
    response.del_cookie(LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    dash = request.app[KEY]
    session: Session = request[SESSION]
    dash.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
    await dash.audit("dashboard.logout", "dashboard", "ok", session.name)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def _viewed(request: web.Request, obj: str) -> Session:
    session: Session = request[SESSION]
    await request.app[KEY].audit("dashboard.view", obj, "ok", session.name)
    return session


# -- pages


async def overview(request: web.Request) -> web.Response:
    session = await _viewed(request, "overview")
    dash = request.app[KEY]
    now = dash.clock()
    f = await metrics_mod.gather(dash.store, now)
    counts = f.by_state()
    state_rows = [[escape(s.value), str(n)] for s, n in counts.items()]
    overdue = await dash.store.sent_without_receipt(now - dash.config.limits.receipt_overdue)
    certs = metrics_mod.certificates(dash.secrets.identity.cert, dash.config.routes, now)
    alerts = [f"destination {escape(b.destination)} is <strong>down</strong> since {_when(b.since)}: "
              f"{b.waiting} message(s) wait for it" for b in f.destinations_down]
    if counts[State.HELD]:
        alerts.append(f"<a href='/held'>{counts[State.HELD]} held</a>: waiting for an operator")
    if counts[State.FAILED]:
        alerts.append(f"<a href='/failed'>{counts[State.FAILED]} failed</a>: retry or investigate")
    if overdue:
        alerts.append(f"{len(overdue)} sent without a receipt for more than "
                      f"{_duration(dash.config.limits.receipt_overdue.total_seconds())}: "
                      + ", ".join(_link(r.message_id) for r in overdue[:10]))
    for c in certs:
        if c.days_left < 30:
            alerts.append(f"certificate of {escape(c.party)} {'expired' if c.days_left < 0 else 'expires'} "
                          f"{_when(c.not_after)} ({c.days_left:.0f} days)")
    for verdict, n in f.receipt_mismatches.items():
        alerts.append(f"{n} receipt(s) with verdict {escape(verdict)}")
    steps = {status: sum(n for (st, _), n in f.deadline_alerts.items() if st == status)
             for status in ("overdue", "due-soon")}
    if steps["overdue"] or steps["due-soon"]:
        alerts.append(f"<a href='/dossiers'>chain deadlines</a>: {steps['overdue']} step(s) overdue, "
                      f"{steps['due-soon']} due within two working days")
    oldest = "none" if f.oldest_pending is None else (
        f"{_link(f.oldest_pending[0])}, waiting {_duration(f.oldest_pending_age)}")
    hours = [[escape((now - timedelta(hours=24 - i)).strftime("%H:%M")), str(r), str(s)]
             for i, (r, s) in enumerate(zip(f.received_per_hour, f.sent_per_hour))]
    body = (
        "<h2>Alerts</h2>" + ("".join(f"<p class='alert'>{a}</p>" for a in alerts) if alerts else "<p>None.</p>")
        + _destinations_down(f.destinations_down, now)
        + "<h2>Messages per state</h2>" + _table(["state", "messages"], state_rows, "states")
        + f"<p>Queue depth: {f.queue_depth}. Oldest pending: {oldest}.</p>"
        + "<h2>Last 24 hours</h2>"
        + f"<p>Received {sum(f.received_per_hour)}, sent {sum(f.sent_per_hour)}. Drop to sent: median "
          f"{_duration(_quantile(f.sent_latency_24h, .5))}, 95% {_duration(_quantile(f.sent_latency_24h, .95))}. "
          f"Drop to acknowledged: median {_duration(_quantile(f.ack_latency_24h, .5))}, 95% "
          f"{_duration(_quantile(f.ack_latency_24h, .95))}.</p>"
        + _table(["hour from (UTC)", "received", "sent"], hours, "hours"))
    return _page("Overview", body, session)


def _destinations_down(down, now: datetime) -> str:
    """The open circuit breakers, as the daemon last wrote them: why messages wait in queued/retry_wait."""
    if not down:
        return ""
    rows = [[escape(b.destination), f"{_when(b.since)} ({_duration((now - b.since).total_seconds())})",
             str(b.failures), _when(b.next_probe_at), str(b.waiting), escape(b.reason)] for b in down]
    return ("<h2>Destinations down</h2><p>Their messages wait unsent (no attempt spent); one probe at a time "
            "tells when a destination is back, and then they all go at once.</p>"
            + _table(["destination", "down since", "failures", "next probe", "messages waiting", "reason"], rows,
                     "destinations-down"))


def _search_form(q: dict[str, str]) -> str:
    options = "".join(f"<option value='{s.value}'{' selected' if q.get('state') == s.value else ''}>{s.value}</option>"
                      for s in State if s is not State.REJECTED)
    return ("<form method='get' action='/messages'>"
            f"<label>Id <input name='id' id='q-id' value='{escape(q.get('id', ''))}'></label> "
            f"<label>State <select name='state' id='q-state'><option value=''>any</option>{options}</select></label> "
            f"<label>Type <input name='type' value='{escape(q.get('type', ''))}'></label> "
            f"<label>Party <input name='party' value='{escape(q.get('party', ''))}' "
            "placeholder='gemeente:0599'></label> <button id='search'>Search</button></form>")


def _message_rows(records, actions: tuple[str, ...] = (), session: Session | None = None) -> list[list[str]]:
    rows = []
    for r in records:
        row = [_link(r.message_id), escape(r.type), escape(r.recipient), escape(r.state.value),
               escape(r.reason or ""), str(r.attempts), _when(r.received_at)]
        if actions and session is not None:
            row.append(" ".join(_action_form(r.message_id, a, session) for a in actions))
        rows.append(row)
    return rows


def _action_form(mid: str, action: str, session: Session) -> str:
    return (f"<form class='inline' method='post' action='/messages/{escape(mid)}/{action}'>{_csrf(session)}"
            f"<button name='do' value='{action}' id='{action}-{escape(mid)}'>{action.capitalize()}</button></form>")


_COLUMNS = ["id", "type", "recipient", "state", "reason", "attempts", "received"]


async def search(request: web.Request) -> web.Response:
    q = {k: request.query.get(k, "").strip() for k in ("id", "state", "type", "party")}
    store = request.app[KEY].store
    try:
        states = [State(q["state"])] if q["state"] else None
    except ValueError:
        states, q["state"] = None, ""
    if q["id"]:
        record = await store.get(q["id"])
        records = [record] if record else []
    else:
        records = await store.list(states=states, type=q["type"] or None, party=q["party"] or None, limit=200)
    # free text is audited only when it matched something in the store (else it could be anything,
    # a name typed in the wrong field included): "(no match)" stands for it
    shown = {k: (v if records or k == "state" else "(no match)") for k, v in q.items() if v}
    session = await _viewed(request, "messages?" + urlencode(shown))
    body = _search_form(q) + _table(_COLUMNS, _message_rows(records), "results")
    return _page("Messages", body, session)


_ACTIONS = {State.FAILED: ("retry",), State.HELD: ("release", "cancel"), State.QUEUED: ("cancel",),
            State.RETRY_WAIT: ("cancel",), State.RECEIVED: ("cancel",)}


async def message(request: web.Request) -> web.Response:
    mid = request.match_info["id"]
    session = await _viewed(request, mid)
    store = request.app[KEY].store
    record = await store.get(mid)
    if record is None:
        return _page("Unknown message", f"<p>No message {escape(mid)}.</p>", session, 404)
    timeline = await store.timeline(mid)
    receipts = await store.receipts(mid)
    facts = [("id", record.message_id), ("type", f"{record.type} {record.version}"), ("sender", record.sender),
             ("recipient", record.recipient), ("dossier", record.dossier), ("state", record.state.value),
             ("reason", record.reason or ""), ("successor", record.successor or ""),
             ("transport", record.transport or ""), ("address", record.address or ""),
             ("attempts", str(record.attempts)), ("next attempt", _when(record.next_attempt_at)),
             ("received", _when(record.received_at)), ("sent", _when(record.sent_at)),
             ("delivered", _when(record.delivered_at)), ("acknowledged", _when(record.acknowledged_at)),
             ("replies to", record.replies_to or ""), ("supersedes", record.supersedes or "")]
    body = ("<table id='facts'>" + "".join(f"<tr><th>{escape(k)}</th><td id='fact-{escape(k.replace(' ', '-'))}'>"
                                           f"{escape(v)}</td></tr>" for k, v in facts) + "</table>")
    actions = _ACTIONS.get(record.state, ())
    if actions:
        body += "<p>" + " ".join(_action_form(mid, a, session) for a in actions) + "</p>"
    if session.role == "officer":
        body += f"<p><a href='/messages/{escape(mid)}/content'>Content (personal data; audited)</a></p>"
    body += "<h2>Timeline</h2>" + _table(
        ["at", "from", "to", "reason", "attempt", "remote reply", "actor"],
        [[_when(t.at), escape(t.from_state.value if t.from_state else "–"), escape(t.to_state.value),
          escape(t.reason or ""), str(t.attempt), escape(t.remote_reply or ""), escape(t.actor)] for t in timeline],
        "timeline")
    body += "<h2>Receipts</h2>" + _table(["at", "kind", "verdict", "detail"], [
        [_when(r.at), escape(r.kind), escape(r.verdict), escape(r.detail)] for r in receipts], "receipts")
    return _page(f"Message {mid}", body, session)


async def message_content(request: web.Request) -> web.Response:
    """The privileged view: the message as dropped (the spooled XML), for the officer role only."""
    mid = request.match_info["id"]
    session: Session = request[SESSION]
    dash = request.app[KEY]
    if session.role != "officer":
        await dash.audit("dashboard.view-content", mid, "refused: role", session.name)
        return _page("Not allowed", "<p>Only an officer may see a message's content.</p>", session, 403)
    record = await dash.store.get(mid)
    try:
        xml = await asyncio.to_thread(Path(record.spool_path).read_bytes) if record else None
    except (OSError, TypeError):
        xml = None
    await dash.audit("dashboard.view-content", mid, "ok" if xml is not None else "not available", session.name)
    if xml is None:
        return _page("Content", "<p>The content is not (or no longer) kept.</p>", session, 404)
    return _page(f"Content of {mid}", f"<pre>{escape(xml.decode('utf-8', 'replace'))}</pre>", session)


async def act(request: web.Request) -> web.StreamResponse:
    """retry (failed -> queued), release (held: route and seal again), cancel (not yet sent)."""
    mid, action = request.match_info["id"], request.match_info["action"]
    session: Session = request[SESSION]
    dash = request.app[KEY]
    actor = f"dashboard:{session.name}"
    record = await dash.store.get(mid)
    if record is None:
        raise web.HTTPNotFound(text="no such message")
    try:
        if action == "retry":
            if record.state is not State.FAILED or record.transport is None:
                raise StaleState(mid, record.state, {State.FAILED}, " (and sealed)")
            if not await _still_sealed(dash.store, mid):  # erased for its data subject: nothing left to send
                session.flash = (f"retry of {mid}: refused: its sealed copy was erased (subject-erase); "
                                 "the sender must drop the message again")
                await dash.audit("dashboard.retry", mid, "refused: sealed copy erased", session.name)
                raise web.HTTPSeeOther(f"/messages/{mid}")
            await dash.store.transition(mid, State.QUEUED, reason=f"retry by {session.name}", actor=actor,
                                        expect=State.FAILED, origin=ORIGIN)
            dash.queued()
        elif action == "release":
            if record.state is not State.HELD:
                raise StaleState(mid, record.state, {State.HELD})
            await dash.sealer().route_and_seal(mid, actor=actor)
        else:
            await dash.store.transition(mid, State.CANCELLED, reason=f"cancelled by {session.name}", actor=actor,
                                        expect=[State.RECEIVED, State.HELD, State.QUEUED, State.RETRY_WAIT],
                                        origin=ORIGIN)
    except (StaleState, IllegalTransition) as e:
        result = f"refused: the message is {record.state.value}"
        session.flash = f"{action} of {mid}: {result}"
        await dash.audit(f"dashboard.{action}", mid, result, session.name)
        log.info("dashboard.action_refused", action=action, message_id=mid, state=record.state.value,
                 why=type(e).__name__)
        raise web.HTTPSeeOther(f"/messages/{mid}")
    after = await dash.store.get(mid)
    result = after.state.value + (f" ({after.reason})" if after.state is State.HELD and after.reason else "")
    session.flash = f"{action} of {mid}: now {result}"
    await dash.audit(f"dashboard.{action}", mid, result, session.name)
    log.info("dashboard.action", action=action, message_id=mid, state=after.state.value, operator=session.name)
    raise web.HTTPSeeOther(f"/messages/{mid}")


async def _still_sealed(store: Store, mid: str) -> bool:
    try:
        await store.sealed(mid)
    except StoreError:
        return False
    return True


async def _listing(request: web.Request, state: State, title: str, actions: tuple[str, ...]) -> web.Response:
    session = await _viewed(request, state.value)
    records = await request.app[KEY].store.list(states=[state], limit=500)
    body = _table(_COLUMNS + ["actions"], _message_rows(records, actions, session), state.value)
    return _page(title, body, session)


async def held(request: web.Request) -> web.Response:
    return await _listing(request, State.HELD, "Held messages", ("release", "cancel"))


async def failed(request: web.Request) -> web.Response:
    return await _listing(request, State.FAILED, "Failed messages", ("retry",))


async def routes(request: web.Request) -> web.Response:
    session = await _viewed(request, "routes")
    dash = request.app[KEY]
    now = dash.clock()
    certs = {c.party: c for c in metrics_mod.certificates(dash.secrets.identity.cert, dash.config.routes, now)}
    rows = []
    for code, r in sorted(dash.config.routes.items()):
        c = certs.get(code)
        rows.append([escape(code), escape(r.transport), escape(r.address), escape(r.profile.name),
                     str(r.max_concurrency), _when(c.not_after) if c else "unreadable",
                     f"{c.days_left:.0f}" if c else "–"])
    own = certs.get("own")
    body = (_table(["party", "transport", "address", "profile", "concurrency", "certificate expires", "days left"],
                   rows, "routes")
            + "<h2>Own certificate</h2>"
            + (f"<p id='own-cert'>{escape(dash.config.party.code)}: expires {_when(own.not_after)} "
               f"({own.days_left:.0f} days), SHA-256 {escape(own.fingerprint)}…</p>" if own else ""))
    return _page("Routes and certificates", body, session)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; a session or HTTP Basic (a scraper) with a dashboard account. Not audited per scrape:
    aggregates only, and a scraper would add a row every few seconds."""
    dash = request.app[KEY]
    if _session(request) is None and not await _basic_ok(request, dash):
        return web.Response(status=401, text="login required\n",
                            headers={"WWW-Authenticate": 'Basic realm="nazorg-gateway", charset="UTF-8"'})
    now = dash.clock()
    figures = await metrics_mod.gather(dash.store, now)
    body = metrics_mod.render(figures, metrics_mod.certificates(dash.secrets.identity.cert, dash.config.routes, now),
                              configured_destinations(dash.config))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _basic_ok(request: web.Request, dash: Dashboard) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    account = dash.accounts().get(name)
    return account is not None and await asyncio.to_thread(verify_password, password, account.password_hash)


async def subjects_page(request: web.Request) -> web.Response:
    """Subject access (covenant art. 13.3), officer only: a form for the BSN (POSTed, never in a URL or a
    log), then the same overview as ``nazorg-gateway subject-access``, audited as ``subject.access``."""
    from gateway.ops.subjects import InvalidBsn, access_report, check_bsn, report_body, subject_of

    session: Session = request[SESSION]
    dash = request.app[KEY]
    if session.role != "officer":
        await dash.audit("subject.access", "subjects", "refused: role", session.name)
        return _page("Not allowed", "<p>Only an officer may answer a data subject's request.</p>", session, 403)
    key = dash.secrets.subject_key
    form = ("<form method='post' action='/subjects'>" + _csrf(session) +
            "<p><label>BSN of the data subject <input name='bsn' id='bsn' autocomplete='off' inputmode='numeric' "
            "required></label> <button id='subject-access'>Show overview</button></p></form>"
            "<p>The overview is in Dutch (it is handed to the data subject); it is also printable from "
            "<code>nazorg-gateway subject-access --pdf</code>.</p>")
    if key is None:
        return _page("Subject access", "<p class='alert'>No subject key is configured ([privacy] "
                                       "subject_key_file): the gateway keeps no subject index.</p>", session, 503)
    if request.method == "GET":
        await dash.audit("dashboard.view", "subjects", "ok", session.name)
        return _page("Subject access", form, session)
    bsn = str((await request.post()).get("bsn", ""))
    try:
        digits = check_bsn(bsn)
    except InvalidBsn as e:
        return _page("Subject access", f"<p class='alert' id='bsn-error'>{escape(str(e))}</p>" + form, session, 400)
    report = await access_report(dash.store, subject=subject_of(key, digits), bsn=digits, officer=session.name,
                                 identity=dash.secrets.identity, trust=dash.secrets.trust,
                                 parties=dash.config.parties(), own_party=str(dash.config.party.party),
                                 origin=ORIGIN, now=dash.clock())
    return _page("Subject access", form + "<div id='overview' lang='nl'>" + report_body(report) + "</div>", session)
