"""Routing and sealing: the entitled party's route, or `held` with the reason — never another party."""

from __future__ import annotations

import re

import pytest
from cryptography import x509

from dropped import OWN_EXAMPLES, example, with_new_id
from gateway.crypto.identity import load_pem_identity
from gateway.crypto.open import open_sealed
from gateway.crypto.trust import PartyBinding
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.sealer import Sealer
from gateway.store import State


@pytest.fixture
def certificates(config):
    return {code: x509.load_pem_x509_certificate(r.certificate.read_bytes()) for code, r in config.routes.items()}


def make_sealer(config, secrets, store, certificates, routes=None, woken=None):
    return Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=config.parties(),
                  routes=config.routes if routes is None else routes, certificates=certificates,
                  queued=((lambda: woken.append(1)) if woken is not None else (lambda: None)))


async def take(config, store, validation, name: str, data: bytes) -> None:
    pickup = Pickup(store=store, validation=validation, outbox=config.folders.outbox, spool=config.folders.spool,
                    rejected=config.folders.rejected, own_party=str(config.party.party),
                    max_bytes=config.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                    accepted=lambda _: None)
    (config.folders.outbox / name).write_bytes(data)
    assert await pickup.scan() == 1


def identity_of(setup, code):
    folder = setup / "keys" / "parties" / code
    return load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")


async def test_each_message_is_sealed_for_its_entitled_recipient_only(setup, config, secrets, store, validation,
                                                                      certificates):
    woken = []
    sealer = make_sealer(config, secrets, store, certificates, woken=woken)
    for name, recipient in OWN_EXAMPLES.items():
        data, mid = with_new_id(example(name))
        await take(config, store, validation, name, data)
        assert await sealer.route_and_seal(mid) is State.QUEUED
        record = await store.get(mid)
        code = recipient.split(":")[1]
        assert (record.state, record.transport, record.address) == (State.QUEUED, "email", config.routes[code].address)
        entity = await store.sealed(mid)
        opened = open_sealed(entity, identity_of(setup, code), secrets.trust,
                             expected_sender=PartyBinding(email=config.party.email))
        assert opened.xml == data and opened.mic == record.mic
        # the recipient of another route cannot read it
        other = "0363" if code != "0363" else "0518"
        with pytest.raises(Exception) as refused:
            open_sealed(entity, identity_of(setup, other), secrets.trust)
        assert type(refused.value).__name__ == "NotForUs"
    assert len(woken) == len(OWN_EXAMPLES)


async def test_no_route_holds_with_the_reason_and_release_after_the_fix_seals(config, secrets, store, validation,
                                                                              certificates):
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    await take(config, store, validation, "a.xml", data)
    without = {c: r for c, r in config.routes.items() if c != "0599"}
    assert await make_sealer(config, secrets, store, certificates, routes=without).route_and_seal(mid) is State.HELD
    record = await store.get(mid)
    assert record.state is State.HELD and "no route configured for gemeente:0599" in record.reason
    # the operator adds the route and releases: the same message is sealed, for the same party
    assert await make_sealer(config, secrets, store, certificates).route_and_seal(mid, actor="operator") is State.QUEUED
    assert [t.to_state for t in await store.timeline(mid)] == [State.RECEIVED, State.HELD, State.QUEUED]


async def test_ended_municipality_is_held_with_its_successor_never_rerouted(config, secrets, store, validation,
                                                                           certificates):
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    await take(config, store, validation, "ended.xml", re.sub(rb">0599<", b">0003<", data))
    assert await make_sealer(config, secrets, store, certificates).route_and_seal(mid) is State.HELD
    record = await store.get(mid)
    assert record.successor == "1979" and "ended on 2021-01-01" in record.reason and "1979" in record.reason
    assert record.transport is None


async def test_unusable_recipient_certificate_holds(setup, config, secrets, store, validation, certificates):
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    await take(config, store, validation, "a.xml", data)
    expired = x509.load_pem_x509_certificate((setup / "keys" / "parties" / "TEST-EXPIRED" / "cert.pem").read_bytes())
    assert await make_sealer(config, secrets, store, dict(certificates, **{"0599": expired})).route_and_seal(mid) \
        is State.HELD
    assert "cannot be used" in (await store.get(mid)).reason and "expired" in (await store.get(mid)).reason.lower()


async def test_a_full_disk_makes_sealing_wait_not_hold(tmp_path, config, secrets, validation, certificates,
                                                        monkeypatch):
    """The sealed entity cannot be committed while the disk is full: the message stays `received` (not held
    for an operator, not lost) and is sealed once there is room again. The store lives on a small tmpfs."""
    import asyncio
    import os
    import subprocess

    from structlog.testing import capture_logs

    import gateway.pipeline.sealer as sealer_mod
    from gateway.store import Store

    monkeypatch.setattr(sealer_mod, "DISK_FULL_RETRY", 0.2)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2048k", "tmpfs", str(disk)], check=True)
    try:
        store = await Store.open(f"sqlite+aiosqlite:///{disk / 'gateway.db'}")
        try:
            data, mid = with_new_id(example("01-meldingsbericht.xml"))
            await take(config, store, validation, "full.xml", data)
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for size in (65536, 4096, 512, 1):
                    try:
                        while True:
                            os.write(fd, b"\0" * size)
                    except OSError:
                        pass
            finally:
                os.close(fd)
            sealer = make_sealer(config, secrets, store, certificates)
            stop = asyncio.Event()
            with capture_logs() as logs:
                running = asyncio.create_task(sealer.run(stop))
                await asyncio.sleep(1.0)
                assert (await store.get(mid)).state is State.RECEIVED, "waiting for room, not held"
                assert any(e["event"] == "seal-paused" and e["alert"] is True for e in logs)
                os.unlink(filler)
                for _ in range(100):
                    if (await store.get(mid)).state is State.QUEUED:
                        break
                    await asyncio.sleep(0.1)
                stop.set()
                await asyncio.wait_for(running, 30)
            assert (await store.get(mid)).state is State.QUEUED
            assert not any(e["event"] == "seal-error" for e in logs)
        finally:
            await store.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
