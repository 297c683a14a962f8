"""The dashboard's "Subject access" page over real HTTP: officer only (an operator gets 403, audited), the BSN
POSTed with the CSRF token, the same overview as the CLI, audited without the BSN."""

from __future__ import annotations

import re

import aiohttp
import pytest

from gateway.privacy import subject_hash
from gateway.store import State
from ops_web_support import (PASSWORDS, web_config, web_secrets, web_server, web_setup, web_store,  # noqa: F401
                             web_template)
from test_ops_subjects_support import ANNA, BERT, arrived, outbound, settle


async def login(session: aiohttp.ClientSession, base: str, name: str) -> None:
    form = await (await session.get(f"{base}/login")).text()
    token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
    r = await session.post(f"{base}/login", data={"login_token": token, "name": name, "password": PASSWORDS[name],
                                                 "next": "/"})
    assert r.status == 200


def csrf_of(html: str) -> str:
    return re.search(r"name='csrf' value='([^']+)'", html).group(1)


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def test_an_officer_sees_the_overview_of_exactly_that_person(web_server, client, web_store, web_config,
                                                                   web_secrets):
    anna = await outbound(web_store, web_config, web_secrets, "03-basisdocument.xml", "basisdocument",
                          "gemeente:0599", ANNA)
    await settle(web_store, anna, State.ACKNOWLEDGED)
    received, _ = await arrived(web_store, web_config, web_secrets, ANNA)
    bert = await outbound(web_store, web_config, web_secrets, "01-meldingsbericht.xml", "meldingsbericht",
                          "gemeente:0599", BERT)
    await login(client, web_server, "otto")
    home = await (await client.get(f"{web_server}/")).text()
    assert "<a href='/subjects'>Subject access</a>" in home
    form = await (await client.get(f"{web_server}/subjects")).text()
    assert "name='bsn'" in form

    r = await client.post(f"{web_server}/subjects", data={"csrf": csrf_of(form), "bsn": ANNA})
    page = await r.text()
    assert r.status == 200
    overview = page.split("id='overview'")[1]
    assert anna in overview and received in overview and bert not in overview
    assert "Zorg en zorgverzekering" in overview and "PI Vught" in overview and "Rotterdam" in overview
    assert ANNA not in page and "Oosterwijk" not in page  # masked, and no content
    subject = subject_hash(web_secrets.subject_key, ANNA)[:16]
    audit = await web_store.audit_rows(3, object=subject)
    assert [(a["action"], a["result"], a["actor"], a["origin"]) for a in audit] == \
        [("subject.access", "messages=3 outbound=1 inbound=2", "otto", "dashboard")]

    r = await client.post(f"{web_server}/subjects", data={"csrf": csrf_of(form), "bsn": "111222334"})
    assert r.status == 400 and "11-proof" in await r.text() and "111222334" not in await r.text()
    r = await client.post(f"{web_server}/subjects", data={"csrf": "forged", "bsn": ANNA})
    assert r.status == 403
    for a in await web_store.audit_rows(50):
        assert ANNA not in a["object"] + a["result"] and "111222334" not in a["object"] + a["result"]


async def test_an_operator_is_refused_and_audited(web_server, client, web_store):
    await login(client, web_server, "olga")
    home = await (await client.get(f"{web_server}/")).text()
    assert "/subjects" not in home
    r = await client.get(f"{web_server}/subjects")
    assert r.status == 403 and "Only an officer" in await r.text()
    r = await client.post(f"{web_server}/subjects", data={"csrf": csrf_of(home), "bsn": ANNA})
    assert r.status == 403 and "id='overview'" not in await r.text()
    refused = [a for a in await web_store.audit_rows(10) if a["action"] == "subject.access"]
    assert [(a["result"], a["actor"]) for a in refused] == [("refused: role", "olga")] * 2
