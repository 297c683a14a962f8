"""The dashboard over real HTTP on loopback: login, sessions, CSRF, pages, actions, health, audit."""

from __future__ import annotations

import re

import aiohttp
import pytest
from yarl import URL

from gateway.store import State
from ops_web_support import (PASSWORDS, bring_to, new_message, web_config, web_secrets, web_server,  # noqa: F401
                             web_setup, web_store, web_template)


async def login(session: aiohttp.ClientSession, base: str, name: str = "olga",
                password: str | None = None) -> aiohttp.ClientResponse:
    form = await (await session.get(f"{base}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    return await session.post(f"{base}/login", data={"login_token": token, "name": name,
                                                     "password": password or PASSWORDS[name], "next": "/"})


def csrf_of(html: str) -> str:
    return re.search(r"name='csrf' value='([^']+)'", html).group(1)


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def test_health_without_login_and_everything_else_behind_it(web_server, client, web_config):
    r = await client.get(f"{web_server}/healthz")
    assert r.status == 200 and await r.text() == "ok\n"
    r = await client.get(f"{web_server}/readyz")
    assert r.status == 200, await r.text()
    for path in ("/", "/messages", "/held", "/failed", "/routes"):
        r = await client.get(f"{web_server}{path}", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login"), path
    r = await client.get(f"{web_server}/metrics")
    assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
    r = await client.post(f"{web_server}/messages/x/retry", data={"csrf": "x"})
    assert r.status == 403
    # the outbox gone: not ready (says why, without the path)
    web_config.folders.outbox.rmdir()
    r = await client.get(f"{web_server}/readyz")
    assert r.status == 503 and "outbox" in await r.text()


async def test_login_refuses_a_wrong_password_and_audits_both(web_server, client, web_store):
    r = await login(client, web_server, "olga", "not-the-password")
    assert r.status == 401 and "Wrong name or password" in await r.text()
    assert client.cookie_jar.filter_cookies(URL(web_server)).get("nazorg_session") is None
    r = await login(client, web_server)
    assert r.status == 200 and "<h1>Overview</h1>" in await r.text()
    rows = [(a["action"], a["result"], a["actor"], a["origin"]) for a in await web_store.audit_rows(10)]
    assert ("dashboard.login", "refused", "olga", "dashboard") in rows
    assert ("dashboard.login", "ok", "olga", "dashboard") in rows
    assert ("dashboard.view", "ok", "olga", "dashboard") in rows


async def test_session_cookie_is_httponly_strict(web_server, client):
    async with aiohttp.ClientSession() as raw:
        form = await (await raw.get(f"{web_server}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        s.cookie_jar.update_cookies({"nazorg_login": token})
        r = await s.post(f"{web_server}/login", allow_redirects=False,
                         data={"login_token": token, "name": "olga", "password": PASSWORDS["olga"]})
        assert r.status == 303
        cookie = [v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith("nazorg_session=")][0]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback; behind TLS the flag is set
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_login_form_token_is_required(web_server, client):
    r = await client.post(f"{web_server}/login", data={"login_token": "forged", "name": "olga",
                                                       "password": PASSWORDS["olga"]})
    assert r.status == 403 and client.cookie_jar.filter_cookies(URL(web_server)).get("nazorg_session") is None


async def test_overview_search_timeline_and_lists(web_server, client, web_store, web_config):
    failed = await new_message(web_store, web_config)
    await bring_to(web_store, failed, State.FAILED)
    held = await new_message(web_store, web_config, recipient="gemeente:0344")
    await bring_to(web_store, held, State.HELD)
    acked = await new_message(web_store, web_config)
    await bring_to(web_store, acked, State.ACKNOWLEDGED)
    await login(client, web_server)

    page = await (await client.get(f"{web_server}/")).text()
    states = dict(re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td></tr>", page.split("id='states'")[1]))
    assert states["failed"] == "1" and states["held"] == "1" and states["acknowledged"] == "1"
    assert "1 held</a>" in page and "1 failed</a>" in page
    assert "Received 3, sent 1" in page
    assert f"Oldest pending: <a href='/messages/{held}'>" in page  # failed waits for nobody: not pending

    page = await (await client.get(f"{web_server}/messages", params={"state": "failed"})).text()
    assert failed in page and held not in page and acked not in page
    page = await (await client.get(f"{web_server}/messages", params={"party": "gemeente:0344"})).text()
    assert held in page and failed not in page
    page = await (await client.get(f"{web_server}/messages", params={"id": acked})).text()
    assert acked in page and failed not in page

    page = await (await client.get(f"{web_server}/messages/{failed}")).text()
    timeline = page.split("id='timeline'")[1]
    assert [s for s in re.findall(r"<td>(received|queued|sending|failed|–)</td><td>", timeline)] == \
        ["–", "received", "queued", "sending"]
    assert "550 5.1.1 mailbox unknown" in timeline
    assert f"id='retry-{failed}'" in page
    assert "Content (personal data" not in page  # an operator has no content link

    assert failed in await (await client.get(f"{web_server}/failed")).text()
    held_page = await (await client.get(f"{web_server}/held")).text()
    assert held in held_page and f"id='release-{held}'" in held_page and f"id='cancel-{held}'" in held_page
    routes = await (await client.get(f"{web_server}/routes")).text()
    for code in web_config.routes:
        assert f"<td>{code}</td>" in routes
    assert "days" in routes.split("id='own-cert'")[1]
    viewed = {(a["action"], a["object"]) for a in await web_store.audit_rows(50) if a["actor"] == "olga"}
    assert {("dashboard.view", failed), ("dashboard.view", "failed"), ("dashboard.view", "held"),
            ("dashboard.view", "routes"), ("dashboard.view", "overview")} <= viewed


async def test_retry_needs_the_csrf_token_then_queues_and_audits(web_server, client, web_store, web_config):
    mid = await new_message(web_store, web_config)
    await bring_to(web_store, mid, State.FAILED)
    await login(client, web_server)
    page = await (await client.get(f"{web_server}/messages/{mid}")).text()
    r = await client.post(f"{web_server}/messages/{mid}/retry", data={"csrf": "wrong"})
    assert r.status == 403
    r = await client.post(f"{web_server}/messages/{mid}/retry", data={})
    assert r.status == 403
    assert (await web_store.get(mid)).state is State.FAILED
    r = await client.post(f"{web_server}/messages/{mid}/retry", data={"csrf": csrf_of(page)})
    assert r.status == 200 and "retry of" in await r.text() and "now queued" in await r.text()
    record = await web_store.get(mid)
    assert record.state is State.QUEUED and record.reason == "retry by olga"
    last = (await web_store.timeline(mid))[-1]
    assert (last.from_state, last.to_state, last.actor) == (State.FAILED, State.QUEUED, "dashboard:olga")
    audit = [(a["action"], a["result"]) for a in await web_store.audit_rows(10, object=mid) if a["actor"] == "olga"]
    assert ("dashboard.retry", "queued") in audit
    assert ("dashboard.csrf", "refused") in [(a["action"], a["result"]) for a in await web_store.audit_rows(20)]
    # a second retry is refused: it is no longer failed
    r = await client.post(f"{web_server}/messages/{mid}/retry", data={"csrf": csrf_of(page)})
    assert "refused: the message is queued" in await r.text()


async def test_a_retry_of_a_message_whose_sealed_copy_was_erased_is_refused(web_server, client, web_store,
                                                                           web_config):
    """subject-erase removed the sealed entity: nothing is left to send, so the retry is refused (and
    audited) instead of queueing a message the dispatcher could only fail."""
    from sqlalchemy import delete

    from gateway.store.schema import sealed

    mid = await new_message(web_store, web_config)
    await bring_to(web_store, mid, State.FAILED)
    await web_store.run_write(lambda conn: conn.execute(delete(sealed).where(sealed.c.message_id == mid)))
    await login(client, web_server)
    page = await (await client.get(f"{web_server}/messages/{mid}")).text()
    r = await client.post(f"{web_server}/messages/{mid}/retry", data={"csrf": csrf_of(page)})
    assert "its sealed copy was erased" in await r.text()
    assert (await web_store.get(mid)).state is State.FAILED
    audit = [(a["action"], a["result"]) for a in await web_store.audit_rows(10, object=mid) if a["actor"] == "olga"]
    assert ("dashboard.retry", "refused: sealed copy erased") in audit


async def test_release_routes_and_seals_and_cancel_stops(web_server, client, web_store, web_config):
    held = await new_message(web_store, web_config)
    await bring_to(web_store, held, State.HELD)
    other = await new_message(web_store, web_config)
    await bring_to(web_store, other, State.HELD)
    await login(client, web_server)
    token = csrf_of(await (await client.get(f"{web_server}/held")).text())
    r = await client.post(f"{web_server}/messages/{held}/release", data={"csrf": token})
    assert "now queued" in await r.text()
    record = await web_store.get(held)
    assert record.state is State.QUEUED and record.transport == "email"
    assert len(await web_store.sealed(held)) > 1000  # really sealed (CMS), not a placeholder
    r = await client.post(f"{web_server}/messages/{other}/cancel", data={"csrf": token})
    assert "now cancelled" in await r.text()
    assert (await web_store.get(other)).state is State.CANCELLED


async def test_content_view_is_for_officers_only(web_server, client, web_store, web_config):
    mid = await new_message(web_store, web_config)
    await login(client, web_server, "olga")
    r = await client.get(f"{web_server}/messages/{mid}/content")
    assert r.status == 403 and "berichtId" not in await r.text()
    await client.post(f"{web_server}/logout", data={"csrf": csrf_of(await (await client.get(f"{web_server}/")).text())})
    r = await client.get(f"{web_server}/", allow_redirects=False)
    assert r.status == 303  # logged out
    await login(client, web_server, "otto")
    page = await (await client.get(f"{web_server}/messages/{mid}")).text()
    assert "Content (personal data" in page
    r = await client.get(f"{web_server}/messages/{mid}/content")
    assert r.status == 200 and "berichtId" in await r.text()
    results = [(a["actor"], a["result"]) for a in await web_store.audit_rows(30, object=mid)
               if a["action"] == "dashboard.view-content"]
    assert ("olga", "refused: role") in results and ("otto", "ok") in results


async def test_no_page_outside_the_content_view_shows_personal_data(web_server, client, web_store, web_config):
    """The example message's BSN, names and birth date appear on no page but the officer's content view."""
    mid = await new_message(web_store, web_config)
    xml = (web_config.folders.spool / f"{mid}.xml").read_text()
    personal = [v for tag in ("bsn", "geslachtsnaam", "voornamen", "geboortedatum")
                for v in re.findall(rf"<(?:\w+:)?{tag}>([^<]+)<", xml, re.IGNORECASE)]
    assert personal, "the example has personal data to look for"
    await login(client, web_server, "otto")
    pages = [await (await client.get(f"{web_server}{p}")).text()
             for p in ("/", "/messages", f"/messages/{mid}", "/held", "/failed", "/routes", "/metrics")]
    for value in personal:
        assert not any(value in p for p in pages), "personal data on a page"
    assert any(personal[0] in p for p in [await (await client.get(f"{web_server}/messages/{mid}/content")).text()])


async def test_cli_adds_an_account_and_serves_the_dashboard(web_setup, tmp_path):
    """`dashboard add-account` writes an scrypt hash (0600); `dashboard -c --listen` serves until SIGTERM."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from gateway.cli import app
    from mailservers import free_port

    import structlog

    config = web_setup / "gateway.toml"
    saved = structlog.get_config()  # the command configures logging onto CliRunner's stream, closed after it
    try:
        result = CliRunner().invoke(app, ["dashboard", "add-account", "-c", str(config), "nina", "--role",
                                          "officer", "--password-stdin"], input="a-long-enough-password\n")
        short = CliRunner().invoke(app, ["dashboard", "add-account", "-c", str(config), "x", "--password-stdin"],
                                   input="short\n")
    finally:
        structlog.configure(**saved)
    assert result.exit_code == 0, result.output
    accounts = web_setup / "secrets" / "dashboard-accounts"
    line = [x for x in accounts.read_text().splitlines() if x.startswith("nina:")][0]
    assert line.startswith("nina:officer:scrypt$") and "a-long-enough-password" not in accounts.read_text()
    assert oct(accounts.stat().st_mode & 0o777) == "0o600"
    assert short.exit_code == 1 and "12 characters" in short.output

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "dashboard", "-c", str(config),
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            r = None
            for _ in range(1200):  # up to a minute: the interpreter's start is slow on a loaded machine
                try:
                    r = await s.get(f"http://127.0.0.1:{port}/readyz")
                    break
                except aiohttp.ClientConnectionError:
                    assert proc.poll() is None, proc.communicate()[0].decode()
                    await asyncio.sleep(0.05)
            assert r is not None and r.status == 200
            await login(s, f"http://127.0.0.1:{port}", "nina", "a-long-enough-password")
            page = await (await s.get(f"http://127.0.0.1:{port}/routes")).text()
            assert "Routes and certificates" in page and "nina (officer)" in page
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out


async def test_free_text_that_matches_nothing_is_not_audited(web_server, client, web_store, web_config):
    mid = await new_message(web_store, web_config)
    await login(client, web_server)
    await client.get(f"{web_server}/messages", params={"id": "Jansen 1989-04-23"})
    await client.get(f"{web_server}/messages", params={"party": "gemeente:0599", "state": "received"})
    await login(client, web_server, "nobody", "123456789-secret")
    rows = await web_store.audit_rows(20)
    text = repr(rows)
    assert "Jansen" not in text and "123456789-secret" not in text and "nobody" not in text
    objects = [a["object"] for a in rows if a["action"] == "dashboard.view"]
    assert "messages?id=%28no+match%29" in objects
    assert "messages?state=received&party=gemeente%3A0599" in objects
    assert ("dashboard.login", "refused", "(unknown)") in [(a["action"], a["result"], a["actor"]) for a in rows]
    assert mid
