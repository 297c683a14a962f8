"""The whole outbound exchange on this machine, as a newcomer would watch it (`make demo`).

1. private mail servers start on loopback: Postfix (the relay, STARTTLS required, real DSNs) and
   Dovecot (a mailbox for every party);
2. `nazorg-gateway init` writes a local set-up for PI Vught pointed at them; `run` starts;
3. PI Vught's example messages (every type) are dropped into the outbox, plus a broken one;
4. the gateway validates, routes, seals and sends; Postfix's DSNs come back → `delivered`;
5. each municipality opens what it got (decrypt, verify PI Vught's signature) and answers with a
   signed receipt (MDN) → `acknowledged` when its digest matches what was sealed.
Exit 0 when every message is acknowledged and the broken one was refused.
"""

from __future__ import annotations

import asyncio
import email
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

from mailservers import MailServers  # noqa: E402  (the test suite's private Postfix + Dovecot)

from gateway.config import load_config  # noqa: E402
from gateway.crypto.identity import load_pem_identity  # noqa: E402
from gateway.crypto.open import open_sealed  # noqa: E402
from gateway.crypto.pki import DEV_PARTIES  # noqa: E402
from gateway.crypto.receipts import Disposition, build_mdn  # noqa: E402
from gateway.crypto.trust import PartyBinding  # noqa: E402
from gateway.setup_local import init_local  # noqa: E402
from gateway.store import State, Store  # noqa: E402

PI = "PI-VUGHT"
EXAMPLES = [ROOT / "examples" / "valid" / "dossier-langverblijver" / n for n in
            ("01-meldingsbericht.xml", "03-basisdocument.xml", "04-overdrachtsdocument.xml", "05-ontslagbericht.xml")] + \
           [ROOT / "examples" / "valid" / n for n in
            ("meldingsbericht-veroordeeld-executie.xml", "basisdocument-niet-gescreend.xml",
             "spoedontslagbericht-met-vestiging.xml")]
BROKEN = ROOT / "examples" / "invalid" / "bsn-faalt-elfproef.xml"


def say(text: str) -> None:
    print(text, flush=True)


async def watch(store: Store, ids: list[str], until: set[State], timeout: float) -> dict[str, State]:
    shown: dict[str, State] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mid in ids:
            r = await store.get(mid)
            if r is not None and shown.get(mid) is not r.state:
                shown[mid] = r.state
                say(f"  {r.type:20} {mid[:8]}… → {r.recipient:14} {r.state.value}"
                    + (f"  ({r.reason})" if r.state in (State.HELD, State.FAILED, State.RETRY_WAIT) else ""))
        if len(shown) == len(ids) and set(shown.values()) <= until:
            break
        await asyncio.sleep(0.2)
    return shown


async def main() -> int:
    passwords = {p.email: secrets.token_urlsafe(12) for p in DEV_PARTIES}
    work = Path(tempfile.mkdtemp(prefix="nazorg-demo-"))
    servers = MailServers.temporary(passwords, sorted({a.split("@")[1] for a in passwords}))
    daemon = None
    try:
        say("== 1. private mail servers on loopback ==")
        servers.start()
        say(f"  Postfix relay 127.0.0.1:{servers.smtp_port} (STARTTLS required), "
            f"Dovecot IMAPS 127.0.0.1:{servers.imap_port}")

        say("== 2. nazorg-gateway init + run ==")
        folder = work / "gw"
        config_path = init_local(folder, party=PI, smtp=(servers.smtp_host, servers.smtp_port),
                                 imap=(servers.imap_host, servers.imap_port), relay_ca=servers.ca_pem)
        own_email = next(p.email for p in DEV_PARTIES if p.code == PI)
        for name in ("smtp-password", "imap-password"):
            (folder / "secrets" / name).write_text(passwords[own_email] + "\n")
        text = config_path.read_text().replace("[limits]\nworkers = 4", "[limits]\nworkers = 4\nstable_after = 0.2")
        config_path.write_text(text)
        cfg = load_config(config_path)
        log = work / "gateway.log"
        with open(log, "wb") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
                                      stdout=out, stderr=out, start_new_session=True)
        while b'"event": "started"' not in log.read_bytes():
            if daemon.poll() is not None:
                say(log.read_text())
                return 1
            time.sleep(0.1)
        say(f"  set-up in {folder}; the daemon logs to {log}")

        say("== 3. PI Vught drops its messages into the outbox (and one broken file) ==")
        ids = []
        for path in EXAMPLES:
            data = path.read_bytes()
            mid = data.split(b"<berichtId>")[1].split(b"<")[0].decode()
            ids.append(mid)
            (cfg.folders.outbox / f"{path.name}.tmp").write_bytes(data)
            (cfg.folders.outbox / f"{path.name}.tmp").rename(cfg.folders.outbox / path.name)
        shutil.copy(BROKEN, cfg.folders.outbox / "kapot.xml")

        store = await Store.open(cfg.store.url)
        try:
            say("== 4. validated, routed, sealed, sent; Postfix's DSNs read back over IMAP ==")
            await watch(store, ids, {State.DELIVERED, State.ACKNOWLEDGED, State.FAILED, State.HELD}, 90)
            refused = cfg.folders.rejected / "kapot.xml.error.txt"
            for _ in range(50):
                if refused.exists():
                    break
                time.sleep(0.1)
            say("  the broken file was refused: rejected/kapot.xml.error.txt says")
            for line in refused.read_text().splitlines()[3:7]:
                say(f"    {line}")

            say("== 5. each municipality opens its mail and answers with a signed receipt ==")
            trust = cfg.trust.load()
            for code in sorted({(await store.get(m)).recipient.split(":")[1] for m in ids}):
                party = next(p for p in DEV_PARTIES if p.code == code)
                keys = folder / "keys" / "parties" / code
                me = load_pem_identity(keys / "key.pem", keys / "cert.pem", keys / "chain.pem")
                for raw in servers.messages(party.email):
                    mail = email.message_from_bytes(raw)
                    opened = open_sealed(raw, me, trust, expected_sender=PartyBinding(email=own_email))
                    say(f"  {code} opened {mail['Subject']}: signed by {opened.signer.subject.rfc4514_string()[:40]}…,"
                        f" {len(opened.xml)} bytes of XML")
                    mdn = build_mdn(original_message_id=mail["Message-ID"], original_recipient=party.email,
                                    final_recipient=party.email, disposition=Disposition.PROCESSED, reason_code=None,
                                    mic=opened.mic, signer=me)
                    servers.deliver(party.email, own_email,
                                    f"From: <{party.email}>\r\nTo: <{own_email}>\r\nSubject: ontvangstbevestiging\r\n"
                                    f"MIME-Version: 1.0\r\n".encode() + mdn.entity)
            final = await watch(store, ids, {State.ACKNOWLEDGED, State.FAILED, State.HELD}, 90)
        finally:
            await store.close()
        ok = len(final) == len(ids) and set(final.values()) == {State.ACKNOWLEDGED} and refused.exists()
        say(f"== {'every message delivered and acknowledged' if ok else 'NOT every message was acknowledged'} ==")
        return 0 if ok else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
