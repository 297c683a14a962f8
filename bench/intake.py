"""Benchmark: the AS2 intake of a running gateway, beside the bare open rate of the same messages.

The receiver is `python -m gateway run` as its own process: a local set-up for municipality 0599
(`init_local`) with its AS2 server on loopback (mutual TLS, real HTTP) and a platform route for
PI-VUGHT. The sender is this script: N distinct messages (the shipped examples PI-VUGHT sends, every
one under a fresh berichtId, its recipient rewritten to 0599), sealed up front (sealing is not
measured) by PI-VUGHT for 0599 under one profile, posted over WORKERS connections (one `As2Client`
each, connections kept open). Every request is answered with a synchronous signed MDN; by then the
gateway has decrypted, verified (chain, CRL, signer = the partner), validated, written the inbox
files and the store row. What is measured, per profile:
- rate: N / (last answer − first request); per request latency p50/p95/p99 (post → MDN read);
- the daemon's CPU per message (the daemon and its validation workers: its whole session) and its
  peak resident memory (VmHWM of the daemon; and the sum over its session, workers included);
- after the timing: every MDN verified (signature, chain, signer = 0599's certificate) and matched
  (processed, MIC of what was sealed), the inbox holds each message once, the quarantine is empty.
The baseline, in the same run and in this process while the daemon idles: `bench.common.bare_open`
(bench/crypto_open.py's: RSA decrypt of the content key, AES decrypt, RSA verify, SHA-256) over the
same examples in the same mix, in rounds before and after the intake run; its median counts.
Goal (issue 5): intake rate ≥ 0.5 × the bare open rate.

What the ratio means on a small machine: the bare rate uses one core and nothing else; the
gateway shares the machine's cores with this sender (TLS, HTTP; its CPU is reported) and pays for
what the bare rate leaves out: TLS, HTTP, MIME and CMS parsing, chain and CRL, validation in a
worker process, two durable files, a store transaction, and a second RSA private-key operation (the
signed MDN).

Where the time goes (2 shared cores; `--stages` times each step alone, one message at a time, in
this process; ms of CPU per message, 5.6 KB XML in an 18 KB entity): open_sealed 1.4-2.1 (about
twice the bare open: see bench/crypto_open.py); the signed MDN 0.85-1.1 (build_mdn, on the event
loop); the store 1.1-2.3 (two dedupe reads, then the row with its receipt and audit row, each in
its store thread); the hand-off to the validation pool 0.4-0.5 here plus ~1 in the worker; the
inbox files 0.25-0.4 on tmpfs, 1.2-2.3 on ext4 (four fsyncs: 5-19 ms of wall time); 0.1-0.2 per
thread hand-off. `Intake.receive` as a whole: 7-9 ms against a bare open of 0.8-1.4 ms (the steps
interleaved cost more than each alone); TLS, HTTP and two log lines add little beside it. All of it
except validation shares one GIL:
cryptography keeps the GIL during RSA operations (two threads decrypting are no faster than one),
so `to_thread(open_sealed)` overlaps nothing and the daemon process tops out at one core (the
"busy" column: 0.75-1.0 when the machine is quiet). The rate follows the daemon's CPU per message:
on tmpfs 7.3-8.7 ms, 114-130 msg/s; on ext4 the fsyncs add ~3 ms (kernel time) and latency: 70-77
msg/s (both against a bare 800-1100, ratio 0.07-0.15; on a loaded machine down to 41 msg/s). The goal
is out of reach without taking the crypto (open and MDN) off the daemon's GIL, and on 2 cores even
then (~8 ms of CPU per message over 2 cores is ~250 msg/s, a ratio near 0.25).

    .venv/bin/python bench/intake.py [-n N] [--workers W] [--rounds R] [--stages N] [--folder DIR]
                                     [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import cryptography  # noqa: E402
import structlog  # noqa: E402

from adapters.as2.client import As2Client, As2Partner, As2Response, As2Settings  # noqa: E402
from bench.common import bare_open, Daemon, discard_work, machine, percentile, rate, write_result  # noqa: E402
from dropped import OWN_EXAMPLES, example, with_new_id  # noqa: E402
from gateway.crypto.identity import Identity, load_pem_identity  # noqa: E402
from gateway.crypto.profiles import COMPATIBLE, STRONG, EncryptionProfile  # noqa: E402
from adapters.inbox_fs import InboxWriter  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.crypto.open import open_sealed  # noqa: E402
from gateway.crypto.receipts import Disposition, build_mdn, check_receipt, parse_mdn  # noqa: E402
from gateway.crypto.seal import Sealed, seal  # noqa: E402
from gateway.crypto.trust import TrustStore  # noqa: E402
from gateway.pipeline.intake import Arrival, intake_from_config, partners_from_routes, party_of_route  # noqa: E402
from gateway.pipeline.validation import ValidationPool  # noqa: E402
from gateway.setup_local import init_local  # noqa: E402
from gateway.store import Store  # noqa: E402
from mailservers import free_port  # noqa: E402

GOAL = 0.5
RECEIVER, SENDER = "0599", "PI-VUGHT"
WARM = 20  #: messages sent before the timing: a running gateway is warm (workers, connections, caches)


def examples_for_receiver() -> list[tuple[str, bytes]]:
    """PI-VUGHT's examples, each addressed to the receiving municipality (its code wherever the
    recipient's stood); the intake refuses anything else as not entitled."""
    out = []
    for name, recipient in OWN_EXAMPLES.items():
        code = recipient.split(":", 1)[1]
        out.append((name, example(name).replace(f">{code}<".encode(), f">{RECEIVER}<".encode())))
    return out


