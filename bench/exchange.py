"""Benchmark: the whole exchange, PI → municipality, drop into the PI's outbox → `acknowledged` at the PI.

Two gateway processes (`python -m gateway run`, each its own set-up, one shared development PKI):
PI-VUGHT sends and municipality 0599 receives, once over each route (two runs, fresh set-ups):
- platform (AS2): 0599 runs its AS2 server on loopback (mutual TLS); the PI's dispatcher POSTs the
  sealed message (strong profile) and verifies the synchronous signed MDN: `acknowledged` at once;
- e-mail: both gateways use a private Postfix (STARTTLS + AUTH, DSN) and Dovecot (IMAP) on loopback
  (tests/mailservers.py); the PI sends over SMTP (compatible profile, as `init` sets a municipality's
  e-mail route), 0599's own daemon reads its mailbox (mail intake, IMAP IDLE), writes its inbox and
  mails the signed MDN back; the PI's receipt matcher reads it over IMAP: `acknowledged`.
The messages are the shipped examples PI-VUGHT sends, each addressed to 0599, every one under a fresh
berichtId, in turn. What is measured, per route:
- throughput: N messages dropped at once (after 20 to warm up); rate = N / (last `acknowledged_at` −
  first drop); drop→acknowledged p50/p95/p99 of that run (mostly queueing: at once, the last waits for
  all before it);
- latency: messages offered at a fixed pace (default 2/s for 30 s, well below either route's capacity):
  drop→acknowledged p50/p95/p99;
- the CPU per message and peak resident memory (VmHWM) of both daemons (each with its validation workers).
Every message must end `acknowledged` with a matching signed MDN (the PI's receipt row `mdn`/`match`
is checked for every one) and be in 0599's inbox exactly once; nothing may be quarantined.

The baseline, measured in the same run: what the exchange cannot do without, each part by the plainest
means, one after the other (so the parts' time adds up; the gateways overlap them):
- platform: the same number of messages, sealed up front, POSTed by `As2Client` (aiohttp, the same
  mutual TLS) straight to the SAME receiving gateway, over as many connections as the PI's dispatcher
  may use for that destination (the route's `max_concurrency`), every synchronous MDN returned — this
  is 0599's gateway alone, with HTTP and TLS; plus, per message, the PI's bare crypto (below, the
  sealing and receipt-checking half). So the ratio says what the PI's side (pick-up, validation, seal,
  store, dispatch, receipt check) costs on top of a sender that has nothing left to do but post.
- e-mail: Postfix's `smtp-source` sending the same number of mails of the sealed mail's size from the PI's
  address, and as many of the receipt mail's size back, both at once, to two mailboxes of the SAME
  Postfix and Dovecot that nobody reads, timed until Dovecot has delivered every one into its Maildir;
  plus, per message, the bare crypto of the whole exchange. smtp-source sends in plaintext without AUTH
  and asks for no DSN (the gateway always uses STARTTLS and AUTH, and asks for DSNs: one more mail per
  message, from Postfix to the PI); and nothing in it opens, validates or files a message.
- bare crypto (bench/crypto_seal.py's and bench/crypto_open.py's baselines, together): the sealing
  half — SHA-256 of the content part, one RSA-2048 signature, AES-256 (CBC resp. GCM) over the signed
  entity, two RSA-2048 key transports (recipient and own copy) — and checking the receipt (RSA verify +
  SHA-256); the receiving half — `bench.common.bare_open` (RSA decrypt, AES decrypt, RSA verify,
  SHA-256) and signing the receipt (SHA-256 + RSA sign); one core, in this process, daemons stopped.
The latency baseline, at the same pace: platform — the direct POSTs' post→MDN latency; e-mail — a mail
there and back through the same Postfix and Dovecot (smtplib, plaintext; the answer sent the moment the
first is in the Maildir), timed until the answer is in the Maildir.
There is no goal for these figures yet (issue 7 asks for the measurement).

What the first runs showed (2 shared cores, 300 per route, load average 2-7):
- platform: 11-19 msg/s (with the load), ratio 0.31-0.34. The PI's daemon is the limit: 47-67 ms of CPU per
  message (the receiver 13-15). py-spy (--gil) of the PI during the run: the store's writer thread ~30 %
  (SQLAlchemy statement set-up ~9 %), the dispatcher's wake-ups ~25 % — every wake (one per sealed message
  and per finished delivery) runs `claim` (a write) and `next_due`, then `release_expired_leases` (a write),
  even while the only destination is at its `max_concurrency` — `parse_mdn` ~9 %, the AS2 post ~4 %. Paced
  latency p50 150-200 ms against 20-30 ms for the direct POST: `stable_after` (0.1 s here; 0.5 s by default)
  is most of it.
- e-mail: 6-11 msg/s, ratio 0.14-0.17; at 2/s latency p50 0.76 s, p99 1.3 s, against a 25-35 ms mail round
  trip. Not the CPU (both daemons well under a core): each mailbox is read one mail at a time (fetch,
  handle, move: an IMAP round trip or three and a store commit each, so group commit cannot help), and each
  mailbox gets two mails per message (PI: the DSN and the MDN; 0599: the message and the DSN of its own MDN
  mail). Dovecot adds a fixed delay to every IDLE notification (NOTIFY_DELAY_MSECS = 500 in
  lib-storage/mailbox-watch.c), paid once per mailbox hop when the reader is idle: the paced floor of 0.5-1 s is
  that, not the gateway.

    .venv/bin/python bench/exchange.py [-n 300] [--routes platform email] [--offered 2] [--latency-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

import structlog  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, utils  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from adapters.as2.client import As2Client, As2Partner, As2Settings  # noqa: E402
from bench.common import (bare_open, count_in, Daemon, discard_work, machine, percentile, rate, wait_for_states,
                          write_result)  # noqa: E402
from dropped import OWN_EXAMPLES, example, with_new_id  # noqa: E402
from e2e_gateway import drop, make_setup  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.crypto import smime  # noqa: E402
from gateway.crypto.identity import Identity, load_pem_identity  # noqa: E402
from gateway.crypto.pki import DEV_PARTIES  # noqa: E402
from gateway.crypto.profiles import COMPATIBLE, STRONG, EncryptionProfile  # noqa: E402
from gateway.crypto.seal import seal  # noqa: E402
from gateway.store import State, Store  # noqa: E402
from mailservers import MailServers, free_port  # noqa: E402

SENDER, RECEIVER = "PI-VUGHT", "0599"
PI_MAIL, GM_MAIL = "nazorg@pi-vught.example.nl", "nazorg@gemeente-0599.example.nl"
#: mailboxes of the same Postfix/Dovecot that no gateway reads: where the smtp-source baseline goes
SINK_THERE, SINK_BACK = "nazorg@gemeente-0363.example.nl", "nazorg@gemeente-0518.example.nl"
WARM = 20
STABLE_AFTER = 0.1  #: as bench/pipeline.py (the e2e tests: 0.05; the product's default: 0.5 s)


# -- the messages -----------------------------------------------------------------------------------
def examples_for_receiver() -> list[bytes]:
    """PI-VUGHT's examples, each addressed to 0599 (its code wherever the recipient's stood)."""
    out = []
    for name, recipient in OWN_EXAMPLES.items():
        code = recipient.split(":", 1)[1]
        out.append(example(name).replace(f">{code}<".encode(), f">{RECEIVER}<".encode()))
    return out


def batch(n: int) -> list[tuple[str, bytes]]:
    examples = examples_for_receiver()
    return [tuple(reversed(with_new_id(examples[i % len(examples)]))) for i in range(n)]


# -- the set-ups ------------------------------------------------------------------------------------
def set_up(work: Path, servers: MailServers, passwords: dict[str, str], route: str) -> tuple[Path, Path]:
    """(PI's config, 0599's config), sharing one PKI; the PI's route to 0599 over `route`."""
    edits = {"stable_after = 0.05": f"stable_after = {STABLE_AFTER}"}
    if route == "platform":
        pi_port, gm_port = free_port(), free_port()
        pi = make_setup(work / "pi", servers, passwords, edits=edits, as2_listen=("127.0.0.1", pi_port),
                        platform={RECEIVER: f"https://127.0.0.1:{gm_port}/as2"})
        gm = make_setup(work / "gm", servers, passwords, edits=edits, party=RECEIVER, pki=work / "pi" / "keys",
                        as2_listen=("127.0.0.1", gm_port), platform={SENDER: f"https://127.0.0.1:{pi_port}/as2"})
    else:
        pi = make_setup(work / "pi", servers, passwords, edits=edits)
        gm = make_setup(work / "gm", servers, passwords, edits=edits, party=RECEIVER, pki=work / "pi" / "keys")
    for path in (pi, gm):  # the mailbox is watched with IDLE; a poll only when IDLE is refused
        text = path.read_text()
        path.write_text(text.replace('password_file = "secrets/imap-password"',
                                     'password_file = "secrets/imap-password"\npoll_interval = 2', 1))
    return pi, gm


