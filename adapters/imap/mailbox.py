"""Reading one IMAP mailbox (implicit TLS): list, fetch, move, wait for new mail; and the watcher.

Bytes and protocol only: what a mail means is the handler's business. Built on aioimaplib 2.0.3,
around its traps (docs/research-notes.md): no STARTTLS (implicit TLS only); 'NO'/'BAD' come back
as results, not exceptions; a dropped connection is not raised (commands would just time out), so
every command races the connection-lost callback and a timeout; IDLE can hang on BYE; `move()`
uses sequence numbers, so `uid("move", …)`; arguments are not quoted for us.

Why new mail is noticed without races: aioimaplib drops untagged `* n EXISTS` lines that arrive
with the answer to another command (FETCH, MOVE…). The mailbox counts them where they are parsed,
so mail that arrived during a round of work wakes the next `wait_for_change()` at once. Only
EXISTS counts: RECENT never announces a message that EXISTS did not.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import re
import ssl
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioimaplib
import structlog

log = structlog.get_logger(__name__)
# aioimaplib logs every byte it receives (whole mails) at DEBUG: never let that reach a log.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

_EXISTS = re.compile(rb"^(?:\* )?\d+ EXISTS\b")
_UID = re.compile(rb"\bUID (\d+)")
_NUMBER = re.compile(rb"\d+")
_LITERAL = re.compile(rb"\{\d+\}$")
_FETCH_BATCH = 50
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
#: mails fetched in one UID FETCH, handed to a batch handler at once and filed with one UID MOVE per folder by
#: the watcher: one round trip each per batch, not per mail (on a real network that is most of the time a mail
#: takes), and one store write for a batch of delivery reports (the receipt matcher)
WATCH_BATCH = 64
#: … and at most this many bytes in one fetch by the mails' sizes, when asked (`max_mail_bytes`): a larger mail
#: alone (a batch of sealed messages of several MB each would otherwise be held at once)
WATCH_BATCH_BYTES = 1 << 20
#: due mails whose sizes the watcher asks in one command, then handles (in batches) before the next window
ROUND_WINDOW = 256


@dataclass(frozen=True)
class MailboxSettings:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    ssl_context: ssl.SSLContext  #: decides which server certificates are trusted
    mailbox: str = "INBOX"
    timeout: float = 30.0  #: per command, and for connecting
    poll_interval: float = 30.0  #: fallback when IDLE is unavailable or fails; also the watcher's rescan
    idle: bool = True  #: use IDLE when the server offers it (False: poll, e.g. behind a proxy that cuts idle sessions)
    #: the watcher never fetches a mail larger than this (its size asked first): it is filed unread in
    #: `oversized_folder` with an alert. None: no limit
    max_mail_bytes: int | None = None
    oversized_folder: str = "oversized"


@dataclass(frozen=True)
class FetchedMail:
    uid: int
    data: bytes = field(repr=False)  #: the whole RFC 5322 message as the server holds it (CRLF)


class MailboxError(Exception):
    """What failed, in operator words (never the password). `kind` is one of: connect, tls, login,
    mailbox, timeout, connection_lost, server, protocol."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 9); CR, LF and NUL cannot be quoted."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("CR, LF and NUL cannot be sent in an IMAP string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _folder(name: str) -> str:
    """A folder name as sent: printable ASCII only (no modified UTF-7 here), quoted."""
    if not name or not all(" " <= c <= "~" for c in name) or any(c in name for c in "*%"):
        raise ValueError("folder names must be printable ASCII without * or %")
    return _quote(name)


def _text(response: Any) -> str:
    """The server's words closing a response (its tagged line), for error messages."""
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode("ascii", "replace")[:200] if isinstance(last, (bytes, bytearray)) else ""


class Mailbox:
    """One IMAP session on one selected mailbox. Not safe for concurrent use: one task at a time."""

    def __init__(self, settings: MailboxSettings) -> None:
        self.settings = settings
        self._imap: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._exists_seen = 0  # untagged EXISTS lines seen so far
        self._exists_mark = 0  # … when the caller last listed the mailbox
        self._idle_failed = False
        self._broken = False  # a command timed out or was abandoned: the session's state is unknown

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def _session(self) -> aioimaplib.IMAP4:
        if self._imap is None:
            raise MailboxError("connection_lost", f"not connected to {self._where}")
        return self._imap

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self._imap.protocol.capabilities) if self._imap else frozenset()

    # -- session --------------------------------------------------------------------------------
    async def connect(self) -> None:
        """TLS, LOGIN, CAPABILITY, SELECT. Creates nothing: a missing mailbox is an error."""
        s = self.settings
        await self.close()
        lost = self._lost = asyncio.Event()
        self._broken = False
        self._imap = imap = aioimaplib.IMAP4(host=s.host, port=s.port, timeout=s.timeout,
                                             conn_lost_cb=lambda _exc: lost.set(), ssl_context=s.ssl_context)
        self._count_exists(imap)
        try:
            await imap.wait_hello_from_server()
        except ssl.SSLCertVerificationError as exc:
            await self.close()
            raise MailboxError("tls", f"TLS with {self._where} failed: certificate not trusted "
                                      f"({exc.verify_message})") from None
        except ssl.SSLError as exc:
            await self.close()
            raise MailboxError("tls", f"TLS with {self._where} failed: {exc.reason or exc}") from None
        except asyncio.TimeoutError:
            await self.close()
            raise MailboxError("timeout", f"no IMAP greeting from {self._where} in {s.timeout} s") from None
        except OSError as exc:
            await self.close()
            raise MailboxError("connect", f"cannot connect to {self._where}: {exc.strerror or exc}") from None
        try:
            response = await self._call("LOGIN", imap.login, _quote(s.username), s.password)
            if response.result != "OK":
                raise MailboxError("login", f"login refused by {self._where}: {_text(response)}")
            await self._call("CAPABILITY", imap.protocol.capability)  # LOGIN may change them
            response = await self._call("SELECT", imap.select, _folder(s.mailbox))
            if response.result != "OK":
                raise MailboxError("mailbox", f"mailbox {s.mailbox!r} on {self._where} cannot be selected: "
                                              f"{_text(response)}")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """LOGOUT when the session is idle and alive, then drop the connection. Never raises."""
        imap, self._imap = self._imap, None
        if imap is None:
            return
        try:
            if not (self._lost.is_set() or self._broken) and imap.protocol.pending_sync_command is None \
                    and imap.get_state() in ("AUTH", "SELECTED", "NONAUTH"):
                await asyncio.wait_for(imap.logout(), min(2.0, self.settings.timeout))
        except Exception:  # best effort: the connection goes anyway
            pass
        # aioimaplib leaves tasks and a timer behind when a session ends abnormally (private names)
        if imap._idle_waiter is not None:
            imap._idle_waiter.cancel()
        for task in [imap._client_task, *imap.tasks, *imap.protocol.tasks]:
            if not task.done():
                task.cancel()
        transport = imap.protocol.transport
        if transport is not None and not self._lost.is_set():
            transport.close()  # TLS shuts down in the background: wait for the socket to be closed
            try:
                await asyncio.wait_for(self._lost.wait(), 1.0)
            except asyncio.TimeoutError:
                transport.abort()

    async def _call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Run one command, racing the connection-lost signal and the timeout."""
        if self._imap is None:
            raise MailboxError("connection_lost", f"{what}: not connected to {self._where}")
        if self._lost.is_set() or self._broken:
            raise MailboxError("connection_lost", f"{what}: connection to {self._where} was lost")
        command = asyncio.ensure_future(fn(*args, **kwargs))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({command, lost}, timeout=self.settings.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not command.done():
                command.cancel()
        if command not in done:
            self._broken = True
            if lost in done:
                raise MailboxError("connection_lost", f"{what}: connection to {self._where} was lost")
            raise MailboxError("timeout", f"{what}: no answer from {self._where} in {self.settings.timeout} s")
        try:
            return command.result()
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            self._broken = True
            raise MailboxError("timeout", f"{what}: no answer from {self._where}") from None
        except aioimaplib.Error as exc:
            raise MailboxError("protocol", f"{what}: {exc}") from None
        except OSError as exc:
            self._broken = True
            raise MailboxError("connection_lost", f"{what}: {exc.strerror or exc}") from None

    def _count_exists(self, imap: aioimaplib.IMAP4) -> None:
        """Count untagged EXISTS where aioimaplib parses them (it drops those it does not expect)."""
        parse = getattr(imap.protocol, "_untagged_response", None)
        if parse is None:  # another aioimaplib: IDLE and NOOP answers are still checked
            return

        @functools.wraps(parse)
        def counting(line: bytes):
            if _EXISTS.match(line):
                self._exists_seen += 1
            return parse(line)

        imap.protocol._untagged_response = counting

    def _noted_change(self, lines: Any = ()) -> bool:
        pushed = any(isinstance(line, bytes) and _EXISTS.match(line) for line in lines or ())
        return pushed or self._exists_seen != self._exists_mark

    def _ok(self, what: str, response: Any, kind: str = "server") -> None:
        if response.result != "OK":
            raise MailboxError(kind, f"{what} refused by {self._where}: {response.result} {_text(response)}")

    # -- reading --------------------------------------------------------------------------------
    async def uids(self) -> array:
        """UIDs of every message in the selected mailbox, ascending, packed (8 bytes each): a mailbox with a
        backlog of tens of thousands of mails is listed without a Python object per mail (see _one_round)."""
        self._exists_mark = self._exists_seen
        response = await self._call("UID SEARCH", self._session.uid_search, "ALL", charset=None)
        self._ok("UID SEARCH", response)
        found = array("Q")
        for line in response.lines[:-1]:
            if isinstance(line, bytes):
                start = len(b"SEARCH") if line.startswith(b"SEARCH") else 0
                found.extend(int(n.group()) for n in _NUMBER.finditer(line, start))
        if all(a < b for a, b in itertools.pairwise(found)):  # as servers answer: no copy needed
            return found
        return array("Q", sorted(set(found)))

    async def fetch(self, uid: int) -> FetchedMail | None:
        """One message by UID, or None when it is gone (moved or expunged by someone else)."""
        found = await self._fetch([uid])
        return found[0] if found else None

    async def fetch_many(self, uids: list[int]) -> list[FetchedMail]:
        """These messages in one command, by UID order; those gone meanwhile are left out."""
        return sorted(await self._fetch(uids), key=lambda m: m.uid) if uids else []

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each of `uids` still there (the size as stored: what a fetch would read)."""
        found: dict[int, int] = {}
        for start in range(0, len(uids), 500):
            uid_set = ",".join(str(u) for u in uids[start:start + 500])
            response = await self._call("UID FETCH", self._session.uid, "fetch", uid_set, "(UID RFC822.SIZE)")
            self._ok("UID FETCH", response)
            for line in response.lines[:-1]:
                if isinstance(line, bytes) and b" FETCH (" in line:
                    uid, size = _UID.search(line), _SIZE.search(line)
                    if uid is not None and size is not None:
                        found[int(uid.group(1))] = int(size.group(1))
        return found

    async def fetch_all(self) -> list[FetchedMail]:
        """Every message currently in the selected mailbox, by UID order."""
        uids = await self.uids()
        mails: list[FetchedMail] = []
        for start in range(0, len(uids), _FETCH_BATCH):
            mails.extend(await self._fetch(uids[start:start + _FETCH_BATCH]))
        return sorted(mails, key=lambda m: m.uid)

    async def _fetch(self, uids: list[int]) -> list[FetchedMail]:
        """BODY.PEEK[]: the flags stay as they are (no \\Seen)."""
        uid_set = ",".join(str(u) for u in uids)
        response = await self._call("UID FETCH", self._session.uid, "fetch", uid_set, "(UID BODY.PEEK[])")
        self._ok("UID FETCH", response)
        return _parse_fetch(response.lines)

    # -- moving ---------------------------------------------------------------------------------
    async def move(self, uid: int, folder: str) -> None:
        await self.move_many([uid], folder)

    async def move_many(self, uids: list[int], folder: str) -> None:
        """UID MOVE to `folder`, creating it when missing. Without MOVE: UID COPY, then \\Deleted and
        UID EXPUNGE of those UIDs only (needs UIDPLUS: a plain EXPUNGE could remove others' mail)."""
        if not uids:
            return
        uid = ",".join(str(u) for u in uids)
        target = _folder(folder)
        imap = self._session
        caps = self.capabilities
        if "MOVE" in caps:
            await self._into_folder("UID MOVE", folder,
                                    lambda: self._call("UID MOVE", imap.uid, "move", str(uid), target))
            return
        if "UIDPLUS" not in caps:
            raise MailboxError("server", f"{self._where} offers neither MOVE nor UIDPLUS: messages cannot be "
                                         "moved without risking others' deleted mail")
        await self._into_folder("UID COPY", folder,
                                lambda: self._call("UID COPY", imap.uid, "copy", str(uid), target))
        self._ok("UID STORE", await self._call("UID STORE", imap.uid, "store", str(uid), "+FLAGS.SILENT",
                                               r"(\Deleted)"))
        self._ok("UID EXPUNGE", await self._call("UID EXPUNGE", imap.uid, "expunge", str(uid)))

    async def _into_folder(self, what: str, folder: str, command: Callable[[], Awaitable[Any]]) -> None:
        """Run a COPY/MOVE; when refused (usually [TRYCREATE]), create the folder and try once more."""
        response = await command()
        if response.result == "OK":
            return
        created = await self._call("CREATE", self._session.create, _folder(folder))
        if created.result == "OK":
            log.info("imap.folder_created", folder=folder)
        self._ok(what, await command())

    # -- waiting --------------------------------------------------------------------------------
    async def wait_for_change(self, timeout: float, *, wake: asyncio.Event | None = None) -> bool:
        """Until new mail may be there (True) or `timeout` s passed (False): IDLE when offered,
        else NOOP every `poll_interval` s. True at once when an EXISTS arrived since the last
        listing. `wake` (e.g. a stop event) ends the wait early with False."""
        if self._noted_change():
            self._exists_mark = self._exists_seen
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.settings.idle and "IDLE" in self.capabilities and not self._idle_failed:
            try:
                changed = await self._idle(deadline, wake)
            except MailboxError as exc:
                if exc.kind != "protocol" or self._lost.is_set():
                    raise
                self._idle_failed = True  # refused by the server: poll from now on
                log.warning("imap.idle_refused", host=self.settings.host, error=str(exc))
            else:
                self._exists_mark = self._exists_seen
                return changed
        changed = await self._poll(deadline, wake)
        self._exists_mark = self._exists_seen
        return changed

    async def _idle(self, deadline: float, wake: asyncio.Event | None) -> bool:
        imap = self._session
        queue = imap.protocol.idle_queue
        while not queue.empty():  # leftovers of an earlier IDLE
            queue.get_nowait()
        loop = asyncio.get_running_loop()
        # aioimaplib's own IDLE timer must not fire first: ours ends the wait
        idle = await self._call("IDLE", imap.idle_start, max(1.0, deadline - loop.time()) + 60)
        changed = False
        try:
            while not changed and loop.time() < deadline:
                lines = await self._next_event(queue.get(), deadline, wake)
                if lines is None or lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                changed = self._noted_change(lines)
        finally:
            if not self._lost.is_set():
                imap.idle_done()
        if not idle.done():
            await self._call("IDLE end", asyncio.shield, idle)
        if idle.cancelled() or idle.exception() is not None:
            raise MailboxError("protocol", f"IDLE on {self._where} ended abnormally")
        self._ok("IDLE", idle.result(), "protocol")
        return changed

    async def _poll(self, deadline: float, wake: asyncio.Event | None) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            response = await self._call("NOOP", self._session.noop)
            self._ok("NOOP", response)
            if self._noted_change(response.lines):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            pause = min(self.settings.poll_interval, remaining)
            # the sleep ends first; the later deadline only guards against a lost race
            if await self._next_event(asyncio.sleep(pause, result=()), loop.time() + pause + 1, wake) is None:
                return False

    async def _next_event(self, source: Awaitable[Any], deadline: float, wake: asyncio.Event | None) -> Any:
        """The result of `source`; None when `deadline` or `wake` came first; raises when the
        connection dropped meanwhile."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(source)
        lost = asyncio.ensure_future(self._lost.wait())
        waiters = {task, lost}
        woken = asyncio.ensure_future(wake.wait()) if wake is not None else None
        if woken is not None:
            waiters.add(woken)
        try:
            done, _ = await asyncio.wait(waiters, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()
        if task in done:
            return task.result()
        if lost in done:
            raise MailboxError("connection_lost", f"connection to {self._where} was lost")
        return None


def _parse_fetch(lines: list[Any]) -> list[FetchedMail]:
    """aioimaplib's flat FETCH answer: `n FETCH (UID u BODY[] {size}`, the literal (bytearray),
    `)` or ` UID u)`, …, tagged text. Answers without a literal (flag updates) are skipped."""
    mails = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if isinstance(line, bytes) and b" FETCH (" in line and _LITERAL.search(line) \
                and i + 1 < len(lines) and isinstance(lines[i + 1], bytearray):
            uid = _UID.search(line)
            tail = lines[i + 2] if i + 2 < len(lines) and isinstance(lines[i + 2], bytes) else b""
            uid = uid or _UID.search(tail)
            if uid is not None:
                mails.append(FetchedMail(int(uid.group(1)), bytes(lines[i + 1])))
            i += 2
        else:
            i += 1
    return mails


Handler = Callable[[FetchedMail], Awaitable[str | None]]
#: a batch at once: per mail, in order, its folder (None: leave it) or the exception its handling raised; a
#: shorter answer leaves the rest unhandled (stopping)
BatchHandler = Callable[[list[FetchedMail]], Awaitable[Sequence["str | None | Exception"]]]


def _one_by_one(handle: Handler, stop: asyncio.Event) -> BatchHandler:
    async def handle_many(mails: list[FetchedMail]) -> list[str | None | Exception]:
        outcomes: list[str | None | Exception] = []
        for mail in mails:
            if stop.is_set():
                break
            try:
                outcomes.append(await handle(mail))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    return handle_many


class _RetryDelays:
    """The mails whose handler raised, each offered again only when its own delay has passed (`first`,
    doubling up to `most`), not at every round: a round comes with every new mail, so a fault that lasts
    (a full inbox disk) would otherwise fetch and open every such mail again at each arrival. In memory:
    a restart offers them at once."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, max(first, most)
        self._waiting: dict[int, tuple[int, float]] = {}  # uid -> (failures, not before: loop time)

    def due(self, uid: int, now: float) -> bool:
        return uid not in self._waiting or now >= self._waiting[uid][1]

    def failed(self, uid: int, now: float) -> float:
        """Note one more failure of `uid`; the delay before it is offered again."""
        failures = self._waiting.get(uid, (0, 0.0))[0] + 1
        delay = min(self.first * 2 ** min(failures - 1, 30), self.most)
        self._waiting[uid] = (failures, now + delay)
        return delay

    def forget(self, uid: int) -> None:
        self._waiting.pop(uid, None)

    def keep_only(self, uids: Sequence[int]) -> None:
        """Forget mails no longer in the mailbox (moved or expunged by someone else); ``uids`` ascending."""
        for uid in [u for u in self._waiting if not _has(uids, u)]:
            del self._waiting[uid]

    def wait(self, longest: float, now: float) -> float:
        """How long the watcher may wait for new mail before a waiting mail is due."""
        if not self._waiting:
            return longest
        return min(longest, max(0.05, min(t for _, t in self._waiting.values()) - now))


