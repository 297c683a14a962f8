"""Pick-up: taking ownership of the files PI systems drop into the outbox.

Order of the steps, so that a crash at any point loses nothing and sends
nothing twice:
1. no process holds the file open for writing (a Linux lease probe, where it works: a file renamed
   into the outbox as the convention asks is taken at once; an empty one waits), or else it has
   been quiet (mtime unchanged) for `stable_after`;
2. read it, hash it, validate it (in a worker process);
3. commit the pick-up in the store (accepted: the message row in state
   `received`; rejected: the rejection; duplicate: the report);
4. move the file (spool/<message id>.xml, or rejected/NAME with its
   NAME.error.json and NAME.error.txt) — a rename, so it leaves the outbox in
   the same step;
5. confirm the pick-up in the store.
At start, `reconcile` finishes step 4-5 for every pick-up committed without
its confirmation. A file whose hash was accepted before, or whose message id
exists, is a duplicate: reported and moved to rejected/, never sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import structlog
from watchfiles import awatch

from adapters import outbox_fs
from gateway.pipeline.disk import no_space
from gateway.pipeline.validation import Checked, Facts, ValidationPool
from gateway.store import DuplicateMessage, NewMessage, State, Store

log = structlog.get_logger(__name__)

#: a release notice goes before a backlog of screening messages (higher first)
PRIORITY = {"spoedontslagbericht": 30, "ontslagbericht": 20, "overdrachtsdocument": 10, "gemeenteblad": 10,
            "basisdocument": 0, "meldingsbericht": 0}


class Pickup:
    def __init__(self, *, store: Store, validation: ValidationPool, outbox: Path, spool: Path, rejected: Path,
                 own_party: str, max_bytes: int, stable_after: float, rescan_interval: float,
                 accepted: Callable[[str], Awaitable[None] | None], parallel: int = 4,
                 name_key: bytes | None = None):
        self.store = store
        #: producers may name a file after the person in it: the store keeps a keyed digest of the name
        self._name_key = name_key
        self.validation = validation
        self.outbox, self.spool, self.rejected = outbox, spool, rejected
        # a message's own paths are strings, never Paths: pathlib interns each name (adapters/outbox_fs.py)
        self._outbox_dir, self._spool_dir = os.fspath(outbox), os.fspath(spool)
        self.own_party = own_party
        self.max_bytes = max_bytes
        self.stable_after = stable_after
        self.rescan_interval = rescan_interval
        self._accepted = accepted
        self._parallel = asyncio.Semaphore(parallel)
        #: seconds until the earliest file that is still being written may be taken (None: none)
        self._ripe_in: float | None = None
        #: why pick-up is paused (a full disk: nothing is taken until a retry finds room), or None
        self.paused: str | None = None
        self._full_now: BaseException | None = None  #: the disk-full error of the scan under way

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.reconcile()
        changed = asyncio.Event()
        # watchfiles sets the event it is given when its task is cancelled: never hand it `stop`, or a
        # crash of pick-up would stop the whole daemon as if asked to (exit 0, the crash unreported)
        watching = asyncio.Event()
        watcher = asyncio.create_task(self._watch(watching, changed))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                changed.clear()
                await self.scan()
                # events wake us early; the timeout is the safety-net rescan (events can be lost,
                # e.g. on network file systems) or the moment the next quiet file is ripe
                timeout = self.rescan_interval if self._ripe_in is None else min(self.rescan_interval, self._ripe_in)
                # paused (disk full): new files do not wake us, the next try is one rescan interval away
                waking = asyncio.create_task(changed.wait() if self.paused is None else stop.wait())
                await asyncio.wait({waking, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
        finally:
            watching.set()
            stopping.cancel()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, stop: asyncio.Event, changed: asyncio.Event) -> None:
        async for _changes in awatch(self.outbox, stop_event=stop, recursive=False, debounce=20, step=10,
                                     rust_timeout=1000, yield_on_timeout=False):
            changed.set()

    async def scan(self) -> int:
        """Take every file that is ready; return how many were taken.

        A file is ready when no process holds it open for writing, or (where that cannot be known,
        or while a writer holds it) when it has not been modified for `stable_after` seconds (its
        mtime says so: no second look needed); `_ripe_in` says when the next one that is not ready
        yet will be."""
        self._ripe_in = None
        self._full_now = None
        finished: list[str] = []
        if self.paused is not None:  # finish first what the full disk cut short after its commit
            try:
                finished = await self.reconcile()
            except Exception as e:
                if no_space(e) is None:
                    raise
                return 0
        ripe = []
        for c in outbox_fs.candidates(self.outbox):
            age = time.time() - c.mtime_ns / 1e9
            if age < self.stable_after and (c.size == 0 or outbox_fs.open_for_writing(os.path.join(self._outbox_dir, c.name)) is not False):
                wait = self.stable_after - age
                self._ripe_in = wait if self._ripe_in is None else min(self._ripe_in, wait)
            else:
                ripe.append(c.name)
        # several files at once, so validation (in worker processes) overlaps the store's commits;
        # the store arbitrates duplicates between them (same file or same id: one wins)
        results = await asyncio.gather(*(self._take_limited(name) for name in ripe))
        if self._full_now is not None and self.paused is None:
            # a full disk (spool, store or rejected/): take nothing more until a retry finds room; what
            # was cut short stays where it was (the file in the outbox; a committed pick-up is finished
            # by the retry's reconcile)
            self.paused = no_space(self._full_now)
            log.error("pickup-paused", reason=self.paused, error=type(self._full_now).__name__, alert=True,
                      retry_in=self.rescan_interval)
        elif self._full_now is None and self.paused is not None:
            log.warning("pickup-resumed", after=self.paused, finished=len(finished))
            self.paused = None
        for message_id in finished:
            result = self._accepted(message_id)
            if asyncio.iscoroutine(result):
                await result
        return sum(results)

    async def _take_limited(self, name: str) -> int:
        async with self._parallel:
            if self._full_now is not None:
                return 0
            try:
                await self.take(name)
                return 1
            except FileNotFoundError:
                return 0  # the producer took it back
            except Exception as e:
                if no_space(e) is None:
                    raise
                self._full_now = e
                return 0

    # -- one file ---------------------------------------------------------------------------------

    async def take(self, name: str) -> None:
        path = os.path.join(self._outbox_dir, name)
        size = os.stat(path).st_size
        # file system work (reads, renames, fsyncs) runs in threads: the event loop keeps sending
        data = await asyncio.to_thread(outbox_fs.read_bounded, path, self.max_bytes)
        if data is None:
            sha256 = await asyncio.to_thread(_sha256_file, path)
            await self._reject(name, size, sha256, _too_large(name, size, self.max_bytes), "too-large")
            return
        sha256 = hashlib.sha256(data).hexdigest()
        checked = await self.validation.check(data, name)
        if not checked.valid:
            await self._reject(name, size, sha256, checked.verdict, _first_code(checked))
            return
        facts = checked.facts
        if facts.sender != self.own_party:
            verdict = dict(checked.verdict, valid=False, problems=[{
                "code": "wrong-sender", "line": None, "path": "berichtkop/afzender", "value": facts.sender,
                "message": f"the message names {facts.sender} as its sender, but this gateway sends for "
                           f"{self.own_party} only"}])
            await self._reject(name, size, sha256, verdict, "wrong-sender")
            return
        spool_path = os.path.join(self._spool_dir, f"{facts.message_id}.xml")
        try:
            # the dates and subject hashes go into the same transaction: they outlive the spool copy
            new = _new_message(facts, self.stored_name(name), size, sha256, spool_path)
            record = await self.store.accept(new, dates=facts.dates, subjects=facts.subjects)
        except DuplicateMessage as e:  # the store's unique indexes decide (also between concurrent takes)
            if e.kind == "same-id":
                reason = (f"message id {facts.message_id} was already taken from another file; a corrected "
                          "message needs a new berichtId (and may name the old one in <vervangt>)")
            else:
                earlier = await self.store.find_pickup(sha256)
                reason = (f"this exact file was already taken on {earlier.at:%Y-%m-%d %H:%M:%S} UTC as message "
                          f"{earlier.message_id}; it is not sent again")
            await self._duplicate(name, size, sha256, e.kind, facts.message_id, reason)
            return
        await asyncio.to_thread(outbox_fs.move, path, spool_path)
        # the spool copy is durable: sealing may start now, while the confirmation is committed (a
        # crash before that commit is finished by `reconcile`, which finds the move already done)
        result = self._accepted(facts.message_id)
        await self.store.confirm_accepted(sha256)
        log.info("picked-up", message_id=facts.message_id, type=facts.type, recipient=facts.recipient,
                 size=size, state=record.state.value)
        if asyncio.iscoroutine(result):
            await result

    def stored_name(self, name: str) -> str:
        return stored_file_name(name, self._name_key)

    async def _unfinished_refusal(self, name: str, sha256: str) -> str | None:
        """The rejected/ name of an earlier refusal of this very file that a crash stopped before the
        move (the file is back in our hands): finishing it keeps one report, not a second `NAME.1`."""
        earlier = await self.store.last_refusal(sha256, self.stored_name(name))
        if earlier is None or not earlier.spool_path:
            return None
        wanted, candidate, n = Path(earlier.spool_path).name, name, 0
        while (self.rejected / candidate).exists() or (self.rejected / f"{candidate}.error.json").exists():
            if self.stored_name(candidate) == wanted:
                reported = (self.rejected / f"{candidate}.error.json").exists()
                return candidate if reported and not (self.rejected / candidate).exists() else None
            n += 1
            candidate = f"{name}.{n}"
        return None

    async def _reject(self, name: str, size: int, sha256: str, verdict: dict, code: str) -> None:
        if (target := await self._unfinished_refusal(name, sha256)) is None:
            target = outbox_fs.free_name(self.rejected, name)
            await self.store.record_rejection(file_name=self.stored_name(name), size=size, sha256=sha256,
                                              declared_id=verdict.get("message_id"),
                                              declared_type=verdict.get("type"), reason=code,
                                              rejected_path=str(self.rejected / self.stored_name(target)))
        await asyncio.to_thread(self._file_away, name, target, dict(verdict, sha256=sha256))
        # the file's name is the producer's choice and may hold personal data: the log names its hash
        log.warning("rejected", sha256=sha256[:16], folder="rejected", declared_id=verdict.get("message_id"),
                    declared_type=verdict.get("type"),
                    problems=[{k: p.get(k) for k in ("code", "path", "line")} for p in verdict.get("problems", [])])

    async def _duplicate(self, name: str, size: int, sha256: str, kind: str, message_id: str | None,
                         reason: str) -> None:
        if (target := await self._unfinished_refusal(name, sha256)) is None:
            target = outbox_fs.free_name(self.rejected, name)
            await self.store.record_duplicate(file_name=self.stored_name(name), size=size, sha256=sha256,
                                              kind=kind, message_id=message_id, reason=reason,
                                              rejected_path=str(self.rejected / self.stored_name(target)))
        verdict = {"file": name, "valid": False, "message_id": message_id, "duplicate": kind,
                   "problems": [{"code": f"duplicate-{kind}", "message": reason, "line": None, "path": "",
                                 "value": None}]}
        await asyncio.to_thread(self._file_away, name, target, dict(verdict, sha256=sha256))
        log.warning("duplicate-dropped", sha256=sha256[:16], kind=kind, message_id=message_id, folder="rejected")

    def _file_away(self, name: str, target: str, verdict: dict) -> None:
        verdict = dict(verdict, file=name, rejected_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        outbox_fs.write_atomic(self.rejected / f"{target}.error.json",
                               json.dumps(verdict, ensure_ascii=False, indent=2).encode() + b"\n")
        outbox_fs.write_atomic(self.rejected / f"{target}.error.txt", _readable(verdict).encode())
        outbox_fs.move(self.outbox / name, self.rejected / target)

    # -- after a crash ----------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Finish what a crash left between committing a pick-up and moving its file, and between
        proving a delivery and removing the plaintext copy; the ids of the messages now spooled."""
        finished = []
        for folder in (self.rejected, self.spool):  # half-written reports or copies of a killed run
            if (left := outbox_fs.remove_own_temporaries(folder)):
                log.info("temporaries-removed", folder=folder.name, count=left)
        spooled = {path.stem: path for path in self.spool.glob("*.xml")}
        for message_id, state in (await self.store.states_of(spooled)).items():
            if state in (State.DELIVERED, State.ACKNOWLEDGED):
                outbox_fs.remove_plaintext(spooled[message_id])
                log.info("spool-copy-removed", message_id=message_id, state=state.value)
        by_stored_name: dict[str, Path] | None = None
        for p in await self.store.pending_pickups():
            if by_stored_name is None:  # the outbox is small: its names, as the store keeps them
                by_stored_name = {self.stored_name(f.name): f for f in self.outbox.iterdir() if f.is_file()}
            in_outbox = by_stored_name.get(p.file_name, self.outbox / ".nazorg-no-such-file")
            in_spool = Path(p.spool_path) if p.spool_path else None
            if in_spool is not None and not in_spool.exists() and in_outbox.exists() \
                    and _sha256_file(in_outbox) == p.sha256:
                outbox_fs.move(in_outbox, in_spool)
                action = "moved-to-spool"
            elif in_spool is not None and in_spool.exists() and in_outbox.exists() \
                    and _sha256_file(in_outbox) == p.sha256:
                in_outbox.unlink()  # both copies: the spool one counts
                outbox_fs.fsync_dir(self.outbox)
                action = "removed-outbox-copy"
            else:
                action = "nothing-left-to-do"
            await self.store.confirm_pickup(p.id)
            log.info("pickup-reconciled", message_id=p.message_id, action=action)
            if in_spool is not None and in_spool.exists():
                finished.append(p.message_id)
        return finished


