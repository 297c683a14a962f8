"""What every benchmark here shares: a rate measured for a fixed time, the machine it ran on, the bare
open baseline, and the gateway daemon run as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.crypto import smime
from gateway.crypto.identity import Identity
from gateway.crypto.profiles import COMPATIBLE, EncryptionProfile
from gateway.crypto.seal import seal


def rate(fn: Callable[[], object], seconds: float, per_call: int = 1) -> float:
    """Items per second: fn handles `per_call` items per call, called for about `seconds`."""
    done, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            fn()
        done += 10 * per_call
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def machine() -> dict:
    return {"host": socket.gethostname(), "cores": os.cpu_count(), "python": platform.python_version()}


def print_figures(figures: list[dict], goal: float, unit: str) -> None:
    """One line per figure: rate and µs beside the baseline's, the ratio, its per-round range, and the goal."""
    print(f"{'':24}{unit:>12}{'µs':>8}{'bare msg/s':>12}{'µs':>8}{'ratio':>8}  per round")
    all_met = True
    for f in figures:
        met = f["ratio"] >= goal
        all_met &= met
        print(f"{f['name']:24}{f['value']:12}{f['per_message_us']:8.0f}{f['baseline']:12}"
              f"{f['baseline_per_message_us']:8.0f}{f['ratio']:8.2f}  {f['ratio_per_round_min']:.2f}-"
              f"{f['ratio_per_round_max']:.2f} {'MET' if met else 'NOT MET'}")
    print(f"goal ratio >= {goal}: {'MET' if all_met else 'NOT MET'} for all")


def write_result(root: Path, name: str, result: dict) -> Path:
    """bench/results/<date>-<host>-<name>.json, and say where."""
    out = root / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-{socket.gethostname()}-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out.relative_to(root)}")
    return out


def percentile(values: list[float], p: float) -> float:
    """The value at rank p% (nearest rank) of `values`."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


@dataclass(frozen=True)
class BareOpen:
    """The least one opened message costs: `run()` does it once (see `bare_open`)."""

    run: Callable[[], None]
    name: str  #: what `run` does, for the results
    ciphertext_bytes: int
    entity_bytes: int  #: the sealed entity a real message of this size and profile has


def bare_open(sender: Identity, recipient: Identity, xml: bytes, profile: EncryptionProfile) -> BareOpen:
    """The baseline of bench/crypto_open.py for `xml` sealed under `profile`, keys and inputs made here.

    One RSA-2048 private-key decryption of a 32-byte key (PKCS#1 v1.5 for compatible, OAEP-SHA-256 for
    strong), AES-256-CBC resp. -GCM decryption of a ciphertext as large as the signed entity, one RSA
    PKCS#1 v1.5 verification of a SHA-256 digest, and SHA-256 over the signed content part."""
    cek, iv, nonce = os.urandom(32), os.urandom(16), os.urandom(12)
    key, pub_me, pub_sender = recipient.key, recipient.cert.public_key(), sender.cert.public_key()
    part = smime.content_part(xml)  # the signed content part, as seal() makes it
    h = hashes.Hash(hashes.SHA256())
    h.update(part)
    digest = h.finalize()
    signature = sender.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    sealed = seal(xml, sender, recipient.cert, profile)
    gcm = profile.content_cipher.authenticated
    kt_pad = (padding.PKCS1v15() if profile is COMPATIBLE else
              padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    wrapped = pub_me.encrypt(cek, kt_pad)
    plain = sealed.signed_entity  # what the envelope encrypts
    if gcm:
        ciphertext = AESGCM(cek).encrypt(nonce, plain, None)
    else:
        pad = 16 - len(plain) % 16
        e = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        ciphertext = e.update(plain + bytes((pad,)) * pad) + e.finalize()

    def run() -> None:
        k = key.decrypt(wrapped, kt_pad)
        if gcm:
            AESGCM(k).decrypt(nonce, ciphertext, None)
        else:
            d = Cipher(algorithms.AES(k), modes.CBC(iv)).decryptor()
            d.update(ciphertext)
            d.finalize()
        pub_sender.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        s = hashes.Hash(hashes.SHA256())
        s.update(part)
        s.finalize()

    name = ("RSA-2048 " + ("OAEP-SHA256" if gcm else "PKCS#1 v1.5") + " decrypt + AES-256-"
            + ("GCM" if gcm else "CBC") + " decrypt + RSA-2048 verify + SHA-256")
    return BareOpen(run, name, len(ciphertext), len(sealed.entity))


class Daemon:
    """`python -m gateway run -c CONFIG` as its own process (own session, so its workers can be counted)."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
                                         stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while b'"event": "started"' not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the daemon did not start: see {self.log}")
            time.sleep(0.05)

    def _session(self) -> list[Path]:
        """/proc entries of the daemon's session: the daemon and its validation workers."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.pid:  # session id
                found.append(entry)
        return found

    def peak_rss_mb(self, whole_session: bool = False) -> float:
        """VmHWM of the daemon (MB); `whole_session`: the sum of every session process's VmHWM."""
        total = 0.0
        for entry in self._session() if whole_session else [Path(f"/proc/{self.pid}")]:
            try:
                lines = (entry / "status").read_text().splitlines()
            except OSError:
                continue
            total += next((int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmHWM:")), 0.0)
        return total

    def cpu_seconds(self, whole_session: bool = True) -> float:
        """User + system CPU of the daemon and its validation workers (its whole session), or of the
        daemon process alone (all its threads)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for entry in self._session() if whole_session else [Path(f"/proc/{self.pid}")]:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


async def count_in(store, states: Iterable) -> int:
    """Messages now in ``states``, from the store's per-state counts (kept by triggers: no row is read)."""
    counts = await store.counts()
    return sum(counts[s] for s in states)


async def wait_for_states(store, ids: set[str], states: list, *, baseline: int, timeout: float,
                          poll: float = 0.2) -> dict:
    """Until every id is in one of ``states``: their records. ``baseline``: ``count_in(store, states)``
    before the ids were dropped. While waiting only the per-state counts are read: listing every row
    each poll (5,000 and more) took a good part of a core from the daemon being measured."""
    deadline = time.monotonic() + timeout
    while True:
        if await count_in(store, states) >= baseline + len(ids):
            rows = await store.list(states=states, limit=10_000_000)
            done = {r.message_id: r for r in rows if r.message_id in ids}
            if len(done) == len(ids):
                return done
        if time.monotonic() > deadline:
            counts = {s.value: n for s, n in (await store.counts()).items() if n}
            raise SystemExit(f"{len(ids)} messages not all in {[s.value for s in states]} after {timeout:.0f} s: "
                             f"{counts}")
        await asyncio.sleep(poll)


def discard_work(work: Path) -> None:
    """Remove a benchmark's work folder, or keep it (and say where) when BENCH_KEEP is set."""
    if os.environ.get("BENCH_KEEP"):
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
