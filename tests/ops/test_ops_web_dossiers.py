"""The dashboard's dossier deadlines: the dossiers with an alert, most urgent first, and one dossier's chain
with its due dates — from real messages taken by the real pick-up, every view audited."""

from __future__ import annotations

import aiohttp
import pytest

from ops_web_support import (PASSWORDS, web_config, web_secrets, web_server, web_setup, web_store,  # noqa: F401
                             web_template)
from test_ops_cli_support import drop, ops_template, ops_validation, variant  # noqa: F401
from test_ops_web import login


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def test_alerting_dossiers_are_listed_and_one_dossier_shows_its_chain(web_server, web_config, web_store,
                                                                              ops_validation, client):
    # dossier VUG-2025-004711: the transfer and the release are queued, never sent, and past their due dates
    ids = await drop(web_config, web_store, ops_validation, variant("04-overdrachtsdocument.xml"),
                     variant("05-ontslagbericht.xml"))
    assert (await login(client, web_server)).status == 200
    overview = await (await client.get(f"{web_server}/")).text()
    assert "<a href='/dossiers'>chain deadlines</a>: 3 step(s) overdue" in overview
    page = await (await client.get(f"{web_server}/dossiers")).text()
    assert "VUG-2025-004711" in page and "ontslagbericht overdue" in page and "Dossier deadlines" in page
    assert "href='/dossiers/VUG-2025-004711'" in page

    # the search form leads to the dossier; its chain names every step, its due date and the message
    r = await client.get(f"{web_server}/dossiers", params={"ref": "VUG-2025-004711"})
    assert r.status == 200 and r.url.path == "/dossiers/VUG-2025-004711"
    chain = await r.text()
    for step in ("meldingsbericht", "gemeenteblad", "basisdocument", "overdrachtsdocument", "ontslagbericht"):
        assert f"<td>{step}</td>" in chain
    assert "2026-11-20" in chain, "the release day of the example is the ontslagbericht's due date"
    assert all(f"/messages/{mid}" in chain for mid in ids) and "overdue" in chain

    unknown = await client.get(f"{web_server}/dossiers/NO-SUCH-DOSSIER")
    assert unknown.status == 404 and "No messages for dossier NO-SUCH-DOSSIER" in await unknown.text()
    traversal = await client.get(f"{web_server}/dossiers/..%2F..%2Fetc%2Fpasswd")
    assert traversal.status == 404 and "root:" not in await traversal.text()

    audited = [(r["action"], r["object"], r["actor"]) for r in await web_store.audit_rows(limit=50)]
    assert ("dashboard.view", "dossiers", "olga") in audited
    assert ("dashboard.view", "dossier:VUG-2025-004711", "olga") in audited


async def test_the_dossier_pages_need_a_login(web_server, client):
    r = await client.get(f"{web_server}/dossiers", allow_redirects=False)
    assert r.status in (302, 303, 401) and "VUG" not in await r.text()
