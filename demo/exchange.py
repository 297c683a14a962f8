"""The whole exchange of the source document on this machine (`make demo`).

Three gateways, each its own `nazorg-gateway run` process, and private mail servers on loopback:
- PI Vught (PI-VUGHT), which drops the example dossier into its outbox;
- Rotterdam (0599), reached by e-mail (Postfix with STARTTLS, Dovecot IMAP): it receives the
  meldingsbericht and basisdocument, and answers the meldingsbericht with a gemeenteblad;
- Utrecht (0344), connected to the platform (AS2 over HTTPS with mutual TLS): it receives the
  overdrachtsdocument and the ontslagbericht.
Every message is validated, sealed for its entitled recipient only, delivered, opened and checked
there, filed in its inbox, and acknowledged at its sender by a signed receipt whose digest matches.
A live view shows each step; a summary table follows. Ctrl-C stops everything cleanly.
Exit 0 when every message is acknowledged.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from mailservers import MailServers, free_port  # noqa: E402  (the test suite's private Postfix + Dovecot)

from gateway.config import load_config  # noqa: E402
from gateway.crypto.pki import DEV_PARTIES  # noqa: E402
from gateway.setup_local import init_local  # noqa: E402
from gateway.store import State, Store  # noqa: E402

DOSSIER = ROOT / "examples" / "valid" / "dossier-langverblijver"
FROM_PI = ["01-meldingsbericht.xml", "03-basisdocument.xml", "04-overdrachtsdocument.xml", "05-ontslagbericht.xml"]
BLAD = "02-gemeenteblad.xml"
NAMES = {"PI-VUGHT": "PI Vught", "0599": "Rotterdam (e-mail)", "0344": "Utrecht (platform)"}
DONE = {State.ACKNOWLEDGED, State.FAILED, State.HELD, State.CANCELLED}


def say(text: str = "") -> None:
    print(text, flush=True)


class Gateway:
    """One local gateway: its set-up folder, its daemon process, its store."""

    def __init__(self, code: str, folder: Path, config: Path):
        self.code, self.folder, self.config_path = code, folder, config
        self.config = load_config(config)
        self.log = folder / "gateway.log"
        self.proc: subprocess.Popen | None = None
        self.store: Store | None = None

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                                         stdout=out, stderr=out, start_new_session=True)

    async def ready(self) -> None:
        while b'"event": "started"' not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway of {self.code} did not start:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        self.store = await Store.open(self.config.store.url)

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def set_up(work: Path, servers: MailServers, passwords: dict[str, str]) -> dict[str, Gateway]:
    pi_port, gm_port = free_port(), free_port()
    common = dict(smtp=(servers.smtp_host, servers.smtp_port), imap=(servers.imap_host, servers.imap_port),
                  relay_ca=servers.ca_pem)
    folders = {code: work / code for code in NAMES}
    configs = {
        "PI-VUGHT": init_local(folders["PI-VUGHT"], party="PI-VUGHT", as2_listen=("127.0.0.1", pi_port),
                               platform={"0344": f"https://127.0.0.1:{gm_port}/as2"}, **common),
        "0599": init_local(folders["0599"], party="0599", pki=folders["PI-VUGHT"] / "keys", **common),
        "0344": init_local(folders["0344"], party="0344", pki=folders["PI-VUGHT"] / "keys",
                           as2_listen=("127.0.0.1", gm_port), platform={"PI-VUGHT": f"https://127.0.0.1:{pi_port}/as2"},
                           **common),
    }
    for code, config in configs.items():
        email = next(p.email for p in DEV_PARTIES if p.code == code)
        for name in ("smtp-password", "imap-password"):
            (folders[code] / "secrets" / name).write_text(passwords[email] + "\n")
        text = config.read_text()
        # a demo answers quickly: pick up files after 0.2 s and look at the mailbox every 2 s
        text = text.replace("[limits]\nworkers = 4", "[limits]\nworkers = 4\nstable_after = 0.2")
        text = text.replace('password_file = "secrets/imap-password"',
                            'password_file = "secrets/imap-password"\npoll_interval = 2')
        config.write_text(text)
    return {code: Gateway(code, folders[code], configs[code]) for code in NAMES}


def drop(gateway: Gateway, name: str, data: bytes) -> None:
    outbox = gateway.config.folders.outbox
    (outbox / f"{name}.tmp").write_bytes(data)
    (outbox / f"{name}.tmp").rename(outbox / name)


def message_id(data: bytes) -> str:
    return re.search(rb"<berichtId>([^<]+)</berichtId>", data).group(1).decode()


async def live(gateways: dict[str, Gateway], sent: dict[str, tuple[str, float]], timeout: float,
               shown: dict[str, State]) -> dict[str, object]:
    """Print every state change of the messages in `sent` (id → (sender code, drop time)) until all are done."""
    records: dict[str, object] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mid, (code, _) in list(sent.items()):
            r = await gateways[code].store.get(mid)
            if r is not None:
                records[mid] = r
            if r is None or shown.get(mid) is r.state:
                continue
            shown[mid], records[mid] = r.state, r
            route = "platform" if r.transport == "platform" else "e-mail" if r.transport else ""
            extra = f"  ({r.reason})" if r.state in (State.HELD, State.FAILED, State.RETRY_WAIT) else ""
            say(f"  {time.strftime('%H:%M:%S')}  {r.type:20} {NAMES[code]:20} → {r.recipient:15} {route:9} "
                f"{r.state.value}{extra}")
        if len(shown) == len(sent) and set(shown.values()) <= DONE:
            break
        await asyncio.sleep(0.2)
    return records


async def exchange(work: Path) -> int:
    passwords = {p.email: secrets.token_urlsafe(12) for p in DEV_PARTIES}
    servers = MailServers.temporary(passwords, sorted({a.split("@")[1] for a in passwords}))
    gateways: dict[str, Gateway] = {}
    try:
        say("== private mail servers on loopback ==")
        servers.start()
        say(f"  Postfix relay 127.0.0.1:{servers.smtp_port} (STARTTLS required), "
            f"Dovecot IMAPS 127.0.0.1:{servers.imap_port}")
        say("== three gateways: nazorg-gateway init + run ==")
        gateways = set_up(work, servers, passwords)
        for g in gateways.values():
            g.start()
        for g in gateways.values():
            await g.ready()
            say(f"  {NAMES[g.code]:20} set-up {g.folder}, log {g.log.name}")

        say("== PI Vught drops the dossier into its outbox; Rotterdam answers the melding with a gemeenteblad ==")
        started = time.monotonic()
        sent: dict[str, tuple[str, float]] = {}
        for name in FROM_PI:
            data = (DOSSIER / name).read_bytes()
            sent[message_id(data)] = ("PI-VUGHT", time.monotonic())
            drop(gateways["PI-VUGHT"], name, data)
        melding = message_id((DOSSIER / FROM_PI[0]).read_bytes())
        blad = (DOSSIER / BLAD).read_bytes()
        inbox = gateways["0599"].config.folders.inbox / "meldingsbericht" / f"{melding}.xml"
        answered = asyncio.create_task(_answer_when_received(inbox, gateways["0599"], blad, sent))
        shown: dict[str, State] = {}
        await live(gateways, sent, 120, shown)
        await asyncio.wait_for(answered, 60)  # the gemeenteblad was dropped (its progress may still run)
        records = await live(gateways, sent, 60, shown)
        elapsed = time.monotonic() - started

        say()
        say("== summary ==")
        say(f"  {'message':38} {'type':20} {'from → to':30} {'route':9} {'state':13} receipt after")
        for mid, (code, dropped) in sent.items():
            r = records.get(mid)
            if r is None:
                say(f"  {mid:38} (never picked up)")
                continue
            took = (r.acknowledged_at.timestamp() - (time.time() - (time.monotonic() - dropped))) \
                if r.acknowledged_at else None
            route = "platform" if r.transport == "platform" else "e-mail"
            say(f"  {mid:38} {r.type:20} {(code + ' → ' + r.recipient.split(':')[1]):30} {route:9} "
                f"{r.state.value:13} {f'{took:.1f} s' if took is not None else '-'}")
        ok = len(records) == len(sent) and all(r.state is State.ACKNOWLEDGED for r in records.values())
        say()
        say(f"  {len(sent)} messages in {elapsed:.1f} s: "
            + ("every one delivered, opened by its entitled recipient and acknowledged"
               if ok else "NOT every message was acknowledged: see the logs"))
        say("  where to look: the inboxes (one .xml + .json per message, by type):")
        for g in gateways.values():
            say(f"    {NAMES[g.code]:20} {g.config.folders.inbox}")
        return 0 if ok else 1
    finally:
        for g in gateways.values():
            await g.stop()
        servers.stop()


async def _answer_when_received(inbox_file: Path, rotterdam: Gateway, blad: bytes,
                                sent: dict[str, tuple[str, float]]) -> None:
    """Rotterdam's own system: when the meldingsbericht is in its inbox, it drops its gemeenteblad."""
    while not inbox_file.exists():
        await asyncio.sleep(0.2)
    sent[message_id(blad)] = ("0599", time.monotonic())
    drop(rotterdam, BLAD, blad)


def main() -> int:
    keep = "--clean" not in sys.argv  # the set-ups stay for a look (no process is left running)
    work = Path(tempfile.mkdtemp(prefix="nazorg-demo-"))
    loop = asyncio.new_event_loop()
    task = loop.create_task(exchange(work))
    loop.add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl-C: stop the gateways and servers, then leave
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        say("\nstopped: every gateway and mail server is down")
        return 130
    finally:
        loop.close()
        if keep:
            say(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
