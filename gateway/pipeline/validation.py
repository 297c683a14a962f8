"""Validation at pick-up, in worker processes.

Why processes: lxml keeps a per-thread dictionary of every tag name it has
seen, which hostile input with many distinct names grows without bound, and a
libxml2 call that hangs cannot be interrupted in a thread. Workers are
recycled after `max_tasks_per_child` messages and a stuck one is killed with
its pool, so the daemon itself stays small and responsive.

The daemon validates with one difference from the `validate` command: a
municipality code that has *ended* is not an error here. Routing holds such a
message with the successor code, for an operator to decide (issue: "never
rejected, never guessed"); unknown codes are still errors.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

from lxml import etree

from gateway.messages.validate import Validator
from gateway.ops.deadlines import Facts as DeadlineFacts
from gateway.ops.deadlines import facts_of
from gateway.privacy import subject_hash
from gateway.routing.parties import Parties

#: workers are replaced after this many messages (bounds lxml's name dictionary)
MAX_TASKS_PER_CHILD = 2000


class Facts(NamedTuple):
    """What the pipeline needs of a valid message: picklable, no XML tree, no personal data (the person
    only as the keyed hash of the BSN, made in the worker: the BSN never leaves it)."""

    type: str
    version: str
    message_id: str
    created: datetime
    sender: str  #: "pi:PI-VUGHT"
    recipient: str  #: "gemeente:0599"
    dossier: str
    replies_to: str | None
    supersedes: str | None
    #: the dates the message states about the detention (the chain's due dates are computed from them)
    dates: DeadlineFacts | None = None
    #: ``subject_hash`` of each BSN of the person the message is about (empty: none, or no subject key)
    subjects: tuple[str, ...] = ()

    @property
    def recipient_code(self) -> str:
        return self.recipient.split(":", 1)[1]


class Checked(NamedTuple):
    facts: Facts | None
    #: the verdict as `nazorg-gateway validate --json` writes it (for rejected/NAME.error.json)
    verdict: dict

    @property
    def valid(self) -> bool:
        return self.facts is not None


class _EndedIsNotAnError:
    """The registries, with an ended (but known) municipality code passed on to routing."""

    def __init__(self, parties: Parties):
        self._parties = parties

    def municipality_problem(self, code: str, on: date) -> str | None:
        problem = self._parties.municipality_problem(code, on)
        if problem is None:
            return None
        known = self._parties.municipalities.get(code)
        if known is not None and known.begins <= on and known.ends is not None and known.ends <= on:
            return None
        return problem

    def institution_problem(self, code: str) -> str | None:
        return self._parties.institution_problem(code)


_validator: Validator | None = None
_subject_key: bytes | None = None


def _init_worker(institutions: str, municipalities: str | None, max_bytes: int,
                 subject_key: bytes | None = None) -> None:
    global _validator, _subject_key
    parties = Parties.load(municipalities, institutions)
    _validator = Validator(_EndedIsNotAnError(parties), max_bytes=max_bytes)
    _subject_key = subject_key


def subject_bsns(root: etree._Element) -> list[str]:
    """The BSNs naming the person a valid message is about: ``persoon/burgerservicenummer`` under the
    root, in every message type (the shared type ``Persoon``; optional: not every detainee has one)."""
    ns = root.tag[: root.tag.index("}") + 1]
    return [el.text.strip() for el in root.iterfind(f"{ns}persoon/{ns}burgerservicenummer") if el.text]


def check_bytes(data: bytes, source: str) -> Checked:
    """Validate one message (in a worker, after `_init_worker`). The BSN is hashed here, with the key
    the worker was given: only the hash leaves the worker process."""
    assert _validator is not None, "worker not initialised"
    verdict = _validator.validate_bytes(data, source)
    m = verdict.message
    if m is None or not verdict.valid:
        return Checked(None, verdict.as_dict())
    subjects: tuple[str, ...] = ()
    if _subject_key is not None:
        subjects = tuple(dict.fromkeys(subject_hash(_subject_key, bsn) for bsn in subject_bsns(m.root)))
    facts = Facts(m.type.value, m.version, m.message_id, m.created, str(m.sender), str(m.recipient), m.dossier,
                  m.replies_to, m.supersedes, facts_of(m.root), subjects)
    return Checked(facts, verdict.as_dict())


class ValidationPool:
    """A small pool of validating processes; `check` is awaitable."""

    def __repr__(self) -> str:  # never the subject key
        return f"<ValidationPool {self._workers} workers>"

    def __init__(self, *, institutions: Path, municipalities: Path | None, max_bytes: int, workers: int = 2,
                 subject_key: bytes | None = None):
        """``subject_key``: the gateway's subject key (``privacy``); None: no subject hashes are made."""
        self._args = (os.fspath(institutions), os.fspath(municipalities) if municipalities else None, max_bytes,
                      subject_key)
        self._workers = max(1, workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver: max_tasks_per_child needs a non-fork start method, and a fork of a process
        # running an event loop and SQLite connections is unsafe anyway
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_init_worker, initargs=self._args,
                                   max_tasks_per_child=MAX_TASKS_PER_CHILD)

    async def warm_up(self) -> None:
        """Start the workers (and fail early on a broken registry) before any file is taken."""
        await asyncio.gather(*(self.check(b"", "<warm-up>") for _ in range(self._workers)))

    async def check(self, data: bytes, source: str, *, timeout: float = 60.0) -> Checked:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, check_bytes, data, source), timeout)
        except (BrokenProcessPool, asyncio.TimeoutError):
            # a worker died or hangs on this input: replace the whole pool and report the file as bad
            old, self._pool = self._pool, self._new_pool()
            _kill(old)
            return Checked(None, {"file": source, "valid": False, "type": None, "version": None,
                                  "message_id": None, "sender": None, "recipient": None,
                                  "problems": [{"code": "validation-aborted", "message":
                                                "validation of this file did not finish (took longer than "
                                                f"{timeout:.0f} s or crashed the validator)", "line": None,
                                                "path": "", "value": None}]})

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _kill(pool: ProcessPoolExecutor) -> None:
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
