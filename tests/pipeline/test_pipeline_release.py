"""Held messages are visible to operators and released by them after the fix (`nazorg-gateway messages`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from cryptography import x509

from dropped import example, with_new_id
from gateway.config import load_config
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.sealer import Sealer
from gateway.store import State


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


async def test_held_for_want_of_a_route_is_listed_then_released_after_the_route_is_added(setup, store, validation):
    config_path = setup / "gateway.toml"
    full = config_path.read_text()
    route = re.search(r'\[routes\."0599"\][^\[]*', full).group(0)
    config_path.write_text(full.replace(route, ""))
    cfg = load_config(config_path)
    cfg.folders.create()
    secrets = cfg.check_secrets()
    data, mid = with_new_id(example("01-meldingsbericht.xml"))
    (cfg.folders.outbox / "a.xml").write_bytes(data)
    pickup = Pickup(store=store, validation=validation, outbox=cfg.folders.outbox, spool=cfg.folders.spool,
                    rejected=cfg.folders.rejected, own_party=str(cfg.party.party),
                    max_bytes=cfg.limits.max_message_bytes, stable_after=0.0, rescan_interval=1.0,
                    accepted=lambda _: None)
    await pickup.scan()
    certificates = {c: x509.load_pem_x509_certificate(r.certificate.read_bytes()) for c, r in cfg.routes.items()}
    sealer = Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=cfg.parties(),
                    routes=cfg.routes, certificates=certificates, queued=lambda: None)
    assert await sealer.route_and_seal(mid) is State.HELD

    listed = cli("messages", "list", "-c", str(config_path), "--state", "held", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["message_id"], row["state"]) == (mid, "held") and "no route configured" in row["reason"]

    still = cli("messages", "release", "-c", str(config_path), mid)  # nothing fixed yet
    assert still.returncode == 1 and "held" in still.stdout

    config_path.write_text(full)  # the operator adds the route
    released = cli("messages", "release", "-c", str(config_path), mid)
    assert released.returncode == 0, released.stderr
    assert f"{mid}: queued" in released.stdout
    record = await store.get(mid)
    assert record.state is State.QUEUED and record.address == "nazorg@gemeente-0599.example.nl"
    assert [t.to_state for t in await store.timeline(mid)][-2:] == [State.HELD, State.QUEUED]
