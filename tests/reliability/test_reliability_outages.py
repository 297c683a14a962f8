"""Outages the other suites do not cover (the relay down and back, a 451, and an AS2 server that never answers
are in tests/e2e/test_e2e_email.py and tests/adapters/test_as2_transport.py; an IMAP restart under the bare
mailbox watcher in tests/adapters/test_imap_mailbox.py).

The IMAP server is out of reach (the network between the gateway and the server is cut: connections drop,
new ones are refused; the mail server itself goes on taking mail, so the delivery reports arrive in the
mailbox meanwhile) while messages are sent: the daemon stays up, its receipt reader says that it cannot
connect and keeps trying, the messages wait in `sent` (nothing is sent again: the relay took them), and once
the server is reachable again every report is read and every message is `delivered`, once.
(Stopping Dovecot itself would also stop the relay's SMTP AUTH, which asks Dovecot: a relay outage, covered
elsewhere.)"""

from __future__ import annotations

import asyncio
import email
import re

import structlog

from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states
from gateway.store import State

MESSAGES = ["01-meldingsbericht.xml", "04-overdrachtsdocument.xml", "spoedontslagbericht-met-vestiging.xml"]


class Link:
    """A TCP path to a server on loopback that the test can cut (connections reset, new ones refused) and
    mend, on the same port: what the gateway sees of a network outage."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
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
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.open |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open.discard(writer)
            writer.transport.abort()


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


async def _until(predicate, timeout: float):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return result
