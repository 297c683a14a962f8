"""SIGKILL at chosen moments of a delivery, then a restart: every message lands in its one inbox exactly once,
the sender ends `acknowledged`, and every attempt carried the message's one id.

The random-kill e2e (tests/e2e/test_e2e_crash.py) lets the kills fall where they fall; here a gate between
the two sides stops each exchange at a named point and tells the test, which kills then.

The SENDER is killed once, with four deliveries in flight, each held at its own point:
- SMTP, the DATA phase. The private Postfix sits behind a relay that reads the TLS record headers after
  STARTTLS (not their content): (1) the first large record from the sender (the DATA content) is held
  back: Postfix saw DATA and never the end of the data, so it keeps nothing; (2) the content passes and
  Postfix's 250 is held back: Postfix has queued the mail and delivers it. After the restart and the
  lease, both are sent again: the municipality's mailbox gets one copy of (1) and two of (2), all under
  the message's one Message-ID; the municipality's gateway writes one inbox file each and answers the
  second copy with the same receipt.
- AS2, the POST. A TLS-terminating relay with the two gateways' own TLS identities reads the HTTP
  exchange and every AS2 Message-ID: (1) the request head and its first body bytes arrived and are held
  back: the receiver got nothing; (2) the receiver answered (inbox file, row, signed MDN) and the answer
  is held back.

The RECEIVING gateway (AS2) is killed by inotify (1) the moment the first temporary file of its inbox
write is created (during the write), (2) the moment the message's `.xml` is linked into place (after the
write, before the row and the MDN; the relay holds any answer back, so the sender never sees one). Its
restart's `reconcile` removes what the write left and records a file that has no row; the sender's retry
gets the receipt.
"""

from __future__ import annotations

import asyncio
import ctypes
import email
import os
import re
import select
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from adapters.as2.tls import client_context, server_context
from dropped import example, with_new_id
from e2e_gateway import DaemonProcess, drop, log_events, logged, make_setup, open_config, running, wait_for_states
from gateway.store import LEASE_EXPIRED, State, Store
from mailservers import free_port

GEMEENTE = "nazorg@gemeente-0599.example.nl"  # where a meldingsbericht of PI-VUGHT goes (e-mail route)
#: the shortest lease the configuration allows (longer than the SMTP timeout of 5 s), so a killed delivery
#: comes back within about 10-15 s; the AS2 timeout below it
QUICK = {'lease = "11s"': 'lease = "10s"'}
AS2_TIMEOUT = {'tls_key = "keys/parties/PI-VUGHT/tls-key.pem"\n':
               'tls_key = "keys/parties/PI-VUGHT/tls-key.pem"\ntimeout = 5\n'}
FIRED_WITHIN = 60.0


# -- helpers: the daemon's log ------------------------------------------------------------------------------



async def started(daemon: DaemonProcess, runs: int) -> None:
    """Start the daemon and wait until its `runs`-th start is complete (every service running)."""
    daemon.start()
    await logged(daemon.log_path, "started", runs)


# -- the SMTP gate: TLS records after STARTTLS -----------------------------------------------------------

APPLICATION_DATA = 23
LARGE = 1024  #: SMTP commands, the TLS Finished and Postfix's replies are far smaller; a sealed message is not