def _has(ascending: Sequence[int], uid: int) -> bool:
    at = bisect.bisect_left(ascending, uid)
    return at < len(ascending) and ascending[at] == uid


async def watch_mailbox(settings: MailboxSettings, handle: Handler | BatchHandler, stop: asyncio.Event, *,
                        batched: bool = False, reconnect_delay: tuple[float, float] = (1.0, 60.0),
                        retry_delay: tuple[float, float] | None = None) -> None:
    """Until `stop` is set: connect, hand every message to `handle`, move it to the folder `handle`
    returns (None = leave it where it is, e.g. the handler failed temporarily and will see it again),
    then wait (IDLE, polling fallback), repeat. `batched`: `handle` is a `BatchHandler`, given each fetched
    batch at once (up to `WATCH_BATCH` mails, `WATCH_BATCH_BYTES`), else it is given one mail at a time. Reconnects with backoff on drops, timeouts and server
    errors; logs each (no content). A message is moved only after `handle` returned (so a crash in
    between means it is seen again: handlers must be idempotent). Never deletes mail.

    Messages left in place are offered again on every round: after new mail, and at least every
    `poll_interval` s. A handler that raises is logged (its exception type only: exception texts may
    quote content) and its message left in place, offered again only after a delay of its own
    (`retry_delay`: first, doubling up to most; default `poll_interval`, doubling up to 5 minutes)."""
    first, most = reconnect_delay
    handle_many: BatchHandler = handle if batched else _one_by_one(handle, stop)  # type: ignore[assignment]
    retries = _RetryDelays(*(retry_delay or (settings.poll_interval, max(settings.poll_interval, 300.0))))
    loop = asyncio.get_running_loop()
    delay = first
    where = {"host": settings.host, "port": settings.port, "mailbox": settings.mailbox}
    while not stop.is_set():
        mailbox = Mailbox(settings)
        try:
            await mailbox.connect()
            log.info("imap.connected", **where)
            delay = first
            while not stop.is_set():
                await _one_round(mailbox, handle_many, stop, retries)
                if not stop.is_set():
                    await mailbox.wait_for_change(retries.wait(settings.poll_interval, loop.time()), wake=stop)
        except MailboxError as exc:
            log.warning("imap.disconnected", **where, kind=exc.kind, error=str(exc), retry_in=delay)
        except Exception as exc:  # a bug or an aioimaplib surprise: keep watching, say what broke
            log.error("imap.watch_failed", **where, error=type(exc).__name__, retry_in=delay)
        finally:
            await mailbox.close()
        if stop.is_set():
            break
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
        delay = min(delay * 2, most)
    log.info("imap.stopped", **where)


