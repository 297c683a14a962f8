"""The dashboard's dossier deadlines: which dossiers have a step overdue, due soon or done late, and per
dossier each step of the chain with its due date (Dutch working days) and whether it was met.

The list comes from the alerts `/metrics` keeps up to date (``metrics.alerting_dossiers``: only the
dossiers that changed are computed again), so the page costs the same at a million messages; one
dossier's chain is computed when it is opened. Dossier references are the PI systems' own, not persons.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from aiohttp import web

from gateway.ops import metrics as metrics_mod
from gateway.ops.deadlines import dossier_steps, load_events, local_date

#: alert statuses, most urgent first (the order of the list)
_URGENCY = {"overdue": 0, "due-soon": 1, "late": 2}
LIST_LIMIT = 500


def add_routes(app: web.Application) -> None:
    app.add_routes([web.get("/dossiers", dossier_list), web.get("/dossiers/{ref}", dossier_page)])


async def dossier_list(request: web.Request) -> web.Response:
    from gateway.ops.web import KEY, _page, _table, _viewed

    if request.query.get("ref", "").strip():  # the form: one dossier by its reference
        raise web.HTTPFound(f"/dossiers/{quote(request.query['ref'].strip(), safe='')}")
    session = await _viewed(request, "dossiers")
    dash = request.app[KEY]
    now = dash.clock()
    alerting = await metrics_mod.alerting_dossiers(dash.store, now)
    ordered = sorted(alerting.items(), key=lambda kv: (min(_URGENCY.get(s, 9) for s, _ in kv[1]), kv[0]))
    rows = [[f"<a href='/dossiers/{escape(ref, quote=True)}'>{escape(ref)}</a>",
             ", ".join(f"<span class='{escape(status)}'>{escape(step)} {escape(status)}</span>"
                       for status, step in sorted(alerts, key=lambda a: (_URGENCY.get(a[0], 9), a[1])))]
            for ref, alerts in ordered[:LIST_LIMIT]]
    more = f"<p>… and {len(ordered) - LIST_LIMIT} more.</p>" if len(ordered) > LIST_LIMIT else ""
    body = (f"<form method='get' action='/dossiers'><label>Dossier <input name='ref'></label> <button>Show"
            f"</button></form><p>Today (Europe/Amsterdam): {local_date(now).isoformat()}. Dossiers with a step "
            f"overdue, due within two working days, or done late: {len(ordered)}.</p>"
            + _table(["dossier", "alerts"], rows, "alerting") + more)
    return _page("Dossier deadlines", body, session)


async def dossier_page(request: web.Request) -> web.Response:
    from gateway.ops.web import KEY, _link, _page, _table, _viewed, _when

    ref = request.match_info["ref"]
    session = await _viewed(request, f"dossier:{ref}")
    dash = request.app[KEY]
    events = (await load_events(dash.store, [ref])).get(ref)
    if not events:
        return _page("Unknown dossier", f"<p>No messages for dossier {escape(ref)}.</p>", session, 404)
    d = dossier_steps(ref, events, local_date(dash.clock()))
    rows = [[escape(s.step), s.due.isoformat() if s.due else "–", _when(s.done_at),
             f"<span class='{escape(s.status)}'>{escape(s.status)}</span>", escape(s.basis),
             _link(s.message_id) if s.message_id else ""] for s in d.steps]
    body = _table(["step", "due", "done", "status", "basis", "message"], rows, "steps")
    body += "<h2>Messages</h2>" + _table(["message", "type", "created", "sent (ours) / received (theirs)"], [
        [_link(e.message_id), escape(e.type), _when(e.created_at), _when(e.done_at)]
        for e in sorted(events, key=lambda e: e.created_at)], "messages")
    return _page(f"Dossier {ref}", body, session)