class SmtpDataGate:
    """A TCP relay in front of Postfix. After STARTTLS it reads the TLS record headers (not their content).
    `arm(plans)` gives each of the next connections that carries a large record from the sender (the DATA
    content) one plan, in order: "content": that record is held back with all that follows on that
    connection; "reply": the content passes, the next record from Postfix (the 250 to the end of the data)
    is held back. `fired` is set once every plan has held its connection. When one side of a connection
    closes, the relay closes the other (so Postfix sees the sender go)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.plans: list[str] = []
        self.fired = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()
        self.handlers: set[asyncio.Task] = set()

    def arm(self, plans: list[str]) -> None:
        assert set(plans) <= {"content", "reply"}
        self.plans, self.fired, self._holding = list(plans), asyncio.Event(), len(plans)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        for t in list(self.transports):
            t.abort()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)
        await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        conn = {"starttls": False, "plan": None, "content": False}
        ends = (writer.transport, up_writer.transport)
        self.transports.update(ends)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, conn, upstream=True),
                                 self._pipe(up_reader, writer, conn, upstream=False))
        finally:
            for t in ends:
                t.abort()
                self.transports.discard(t)

    async def _pipe(self, reader, writer, conn: dict, *, upstream: bool) -> None:
        tls, buf, held = False, b"", False
        try:
            while data := await reader.read(65536):
                if held:
                    continue
                if not tls:
                    if upstream:
                        writer.write(data)
                        if b"STARTTLS\r\n" in data.upper():  # the sender's next bytes are its ClientHello
                            conn["starttls"], tls = True, True
                        continue
                    if not conn["starttls"] or b"\r\n" not in data:
                        writer.write(data)
                        continue
                    cut = data.index(b"\r\n") + 2  # Postfix's "220 Ready to start TLS"; then records
                    writer.write(data[:cut])
                    data, tls = data[cut:], True
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                    size = 5 + int.from_bytes(buf[3:5], "big")
                    record, buf = buf[:size], buf[size:]
                    if record[0] == APPLICATION_DATA:
                        if upstream and size - 5 > LARGE and not conn["content"]:
                            conn["content"] = True
                            if self.plans:
                                conn["plan"] = self.plans.pop(0)
                            if conn["plan"] == "content":
                                held = True
                        elif not upstream and conn["content"] and conn["plan"] == "reply":
                            held = True
                    if held:
                        self._held()
                        break
                    writer.write(record)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    def _held(self) -> None:
        self._holding -= 1
        if self._holding == 0:
            self.fired.set()


# -- the AS2 gate: TLS terminated with the parties' own identities -----------------------------------------

class As2Gate:
    """A relay in front of the receiving gateway's AS2 server that terminates TLS on both sides (it presents
    the receiver's TLS certificate to the sender and the sender's to the receiver, both from the development
    PKI, so both still see the party they expect) and reads the HTTP exchange. It notes every request's
    AS2 Message-ID. `arm(plans)` gives each of the next requests one plan, in order: "request": the request
    is held back once its head and first body bytes arrived (the receiver gets nothing of it); "answer":
    the request passes, the receiver's answer is held back. `fired` is set once every plan has held its
    request; `held` maps each plan to the Message-ID it held. When one side closes, the relay closes the
    other."""

    def __init__(self, target_port: int, keys: Path, *, sender: str, receiver: str):
        trust = (keys / "trust.pem").read_bytes()
        self.server_ctx: ssl.SSLContext = server_context(
            server_cert_chain_pem=(keys / "parties" / receiver / "tls-chain.pem").read_bytes(),
            server_key_pem=(keys / "parties" / receiver / "tls-key.pem").read_bytes(), client_ca_pem=trust)
        self.client_ctx: ssl.SSLContext = client_context(
            server_trust_pem=trust, client_cert_chain_pem=(keys / "parties" / sender / "tls-chain.pem").read_bytes(),
            client_key_pem=(keys / "parties" / sender / "tls-key.pem").read_bytes())
        self.target_port = target_port
        self.port = 0
        self.plans: list[str] = []
        self.fired = asyncio.Event()
        self.held: dict[str, str] = {}
        self.message_ids: list[str] = []  #: the AS2 Message-ID of every request seen, in order
        self.transports: set[asyncio.Transport] = set()
        self.handlers: set[asyncio.Task] = set()

    def arm(self, plans: list[str]) -> None:
        assert set(plans) <= {"request", "answer"}
        self.plans, self.fired, self.held, self._holding = list(plans), asyncio.Event(), {}, len(plans)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/as2"

    async def start(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepting = asyncio.create_task(self._accept())

    async def close(self) -> None:
        self.accepting.cancel()
        await asyncio.gather(self.accepting, return_exceptions=True)
        self.listener.close()
        for t in list(self.transports):
            t.abort()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            task = asyncio.create_task(self._connection(sock))
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)

    async def _connection(self, sock: socket.socket) -> None:
        """The receiver first, then the sender's handshake: with the receiver down, the sender's connection is
        reset before any TLS (as at the receiver's own closed port), never a handshake and a hang-up (which
        the sender would rightly take for a refused client certificate)."""
        loop = asyncio.get_running_loop()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port, ssl=self.client_ctx,
                                                                 server_hostname="127.0.0.1")
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            sock.close()
            return
        self.transports.add(up_writer.transport)
        reader = asyncio.StreamReader()
        try:
            transport, protocol = await loop.connect_accepted_socket(lambda: asyncio.StreamReaderProtocol(reader),
                                                                     sock, ssl=self.server_ctx)
        except (OSError, ssl.SSLError):
            up_writer.transport.abort()
            self.transports.discard(up_writer.transport)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.transports.add(transport)
        conn = {"answer": None}  # the Message-ID whose answer is to be held back
        try:
            await asyncio.gather(self._requests(reader, up_writer, conn), self._answers(up_reader, writer, conn))
        finally:
            for t in (transport, up_writer.transport):
                t.abort()
                self.transports.discard(t)

    async def _requests(self, reader, writer, conn: dict) -> None:
        pending, body_left, held = b"", 0, False
        try:
            while data := await reader.read(65536):
                if held:
                    continue
                while data and not held:
                    if body_left:  # the rest of the body of a request that passes
                        part, data = data[:body_left], data[body_left:]
                        body_left -= len(part)
                        writer.write(part)
                        continue
                    pending, data = pending + data, b""
                    end = pending.find(b"\r\n\r\n")
                    if end < 0 or len(pending) == end + 4:
                        break  # the head, and at least one body byte, not complete yet
                    head = pending[:end].decode("latin-1")
                    found = re.search(r"(?im)^message-id:[ \t]*([^\s]+)", head)
                    message_id = found.group(1) if found else ""
                    self.message_ids.append(message_id)
                    size = end + 4 + int(re.search(r"(?im)^content-length:[ \t]*(\d+)", head).group(1))
                    plan = self.plans.pop(0) if self.plans else None
                    if plan == "request":
                        held = True
                        self._held(plan, message_id)
                        break
                    if plan == "answer":
                        conn["answer"] = message_id
                    request, data = pending[:size], pending[size:]
                    body_left = size - len(request)
                    pending = b""
                    writer.write(request)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    async def _answers(self, reader, writer, conn: dict) -> None:
        held = False
        try:
            while data := await reader.read(65536):
                if held:
                    continue
                if conn["answer"] is not None:
                    held = True
                    self._held("answer", conn["answer"])
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    def _held(self, plan: str, message_id: str) -> None:
        self.held[plan] = message_id
        self._holding -= 1
        if self._holding == 0:
            self.fired.set()


# -- killing by inotify ----------------------------------------------------------------------------------

IN_CREATE, IN_MOVED_TO = 0x100, 0x80
_EVENT = struct.Struct("iIII")


class KillOnCreate(threading.Thread):
    """SIGKILL a process group the moment a file whose name `match`es is created in `folder` (inotify: the
    kill follows the creating system call within microseconds, not a polling interval)."""

    def __init__(self, folder: Path, match: Callable[[str], bool], pgid: int):
        super().__init__(daemon=True)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        watch = libc.inotify_add_watch(self.fd, str(folder).encode(), IN_CREATE | IN_MOVED_TO)
        assert watch >= 0, os.strerror(ctypes.get_errno())
        self.match, self.pgid = match, pgid
        self.killed_at: str | None = None
        self.done = threading.Event()
        self._stop = False

    def run(self) -> None:
        try:
            while not self._stop:
                if not select.select([self.fd], [], [], 0.1)[0]:
                    continue
                data = os.read(self.fd, 65536)
                offset = 0
                while offset < len(data):
                    _, _, _, size = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size: offset + _EVENT.size + size].rstrip(b"\0").decode()
                    offset += _EVENT.size + size
                    if self.match(name):
                        os.killpg(self.pgid, signal.SIGKILL)
                        self.killed_at = name
                        return
        finally:
            os.close(self.fd)
            self.done.set()

    def stop(self) -> None:
        self._stop = True
        self.done.wait(5)


async def wait_thread(thread: KillOnCreate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not thread.done.is_set():
        if time.monotonic() > deadline:
            thread.stop()
            raise AssertionError(f"no matching file was created within {timeout} s")
        await asyncio.sleep(0.02)


# -- shared checks ---------------------------------------------------------------------------------------

def inbox_files(inbox: Path) -> list[str]:
    """Every file under the inbox, as type/name (hidden temporaries included)."""
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


def transitions(timeline) -> list[tuple[str | None, str]]:
    """(from, to) of each transition; a lease that ran out is ("sending", "lease-expired")."""
    return [(t.from_state.value if t.from_state else None,
             "lease-expired" if t.reason == LEASE_EXPIRED else t.to_state.value) for t in timeline]


# -- the sender killed in the SMTP DATA phase and during the AS2 POST ---------------------------------------

def _as2_pair(tmp_path: Path, servers, users, dev_pki: Path, *, gm_port: int, pi_url: str,
              smtp_port: int | None = None) -> tuple[Path, Path]:
    """PI-VUGHT sending to 0344 over the platform route at `pi_url` (and by e-mail through `smtp_port`);
    0344 listening on `gm_port`."""
    pi_path = make_setup(tmp_path / "pi", servers, users, edits={**QUICK, **AS2_TIMEOUT},
                         platform={"0344": pi_url}, pki=dev_pki, smtp_port=smtp_port)
    gm_path = make_setup(tmp_path / "gm", servers, users, party="0344", pki=dev_pki,
                         as2_listen=("127.0.0.1", gm_port),
                         platform={"PI-VUGHT": f"https://127.0.0.1:{free_port()}/as2"})
    return pi_path, gm_path


def _bare(as2_message_id: str) -> str:
    return as2_message_id.strip("<>").split("@", 1)[0]


async def test_the_sender_killed_in_the_smtp_data_phase_and_during_the_as2_post_delivers_each_message_once(
        tmp_path, mail_servers, mail_users, dev_pki):
    """Four deliveries in flight, each stopped at its own point, one SIGKILL: two e-mails to 0599 (the content
    arriving; the content sent and Postfix's 250 not yet read) and two AS2 POSTs to 0344 (the request on its
    way; the receiver's answer not yet read). Both receivers are real gateways."""
    smtp_gate = SmtpDataGate(mail_servers.smtp_port)
    await smtp_gate.start()
    gm_port, as2_port = free_port(), free_port()
    pi_path, as2_path = _as2_pair(tmp_path, mail_servers, mail_users, dev_pki, gm_port=gm_port,
                                  pi_url=f"https://127.0.0.1:{as2_port}/as2", smtp_port=smtp_gate.port)
    pi, to_as2 = open_config(pi_path), open_config(as2_path)
    to_mail = open_config(make_setup(tmp_path / "gm-mail", mail_servers, mail_users, party="0599", pki=dev_pki))
    as2_gate = As2Gate(gm_port, dev_pki, sender="PI-VUGHT", receiver="0344")
    await as2_gate.start(as2_port)
    assert pi.smtp.port == smtp_gate.port and pi.routes["0599"].transport == "email"
    assert pi.routes["0344"].address == as2_gate.url and pi.as2.timeout == 5 and pi.limits.lease.seconds == 10
    daemon = DaemonProcess(pi_path, tmp_path / "pi.log")
    mails = {mid: body for body, mid in (with_new_id(example("01-meldingsbericht.xml")) for _ in range(2))}
    posts = {mid: body for body, mid in (with_new_id(example("05-ontslagbericht.xml")) for _ in range(2))}
    every = {**mails, **posts}
    mail_folder, as2_folder = to_mail.folders.inbox / "meldingsbericht", to_as2.folders.inbox / "ontslagbericht"
    try:
        async with running(to_mail) as mail_gw, running(to_as2) as as2_gw:
            await started(daemon, 1)
            smtp_gate.arm(["content", "reply"])
            as2_gate.arm(["request", "answer"])
            for mid, body in every.items():
                drop(pi.folders.outbox, f"{mid}.xml", body)
            await asyncio.wait_for(asyncio.gather(smtp_gate.fired.wait(), as2_gate.fired.wait()), FIRED_WITHIN)
            daemon.kill()

            # e-mail: Postfix has the one whose 250 was held back; it reaches 0599 while its sender lies dead
            await _until(lambda: any((mail_folder / f"{mid}.xml").exists() for mid in mails), 60)
            queued = [mid for mid in mails if (mail_folder / f"{mid}.xml").exists()]
            cut_mail = [mid for mid in mails if mid not in queued]
            assert len(queued) == len(cut_mail) == 1
            # AS2: the held request never reached 0344; the held answer was given (file, row, receipt)
            cut_post, answered = _bare(as2_gate.held["request"]), _bare(as2_gate.held["answer"])
            assert {cut_post, answered} == set(posts)
            assert await as2_gw.store.find_inbound(cut_post) is None and not (as2_folder / f"{cut_post}.xml").exists()
            first = await as2_gw.store.find_inbound(answered)
            assert first is not None and first.outcome == "accepted" and (as2_folder / f"{answered}.xml").exists()

            # restarted: every lease runs out, every message is sent again under its ids, and acknowledged
            await started(daemon, 2)
            store = await Store.open(pi.store.url)
            try:
                await wait_for_states(store, every, [State.ACKNOWLEDGED], timeout=90)
                records = {mid: await store.get(mid) for mid in every}
                timelines = {mid: transitions(await store.timeline(mid)) for mid in every}
            finally:
                await store.close()
            # 0599's gateway answered the second copy with the receipt it stored for the first
            await _until(lambda: len(_receipts(mail_servers, pi.party.email, queued[0])) == 2, 30)
            arrivals = {mid: await mail_gw.store.find_inbound(mid) for mid in mails}
            arrivals |= {mid: await as2_gw.store.find_inbound(mid) for mid in posts}
    finally:
        daemon.kill()
        await smtp_gate.close()
        await as2_gate.close()

    for mid in every:
        # the attempt after the crash began with the lease running out; none was lost, none sent twice after
        assert [t for t in timelines[mid] if t[0] == "sending"] == \
            [("sending", "lease-expired"), ("sending", "sent")], (mid, timelines[mid])
        assert timelines[mid][-1][1] == "acknowledged" and records[mid].attempts == 2
        assert arrivals[mid] is not None and arrivals[mid].outcome == "accepted"
        assert arrivals[mid].transport_message_id == records[mid].mail_message_id
    # e-mail: the one cut off in DATA was never delivered; the one Postfix had came twice, under one Message-ID,
    # and was answered twice with the same receipt
    for mid in mails:
        assert records[mid].mail_message_id == f"<{mid}@pi-vught.example.nl>"
    assert _message_ids(mail_servers, GEMEENTE, cut_mail[0]) == [records[cut_mail[0]].mail_message_id]
    assert _message_ids(mail_servers, GEMEENTE, queued[0]) == [records[queued[0]].mail_message_id] * 2
    receipts = {mid: _receipts(mail_servers, pi.party.email, mid) for mid in mails}
    assert len(receipts[cut_mail[0]]) == 1 and len(receipts[queued[0]]) == 2
    assert receipts[queued[0]][0] == receipts[queued[0]][1], "the same receipt, byte for byte, under one Message-ID"
    # AS2: both attempts of each carried its one AS2 Message-ID; the second POST of the answered one got the
    # receipt stored at the first
    for mid in posts:
        seen = [m for m in as2_gate.message_ids if _bare(m) == mid]
        assert seen == [records[mid].mail_message_id] * 2, (mid, as2_gate.message_ids, records[mid].mail_message_id)
    assert arrivals[answered].receipt == first.receipt
    # exactly once in each inbox, byte for byte, nothing half-written, nothing refused
    assert inbox_files(to_mail.folders.inbox) == sorted(f"meldingsbericht/{m}.{x}" for m in mails
                                                        for x in ("json", "xml"))
    assert inbox_files(to_as2.folders.inbox) == sorted(f"ontslagbericht/{m}.{x}" for m in posts
                                                       for x in ("json", "xml"))
    for mid, body in every.items():
        assert ((mail_folder if mid in mails else as2_folder) / f"{mid}.xml").read_bytes() == body
    assert not any(to_mail.folders.quarantine.iterdir()) and not any(to_as2.folders.quarantine.iterdir())


def _message_ids(servers, address: str, mid: str) -> list[str]:
    """The Message-ID of every copy of message `mid` in the mailbox (all folders)."""
    found = []
    for raw in servers.messages(address, folder=None):
        mail = email.message_from_bytes(raw)
        if mail["X-Nazorg-Message-Id"] == mid:
            found.append(mail["Message-ID"])
    return found


def _receipts(servers, address: str, mid: str) -> list[tuple[str, bytes]]:
    """(Message-ID, MDN part) of every receipt mail for message `mid` in the mailbox (all folders)."""
    found = []
    for raw in servers.messages(address, folder=None):
        mail = email.message_from_bytes(raw)
        if mail["Subject"] == f"nazorg ontvangstbevestiging {mid}":
            found.append((mail["Message-ID"], re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[1]))
    return found


# -- (c) AS2: the receiving gateway killed during and just after its inbox write -------------------------

async def test_the_receiver_killed_during_or_just_after_its_inbox_write_keeps_one_copy_and_answers_the_retry(
        tmp_path, mail_servers, mail_users, dev_pki):
    gm_port, gate_port = free_port(), free_port()
    pi_path, gm_path = _as2_pair(tmp_path, mail_servers, mail_users, dev_pki, gm_port=gm_port,
                                 pi_url=f"https://127.0.0.1:{gate_port}/as2")
    pi, gm = open_config(pi_path), open_config(gm_path)
    gate = As2Gate(gm_port, dev_pki, sender="PI-VUGHT", receiver="0344")
    await gate.start(gate_port)
    receiver = DaemonProcess(gm_path, tmp_path / "gm.log")
    folder = gm.folders.inbox / "ontslagbericht"
    folder.mkdir(parents=True)  # watched before the first write
    (a, a_id), (b, b_id) = with_new_id(example("05-ontslagbericht.xml")), with_new_id(example("05-ontslagbericht.xml"))
    kills: list[str] = []
    killers: list[KillOnCreate] = []
    rows_at_kill: dict[str, bool] = {}
    try:
        async with running(pi) as pi_gw:
            for run, (data, mid, point) in enumerate([(a, a_id, "during"), (b, b_id, "after")], 1):
                await started(receiver, run)
                # the first file of the write is the hidden temporary of the .json; the .xml comes last
                match = (lambda n: n.startswith(".")) if point == "during" else (lambda n, m=mid: n == f"{m}.xml")
                killer = KillOnCreate(folder, match, receiver.proc.pid)
                killers.append(killer)
                killer.start()
                gate.arm(["answer"])  # whatever the receiver might still answer, the sender never sees it
                drop(pi.folders.outbox, f"{mid}.xml", data)
                await wait_thread(killer, FIRED_WITHIN)
                receiver.proc.wait(10)
                kills.append(killer.killed_at)
                store = await Store.open(gm.store.url)  # what the killed receiver had committed
                try:
                    rows_at_kill[mid] = await store.find_inbound(mid) is not None
                finally:
                    await store.close()
                record = await pi_gw.store.get(mid)
                assert record.state in (State.SENDING, State.RETRY_WAIT), record.state
            await started(receiver, 3)
            await wait_for_states(pi_gw.store, [a_id, b_id], [State.ACKNOWLEDGED], timeout=60)
            records = {mid: await pi_gw.store.get(mid) for mid in (a_id, b_id)}
            timelines = {mid: transitions(await pi_gw.store.timeline(mid)) for mid in (a_id, b_id)}
        assert receiver.terminate() == 0
    finally:
        for killer in killers:
            killer.stop()
        receiver.kill()
        await gate.close()

    assert kills[0].startswith(f".{a_id}.json.") and kills[1] == f"{b_id}.xml", kills
    assert not rows_at_kill[a_id], "killed during the write: nothing recorded"
    store = await Store.open(gm.store.url)
    try:
        arrivals = {mid: await store.find_inbound(mid) for mid in (a_id, b_id)}
    finally:
        await store.close()
    for mid in (a_id, b_id):
        assert arrivals[mid].outcome == "accepted"
        assert arrivals[mid].transport_message_id == records[mid].mail_message_id
        assert timelines[mid].count(("sending", "sent")) == 1 and timelines[mid][-1][1] == "acknowledged"
        assert ("sending", "retry_wait") in timelines[mid], "the first attempt failed with the receiver"
    reconciled = [e["message_id"] for e in log_events(tmp_path / "gm.log") if e.get("event") == "inbound.reconciled"]
    # the usual case: killed before its row was committed; the restart recorded the file it found
    assert reconciled == ([] if rows_at_kill[b_id] else [b_id]), (reconciled, rows_at_kill)
    # one copy of each, byte for byte, no temporary and no orphan left
    assert inbox_files(gm.folders.inbox) == sorted(f"ontslagbericht/{m}.{x}" for m in (a_id, b_id)
                                                   for x in ("json", "xml"))
    assert (folder / f"{a_id}.xml").read_bytes() == a and (folder / f"{b_id}.xml").read_bytes() == b
    assert not any(gm.folders.quarantine.iterdir())


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)


async def _until_async(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.1)
