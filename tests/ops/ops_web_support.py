"""Fixtures and helpers for the dashboard and metrics tests (imported by them; no tests here): a real local
set-up, a real store, accounts, messages brought into each state through the store's own transitions, and
the dashboard served on a loopback port."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web

from dropped import example, with_new_id
from gateway.config import load_config
from gateway.ops.web import make_dashboard
from gateway.ops.web_accounts import add_account
from gateway.setup_local import init_local
from gateway.store import NewMessage, State, Store
from local_setup import copy_of, loaded, opened_store

PASSWORDS = {"olga": "operator-password-1", "otto": "officer-password-12"}


@pytest.fixture(scope="session")
def web_template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web-setup") / "gw"
    init_local(folder)
    cfg = load_config(folder / "gateway.toml")
    add_account(cfg.dashboard.accounts_file, "olga", "operator", PASSWORDS["olga"])
    add_account(cfg.dashboard.accounts_file, "otto", "officer", PASSWORDS["otto"])
    return folder


@pytest.fixture
def web_setup(web_template, tmp_path) -> Path:
    return copy_of(web_template, tmp_path)


@pytest.fixture
def web_config(web_setup):
    return loaded(web_setup / "gateway.toml")


@pytest.fixture
def web_secrets(web_config):
    return web_config.check_secrets()


@pytest.fixture
async def web_store(web_config):
    async with opened_store(web_config) as s:
        yield s


@pytest.fixture
async def web_server(web_config, web_store, web_secrets):
    """The dashboard on 127.0.0.1 (a free port): yields its base URL."""
    runner = web.AppRunner(make_dashboard(web_config, web_store, web_secrets), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def new_message(store: Store, config, *, name: str = "01-meldingsbericht.xml",
                      recipient: str = "gemeente:0599", type_: str = "meldingsbericht") -> str:
    """A real example, spooled and accepted (state received); its id."""
    xml, mid = with_new_id(example(name))
    spool = config.folders.spool / f"{mid}.xml"
    spool.write_bytes(xml)
    await store.accept(NewMessage(
        message_id=mid, type=type_, version="1.0", sender="pi:PI-VUGHT", recipient=recipient, dossier="D-1",
        replies_to=None, supersedes=None, priority=0, created_at=datetime.now(timezone.utc), file_name=name,
        size=len(xml), sha256=hashlib.sha256(xml).hexdigest(), spool_path=str(spool)))
    return mid


async def bring_to(store: Store, mid: str, state: State) -> None:
    """Along the real edges: held, queued, retry_wait, sent, acknowledged, failed (after a 550)."""
    if state is State.HELD:
        await store.transition(mid, State.HELD, reason="no route to gemeente:0599", actor="sealer")
        return
    await store.save_sealed(mid, b"sealed:" + mid.encode(), "mic-" + mid, transport="email",
                            address="nazorg@example.nl", profile="compatible")
    if state is State.QUEUED:
        return
    await store.transition(mid, State.SENDING, actor="t", lease_owner="t",
                           lease_until=datetime.now(timezone.utc) + timedelta(minutes=1))
    if state is State.RETRY_WAIT:
        await store.transition(mid, State.RETRY_WAIT, reason="451 try later", actor="t",
                               next_attempt_at=datetime.now(timezone.utc) + timedelta(hours=1))
    elif state is State.FAILED:
        await store.transition(mid, State.FAILED, reason="refused permanently: 550 mailbox unknown", actor="t",
                               remote_reply="550 5.1.1 mailbox unknown")
    elif state in (State.SENT, State.ACKNOWLEDGED):
        await store.transition(mid, State.SENT, actor="t", remote_reply="250 ok")
        if state is State.ACKNOWLEDGED:
            await store.transition(mid, State.ACKNOWLEDGED, actor="receipts")
    else:
        raise ValueError(state)


def new_id() -> str:
    return str(uuid.uuid4())
