"""The status counters (store migration 5): kept by triggers, they always equal a count of the messages."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import delete

from gateway.store import State
from gateway.store.schema import messages, pickups, receipts, sealed, transitions


async def queued(store, msg) -> None:
    await store.accept(msg)
    await store.save_sealed(msg.message_id, b"sealed", "mic", transport="smtp", address="a@b.example",
                            profile="compatible")


def kept(sql) -> tuple[list, list]:
    counts = sql("SELECT state, type, recipient, n FROM message_counts WHERE n > 0 ORDER BY 1, 2, 3")
    activity = sql("SELECT recipient, last_sent_at, last_acknowledged_at FROM recipient_activity ORDER BY 1")
    return counts, activity


def counted(sql) -> tuple[list, list]:
    counts = sql("SELECT state, type, recipient, count(*) FROM messages GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    activity = sql("SELECT recipient, max(sent_at), max(acknowledged_at) FROM messages WHERE sent_at IS NOT NULL "
                   "GROUP BY 1 ORDER BY 1")
    return counts, activity


async def test_counters_follow_every_accept_transition_and_delete(store, make, sql, clock):
    rng = random.Random(5)
    ids = []
    for i in range(60):
        msg = make(type=rng.choice(["meldingsbericht", "ontslagbericht"]),
                   recipient=rng.choice(["gemeente:0599", "gemeente:0344", "pi:PI-HAAGLANDEN"]))
        await queued(store, msg)
        ids.append(msg.message_id)
    assert kept(sql) == counted(sql)
    claimed = [r.message_id for r in await store.claim(owner="t", limit=40, lease=timedelta(minutes=5))]
    assert len(claimed) == 40
    for mid in claimed:
        clock.advance(seconds=rng.randint(1, 100))
        await store.transition(mid, State.SENT, actor="t", expect=State.SENDING)
        if rng.random() < 0.6:
            await store.transition(mid, State.ACKNOWLEDGED, actor="t", expect=State.SENT)
    for mid in [m for m in ids if m not in claimed][:10]:
        await store.transition(mid, State.CANCELLED, actor="t", expect=State.QUEUED)
    assert kept(sql) == counted(sql)
    assert sum(n for *_, n in kept(sql)[0]) == 60 and len(kept(sql)[1]) >= 2
    per_state = dict(sql("SELECT state, count(*) FROM messages GROUP BY state"))
    assert {s.value: n for s, n in (await store.counts()).items() if n} == per_state

    def purge_some(conn):  # as the retention purge does
        for table in (sealed, receipts, transitions, pickups, messages):
            conn.execute(delete(table).where(table.c.message_id.in_(ids[45:55])))

    await store._run.write(purge_some)
    counts, activity = kept(sql)
    assert counts == counted(sql)[0] and sum(n for *_, n in counts) == 50
    # the last delivery per destination is history: a purge does not take it back
    assert {r for r, *_ in activity} >= {r for r, *_ in counted(sql)[1]}
