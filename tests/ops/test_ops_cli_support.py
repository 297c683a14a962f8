"""Fixtures and helpers for the operator CLI and deadline tests (no tests here): a real local set-up,
a real store, messages taken from the outbox by the real pickup and sealed by the real sealer."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509

from dropped import example, with_new_id
from gateway.config import load_config
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.sealer import Sealer
from gateway.pipeline.validation import ValidationPool
from gateway.setup_local import init_local
from gateway.store import State
from local_setup import copy_of, loaded, opened_store


@pytest.fixture(scope="session")
def ops_template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ops-setup") / "gw"
    init_local(folder)
    return folder


@pytest.fixture
def ops_setup(ops_template, tmp_path) -> Path:
    return copy_of(ops_template, tmp_path)


@pytest.fixture
def ops_config(ops_setup):
    return loaded(ops_setup / "gateway.toml")


@pytest.fixture
async def ops_store(ops_config):
    async with opened_store(ops_config) as s:
        yield s


@pytest.fixture(scope="session")
def ops_validation(ops_template):
    cfg = load_config(ops_template / "gateway.toml")
    pool = ValidationPool(institutions=cfg.registries.institutions, municipalities=cfg.registries.municipalities,
                          max_bytes=cfg.limits.max_message_bytes, workers=1)
    yield pool
    pool.close()


def variant(name: str, *, supersedes: str | None = None, **replacements: str) -> tuple[bytes, str]:
    """An example under a fresh id; ``tag=value`` replaces the text of the first <tag>; optionally vervangt."""
    data, mid = with_new_id(example(name))
    for tag, value in replacements.items():
        data = re.sub(rf"<{tag}>[^<]*</{tag}>".encode(), f"<{tag}>{value}</{tag}>".encode(), data, count=1)
    if supersedes:
        data = re.sub(rb"(</dossierreferentie>)", rf"\1<vervangt>{supersedes}</vervangt>".encode(), data, count=1)
    return data, mid


async def drop(cfg, store, validation, *messages: tuple[bytes, str], seal: bool = True) -> list[str]:
    """Drop the messages in the outbox, let the pickup take them and (``seal``) the sealer queue them."""
    for i, (data, mid) in enumerate(messages):
        (cfg.folders.outbox / f"{mid}.xml").write_bytes(data)
    pickup = Pickup(store=store, validation=validation, outbox=cfg.folders.outbox, spool=cfg.folders.spool,
                    rejected=cfg.folders.rejected, own_party=str(cfg.party.party),
                    max_bytes=cfg.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                    accepted=lambda _: None)
    await pickup.scan()
    mids = [mid for _, mid in messages]
    for mid in mids:
        assert (await store.get(mid)) is not None, f"{mid} was not accepted"
    if seal:
        secrets = cfg.check_secrets()
        certificates = {c: x509.load_pem_x509_certificate(r.certificate.read_bytes()) for c, r in cfg.routes.items()}
        sealer = Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=cfg.parties(),
                        routes=cfg.routes, certificates=certificates, queued=lambda: None)
        for mid in mids:
            assert await sealer.route_and_seal(mid) is State.QUEUED
    return mids


async def deliver(store, mid: str, sent_at: datetime, acknowledged_at: datetime | None = None,
                  fail: str | None = None) -> None:
    """queued -> sending -> sent (at ``sent_at``) -> acknowledged; or -> failed with ``fail`` as reason."""
    await store.transition(mid, State.SENDING, actor="test", lease_owner="test",
                           lease_until=sent_at + timedelta(minutes=5))
    if fail is not None:
        await store.transition(mid, State.FAILED, reason=fail, actor="test", remote_reply="550 5.1.1 no such user")
        return
    await store.transition(mid, State.SENT, actor="test", sent_at=sent_at, remote_reply="250 2.0.0 Ok: queued")
    if acknowledged_at is not None:
        await store.transition(mid, State.ACKNOWLEDGED, actor="test", acknowledged_at=acknowledged_at)


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, in a child process (slow: ~2 s of imports a call)."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def invoke(*args: str, input: str | None = None) -> SimpleNamespace:
    """The same command line in this process (typer's runner); the logging set-up it changes is put back.

    ``returncode`` is -1 when the command crashed (so a crash never passes for an exit code 1)."""
    import structlog
    from typer.testing import CliRunner

    from gateway.cli import app

    saved = structlog.get_config()
    try:
        result = CliRunner().invoke(app, list(args), input=input)
    finally:
        structlog.configure(**saved)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return SimpleNamespace(returncode=-1 if crashed else result.exit_code, stdout=result.stdout,
                           stderr=result.stderr, exception=result.exception)


async def run_cli(*args: str, input: str | None = None) -> SimpleNamespace:
    """``invoke`` from an async test: in a thread, as the command runs its own event loop."""
    return await asyncio.to_thread(invoke, *args, input=input)
