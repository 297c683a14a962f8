"""The audit trail's hash chain and signed checkpoints: every kind of tampering is found, and named where."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.crypto.identity import Identity
from gateway.ops.audit import checkpoint_service, verify, write_checkpoint
from gateway.store import MIGRATIONS, Store
from gateway.store.chain import GENESIS, row_hash
from paths import NOW, ROOT


def make_identity(name: str, key=None) -> Identity:
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365)).sign(key, hashes.SHA256()))
    return Identity(key, cert)


@pytest.fixture(scope="module")
def own() -> Identity:
    return make_identity("gateway")


@pytest.fixture(scope="module")
def other() -> Identity:
    return make_identity("intruder", ec.generate_private_key(ec.SECP256R1()))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
def db(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
async def store(db):
    s = await Store.open(f"sqlite+aiosqlite:///{db}", clock=Clock())
    yield s
    await s.close()


async def fill(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.audit(action="operator.look", object=f"m{i}", result="shown", actor="tester")


def raw(db, statement: str, *params) -> list[tuple]:
    c = sqlite3.connect(db, isolation_level=None)
    try:
        return c.execute(statement, params).fetchall()
    finally:
        c.close()


def problems(report) -> list[tuple[int, str]]:
    return [(p.id, p.kind) for p in report.problems]


async def test_rows_are_chained_in_their_transaction_and_an_intact_trail_verifies(store, db, own):
    await fill(store, 5)
    rows = raw(db, "SELECT id, at, action, object, result, origin, actor, prev_hash, hash FROM audit ORDER BY id")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][7] == GENESIS and all(rows[i][7] == rows[i - 1][8] for i in range(1, 5))
    at = datetime.fromisoformat(rows[2][1]).replace(tzinfo=timezone.utc)
    assert rows[2][8] == row_hash(rows[2][7], 3, at, *rows[2][2:7])
    assert (await write_checkpoint(store, own)).up_to_id == 5
    assert await write_checkpoint(store, own) is None  # nothing new since: no second checkpoint
    report = await verify(store, own.cert)
    assert report.ok and report.rows == 5 and report.checkpoints == 1 and report.covered_up_to == 5


async def test_an_edited_field_is_found_at_its_row(store, db, own):
    await fill(store, 6)
    raw(db, "UPDATE audit SET result = 'hidden' WHERE id = 4")
    report = await verify(store, own.cert)
    assert problems(report) == [(4, "edited")] and report.first_bad.id == 4


async def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(store, db, own):
    await fill(store, 6)
    prev, at, *rest = raw(db, "SELECT prev_hash, at, action, object, result, origin, actor FROM audit WHERE id = 3")[0]
    forged = row_hash(prev, 3, datetime.fromisoformat(at).replace(tzinfo=timezone.utc), rest[0], rest[1], "hidden",
                      *rest[3:])
    raw(db, "UPDATE audit SET result = 'hidden', hash = ? WHERE id = 3", forged)
    assert problems(await verify(store, own.cert)) == [(4, "link-broken")]


async def test_a_deleted_row_is_found(store, db, own):
    await fill(store, 6)
    raw(db, "DELETE FROM audit WHERE id = 3")
    report = await verify(store, own.cert)
    assert problems(report) == [(4, "removed")] and "rows 3 to 3" in report.problems[0].detail


async def test_two_swapped_rows_are_found(store, db, own):
    await fill(store, 6)
    cols = "at, action, object, result, origin, actor, prev_hash, hash"
    two, three = raw(db, f"SELECT {cols} FROM audit WHERE id IN (2, 3) ORDER BY id")
    sets = ", ".join(f"{c} = ?" for c in cols.split(", "))
    raw(db, f"UPDATE audit SET {sets} WHERE id = 2", *three)
    raw(db, f"UPDATE audit SET {sets} WHERE id = 3", *two)
    report = await verify(store, own.cert)
    assert report.first_bad.id == 2 and {k for i, k in problems(report)} >= {"link-broken", "edited"}


async def test_an_inserted_row_is_found(store, db, own):
    await fill(store, 6)
    # rows 4.. moved up one place and a row with a well-formed link and hash slipped in as 4
    raw(db, "UPDATE audit SET id = id + 100 WHERE id >= 4")
    raw(db, "UPDATE audit SET id = id - 99 WHERE id >= 104")
    prev = raw(db, "SELECT hash FROM audit WHERE id = 3")[0][0]
    at = NOW + timedelta(hours=1)
    h = row_hash(prev, 4, at, "message.transition", "m9", "sent", "x", "x")
    raw(db, "INSERT INTO audit VALUES (4, ?, 'message.transition', 'm9', 'sent', 'x', 'x', ?, ?)",
        at.replace(tzinfo=None).isoformat(sep=" "), prev, h)
    report = await verify(store, own.cert)
    assert report.first_bad.id == 5 and problems(report)[0] == (5, "link-broken")
    assert (4, "edited") not in problems(report) and (7, "edited") in problems(report)


async def test_a_deleted_last_row_shows_once_the_next_is_written(store, db, own):
    await fill(store, 4)
    raw(db, "DELETE FROM audit WHERE id = 4")
    await fill(store, 1, start=4)
    assert problems(await verify(store, own.cert)) == [(5, "removed")]


async def test_a_rewritten_chain_or_a_truncated_tail_is_caught_by_the_checkpoint(store, db, own):
    await fill(store, 5)
    await write_checkpoint(store, own)
    await fill(store, 3, start=5)
    raw(db, "DELETE FROM audit WHERE id >= 4")  # the tail, including the checkpointed row 5
    report = await verify(store, own.cert)
    assert problems(report) == [(5, "removed")] and "checkpoint 1" in report.problems[0].detail

    # rows 4.. rebuilt with a consistent chain (and AUTOINCREMENT's memory reset): only the checkpoint tells
    raw(db, "UPDATE sqlite_sequence SET seq = 3 WHERE name = 'audit'")
    await fill(store, 4, start=30)
    report = await verify(store, own.cert)
    assert problems(report) == [(5, "checkpoint-mismatch")]


async def test_a_checkpoint_is_verified_with_the_certificate_and_refused_with_another_key(store, db, own, other):
    await fill(store, 3)
    await write_checkpoint(store, own)
    assert (await verify(store, [other.cert, own.cert])).ok  # the old and the new certificate, say
    report = await verify(store, other.cert)
    assert problems(report) == [(1, "checkpoint-signer")]

    await fill(store, 2, start=3)
    await write_checkpoint(store, other)  # by a key that is not the gateway's
    assert problems(await verify(store, own.cert)) == [(2, "checkpoint-signer")]
    # the intruder puts the gateway's certificate on its own signature
    raw(db, "UPDATE audit_checkpoints SET cert_fingerprint = ?, certificate = (SELECT certificate FROM "
            "audit_checkpoints WHERE id = 1) WHERE id = 2", own.fingerprint)
    assert problems(await verify(store, own.cert)) == [(2, "checkpoint-signature")]
    # a genuine signature over another row's hash
    raw(db, "DELETE FROM audit_checkpoints WHERE id = 2")
    raw(db, "UPDATE audit_checkpoints SET up_to_id = 2 WHERE id = 1")
    assert problems(await verify(store, own.cert)) == [(1, "checkpoint-signature")]


async def test_the_service_writes_checkpoints_periodically(store, own):
    await fill(store, 2)
    task = asyncio.create_task(checkpoint_service(store, own, 0.05))
    try:
        await asyncio.sleep(0.1)
        await fill(store, 1, start=2)
        for _ in range(100):
            if (r := await verify(store, own.cert)).covered_up_to == 3:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert r.ok and r.checkpoints == 2 and r.covered_up_to == 3


async def test_an_upgraded_database_chains_the_rows_it_had(db, own):
    url = f"sqlite+aiosqlite:///{db}"
    s = await Store.open(url, migrations=MIGRATIONS[:2])
    await s.close()
    for i, at in enumerate(("2026-01-01 00:00:00.000000", "2026-01-02 00:00:00.500000", "2026-01-03 00:00:00.000001")):
        raw(db, "INSERT INTO audit (at, action, object, result, origin, actor) VALUES (?, 'message.accept', ?, "
                "'received', 'old-host', 'pickup')", at, f"old{i}")
    raw(db, "DELETE FROM audit WHERE id = 3")  # AUTOINCREMENT remembers 3: a new row must not reuse it ...
    s = await Store.open(url, clock=Clock())
    try:
        await fill(s, 1)
        assert (await verify(s, own.cert)).problems[0].kind == "removed"  # ... and it is not hidden either
        assert [r[0] for r in raw(db, "SELECT id FROM audit ORDER BY id")] == [1, 2, 4]
        assert raw(db, "SELECT seq FROM sqlite_sequence WHERE name = 'audit'") == [(4,)]
    finally:
        await s.close()
    # a trail intact before the upgrade verifies intact after it
    db2 = db.with_name("two.db")
    s = await Store.open(f"sqlite+aiosqlite:///{db2}", migrations=MIGRATIONS[:2])
    await s.close()
    raw(db2, "INSERT INTO audit (at, action, object, result, origin, actor) VALUES "
             "('2026-01-01 00:00:00.000000', 'a', 'o', 'r', 'h', 'p'), ('2026-01-02 00:00:00.000000', 'b', 'o', 'r', "
             "'h', 'p')")
    s = await Store.open(f"sqlite+aiosqlite:///{db2}", clock=Clock())
    try:
        await fill(s, 1)
        report = await verify(s, own.cert)
        assert report.ok and report.rows == 3
    finally:
        await s.close()


@pytest.fixture(scope="module")
def gateway_setup(tmp_path_factory):
    from gateway.setup_local import init_local

    folder = tmp_path_factory.mktemp("audit-cli") / "gw"
    init_local(folder)
    return folder


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


async def test_the_cli_verifies_names_the_break_and_purges(gateway_setup):
    from gateway.config import load_config

    conf = gateway_setup / "gateway.toml"
    cfg = load_config(conf)
    cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    s = await Store.open(cfg.store.url)
    try:
        await fill(s, 4)
        await write_checkpoint(s, cfg.check_secrets().identity)
    finally:
        await s.close()

    done = cli("audit", "verify", "-c", str(conf), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["rows"] == 4 and report["checkpoints"] == 1 and report["covered_up_to"] == 4

    raw(cfg.store.sqlite_path, "UPDATE audit SET actor = 'someone else' WHERE id = 2")
    done = cli("audit", "verify", "-c", str(conf))
    assert done.returncode == 1
    assert "BROKEN at row 2: edited" in done.stdout

    done = cli("purge", "-c", str(conf), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == dict.fromkeys(
        ("plaintext", "dossiers", "messages", "inbound", "rejected", "files_removed"), 0)
    done = cli("purge", "-c", str(conf))
    assert done.returncode == 0 and "files removed" in done.stdout
    actions = [r[0] for r in raw(cfg.store.sqlite_path, "SELECT action || ' ' || result FROM audit ORDER BY id")]
    # verify audited itself (intact, then broken), the dry run left no trace, the purge one row of counts
    assert actions[-3:] == ["audit.verify intact rows=4", "audit.verify broken at 2: edited",
                            "retention.purge plaintext=0 dossiers=0 messages=0 inbound=0 rejected=0 files_removed=0"]
