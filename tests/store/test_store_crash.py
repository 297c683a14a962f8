"""A crash: a process dies (no close, no checkpoint, a write half done); what it committed survives."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

from gateway.store import LEASE_EXPIRED, State, Store
from paths import NOW, ROOT

DOOMED = """
import asyncio, hashlib, os, sqlite3, sys
from datetime import datetime, timedelta
from gateway.store import NewMessage, Store

def msg(i):
    body = f"<m{i}/>".encode()
    return NewMessage(f"m{i}", "meldingsbericht", "1.0", "pi:PI-VUGHT", "gemeente:0599", f"D{i}", None, None, 0,
                      datetime.fromisoformat(sys.argv[3]), f"m{i}.xml", len(body), hashlib.sha256(body).hexdigest(),
                      f"/spool/m{i}.xml")

async def main(url, path, now):
    s = await Store.open(url, clock=lambda: now)
    for i in range(4):
        await s.accept(msg(i))
    for i in range(3):
        await s.save_sealed(f"m{i}", b"sealed", "mic", transport="smtp", address="a@b", profile="compatible")
    await s.claim(owner="doomed", limit=2, lease=timedelta(seconds=60))   # m0, m1 sending
    # a write in flight when the power goes: BEGIN IMMEDIATE taken, rows written, never committed
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE messages SET state='cancelled' WHERE message_id='m3'")
    raw.execute("INSERT INTO audit (at, action, object, result, origin, actor, prev_hash, hash) "
                "VALUES ('2026-01-01 00:00:00.000000', 'half', 'm3', 'never', 'x', 'x', 'x', 'x')")
    print("dying", flush=True)
    os._exit(9)   # no close(), no checkpoint, no rollback

asyncio.run(main(sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])))
"""


async def test_committed_state_survives_a_crash_and_leases_come_back(db_path, url, clock):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DOOMED, url, str(db_path), NOW.isoformat(),
                                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 9 and b"dying" in out, err.decode()[-2000:]
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size > 0  # the committed work is still only in the WAL: reopening must replay it

    clock.now = NOW + timedelta(seconds=61)
    store = await Store.open(url, clock=clock)
    try:
        states = {m: (await store.get(m)).state for m in ("m0", "m1", "m2", "m3")}
        assert states == {"m0": State.SENDING, "m1": State.SENDING, "m2": State.QUEUED, "m3": State.RECEIVED}
        assert not [r for r in await store.audit_rows(limit=1000) if r["action"] == "half"]
        assert [p.message_id for p in await store.pending_pickups()] == ["m0", "m1", "m2", "m3"]
        assert await store.sealed("m2") == b"sealed"
        # the dead process's leases ran out: its messages go back to the queue, attempt counted
        assert sorted(await store.release_expired_leases()) == ["m0", "m1"]
        assert (await store.get("m0")).reason == LEASE_EXPIRED
        again = await store.claim(owner="reborn", limit=10, lease=timedelta(minutes=1))
        assert sorted((r.message_id, r.attempts) for r in again) == [("m0", 2), ("m1", 2), ("m2", 1)]
        assert [t.to_state for t in await store.timeline("m0")] == [
            State.RECEIVED, State.QUEUED, State.SENDING, State.RETRY_WAIT, State.SENDING]
    finally:
        await store.close()
