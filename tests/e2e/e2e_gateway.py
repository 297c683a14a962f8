"""Running the gateway against the private mail servers: a set-up wired to them, in-process or as a process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.pipeline.daemon import Gateway
from gateway.setup_local import init_local
from gateway.store import State, Store
from local_setup import loaded
from mailservers import MailServers, Watchdog

FAST = {
    # quick retries and pick-up for tests; a lease just over the SMTP timeout, so a killed daemon's
    # messages come back within seconds
    'first_delay = "5m"': 'first_delay = "1s"',
    'max_delay = "4000s"': 'max_delay = "2s"',
    "[limits]\nworkers = 4": '[limits]\nworkers = 4\nstable_after = 0.05\nrescan_interval = 1.0\nlease = "11s"',
    'password_file = "secrets/smtp-password"': 'password_file = "secrets/smtp-password"\ntimeout = 5',
}


def make_setup(folder: Path, servers: MailServers, passwords: dict[str, str], *, template: Path | None = None,
               smtp_port: int | None = None, edits: dict[str, str] | None = None, party: str = "PI-VUGHT",
               **init_options) -> Path:
    """`init` pointed at `servers` (or at `smtp_port` on loopback), with the PI's mailbox passwords."""
    if template is not None:
        shutil.copytree(template, folder, symlinks=True)
    else:
        init_local(folder, party=party, smtp=(servers.smtp_host, servers.smtp_port),
                   imap=(servers.imap_host, servers.imap_port), relay_ca=servers.ca_pem, **init_options)
    config_path = folder / "gateway.toml"
    text = config_path.read_text()
    text = re.sub(r'(\[smtp\]\nhost = "[^"]*"\nport = )\d+', rf"\g<1>{smtp_port or servers.smtp_port}", text)
    text = re.sub(r'(\[imap\]\nhost = "[^"]*"\nport = )\d+', rf"\g<1>{servers.imap_port}", text)
    for old, new in {**(FAST if template is None else {}), **(edits or {})}.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    if template is None:
        text = _quick_as2(text)
    config_path.write_text(text)
    pi_email = re.search(r'\[party\][^\[]*email = "([^"]+)"', text).group(1)
    for name in ("smtp-password", "imap-password"):
        (folder / "secrets" / name).write_text(passwords[pi_email] + "\n")
    return config_path


def _quick_as2(text: str) -> str:
    """An [as2] table without its own timeout gets FAST's: 5 s, under FAST's 11 s lease (a lease must outlast
    a POST: the configuration refuses one that does not)."""
    table = re.search(r"(?ms)^\[as2\]\n(.*?)(?=^\[|\Z)", text)
    if table is None or re.search(r"(?m)^timeout = ", table.group(1)):
        return text
    return text[:table.end(1)] + "timeout = 5\n" + text[table.end(1):]


def identity(setup: Path, code: str) -> Identity:
    folder = setup / "keys" / "parties" / code
    return load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")


@asynccontextmanager
async def running(config: GatewayConfig):
    """The gateway as a task of this event loop; stopped gracefully on exit."""
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    try:
        while not gateway.ready.is_set() and not task.done():
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        yield gateway
    finally:
        gateway.stop.set()
        await asyncio.wait_for(task, 60)


async def wait_for_states(store: Store, ids, states, timeout: float = 60.0) -> dict[str, State]:
    """Until every message of `ids` is in one of `states`; returns the states (fails with them on timeout)."""
    wanted = {State(s) for s in states}
    deadline = time.monotonic() + timeout
    while True:
        now = {mid: (await store.get(mid)) for mid in ids}
        seen = {mid: (r.state if r else None) for mid, r in now.items()}
        if all(s in wanted for s in seen.values()):
            return seen
        if time.monotonic() > deadline:
            detail = {mid: (r.state.value, r.reason) if r else None for mid, r in now.items()}
            raise AssertionError(f"not all in {sorted(s.value for s in wanted)} after {timeout} s: {detail}")
        await asyncio.sleep(0.1)


def drop(outbox: Path, name: str, data: bytes) -> None:
    tmp = outbox / f"{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, outbox / name)


def log_events(log_path: Path) -> list[dict]:
    """The JSON events a DaemonProcess wrote to its log so far (a line still being written is left out)."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:  # the line being written
                pass
    return out


def named(log_path: Path, event: str) -> list[dict]:
    """The logged events called `event`, so far."""
    return [e for e in log_events(log_path) if e.get("event") == event]


async def logged(log_path: Path, event: str, count: int = 1, timeout: float = 60.0) -> list[dict]:
    """Until the log holds `count` events called `event`."""
    deadline = time.monotonic() + timeout
    while True:
        found = named(log_path, event)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not {count} {event!r} events within {timeout} s; last events: "
                                 f"{[e.get('event') for e in log_events(log_path)][-15:]}")
        await asyncio.sleep(0.05)


#: glibc's non-main arenas live in heaps of 64 MiB, each mapped at a multiple of 64 MiB
HEAP = 64 << 20


def malloc_heaps(pid: int | str = "self") -> int:
    """The glibc heaps (one per arena but the main one) in a process's address space: anonymous mappings
    that start at a multiple of 64 MiB and, with the reserved rest that follows, span 64 MiB."""
    spans: list[tuple[int, int, str]] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        spans.append((lo, hi, fields[5] if len(fields) > 5 else ""))
    heaps = 0
    for k, (lo, hi, name) in enumerate(spans):
        if name or lo % HEAP:
            continue
        end = hi
        while end - lo < HEAP and k + 1 < len(spans) and spans[k + 1][0] == end and not spans[k + 1][2]:
            k += 1
            end = spans[k][1]
        heaps += end - lo == HEAP
    return heaps


#: kills every daemon session still tracked when this test process dies (a pytest killed by a timeout
#: runs no teardown: without it its daemons would run on, holding ports and folders)
_watchdog: Watchdog | None = None


def spawn_session(args: list[str], **popen) -> subprocess.Popen:
    """A child in its own session (so a kill takes its workers too) that does not outlive this process."""
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog()
    proc = subprocess.Popen(args, start_new_session=True, **popen)
    _watchdog.track(proc.pid)
    return proc


def forget_session(proc: subprocess.Popen) -> None:
    """After the session ended on its own terms."""
    if _watchdog is not None:
        _watchdog.untrack(proc.pid)


class DaemonProcess:
    """`nazorg-gateway run -c CONFIG` as a child process (for kill tests)."""

    def __init__(self, config_path: Path, log_path: Path):
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = spawn_session([sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                                      stdout=log, stderr=log)

    def kill(self) -> None:
        """SIGKILL the daemon and its validation workers (its whole session)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc:
            forget_session(self.proc)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        forget_session(self.proc)
        return code


def open_config(path: Path) -> GatewayConfig:
    return loaded(path)
