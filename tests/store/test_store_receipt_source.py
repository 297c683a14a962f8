"""Receipts name their carrier (store migration 10): one receipt per message, kind and carrier, so a receipt mail
read again (a crash between its filing and its IMAP move) adds nothing; added to a store of the previous schema
with its receipt rows kept."""

from __future__ import annotations

from gateway.store import MIGRATIONS, Filed, NewReceipt, ReceiptFiling, State, Store


def counted(sql, name: str) -> float:
    return (sql("SELECT value FROM event_counts WHERE name = ?", name) or [(0,)])[0][0]


def receipt_adds(sql, message_id: str) -> int:
    return sql("SELECT count(*) FROM audit WHERE action = 'receipt.add' AND object = ?", message_id)[0][0]


async def test_migration_10_adds_the_source_to_a_store_of_the_previous_schema_and_keeps_its_rows(url, clock, make,
                                                                                                  db_path, sql):
    old = await Store.open(url, clock=clock, migrations=MIGRATIONS[:9])
    await old.accept(make("m1"))
    await old.close()
    # two receipts alike, as version 9 kept them (the second reading of a mail among them); ids with a gap
    for rid in (3, 7):
        sql("INSERT INTO receipts (id, message_id, at, kind, verdict, detail) "
            "VALUES (?, 'm1', '2026-11-30 10:00:00.000000', 'dsn', 'delayed', '4.4.1')", rid)
    assert "source" not in {r[1] for r in sql("PRAGMA table_info(receipts)")}
    assert counted(sql, "receipt:dsn:delayed") == 2

    store = await Store.open(url, clock=clock)
    try:
        assert sql("SELECT max(version) FROM schema_version") == [(10,)]
        assert "source" in {r[1] for r in sql("PRAGMA table_info(receipts)")}
        assert sql("SELECT id, kind, verdict, detail, source FROM receipts ORDER BY id") == [
            (3, "dsn", "delayed", "4.4.1", None), (7, "dsn", "delayed", "4.4.1", None)]
        assert [(r.verdict, r.source) for r in await store.receipts("m1")] == [("delayed", None)] * 2
        assert sql("SELECT \"unique\" FROM pragma_index_list('receipts') WHERE name = 'uq_receipts_source'") == [(1,)]
        assert counted(sql, "receipt:dsn:delayed") == 2  # the copied rows are not counted again
        # the counting trigger is back: a new receipt counts, one from the same carrier is not kept
        assert await store.add_receipt("m1", kind="dsn", verdict="delayed", detail="4.4.1", source="<a@relay>")
        assert not await store.add_receipt("m1", kind="dsn", verdict="delayed", detail="4.4.1", source="<a@relay>")
        assert counted(sql, "receipt:dsn:delayed") == 3
        assert sql("SELECT max(id) FROM receipts") == [(8,)]
    finally:
        await store.close()


async def test_a_receipt_from_a_carrier_filed_already_writes_nothing_and_its_transition_is_already(
        store, make, queue, force, sql):
    """``file_receipts`` with the batch of a mail read again: no receipt row, no audit row, no count, and the
    transition is tried as before (``already``); a receipt without a carrier is always kept."""
    msg = make()
    await queue(store, msg)
    force(msg.message_id, State.SENT)
    filing = ReceiptFiling(msg.message_id, NewReceipt("dsn", "delivered", "2.0.0", "<dsn-1@relay>"), State.DELIVERED,
                           (State.SENT,), "delivered")
    assert await store.file_receipts([filing]) == [Filed("moved", State.SENT)]
    assert await store.file_receipts([filing]) == [Filed("already", State.DELIVERED)]
    assert [r.source for r in await store.receipts(msg.message_id)] == ["<dsn-1@relay>"]
    assert receipt_adds(sql, msg.message_id) == 1 and counted(sql, "receipt:dsn:delivered") == 1
    assert [t.to_state for t in await store.timeline(msg.message_id)].count(State.DELIVERED) == 1

    # the same words from another carrier, another kind from the same one, and no carrier at all: all kept
    again = [ReceiptFiling(msg.message_id, NewReceipt("dsn", "delivered", "2.0.0", "<dsn-2@relay>")),
             ReceiptFiling(msg.message_id, NewReceipt("unsigned-mdn", "displayed", "read", "<dsn-1@relay>")),
             ReceiptFiling(msg.message_id, NewReceipt("mdn", "match", "ok")),
             ReceiptFiling(msg.message_id, NewReceipt("mdn", "match", "ok"))]
    assert await store.file_receipts(again) == [Filed("kept", State.DELIVERED)] * 4
    assert len(await store.receipts(msg.message_id)) == 5 and receipt_adds(sql, msg.message_id) == 5
    assert counted(sql, "receipt:dsn:delivered") == 2