def sealed_batch(n: int, sender: Identity, receiver: Identity, profile: EncryptionProfile) -> list[tuple[str, Sealed]]:
    """n distinct messages (examples in turn, fresh berichtIds) sealed for the receiver: (berichtId, Sealed)."""
    examples = examples_for_receiver()
    out = []
    for i in range(n):
        xml, mid = with_new_id(examples[i % len(examples)][1])
        out.append((mid, seal(xml, sender, receiver.cert, profile)))
    return out


@dataclass
class Exchange:
    message_id: str
    sealed: Sealed
    started: float = 0.0
    answered: float = 0.0
    response: As2Response | None = None


async def post_all(clients: list[As2Client], batch: list[tuple[str, Sealed]]) -> list[Exchange]:
    """Every message of `batch` posted, each client (connection) taking the next one when it is free."""
    exchanges = [Exchange(mid, sealed) for mid, sealed in batch]
    todo = iter(exchanges)

    async def worker(client: As2Client) -> None:
        for x in todo:
            x.started = time.perf_counter()
            x.response = await client.post_entity(message_id=x.message_id, entity=x.sealed.entity,
                                                  subject="nazorg bench")
            x.answered = time.perf_counter()

    await asyncio.gather(*(worker(c) for c in clients))
    return exchanges


def check_receipts(exchanges: list[Exchange], trust: TrustStore, receiver: Identity) -> None:
    """Every answer a signed MDN from the receiver: processed, for that message, with its MIC."""
    for x in exchanges:
        assert x.response is not None and x.response.status == 200, "no answer"
        if x.response.mdn_entity is None:
            raise SystemExit(f"{x.message_id}: no synchronous MDN")
        receipt = parse_mdn(x.response.mdn_entity, trust)
        check = check_receipt(receipt, message_id=x.response.as2_message_id, sealed_mic=x.sealed.mic)
        if not check.ok or receipt.signer != receiver.cert:
            raise SystemExit(f"{x.message_id}: receipt {check.verdict.value}: {check.reason}")


