"""Outages the other suites do not cover (the relay down and back, a 451, and an AS2 server that never answers
are in tests/e2e/test_e2e_email.py and tests/adapters/test_as2_transport.py; an IMAP restart under the bare
mailbox watcher in tests/adapters/test_imap_mailbox.py).

1. The IMAP server is out of reach (the network between the gateway and the server is cut: connections drop,
new ones are refused; the mail server itself goes on taking mail, so the delivery reports arrive in the
mailbox meanwhile) while messages are sent: the daemon stays up, its receipt reader says that it cannot
connect and keeps trying, the messages wait in `sent` (nothing is sent again: the relay took them), and once
the server is reachable again every report is read and every message is `delivered`, once.
(Stopping Dovecot itself would also stop the relay's SMTP AUTH, which asks Dovecot: a relay outage, covered
elsewhere.)

2. The AS2 peer accepts the TCP connection and never answers (the gateway's own peer behind a gate that
swallows what it is sent), then starts answering: every attempt ends at the configured timeout, the message
waits and is tried again (same message, same AS2 Message-ID: the id derives from the message id), and once
the peer answers it is delivered and acknowledged, one copy in the peer's inbox."""

from __future__ import annotations

import asyncio
import email
import re

import structlog

from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.store import State
from mailservers import free_port
from tcp_forward import forward

MESSAGES = ["01-meldingsbericht.xml", "04-overdrachtsdocument.xml", "spoedontslagbericht-met-vestiging.xml"]