def identities(keys: Path) -> tuple[Identity, Identity]:
    def one(code: str) -> Identity:
        return load_pem_identity(keys / "parties" / code / "key.pem", keys / "parties" / code / "chain.pem")
    return one(SENDER), one(RECEIVER)


# -- the exchange -----------------------------------------------------------------------------------
async def exchange(pi: Daemon, gm: Daemon, store: Store, outbox: Path, messages: list[tuple[str, bytes]],
                   pace: float | None, timeout: float) -> dict:
    """Drop `messages` (all at once, or `pace` a second); wait until all are acknowledged."""
    cpu_before = pi.cpu_seconds(), gm.cpu_seconds()
    dropped: dict[str, float] = {}
    baseline = await count_in(store, [State.ACKNOWLEDGED])
    start = time.time()
    for i, (mid, data) in enumerate(messages):
        if pace:
            delay = start + i / pace - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        dropped[mid] = time.time()
        drop(outbox, f"{mid}.xml", data)
    acked = {mid: r.acknowledged_at for mid, r in
             (await wait_for_states(store, set(dropped), [State.ACKNOWLEDGED], baseline=baseline,
                                    timeout=timeout)).items()}
    latencies = [(acked[m].timestamp() - t) * 1000 for m, t in dropped.items()]
    n = len(messages)
    elapsed = max(a.timestamp() for a in acked.values()) - min(dropped.values())
    return {"n": n, "seconds": round(elapsed, 2), "rate": n / elapsed,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies),
            "pi_cpu_ms_per_message": (pi.cpu_seconds() - cpu_before[0]) * 1000 / n,
            "receiver_cpu_ms_per_message": (gm.cpu_seconds() - cpu_before[1]) * 1000 / n}


