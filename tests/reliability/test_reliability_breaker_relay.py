"""A dead relay with a backlog: the gateway probes it instead of trying every message, the platform route
keeps delivering meanwhile, and once the relay is back every message goes exactly once, at once.

The relay the gateway is configured with is a gate on loopback in front of the private Postfix: while
"down" it accepts each connection, counts it and answers `421 4.3.2` (the relay refusing the session),
afterwards it passes the bytes through to Postfix (TLS end to end). Beside it, a second gateway (municipality
0344) takes the PI's messages for 0344 over AS2. Retries are the suite's quick ones (1 s, at most 2 s, ±20 %),
so without the breaker each of the 40 mails would be tried about every 1.5 s: some 200 connections in the
8 s watched; with it, the few deliveries in flight when the relay failed, then one probe per interval."""

from __future__ import annotations

import asyncio
import email

import structlog

from dropped import example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.store import State
from mailservers import free_port
from tcp_forward import RelayGate

MAILS = 40
WATCH = 8.0  #: seconds of outage counted


async def test_a_dead_relay_is_probed_not_hammered_others_flow_and_the_backlog_goes_once_when_it_returns(
        tmp_path, mail_servers, mail_users, relay_gate):
    await _outage(tmp_path, mail_servers, mail_users, relay_gate)


async def _outage(tmp_path, mail_servers, mail_users, gate: RelayGate) -> None:
    gm_port = free_port()
    pi = open_config(make_setup(tmp_path / "pi", mail_servers, mail_users, smtp_port=gate.port,
                                platform={"0344": f"https://127.0.0.1:{gm_port}/as2"}))
    gm = open_config(make_setup(tmp_path / "gm", mail_servers, mail_users, party="0344", pki=tmp_path / "pi" / "keys",
                                as2_listen=("127.0.0.1", gm_port),
                                platform={"PI-VUGHT": f"https://127.0.0.1:{free_port()}/as2"}))
    assert pi.smtp.port == gate.port and pi.routes["0344"].transport == "platform"
    assert pi.routes["0599"].transport == "email"
    mails = dict(with_new_id(example("01-meldingsbericht.xml"))[::-1] for _ in range(MAILS))  # id -> data, to 0599
    platform = dict(with_new_id(example(name))[::-1] for name in ("05-ontslagbericht.xml",
                                                                  "04-overdrachtsdocument.xml"))  # to 0344
    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        async with running(pi) as pi_gw, running(gm):
            store = pi_gw.store
            first = loop.time()
            for mid, data in mails.items():
                drop(pi.folders.outbox, f"{mid}.xml", data)
            await wait_for_states(store, list(mails), [State.QUEUED, State.RETRY_WAIT, State.SENDING], timeout=60)
            start, t0 = gate.connections, loop.time()
            for mid, data in platform.items():  # while the relay is down
                drop(pi.folders.outbox, f"{mid}.xml", data)
            await wait_for_states(store, list(platform), [State.ACKNOWLEDGED], timeout=60)
            await asyncio.sleep(max(0.0, WATCH - (loop.time() - t0)))
            watched, outage = loop.time() - t0, loop.time() - first
            held = {mid: await store.get(mid) for mid in mails}
            during = gate.connections

            gate.down = False
            back = loop.time()
            await wait_for_states(store, list(mails), [State.SENT, State.DELIVERED], timeout=60)
            drained = loop.time() - back
            final = {mid: await store.get(mid) for mid in mails}
            timelines = {mid: [t.to_state for t in await store.timeline(mid)] for mid in mails}

    # the outage: the deliveries in flight when the relay failed (4 workers), then one probe per interval
    # (>= 0.8 s apart); generous margins, still far below one try per message and interval
    assert during <= 4 + outage / 0.8 + 4, (during, start, outage)
    assert during - start <= watched / 0.8 + 3, (during, start, watched)
    # one connection per attempt, none per held message (a probe may be between its claim and its connection)
    assert during - 1 <= sum(r.attempts for r in held.values()) <= during + 1, (held, during)
    assert sum(1 for r in held.values() if r.attempts == 0) >= MAILS - during, "the held ones spent nothing"
    # once back: the probe within an interval, then the whole backlog without waiting for its own retry times
    assert drained < 30, drained
    assert all(t.count(State.SENT) == 1 for t in timelines.values()), timelines
    assert sum(r.attempts for r in final.values()) <= during + MAILS + 2, "about one attempt each once back"
    got = [email.message_from_bytes(m)["X-Nazorg-Message-Id"]
           for m in await mail_servers.wait_for_messages_async("nazorg@gemeente-0599.example.nl", MAILS, timeout=30,
                                                               folder=None)]
    assert sorted(g for g in got if g in mails) == sorted(mails), "each mail exactly once at the relay's far side"
    downs = [e for e in logs if e["event"] == "destination-down"]
    ups = [e for e in logs if e["event"] == "destination-up"]
    assert len(downs) == 1 and len(ups) == 1, [e for e in logs if e["event"].startswith("destination")]
    assert downs[0]["destination"] == f"email relay 127.0.0.1:{gate.port}" and downs[0]["alert"] is True
    assert "421 4.3.2" in downs[0]["reason"], downs[0]
    assert ups[0]["destination"] == downs[0]["destination"]
    assert not [e for e in logs if e["event"].startswith("destination") and e.get("destination", "").startswith(
        "platform")], "the platform route never went down"