def stored_file_name(name: str, key: bytes | None) -> str:
    """What the store keeps of a file name: a digest (keyed with the subject key when configured), as a
    file named after a person (`999998226.xml`) would otherwise put that person in the store."""
    raw = name.encode("utf-8", "surrogateescape")
    digest = hmac.new(key, raw, hashlib.sha256) if key is not None else hashlib.sha256(b"nazorg file name\0" + raw)
    return "name:" + digest.hexdigest()[:32]


def _new_message(facts: Facts, name: str, size: int, sha256: str, spool_path: str) -> NewMessage:
    return NewMessage(message_id=facts.message_id, type=facts.type, version=facts.version, sender=facts.sender,
                      recipient=facts.recipient, dossier=facts.dossier, replies_to=facts.replies_to,
                      supersedes=facts.supersedes, priority=PRIORITY.get(facts.type, 0), created_at=facts.created,
                      file_name=name, size=size, sha256=sha256, spool_path=spool_path)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _too_large(name: str, size: int, limit: int) -> dict:
    return {"file": name, "valid": False, "type": None, "message_id": None,
            "problems": [{"code": "too-large", "line": None, "path": "", "value": None,
                          "message": f"the file has {size} bytes; the limit is {limit}"}]}


def _first_code(checked: Checked) -> str:
    problems = checked.verdict.get("problems") or [{}]
    return problems[0].get("code") or "invalid"


def _readable(verdict: dict) -> str:
    lines = [f"File: {verdict.get('file')}", f"Refused at: {verdict.get('rejected_at')}"]
    if verdict.get("type"):
        lines.append(f"Message type: {verdict['type']}")
    if verdict.get("message_id"):
        lines.append(f"Message id: {verdict['message_id']}")
    lines.append("")
    lines.append("Why:")
    for p in verdict.get("problems", []):
        where = " ".join(x for x in (f"line {p['line']}" if p.get("line") else "", p.get("path") or "") if x)
        lines.append(f"- {where + ': ' if where else ''}{p.get('message')} [{p.get('code')}]")
    lines += ["", "The file was not sent. Correct it and drop it into the outbox again "
              "(a changed message keeps its berichtId only if this one was never sent)."]
    return "\n".join(lines) + "\n"