async def check(store: Store, ids: list[str], inbox: Path, quarantine: Path) -> None:
    """Every message acknowledged by a matching signed MDN, in 0599's inbox exactly once, nothing quarantined."""
    for mid in ids:
        kinds = {(r.kind, r.verdict) for r in await store.receipts(mid)}
        if ("mdn", "match") not in kinds:
            raise SystemExit(f"{mid}: acknowledged without a matching MDN receipt: {kinds}")
    inboxed = [p.stem for p in inbox.rglob("*.xml")]
    if sorted(inboxed) != sorted(ids) or len(set(inboxed)) != len(inboxed):
        raise SystemExit(f"0599's inbox holds {len(inboxed)} messages, {len(set(inboxed) & set(ids))} of the "
                         f"{len(ids)} sent")
    if any(quarantine.iterdir()):
        raise SystemExit(f"something was quarantined at 0599: see {quarantine}")


# -- the baselines ----------------------------------------------------------------------------------
def bare_crypto(sender: Identity, receiver: Identity, profile: EncryptionProfile, seconds: float, rounds: int
                ) -> dict:
    """Messages a second of the bare crypto, over the examples in turn: the sender's half (seal the message,
    check the receipt), the receiver's half (open it, sign the receipt), and both. Median of `rounds`."""
    gcm = profile.content_cipher.authenticated
    kt_pad = (padding.PKCS1v15() if profile is COMPATIBLE else
              padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    prehashed = utils.Prehashed(hashes.SHA256())
    pub_rx, pub_self = receiver.cert.public_key(), sender.cert.public_key()
    mdn = os.urandom(900)  # about the size of a receipt's signed part
    sender_half, receiver_half = [], []
    for xml in examples_for_receiver():
        part = smime.content_part(xml)
        entity = seal(xml, sender, receiver.cert, profile).signed_entity

        def seal_and_check(part=part, entity=entity) -> None:
            h = hashes.Hash(hashes.SHA256())
            h.update(part)
            sender.key.sign(h.finalize(), padding.PKCS1v15(), prehashed)
            cek = os.urandom(32)
            if gcm:
                AESGCM(cek).encrypt(os.urandom(12), entity, None)
            else:
                pad = 16 - len(entity) % 16
                e = Cipher(algorithms.AES(cek), modes.CBC(os.urandom(16))).encryptor()
                e.update(entity + bytes((pad,)) * pad)
                e.finalize()
            pub_rx.encrypt(cek, kt_pad)
            pub_self.encrypt(cek, kt_pad)
            h = hashes.Hash(hashes.SHA256())
            h.update(mdn)
            pub_rx.verify(mdn_signature, h.finalize(), padding.PKCS1v15(), prehashed)

        opened = bare_open(sender, receiver, xml, profile).run

        def open_and_sign(opened=opened) -> None:
            opened()
            h = hashes.Hash(hashes.SHA256())
            h.update(mdn)
            receiver.key.sign(h.finalize(), padding.PKCS1v15(), prehashed)

        sender_half.append(seal_and_check)
        receiver_half.append(open_and_sign)
    h = hashes.Hash(hashes.SHA256())
    h.update(mdn)
    mdn_signature = receiver.key.sign(h.finalize(), padding.PKCS1v15(), prehashed)

    def run_all(fns):
        def go() -> None:
            for fn in fns:
                fn()
        return go

    k = len(sender_half)
    out = {}
    for name, fns in (("sender", sender_half), ("receiver", receiver_half), ("both", sender_half + receiver_half)):
        # per call: the k examples once ("both": each sealed and checked, then opened and answered)
        out[name] = statistics.median(rate(run_all(fns), seconds, per_call=k) for _ in range(rounds))
    return out


async def post_directly(url: str, keys: Path, profile: EncryptionProfile, n: int, connections: int,
                        pace: float | None) -> dict:
    """n messages sealed up front, POSTed by As2Client straight to 0599's gateway; every MDN must come back."""
    sender, receiver = identities(keys)
    sealed = [(mid, seal(xml, sender, receiver.cert, profile)) for mid, xml in batch(n)]
    settings = As2Settings(as2_from=SENDER, client_cert_chain_pem=(keys / "parties" / SENDER / "tls-chain.pem")
                           .read_bytes(), client_key_pem=(keys / "parties" / SENDER / "tls-key.pem").read_bytes(),
                           receipt_to=PI_MAIL)
    partner = As2Partner(url, RECEIVER, keys / "trust.pem")
    clients = [As2Client(settings, partner) for _ in range(connections)]
    times: list[tuple[float, float]] = []
    todo = iter(enumerate(sealed))
    start = time.perf_counter()

    async def worker(client: As2Client) -> None:
        for i, (mid, s) in todo:
            if pace:
                delay = start + i / pace - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            began = time.perf_counter()
            response = await client.post_entity(message_id=mid, entity=s.entity, subject="nazorg bench")
            if response.status != 200 or response.mdn_entity is None:
                raise SystemExit(f"direct post: {response.status}, no MDN")
            times.append((began, time.perf_counter()))

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    latencies = [(b - a) * 1000 for a, b in times]
    elapsed = max(b for _, b in times) - min(a for a, _ in times)
    return {"n": n, "connections": connections, "seconds": round(elapsed, 2), "rate": n / elapsed,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99)}


