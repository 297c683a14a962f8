"""Routing and sealing: `received` → `queued` (sealed, ready to send) or `held` (with the reason).

The recipient was derived from the message's content at validation; here the
route table says how to reach it and the trust store whether its certificate
may be used. The sealed entity is committed together with the state change,
so the dispatcher only ever sends what was sealed and recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import structlog
from cryptography import x509

from gateway.crypto.identity import Identity
from gateway.crypto.seal import seal
from gateway.crypto.trust import TrustStore
from gateway.pipeline.disk import no_space
from gateway.routing.parties import Parties
from gateway.routing.routes import Go, decide
from gateway.store import StaleState, State, Store

log = structlog.get_logger(__name__)
#: seconds before a message is sealed again when the disk was full
DISK_FULL_RETRY = 5.0
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


class Sealer:
    def __init__(self, *, store: Store, identity: Identity, trust: TrustStore, parties: Parties,
                 routes: Mapping[str, object], certificates: Mapping[str, x509.Certificate],
                 queued: Callable[[], None], clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 parallel: int = 2):
        self.store = store
        self.identity = identity
        self.trust = trust
        self.parties = parties
        self.routes = routes
        self.certificates = certificates
        self._queued = queued
        self._clock = clock
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.parallel = max(1, parallel)

    def submit(self, message_id: str) -> None:
        self.inbox.put_nowait(message_id)

    async def run(self, stop: asyncio.Event) -> None:
        # whatever a crash left in `received` is routed first
        for record in await self.store.list(states=[State.RECEIVED], limit=1_000_000):
            self.submit(record.message_id)
        stopping = asyncio.create_task(stop.wait())
        running: set[asyncio.Task] = set()
        room = asyncio.Semaphore(self.parallel)
        try:
            while not stop.is_set():
                getting = asyncio.create_task(self.inbox.get())
                done, _ = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if getting not in done:
                    getting.cancel()
                    break
                await room.acquire()
                task = asyncio.create_task(self._one(getting.result(), room))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            stopping.cancel()
            if running:  # finish what was started: each ends in a committed state or not at all
                await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, message_id: str, room: asyncio.Semaphore) -> None:
        try:
            await self.route_and_seal(message_id)
        except Exception as e:  # a fault must not stop the service: hold this one, visibly, for an operator
            if no_space(e) is not None:  # not the message's fault: seal it again once there is room
                log.error("seal-paused", message_id=message_id, reason="disk-full", alert=True,
                          retry_in=DISK_FULL_RETRY)
                asyncio.get_running_loop().call_later(DISK_FULL_RETRY, self.submit, message_id)
                return
            log.exception("seal-error", message_id=message_id)
            try:
                record = await self.store.get(message_id)
                if record is not None and record.state in (State.RECEIVED, State.HELD):
                    await self._hold(record, f"sealing failed ({type(e).__name__}): see the log; release to retry",
                                     None, "sealer")
            except Exception as again:  # the hold itself failed: the message stays received, sealed at start
                log.error("seal-hold-failed", message_id=message_id, error=type(again).__name__, alert=True)
        finally:
            room.release()

    async def route_and_seal(self, message_id: str, *, actor: str = "sealer") -> State | None:
        record = await self.store.get(message_id)
        if record is None or record.state not in (State.RECEIVED, State.HELD):
            return None
        now = self._clock()
        decision = decide(record.recipient, self.routes, self.certificates, self.parties, self.trust,
                          now=now, on=now.astimezone(AMSTERDAM).date())
        if not isinstance(decision, Go):
            return await self._hold(record, decision.reason, decision.successor, actor)
        try:
            xml = await asyncio.to_thread(_read, record.spool_path)
            sealed = await asyncio.to_thread(seal, xml, self.identity, decision.certificate, decision.route.profile,
                                             content_filename=f"{record.type}.xml")
        except FileNotFoundError:
            return await self._hold(record, "the spooled copy of the message is missing: drop the file again "
                                            "with a new berichtId", None, actor)
        try:
            await self.store.save_sealed(message_id, sealed.entity, sealed.mic, transport=decision.route.transport,
                                         address=decision.route.address, profile=decision.route.profile.name)
        except StaleState:
            return None  # an operator cancelled it meanwhile
        log.info("sealed", message_id=message_id, type=record.type, recipient=record.recipient,
                 transport=decision.route.transport, profile=decision.route.profile.name, size=len(sealed.entity))
        self._queued()
        return State.QUEUED

    async def _hold(self, record, reason: str, successor: str | None, actor: str) -> State | None:
        if record.state is State.HELD and record.reason == reason:
            return State.HELD
        try:
            await self.store.transition(record.message_id, State.HELD, reason=reason, actor=actor,
                                        expect=[State.RECEIVED, State.HELD], successor=successor)
        except StaleState:
            return None
        log.warning("held", message_id=record.message_id, type=record.type, recipient=record.recipient,
                    reason=reason, successor=successor)
        return State.HELD


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
