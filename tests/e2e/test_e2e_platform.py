"""The platform route end to end: two gateways (PI Vught and Utrecht, 0344), each with its own AS2 server
(mutual TLS), exchange a dossier's messages both ways; every message lands in the right inbox once and is
`acknowledged` at its sender by a verified synchronous receipt. Mail servers serve the e-mail routes."""

from __future__ import annotations

import json
import re

from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.store import State
from mailservers import free_port


async def test_a_dossier_over_the_platform_both_ways(tmp_path, shared_mail_servers, mail_users):
    servers = shared_mail_servers
    pi_port, gm_port = free_port(), free_port()
    pi_url, gm_url = f"https://127.0.0.1:{pi_port}/as2", f"https://127.0.0.1:{gm_port}/as2"
    pi = open_config(make_setup(tmp_path / "pi", servers, mail_users, as2_listen=("127.0.0.1", pi_port),
                                platform={"0344": gm_url}))
    gm = open_config(make_setup(tmp_path / "gm", servers, mail_users, party="0344", pki=tmp_path / "pi" / "keys",
                                as2_listen=("127.0.0.1", gm_port), platform={"PI-VUGHT": pi_url}))
    assert pi.routes["0344"].transport == "platform" and gm.routes["PI-VUGHT"].transport == "platform"

    to_gm = {}
    for name in ("04-overdrachtsdocument.xml", "05-ontslagbericht.xml"):
        data, mid = with_new_id(example(name))
        to_gm[mid] = (name.split("-", 1)[1].removesuffix(".xml"), data)
    blad, blad_id = with_new_id(re.sub(rb">0599<", b">0344<", example("02-gemeenteblad.xml")))

    async with running(pi) as pi_gw, running(gm) as gm_gw:
        for mid, (_, data) in to_gm.items():
            drop(pi.folders.outbox, f"{mid}.xml", data)
        drop(gm.folders.outbox, "blad.xml", blad)
        await wait_for_states(pi_gw.store, to_gm, [State.ACKNOWLEDGED], timeout=60)
        await wait_for_states(gm_gw.store, [blad_id], [State.ACKNOWLEDGED], timeout=60)
        for mid in to_gm:
            path = [t.to_state for t in await pi_gw.store.timeline(mid)]
            assert path == [State.RECEIVED, State.QUEUED, State.SENDING, State.SENT, State.ACKNOWLEDGED], path
            assert ("mdn", "match") in {(r.kind, r.verdict) for r in await pi_gw.store.receipts(mid)}

    for mid, (kind, data) in to_gm.items():
        assert (gm.folders.inbox / kind / f"{mid}.xml").read_bytes() == data
        meta = json.loads((gm.folders.inbox / kind / f"{mid}.json").read_text())
        assert meta["transport"] == "as2" and meta["sender"] == "pi:PI-VUGHT"
    assert (pi.folders.inbox / "gemeenteblad" / f"{blad_id}.xml").read_bytes() == blad
    # exactly once, and nothing anywhere else
    assert sorted(p.name for p in gm.folders.inbox.rglob("*.xml")) == sorted(f"{m}.xml" for m in to_gm)
    assert [p.name for p in pi.folders.inbox.rglob("*.xml")] == [f"{blad_id}.xml"]
    assert not any(gm.folders.quarantine.iterdir()) and not any(pi.folders.quarantine.iterdir())
    # acknowledged by a matching receipt: no plaintext copy is kept on either side (as on the e-mail route)
    assert list(pi.folders.spool.glob("*.xml")) == [] and list(gm.folders.spool.glob("*.xml")) == []