async def _one_round(mailbox: Mailbox, handle: BatchHandler, stop: asyncio.Event, retries: _RetryDelays) -> None:
    """Every mail due, in UID order, a window at a time: what the round holds while it works is the due
    UIDs packed (``_due``) and one window's sizes and batch, not lists and dicts of Python integers per mail
    waiting. Under the soak's load a backlog of tens of thousands of delivery reports built up, each round
    longer than the one before: at 28,000 mails waiting a round held ~3.5 MB (~0.13 KiB a mail) for as long
    as it took, and listing them peaked at ~4.4 MB of Python objects (the daemon's resident memory stepped
    up ~3 MB at such a round's start); now ~0.2 MB, no peak."""
    due = await _due(mailbox, retries)
    for start in range(0, len(due), ROUND_WINDOW):
        if stop.is_set():
            return
        await _one_window(mailbox, due[start:start + ROUND_WINDOW].tolist(), handle, stop, retries)


async def _due(mailbox: Mailbox, retries: _RetryDelays) -> array:
    """The UIDs in the mailbox that are due (not waiting for their retry delay), ascending, as an array."""
    now = asyncio.get_running_loop().time()
    uids = await mailbox.uids()
    retries.keep_only(uids)
    return array("Q", (uid for uid in uids if retries.due(uid, now)))


