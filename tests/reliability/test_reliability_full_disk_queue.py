"""A disk that fills while messages are sealed and sent: the sealer and the dispatcher wait for room (one
alert each) instead of stopping the daemon or holding the message, and nothing is lost or sent twice."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from datetime import datetime, timedelta, timezone

from structlog.testing import capture_logs

from gateway.config import RetryPolicy
from gateway.pipeline.dispatcher import Dispatcher
from gateway.pipeline.transports import Handed
from gateway.store import NewMessage, State, Store
from test_reliability_full_disk import fill


class Accepting:
    """A transport that takes everything (the disk, not the peer, is what this test is about)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, *, message_id, message_type, address, entity, mic) -> Handed:
        self.sent.append(message_id)
        return Handed("250 2.0.0 Ok", f"<{message_id}@test>")

    async def close(self) -> None:
        pass


async def queue_one(store: Store) -> str:
    mid = str(uuid.uuid4())
    data = mid.encode()
    await store.accept(NewMessage(message_id=mid, type="meldingsbericht", version="1.0", sender="pi:PI-VUGHT",
                                  recipient="gemeente:0599", dossier="D-1", replies_to=None, supersedes=None,
                                  priority=0, created_at=datetime.now(timezone.utc), file_name="name:x",
                                  size=len(data), sha256=hashlib.sha256(data).hexdigest(), spool_path=f"/x/{mid}"))
    await store.save_sealed(mid, b"sealed " + data * 50, "mic", transport="email",
                            address="nazorg@gemeente-0599.example.nl", profile="compatible")
    return mid


async def test_the_dispatcher_waits_for_room_and_then_sends_each_message_once(small_disk, monkeypatch):
    import gateway.pipeline.dispatcher as dispatcher_mod

    monkeypatch.setattr(dispatcher_mod, "DISK_FULL_RETRY", 0.2)
    disk = small_disk(2048)
    store = await Store.open(f"sqlite+aiosqlite:///{disk / 'gateway.db'}")
    try:
        ids = [await queue_one(store) for _ in range(5)]
        filler = disk / "filler"
        fill(filler)
        transport = Accepting()
        d = Dispatcher(store=store, transports={"email": transport}, workers=2, per_destination={},
                       default_per_destination=2, lease=timedelta(minutes=5), retry=RetryPolicy())
        stop = asyncio.Event()
        with capture_logs() as logs:
            running = asyncio.create_task(d.run(stop))
            await asyncio.sleep(1.5)
            assert not running.done(), "a full disk must not stop the dispatcher"
            assert transport.sent == [], "nothing is handed over while its claim cannot be committed"
            paused = [e for e in logs if e["event"] == "dispatch-paused"]
            assert len(paused) == 1 and paused[0]["alert"] is True and paused[0]["reason"] == "disk-full"
            os.unlink(filler)  # room returns
            for _ in range(100):
                states = [(await store.get(m)).state for m in ids]
                if all(state is State.SENT for state in states):
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(running, 30)
        assert sorted(transport.sent) == sorted(ids), "each message once, none lost"
        assert any(e["event"] == "dispatch-resumed" for e in logs)
    finally:
        await store.close()