def maildir_count(servers: MailServers, address: str) -> int:
    maildir = servers._home(address) / "Maildir"  # noqa: SLF001 (the harness's own layout)
    return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).is_dir())


def smtp_source_both_ways(servers: MailServers, n: int, there_bytes: int, back_bytes: int, sessions: int) -> dict:
    """smtp-source: n mails of `there_bytes` PI → a sink mailbox and n of `back_bytes` back to another, at once;
    seconds until Dovecot delivered all 2n."""
    before = maildir_count(servers, SINK_THERE), maildir_count(servers, SINK_BACK)
    target = f"{servers.smtp_host}:{servers.smtp_port}"
    started = time.perf_counter()
    procs = [subprocess.Popen(["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(size), "-f", frm,
                               "-t", to, target], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for size, frm, to in ((there_bytes, PI_MAIL, SINK_THERE), (back_bytes, GM_MAIL, SINK_BACK))]
    deadline = time.monotonic() + 600
    while (maildir_count(servers, SINK_THERE) - before[0] < n or maildir_count(servers, SINK_BACK) - before[1] < n):
        if time.monotonic() > deadline:
            raise SystemExit("smtp-source: not every mail was delivered within 600 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    for p in procs:
        if p.wait(60) != 0:
            raise SystemExit(f"smtp-source failed: {p.stderr.read().decode(errors='replace')[-300:]}")
    return {"n": n, "seconds": round(elapsed, 2), "rate": n / elapsed, "sessions": sessions,
            "there_bytes": there_bytes, "back_bytes": back_bytes}


def mail_round_trips(servers: MailServers, k: int, there_bytes: int, back_bytes: int, pace: float) -> dict:
    """k mails there and back, one at a time at `pace` a second (smtplib, plaintext, one connection each way):
    from the first mail's submission until its answer is in the Maildir."""
    latencies = []
    there, back = smtplib.SMTP(servers.smtp_host, servers.smtp_port), smtplib.SMTP(servers.smtp_host, servers.smtp_port)
    try:
        for i in range(k):
            t0 = time.perf_counter()
            for client, frm, to, size, sink in ((there, PI_MAIL, SINK_THERE, there_bytes, SINK_THERE),
                                                (back, GM_MAIL, SINK_BACK, back_bytes, SINK_BACK)):
                count = maildir_count(servers, sink)
                body = (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: bench {i}\r\n\r\n").encode() + \
                    b"".join(b"x" * 74 + b"\r\n" for _ in range(size // 76))
                client.sendmail(frm, [to], body)
                deadline = time.monotonic() + 30
                while maildir_count(servers, sink) <= count:
                    if time.monotonic() > deadline:
                        raise SystemExit("a round-trip mail was not delivered within 30 s")
                    time.sleep(0.002)
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(max(0.0, 1 / pace - (time.perf_counter() - t0)))
    finally:
        there.quit()
        back.quit()
    return {"n": k, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99)}


# -- one route --------------------------------------------------------------------------------------
async def run_route(route: str, work: Path, servers: MailServers, passwords: dict[str, str], args) -> dict:
    pi_path, gm_path = set_up(work, servers, passwords, route)
    pi_cfg, gm_cfg = load_config(pi_path), load_config(gm_path)
    keys = work / "pi" / "keys"
    profile = STRONG if pi_cfg.routes[RECEIVER].profile.content_cipher.authenticated else COMPATIBLE
    pi, gm = Daemon(pi_path, work / "pi.log"), Daemon(gm_path, work / "gm.log")
    n_paced = max(10, int(args.offered * args.latency_seconds))
    gm.start()
    pi.start()
    store = await Store.open(pi_cfg.store.url)
    ids: list[str] = []
    try:
        warm = batch(WARM)
        await exchange(pi, gm, store, pi_cfg.folders.outbox, warm, None, timeout=120)
        print(f"{route}: {args.n} messages dropped at once …", flush=True)
        throughput_batch = batch(args.n)
        at_once = await exchange(pi, gm, store, pi_cfg.folders.outbox, throughput_batch, None,
                                 timeout=max(300, args.n))
        print(f"{route}: {n_paced} messages offered at {args.offered:g}/s …", flush=True)
        paced_batch = batch(n_paced)
        paced = await exchange(pi, gm, store, pi_cfg.folders.outbox, paced_batch, args.offered,
                               timeout=max(300, args.n))
        ids = [m for m, _ in warm + throughput_batch + paced_batch]
        await check(store, ids, gm_cfg.folders.inbox, gm_cfg.folders.quarantine)
        memory = {"pi_peak_rss_mb": round(pi.peak_rss_mb(), 1), "receiver_peak_rss_mb": round(gm.peak_rss_mb(), 1),
                  "pi_session_peak_rss_mb": round(pi.peak_rss_mb(whole_session=True), 1),
                  "receiver_session_peak_rss_mb": round(gm.peak_rss_mb(whole_session=True), 1)}
        sealed_bytes = int(statistics.mean([len(await store.sealed(m)) for m, _ in throughput_batch[:50]]))
    finally:
        await store.close()
        pi.stop()

    leg: dict
    leg_latency: dict
    try:
        if route == "platform":
            url = pi_cfg.routes[RECEIVER].address
            connections = pi_cfg.routes[RECEIVER].max_concurrency
            print(f"{route} baseline: {args.n} pre-sealed messages POSTed straight to 0599 over {connections} "
                  "connections …", flush=True)
            await post_directly(url, keys, profile, WARM, connections, None)
            leg = await post_directly(url, keys, profile, args.n, connections, None)
            leg_latency = await post_directly(url, keys, profile, n_paced, connections, args.offered)
    finally:
        gm.stop()
    if route == "email":
        done_folder = pi_cfg.imap.processed_folder
        receipts = [m for m in servers.messages(PI_MAIL, folder=done_folder)
                    if b"disposition-notification" in m][:50]
        back_bytes = int(statistics.mean(len(m) for m in receipts)) if receipts else 4000
        there_bytes = sealed_bytes + 600  # the mail's own header lines, as bench/pipeline.py
        print(f"{route} baseline: smtp-source, {args.n} mails of {there_bytes} B there and {args.n} of "
              f"{back_bytes} B back …", flush=True)
        leg = smtp_source_both_ways(servers, args.n, there_bytes, back_bytes, pi_cfg.limits.workers)
        print(f"{route} baseline: {n_paced} mails there and back at {args.offered:g}/s …", flush=True)
        leg_latency = mail_round_trips(servers, n_paced, there_bytes, back_bytes, args.offered)
    print(f"{route} baseline: bare crypto …", flush=True)
    crypto = bare_crypto(*identities(keys), profile, args.seconds, args.rounds)
    # the baseline's time for n messages: the leg, plus the crypto it leaves out, one after the other
    per_message_crypto = 1 / crypto["sender"] if route == "platform" else 1 / crypto["both"]
    baseline_rate = args.n / (leg["seconds"] + args.n * per_message_crypto)
    return {"route": route, "profile": profile.name, "throughput": at_once, "latency": paced, "memory": memory,
            "sealed_entity_bytes": sealed_bytes, "leg": leg, "leg_latency": leg_latency,
            "bare_crypto_msg_per_s": {k: round(v, 1) for k, v in crypto.items()},
            "baseline_rate": baseline_rate, "checked_messages": len(ids)}


def figures_of(r: dict, offered: float) -> list[dict]:
    route, t, lat, leg, legl = r["route"], r["throughput"], r["latency"], r["leg"], r["leg_latency"]
    crypto_part = "the PI's bare seal + receipt check" if route == "platform" else "the bare crypto of both sides"
    leg_name = ("As2Client POSTs of pre-sealed messages to the same 0599 gateway" if route == "platform" else
                "smtp-source both ways to the same Postfix, until delivered")
    return [
        {"name": f"{route} drop→acknowledged", "unit": "msg/s", "value": round(t["rate"], 1),
         "baseline_name": f"{leg_name}, then {crypto_part}", "baseline": round(r["baseline_rate"], 1),
         "ratio": round(t["rate"] / r["baseline_rate"], 3), "goal": None,
         "leg_msg_per_s": round(leg["rate"], 1), "bare_crypto_msg_per_s": r["bare_crypto_msg_per_s"],
         "p50_ms_at_once": round(t["p50_ms"]), "p95_ms_at_once": round(t["p95_ms"]),
         "p99_ms_at_once": round(t["p99_ms"]),
         "pi_cpu_ms_per_message": round(t["pi_cpu_ms_per_message"], 2),
         "receiver_cpu_ms_per_message": round(t["receiver_cpu_ms_per_message"], 2), **r["memory"]},
        {"name": f"{route} p99 drop→ack at {offered:g}/s", "unit": "ms", "value": round(lat["p99_ms"], 1),
         "p50": round(lat["p50_ms"], 1), "p95": round(lat["p95_ms"], 1),
         "baseline_name": ("p99 of the direct POSTs at the same pace" if route == "platform" else
                           "p99 of a mail there and back through the same Postfix and Dovecot"),
         "baseline": round(legl["p99_ms"], 1), "baseline_p50": round(legl["p50_ms"], 1),
         "baseline_p95": round(legl["p95_ms"], 1), "ratio": None, "goal": None},
    ]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="messages in each throughput run (default 300)")
    ap.add_argument("--routes", nargs="+", choices=["platform", "email"], default=["platform", "email"])
    ap.add_argument("--offered", type=float, default=2.0, help="pace of the latency run, msg/s (default 2)")
    ap.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency run (default 30)")
    ap.add_argument("--rounds", type=int, default=5, help="bare crypto rounds (median counts)")
    ap.add_argument("--seconds", type=float, default=0.3, help="per bare crypto round")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    passwords = {p.email: f"pw-{i}" for i, p in enumerate(DEV_PARTIES)}
    # STARTTLS offered, not required, so smtp-source (plaintext) can be the baseline; the gateways use it anyway
    servers = MailServers.temporary(passwords, sorted({a.split("@")[1] for a in passwords}),
                                    postfix_settings={"smtpd_tls_security_level": "may"})
    work = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    load_before = os.getloadavg()[0]
    results = []
    try:
        servers.start()
        for route in args.routes:
            results.append(await run_route(route, work / route, servers, passwords, args))
    finally:
        servers.stop()
        discard_work(work)

    figures = [f for r in results for f in figures_of(r, args.offered)]
    print(f"\nmachine: {os.cpu_count()} cores; {args.n} messages per route at once, then "
          f"{max(10, int(args.offered * args.latency_seconds))} at {args.offered:g}/s; stable_after {STABLE_AFTER} s")
    print(f"{'route':10}{'msg/s':>7}{'leg':>7}{'crypto':>8}{'base':>7}{'ratio':>7}  {'at once p50/p95/p99 ms':>23}"
          f"  {'paced p50/p95/p99 ms':>21}  {'baseline paced':>16}  {'CPU ms PI/rx':>13}  {'MB PI/rx':>9}")
    for r in results:
        t, lat, legl = r["throughput"], r["latency"], r["leg_latency"]
        crypto = r["bare_crypto_msg_per_s"]["sender" if r["route"] == "platform" else "both"]
        print(f"{r['route']:10}{t['rate']:7.1f}{r['leg']['rate']:7.1f}{crypto:8.0f}{r['baseline_rate']:7.1f}"
              f"{t['rate'] / r['baseline_rate']:7.2f}  {t['p50_ms']:>11.0f}/{t['p95_ms']:.0f}/{t['p99_ms']:<6.0f}"
              f"  {lat['p50_ms']:>9.0f}/{lat['p95_ms']:.0f}/{lat['p99_ms']:<6.0f}"
              f"  {legl['p50_ms']:>6.0f}/{legl['p95_ms']:.0f}/{legl['p99_ms']:<5.0f}"
              f"  {t['pi_cpu_ms_per_message']:>6.1f}/{t['receiver_cpu_ms_per_message']:<6.1f}"
              f"  {r['memory']['pi_peak_rss_mb']:>4.0f}/{r['memory']['receiver_peak_rss_mb']:<4.0f}")
    print("leg = the transport and (platform) the receiving gateway driven directly; crypto = bare crypto msg/s "
          "(platform: the PI's half; e-mail: both halves); base = n / (leg time + n / crypto)")
    print(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    write_result(ROOT, "exchange", {
        "benchmark": "exchange", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "n": args.n, "offered": args.offered, "stable_after": STABLE_AFTER, "warm_up_messages": WARM,
        "sender": SENDER, "receiver": RECEIVER, "routes": results, "figures": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
