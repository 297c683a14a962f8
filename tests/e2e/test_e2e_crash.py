"""The daemon SIGKILLed at random moments during a batch, and restarted: every message is delivered to its
entitled municipality, none is lost, and every copy a receiver got carries the message's one Message-ID."""

from __future__ import annotations

import email
import random
import re
import time

from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import DaemonProcess, drop, make_setup, open_config, wait_for_states
from gateway.store import State, Store
from paths import EXAMPLES

ROUNDS = 4
BATCH = 24


async def test_random_kills_lose_nothing_and_never_change_a_message_id(tmp_path, mail_servers, mail_users):
    rng = random.Random(20261129)
    config_path = make_setup(tmp_path / "gw", mail_servers, mail_users)
    cfg = open_config(config_path)
    daemon = DaemonProcess(config_path, tmp_path / "daemon.log")
    names = list(OWN_EXAMPLES)
    dropped: dict[str, str] = {}  # message id -> recipient
    bodies: dict[str, bytes] = {}
    for i in range(BATCH):
        name = names[i % len(names)]
        bodies_data, mid = with_new_id(example(name))
        dropped[mid], bodies[mid] = OWN_EXAMPLES[name], bodies_data
    pending = list(dropped)
    kills = 0
    try:
        for round_ in range(ROUNDS):
            daemon.start()
            # drop a share of the batch while it starts and works, then kill it at a random moment
            share = pending[: len(dropped) // ROUNDS + (1 if round_ < len(dropped) % ROUNDS else 0)]
            pending = pending[len(share):]
            for mid in share:
                drop(cfg.folders.outbox, f"{mid}.xml", bodies[mid])
            if round_ == 0:  # a broken file named after the person's BSN, as a careless producer might
                drop(cfg.folders.outbox, "999998226.xml", (EXAMPLES / "invalid" / "bsn-faalt-elfproef.xml").read_bytes())
                time.sleep(rng.uniform(0.0, 0.05))
            time.sleep(rng.uniform(0.3, 2.5))
            daemon.kill()
            kills += 1
        for mid in pending:
            drop(cfg.folders.outbox, f"{mid}.xml", bodies[mid])
        daemon.start()
        store = await Store.open(cfg.store.url)
        try:
            # a killed delivery waits for its lease (11 s here) before it is sent again
            states = await wait_for_states(store, dropped, [State.DELIVERED], timeout=120)
            assert set(states.values()) == {State.DELIVERED}
            records = {mid: await store.get(mid) for mid in dropped}
        finally:
            await store.close()
        assert daemon.terminate() == 0, "SIGTERM stops the daemon cleanly (exit 0)"
    finally:
        daemon.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert kills == ROUNDS and log.count('"event": "stopped"') == 1, "only the last run stopped by itself"

    assert [p.name for p in cfg.folders.outbox.iterdir() if p.is_file()] == []
    assert sorted(p.name for p in cfg.folders.rejected.iterdir()) == \
        ["999998226.xml", "999998226.xml.error.json", "999998226.xml.error.txt"], "only the broken file refused"
    # no personal data in the log: not the BSNs, names or birth dates of any message, nor the file name
    personal = {v for body in list(bodies.values()) + [(EXAMPLES / "invalid" / "bsn-faalt-elfproef.xml").read_bytes()]
                for v in re.findall(rb"<(?:burgerservicenummer|geslachtsnaam|voornamen|geboortedatum)>([^<]+)<", body)}
    assert personal and not [v for v in personal if v.decode() in log]
    # what the receivers got: per message, one or more copies, all with the same Message-ID, at the right party
    copies: dict[str, list[tuple[str, str]]] = {}
    for code in {r.split(":")[1] for r in dropped.values()}:
        for raw in mail_servers.messages(f"nazorg@gemeente-{code}.example.nl", folder=None):
            mail = email.message_from_bytes(raw)
            copies.setdefault(mail["X-Nazorg-Message-Id"], []).append((code, mail["Message-ID"]))
    for mid, recipient in dropped.items():
        got = copies.get(mid)
        assert got, f"{mid} never arrived"
        assert {code for code, _ in got} == {recipient.split(":")[1]}
        assert {m for _, m in got} == {f"<{mid}@pi-vught.example.nl>"} == {records[mid].mail_message_id}
    assert set(copies) <= set(dropped)


async def test_a_crash_between_commit_and_move_is_finished_before_sealing(tmp_path, shared_mail_servers, mail_users):
    """The store holds the pick-up (`received`), the file is still in the outbox (the process died before the
    rename): at start the file is moved into the spool first, so the sealer finds it — never held as missing."""
    import hashlib
    from datetime import datetime, timezone

    from e2e_gateway import running
    from gateway.pipeline.pickup import stored_file_name
    from gateway.store import NewMessage

    cfg = open_config(make_setup(tmp_path / "gw", shared_mail_servers, mail_users))
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    drop(cfg.folders.outbox, "crash.xml", data)
    store = await Store.open(cfg.store.url)
    await store.accept(NewMessage(message_id=mid, type="ontslagbericht", version="1.0", sender="pi:PI-VUGHT",
                                  recipient="gemeente:0344", dossier="x", replies_to=None, supersedes=None, priority=20,
                                  created_at=datetime.now(timezone.utc), size=len(data),
                                  file_name=stored_file_name("crash.xml", cfg.check_secrets().subject_key),
                                  sha256=hashlib.sha256(data).hexdigest(),
                                  spool_path=str(cfg.folders.spool / f"{mid}.xml")))
    await store.close()
    async with running(cfg) as gateway:
        await wait_for_states(gateway.store, [mid], [State.SENT, State.DELIVERED], timeout=60)
        assert State.HELD not in [t.to_state for t in await gateway.store.timeline(mid)]
    assert not (cfg.folders.outbox / "crash.xml").exists()