async def _one_window(mailbox: Mailbox, due: list[int], handle: BatchHandler, stop: asyncio.Event,
                      retries: _RetryDelays) -> None:
    limit = mailbox.settings.max_mail_bytes
    sizes: dict[int, int] = {}
    if limit is not None and due:
        sizes = await mailbox.sizes(due)
        too_large = [uid for uid in due if sizes.get(uid, 0) > limit]
        if too_large:
            await _file_unread(mailbox, too_large, sizes, limit)
            unread = set(too_large)
            due = [uid for uid in due if uid not in unread]
    for batch in _batches(due, sizes):
        if stop.is_set():
            return
        await _one_batch(mailbox, batch, handle, stop, retries)


def _batches(uids: list[int], sizes: dict[int, int]) -> list[list[int]]:
    """`uids` in order, cut into batches of at most `WATCH_BATCH` mails and `WATCH_BATCH_BYTES` by their known
    sizes (a mail larger than that alone)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    size = 0
    for uid in uids:
        n = sizes.get(uid, 0)
        if batch and (len(batch) == WATCH_BATCH or size + n > WATCH_BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(uid)
        size += n
    if batch:
        batches.append(batch)
    return batches


async def _one_batch(mailbox: Mailbox, uids: list[int], handle: BatchHandler, stop: asyncio.Event,
                     retries: _RetryDelays) -> None:
    """Fetch the batch, hand it to `handle`, then file the handled mails, one move per folder. A crash before
    the moves means the batch is seen again (handlers are idempotent)."""
    loop = asyncio.get_running_loop()
    mails = await mailbox.fetch_many(uids)
    if not mails or stop.is_set():
        return
    try:
        outcomes = await handle(mails)
    except Exception as exc:  # the batch handler itself: every mail of the batch failed
        outcomes = [exc] * len(mails)
    del mails[len(outcomes):]  # not handled (stopping): left in place
    filed: dict[str, list[int]] = {}
    for mail, outcome in zip(mails, outcomes):
        if isinstance(outcome, Exception):
            log.error("imap.handler_failed", uid=mail.uid, error=type(outcome).__name__,
                      retry_in=retries.failed(mail.uid, loop.time()))
            continue
        retries.forget(mail.uid)
        if outcome is None:
            log.info("imap.left_in_place", uid=mail.uid)
            continue
        filed.setdefault(outcome, []).append(mail.uid)
    del mails, outcomes
    for folder, moved in filed.items():
        await mailbox.move_many(moved, folder)
        for uid in moved:
            log.info("imap.moved", uid=uid, folder=folder)


async def _file_unread(mailbox: Mailbox, uids: list[int], sizes: dict[int, int], limit: int) -> None:
    """Mails too large to read: filed unread (reading one could take the daemon's memory), each an alert."""
    folder = mailbox.settings.oversized_folder
    await mailbox.move_many(uids, folder)
    for uid in uids:
        log.error("imap.too_large", uid=uid, size=sizes[uid], limit=limit, folder=folder, alert=True,
                  why="the mail is larger than any message this gateway accepts: filed unread")
