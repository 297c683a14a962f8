"""The dashboard against path traversal and open redirects (issue 7, item 4). Unauthenticated access,
CSRF on retry and on the subject page, and the officer-only content view are proven in
ops/test_ops_web.py and ops/test_ops_subjects_web.py; here: every id/path parameter fed traversal
strings (plain, encoded, double-encoded, backslashed, NUL) while logged in as the most privileged role
(officer), every POST route without its CSRF token, and the login's `next` parameter.

A secret file is planted beside the set-up (and /etc/passwd is there anyway): no answer may carry
either, and every answer is a 4xx (never 200, never 5xx). The control reads a real message's content
through the same route and client, so the route does serve files when the id is a real message's."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))  # ops_web_support (basenames are unique)

from gateway.store import State  # noqa: E402
from ops_web_support import (PASSWORDS, bring_to, new_message, web_config, web_secrets, web_server,  # noqa: E402,F401
                             web_setup, web_store, web_template)

SECRET = "SECRET-MARKER-7f3a9c"


async def login(session: aiohttp.ClientSession, base: str, name: str, nxt: str = "/") -> aiohttp.ClientResponse:
    form = await (await session.get(f"{base}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    return await session.post(f"{base}/login", data={"login_token": token, "name": name,
                                                     "password": PASSWORDS[name], "next": nxt},
                              allow_redirects=False)


def csrf_of(html: str) -> str:
    return re.search(r"name='csrf' value='([^']+)'", html).group(1)


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


def traversals(secret: Path, spool_file: Path) -> list[str]:
    """Id values that name files outside (or inside) the gateway's folders, in the ways servers get fooled."""
    targets = ["../../../../../../etc/passwd", "../" * 12 + str(secret).lstrip("/"), str(secret), "/etc/passwd",
               str(spool_file), "../spool/" + spool_file.name, spool_file.name]
    out = []
    for t in targets:
        out += [quote(t, safe=""),  # %2F
                quote(quote(t, safe=""), safe=""),  # %252F
                t.replace("/", "%5C"),  # backslashes
                t.replace("../", "..%2f").replace("/", "%2f"),
                t.replace("../", "%2e%2e%2f"),
                t.replace("../", "....//"),
                quote(t, safe="") + "%00",
                quote(t, safe="") + "%00.xml"]
    return out


async def test_traversal_in_every_id_parameter_reads_nothing(web_server, client, web_store, web_config, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text(SECRET + "\n")
    mid = await new_message(web_store, web_config)
    await bring_to(web_store, mid, State.HELD)
    spool_file = Path((await web_store.get(mid)).spool_path)
    assert (await login(client, web_server, "otto")).status == 303  # the officer: may read content

    # control: the content route serves the spooled file for the real id
    r = await client.get(f"{web_server}/messages/{mid}/content")
    assert r.status == 200 and "berichtId" in await r.text()

    page = await (await client.get(f"{web_server}/messages/{mid}")).text()
    csrf = csrf_of(page)
    answers = []
    for value in traversals(secret, spool_file):
        for path in (f"/messages/{value}", f"/messages/{value}/content"):
            r = await client.get(URL(web_server + path, encoded=True), allow_redirects=False)
            answers.append((path, r.status, await r.text()))
        for action in ("retry", "release", "cancel"):
            path = f"/messages/{value}/{action}"
            r = await client.post(URL(web_server + path, encoded=True), data={"csrf": csrf}, allow_redirects=False)
            answers.append((path, r.status, await r.text()))
        for key in ("id", "party", "type", "state"):
            path = f"/messages?{key}={value}"
            r = await client.get(URL(web_server + path, encoded=True), allow_redirects=False)
            answers.append((path, r.status, await r.text()))
    # unencoded dot segments: the client sends them as they are
    for path in ("/messages/../../../../etc/passwd", "/messages/../../../../etc/passwd/content",
                 "/messages/..%2F..%2F..%2F..%2Fetc%2Fpasswd/content", "/%2e%2e/%2e%2e/etc/passwd",
                 "/messages/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/messages//etc/passwd/content"):
        r = await client.get(URL(web_server + path, encoded=True), allow_redirects=False)
        answers.append((path, r.status, await r.text()))

    assert len(answers) > 200
    leaked = [(p, s) for p, s, body in answers if SECRET in body or "root:x:0:0" in body]
    assert leaked == []
    # a search answers 200 with an empty list; everything else is a 4xx, never a 5xx
    bad = [(p, s) for p, s, _ in answers if not (400 <= s < 500 or (s == 200 and p.startswith("/messages?")))]
    assert bad == []
    # searching by those values found nothing (an unknown state is ignored: that search lists all)
    found = [p for p, s, body in answers if p.startswith(("/messages?id=", "/messages?party=", "/messages?type="))
             and f"/messages/{mid}'" in body]
    assert found == []
    # and the real message is untouched by the actions on traversal ids
    assert (await web_store.get(mid)).state is State.HELD


async def test_every_post_route_refuses_a_missing_or_forged_csrf_token(web_server, client, web_store, web_config):
    mid = await new_message(web_store, web_config)
    await bring_to(web_store, mid, State.HELD)
    await login(client, web_server, "otto")
    for path in ("/logout", "/subjects", f"/messages/{mid}/retry", f"/messages/{mid}/release",
                 f"/messages/{mid}/cancel"):
        for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
            r = await client.post(web_server + path, data=data, allow_redirects=False)
            assert r.status == 403, (path, data, r.status)
    assert (await web_store.get(mid)).state is State.HELD
    r = await client.get(f"{web_server}/", allow_redirects=False)
    assert r.status == 200  # still logged in: the forged logout did nothing


@pytest.mark.parametrize("nxt", ["//evil.example/", "https://evil.example/", "/\\evil.example/", "/\\/evil.example",
                                 "\\\\evil.example", "/\t/evil.example", "/%2F%2Fevil.example", " //evil.example",
                                 "/\r\nSet-Cookie: x=1", "javascript:alert(1)"])
async def test_login_never_redirects_off_the_dashboard(web_server, client, nxt):
    r = await login(client, web_server, "olga", nxt)
    assert r.status == 303
    location = r.headers["Location"]
    # a browser reads "\" as "/" and drops tabs and line breaks: what it would make of the Location
    browser = re.sub(r"[\t\r\n]", "", location).replace("\\", "/")
    assert browser.startswith("/") and not browser.startswith("//"), location
    assert URL(web_server).join(URL(browser)).host == "127.0.0.1"
    assert "Set-Cookie: x" not in str(r.headers)