class Link:
    """A TCP path to a server on loopback that the test can cut (connections reset, new ones refused) and
    mend, on the same port: what the gateway sees of a network outage."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        #: False: connections are accepted and what they send is read and dropped, never answered
        self.forwarding = True
        self.swallowed = 0
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()

    async def mend(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.open):
            writer.transport.abort()
        self.open.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.forwarding:
            self.swallowed += 1
            self.open.add(writer)
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                self.open.discard(writer)
                writer.transport.abort()
            return
        await forward(reader, writer, self.target_port, self.open)


async def test_imap_out_of_reach_while_receipts_arrive_then_every_receipt_is_read(tmp_path, mail_servers,
                                                                                   mail_users):
    link = Link(mail_servers.imap_port)
    await link.mend()
    try:
        await _outage(tmp_path, mail_servers, mail_users, link)
    finally:
        await link.cut()


async def _outage(tmp_path, mail_servers, mail_users, link: Link) -> None:
    config_path = make_setup(tmp_path / "gw", mail_servers, mail_users)
    text = config_path.read_text()
    text, n = re.subn(r'(\[imap\]\nhost = "[^"]*"\nport = )\d+', rf"\g<1>{link.port}", text)
    assert n == 1
    config_path.write_text(text)
    cfg = open_config(config_path)
    assert cfg.imap.port == link.port
    sent: dict[str, str] = {}
    with structlog.testing.capture_logs() as logs:
        async with running(cfg) as gateway:
            store = gateway.store
            await _until(lambda: any(e["event"] == "imap.connected" for e in logs), 20)
            await link.cut()
            for name in MESSAGES:
                data, mid = with_new_id(example(name))
                drop(cfg.folders.outbox, f"{mid}.xml", data)
                sent[mid] = OWN_EXAMPLES[name]
            await wait_for_states(store, sent, [State.SENT], timeout=30)
            await _until(lambda: [e for e in logs if e["event"] == "imap.disconnected" and e.get("kind") == "connect"],
                         20)
            await _until(lambda: len(mail_servers.messages(cfg.party.email, folder=None)) >= len(sent), 30)
            await asyncio.sleep(1.0)  # the reports have arrived and cannot be read
            during = {mid: (await store.get(mid)).state for mid in sent}
            assert set(during.values()) == {State.SENT}, during

            reports = mail_servers.messages(cfg.party.email, folder=None)
            assert len(reports) >= len(sent), "the delivery reports are in the mailbox, unread"
            await link.mend()
            await wait_for_states(store, sent, [State.DELIVERED], timeout=90)
            records = {mid: await store.get(mid) for mid in sent}
            timelines = {mid: [t.to_state for t in await store.timeline(mid)] for mid in sent}
    assert all(r.attempts == 1 for r in records.values()), "nothing was sent again for the outage"
    assert all(t.count(State.SENT) == 1 and t.count(State.DELIVERED) == 1 for t in timelines.values()), timelines
    events = [e["event"] for e in logs]
    assert events.count("imap.connected") >= 2, "the reader connected again"
    assert not [e for e in logs if e.get("log_level") == "error" or e["event"] == "service-crashed"], \
        [e for e in logs if e.get("log_level") == "error"]
    # one copy per message at its municipality
    for mid, recipient in sent.items():
        address = f"nazorg@gemeente-{recipient.split(':')[1]}.example.nl"
        got = [m for m in mail_servers.messages(address, folder=None)
               if email.message_from_bytes(m)["X-Nazorg-Message-Id"] == mid]
        assert len(got) == 1, (mid, len(got))


async def test_an_as2_peer_that_never_answers_is_waited_out_then_delivered_once(tmp_path, mail_servers,
                                                                               mail_users):
    gm_port = free_port()
    gate = Link(gm_port)
    gate.forwarding = False
    await gate.mend()
    try:
        timeout_edit = {'tls_key = "keys/parties/PI-VUGHT/tls-key.pem"\n':
                        'tls_key = "keys/parties/PI-VUGHT/tls-key.pem"\ntimeout = 2\n'}
        pi = open_config(make_setup(tmp_path / "pi", mail_servers, mail_users, edits=timeout_edit,
                                    platform={"0344": f"https://127.0.0.1:{gate.port}/as2"}))
        gm = open_config(make_setup(tmp_path / "gm", mail_servers, mail_users, party="0344",
                                    pki=tmp_path / "pi" / "keys", as2_listen=("127.0.0.1", gm_port),
                                    platform={"PI-VUGHT": f"https://127.0.0.1:{free_port()}/as2"}))
        assert pi.as2.timeout == 2 and pi.routes["0344"].transport == "platform"
        data, mid = with_new_id(example("05-ontslagbericht.xml"))
        async with running(pi) as pi_gw, running(gm) as gm_gw:
            drop(pi.folders.outbox, "m.xml", data)
            t0 = asyncio.get_running_loop().time()
            first = await _until_async(lambda: _retried(pi_gw.store, mid, 1), 30)
            waited = asyncio.get_running_loop().time() - t0
            assert "no answer from the partner within 2 s" in first.reason, first.reason
            assert gate.swallowed >= 1 and waited >= pi.as2.timeout, (gate.swallowed, waited)
            gate.forwarding = True  # the peer answers again
            await wait_for_states(pi_gw.store, [mid], [State.ACKNOWLEDGED], timeout=60)
            record = await pi_gw.store.get(mid)
            timeline = [t.to_state for t in await pi_gw.store.timeline(mid)]
            arrived = await gm_gw.store.find_inbound(mid)
    finally:
        await gate.cut()
    assert record.attempts >= 2 and timeline.count(State.RETRY_WAIT) == record.attempts - 1, timeline
    assert timeline.count(State.SENT) == 1 and timeline[-1] is State.ACKNOWLEDGED
    assert arrived is not None and arrived.transport_message_id == record.mail_message_id
    assert [p.name for p in gm.folders.inbox.rglob("*.xml")] == [f"{mid}.xml"]
    assert (gm.folders.inbox / "ontslagbericht" / f"{mid}.xml").read_bytes() == data


async def _retried(store, mid: str, attempts: int):
    record = await store.get(mid)
    return record if record is not None and record.attempts >= attempts and record.state is State.RETRY_WAIT \
        else None


async def _until_async(predicate, timeout: float):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return result


async def _until(predicate, timeout: float):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return result