class Profiler:
    """py-spy recording the daemon (and its workers) while the timed run lasts. Only the thread holding
    the GIL is sampled (--gil): idle threads waiting in C look busy to py-spy otherwise."""

    def __init__(self, out: Path | None, pid: int, seconds: int):
        self.out, self.pid, self.seconds = out, pid, seconds
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Profiler:
        if self.out is not None:
            self.proc = subprocess.Popen(["py-spy", "record", "--gil", "-p", str(self.pid), "-s", "-f", "raw",
                                          "-o", str(self.out), "-d", str(self.seconds)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        return self

    def __exit__(self, *_exc) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            self.proc.wait(60)


async def run_profile(profile: EncryptionProfile, args, keys: Path, url: str, daemon: Daemon, inbox: Path,
                      spy: Path | None) -> dict:
    sender = load_pem_identity(keys / "parties" / SENDER / "key.pem", keys / "parties" / SENDER / "chain.pem")
    receiver = load_pem_identity(keys / "parties" / RECEIVER / "key.pem",
                                 keys / "parties" / RECEIVER / "chain.pem")
    trust = TrustStore.load(keys / "ca" / "root.pem", keys / "ca" / "issuing.pem", [keys / "ca" / "issuing.crl.pem"])

    print(f"{profile.name}: sealing {WARM} + {args.n} messages …", flush=True)
    warm, batch = sealed_batch(WARM, sender, receiver, profile), sealed_batch(args.n, sender, receiver, profile)
    settings = As2Settings(as2_from=SENDER, client_cert_chain_pem=(keys / "parties" / SENDER / "tls-chain.pem")
                           .read_bytes(), client_key_pem=(keys / "parties" / SENDER / "tls-key.pem").read_bytes(),
                           receipt_to="nazorg@pi-vught.example.nl")
    partner = As2Partner(url, RECEIVER, keys / "trust.pem")

    bare_runs = [bare_open(sender, receiver, xml, profile) for _, xml in examples_for_receiver()]

    def bare() -> None:
        for b in bare_runs:
            b.run()

    bare_rates = [rate(bare, args.seconds, per_call=len(bare_runs)) for _ in range(args.rounds)]

    clients = [As2Client(settings, partner) for _ in range(args.workers)]
    try:
        warmed = await post_all(clients, warm)
        print(f"{profile.name}: posting {args.n} messages over {args.workers} connections …", flush=True)
        cpu_before, main_before, own_before = daemon.cpu_seconds(), daemon.cpu_seconds(False), time.process_time()
        with Profiler(spy / f"intake-{profile.name}.txt" if spy else None, daemon.pid, 600):
            exchanges = await post_all(clients, batch)
        cpu, own = daemon.cpu_seconds() - cpu_before, time.process_time() - own_before
        cpu_main = daemon.cpu_seconds(False) - main_before
        elapsed = max(x.answered for x in exchanges) - min(x.started for x in exchanges)
        ours = args.n / elapsed
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    await asyncio.sleep(0.5)  # connections closed: the daemon idles again
    bare_rates += [rate(bare, args.seconds, per_call=len(bare_runs)) for _ in range(args.rounds)]

    check_receipts(warmed + exchanges, trust, receiver)
    inboxed = {p.stem for p in inbox.rglob("*.xml")}
    missing = [x.message_id for x in warmed + exchanges if x.message_id not in inboxed]
    if missing:
        raise SystemExit(f"{len(missing)} messages acknowledged but not in the inbox")

    baseline = statistics.median(bare_rates)
    latencies = [(x.answered - x.started) * 1000 for x in exchanges]
    return {"name": f"AS2 intake {profile.name}", "unit": "msg/s", "value": round(ours, 1),
            "baseline_name": bare_runs[0].name + ", same examples and mix", "baseline": round(baseline),
            "baseline_per_round_min": round(min(bare_rates)), "baseline_per_round_max": round(max(bare_rates)),
            "ratio": round(ours / baseline, 3), "goal": GOAL, "met": ours / baseline >= GOAL,
            "per_message_us": round(1e6 / ours, 1), "baseline_per_message_us": round(1e6 / baseline, 1),
            "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                           "p99": round(percentile(latencies, 99), 1), "max": round(max(latencies), 1)},
            "daemon_cpu_ms_per_message": round(cpu * 1000 / args.n, 2),
            "daemon_process_cpu_ms_per_message": round(cpu_main * 1000 / args.n, 2),  # without its workers
            "daemon_process_cpu_share": round(cpu_main / elapsed, 2),  # of one core, while timed
            "sender_cpu_ms_per_message": round(own * 1000 / args.n, 2),
            "daemon_peak_rss_mb": round(daemon.peak_rss_mb(), 1),
            "session_peak_rss_mb": round(daemon.peak_rss_mb(whole_session=True), 1),
            "entity_bytes_mean": round(statistics.mean(len(s.entity) for _, s in batch)),
            "xml_bytes_mean": round(statistics.mean(len(x) for _, x in examples_for_receiver()))}


async def stage_costs(folder: Path, keys: Path, profile: EncryptionProfile, n: int) -> dict[str, tuple[float, float]]:
    """What each step of an arrival costs alone, one message at a time in this process (no HTTP, no
    concurrency): stage → (CPU ms, wall ms) per message. CPU is this process's (all its threads), so
    the validation worker's own CPU is not in it."""
    config = load_config(make_receiver(folder, free_port(), pki=keys))
    config.folders.create()
    config.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    secrets = config.check_secrets()
    me, trust = secrets.identity, secrets.trust
    sender = load_pem_identity(keys / "parties" / SENDER / "key.pem", keys / "parties" / SENDER / "chain.pem")
    binding = partners_from_routes(config.routes)[party_of_route(SENDER)].binding
    store = await Store.open(secrets.store_url.render_as_string(hide_password=False))
    pool = ValidationPool(institutions=config.registries.institutions,
                          municipalities=config.registries.municipalities, max_bytes=config.limits.max_message_bytes,
                          workers=config.limits.validation_workers)
    intake = intake_from_config(config, store=store, identity=me, trust=trust, validation=pool)
    inbox = InboxWriter(folder / "inbox-stages")
    costs: dict[str, tuple[float, float]] = {}

    async def timed(name: str, items: list, step) -> list:
        cpu, wall, out = time.process_time(), time.perf_counter(), []
        for item in items:
            result = step(item)
            out.append(await result if asyncio.iscoroutine(result) else result)
        costs[name] = ((time.process_time() - cpu) * 1000 / len(items),
                      (time.perf_counter() - wall) * 1000 / len(items))
        return out

    async def stored(opened_checked) -> None:
        opened, checked = opened_checked
        mid = checked.facts.message_id
        await store.find_inbound_by_transport("as2", f"<{mid}@x>")
        await store.find_inbound(mid)
        await store.record_inbound(message_id=mid, transport="as2", transport_message_id=f"<{mid}@x>",
                                   sender=f"pi:{SENDER}", type=checked.facts.type, mic=opened.mic,
                                   sha256="0" * 64, outcome="accepted", inbox_path="-", receipt=mdn.entity)

    try:
        await pool.warm_up()
        batch = sealed_batch(n, sender, me, profile)
        opened = await timed("open_sealed (decrypt, verify, chain, CRL)", [s for _, s in batch],
                             lambda s: open_sealed(s.entity, me, trust, expected_sender=binding))
        checked = await timed("validation (hand-off to the pool; worker CPU not counted)", opened,
                              lambda o: pool.check(o.xml, "bench"))
        mdns = await timed("signed MDN (build_mdn: RSA sign)", opened, lambda o: build_mdn(
            original_message_id="<bench@x>", original_recipient=RECEIVER, final_recipient=RECEIVER,
            disposition=Disposition.PROCESSED, reason_code=None, mic=o.mic, signer=me))
        mdn = mdns[0]
        pairs = list(zip(opened, checked))
        await timed("inbox: .json and .xml, durable", pairs,
                    lambda oc: inbox.deliver(oc[1].facts.type, oc[1].facts.message_id, oc[0].xml, {"bench": 1}))
        await timed("store: 2 reads + the row and its receipt", pairs, stored)
        await timed("a thread hand-off (asyncio.to_thread)", batch, lambda _: asyncio.to_thread(int))
        await timed("Intake.receive, all of it", sealed_batch(n, sender, me, profile), lambda m: intake.receive(
            Arrival(m[1].entity, "as2", f"<{m[0]}@{SENDER.lower()}>", SENDER, "nazorg@pi-vught.example.nl")))
    finally:
        pool.close()
        await store.close()
    return costs


def filesystem_of(path: Path) -> str:
    """The type of the file system `path` is on ("ext4", "tmpfs"): fsync costs differ by orders of magnitude."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype = line.split()[:3]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return f"{kind} ({best})"


def make_receiver(folder: Path, port: int, pki: Path | None = None) -> Path:
    """The receiving gateway's set-up: 0599, AS2 server on loopback, PI-VUGHT on the platform; no mailbox
    (nothing is fetched by IMAP; SMTP stays configured, for the e-mail routes, and is never used)."""
    config = init_local(folder, party=RECEIVER, as2_listen=("127.0.0.1", port), pki=pki,
                        platform={SENDER: "https://127.0.0.1:9/as2"})  # the sender's URL: never called (sync MDNs)
    text = config.read_text()
    text = re.sub(r"\n\[imap\]\n.*?\n(?=\n\[)", "\n", text, count=1, flags=re.S)
    assert "[imap]" not in text
    config.write_text(text)
    return config


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="messages per profile (default 1000)")
    ap.add_argument("--workers", type=int, default=4, help="concurrent connections (default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="bare rounds before and after each intake run")
    ap.add_argument("--seconds", type=float, default=0.3, help="per bare round")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="record the daemon with py-spy (raw) into DIR")
    ap.add_argument("--stages", type=int, metavar="N", default=0,
                    help="also time each step of an arrival alone, over N messages per profile (where the time goes)")
    ap.add_argument("--folder", type=Path, default=None,
                    help="where the receiver's set-up (inbox, store) goes (default: the system's temp folder; "
                         "/dev/shm shows the cost without the disk's fsyncs)")
    args = ap.parse_args()
    # the sender's own log lines (one per post) would cost it CPU and hide the table
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="bench-intake-", dir=args.folder))
    fs = filesystem_of(work)
    load_before = os.getloadavg()[0]
    port = free_port()
    config = make_receiver(work / "rx", port)
    daemon = Daemon(config, work / "daemon.log")
    figures, stages = [], {}
    try:
        try:
            daemon.start()
            for profile in (STRONG, COMPATIBLE):
                figures.append(await run_profile(profile, args, work / "rx" / "keys",
                                                 f"https://127.0.0.1:{port}/as2", daemon, work / "rx" / "inbox",
                                                 args.py_spy))
            if any((work / "rx" / "quarantine").iterdir()):
                raise SystemExit("something was quarantined: see the daemon log")
        finally:
            daemon.stop()
        for profile in (STRONG, COMPATIBLE) if args.stages else ():
            print(f"{profile.name}: each step alone, {args.stages} messages …", flush=True)
            stages[profile.name] = await stage_costs(work / f"stages-{profile.name}", work / "rx" / "keys",
                                                     profile, args.stages)
    finally:
        discard_work(work)

    print(f"\nmachine: {os.cpu_count()} cores, Python {platform.python_version()}, cryptography "
          f"{cryptography.__version__}; {args.n} messages per profile, {args.workers} connections, "
          f"mean sealed entity {figures[0]['entity_bytes_mean']} B (XML {figures[0]['xml_bytes_mean']} B); "
          f"inbox and store on {fs}")
    print(f"{'':24}{'msg/s':>7}{'bare':>6}{'ratio':>7}{'p50/p95/p99 ms':>17}  {'CPU ms/msg: all':>15}"
          f"{'daemon':>7}{'sender':>7}{'busy':>6}{'MB':>5}")
    for f in figures:
        lat = f["latency_ms"]
        print(f"{f['name']:24}{f['value']:7.0f}{f['baseline']:6}{f['ratio']:7.2f}"
              f"{lat['p50']:>7.0f}/{lat['p95']:.0f}/{lat['p99']:<5.0f}{f['daemon_cpu_ms_per_message']:17.2f}"
              f"{f['daemon_process_cpu_ms_per_message']:7.2f}{f['sender_cpu_ms_per_message']:7.2f}"
              f"{f['daemon_process_cpu_share']:6.2f}{f['daemon_peak_rss_mb']:5.0f}  {'MET' if f['met'] else 'NOT MET'}")
    print("CPU ms/msg: all = the daemon with its validation workers, daemon = its own process; busy = the daemon "
          "process's CPU in cores while timed; MB = its peak memory")
    print(f"goal ratio >= {GOAL}: {'MET' if all(f['met'] for f in figures) else 'NOT MET'} for all "
          f"(peak MB: the daemon; with its validation workers: "
          f"{', '.join(str(round(f['session_peak_rss_mb'])) for f in figures)})")
    for name, costs in stages.items():
        print(f"\n{name}, each step alone, one message at a time, in this process{'CPU ms':>17}{'wall ms':>9}")
        for step, (cpu, wall) in costs.items():
            print(f"  {step:72}{cpu:8.2f}{wall:9.2f}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(above ~0.5, other work shared the machine: rates are noisy)")
    write_result(ROOT, "intake-tmpfs" if fs.startswith("tmpfs") else "intake", {
        "benchmark": "intake", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "cryptography": cryptography.__version__,
                    "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "n": args.n, "workers": args.workers, "receiver_filesystem": fs, "warm_up_messages": WARM,
        "bare_rounds": 2 * args.rounds, "seconds_per_bare_round": args.seconds, "sender": SENDER,
        "receiver": RECEIVER, "examples": list(OWN_EXAMPLES), "figures": figures,
        "stages_cpu_wall_ms": {p: {k: [round(c, 3), round(w, 3)] for k, (c, w) in v.items()}
                               for p, v in stages.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
