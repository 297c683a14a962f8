"""No personal data anywhere an operator, a log collector or a mail server can see (issue 6, item 9).

Three real daemons (`nazorg-gateway run`, each a process with its log in a file) over a private Postfix +
Dovecot: the PI (PI-VUGHT) sends a dossier's messages to Rotterdam (0599, a gateway reading its mailbox:
e-mail with DSNs and signed MDNs), to Utrecht (0344, a gateway on the platform: AS2 with mutual TLS and
synchronous MDNs), to Eindhoven (0772: a mailbox that does not exist, so real bounces and `failed`) and to
Groningen (0014: no route, so `held`); two broken files are refused at pick-up, one named after the BSN.
Rotterdam and Utrecht each answer with a gemeenteblad (e-mail, AS2) that the PI receives and receipts.

Then everything observable is swept for the BSNs, names and dates of birth of the messages dropped
(`privacy_sweep.py`): every log line of every daemon and of the mail servers, every mail in every maildir
and the Postfix queue (headers, subjects, receipts, bounces), the store files and every cell in them,
/metrics, /healthz, /readyz, every dashboard page an operator sees, and the operator CLI's JSON. The
sweep proves it can see: the officer's content view and the spooled copy of the held message are swept
the same way and must show the BSN.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from dropped import OWN_EXAMPLES, example, with_new_id
from e2e_gateway import DaemonProcess, drop, make_setup, open_config, wait_for_states
from gateway.ops.web_accounts import add_account
from gateway.store import State, Store
from mailservers import free_port
from paths import EXAMPLES
from privacy_sweep import Needle, Sweep, get, invoke, login, personal_data, prove_it_sees

PASSWORDS = {"olga": "operator-password-1", "otto": "officer-password-12"}
#: the broken files the PI system drops: a value of the person is the reason of the refusal. One is named
#: after its BSN, as a careless producer might: the store keeps only a keyed digest of file names (this
#: sweep found the names in the store; pickup.stored_name since)
BROKEN = {"999998226.xml": "bsn-faalt-elfproef.xml", "datumvolgorde.xml": "geboortedatum-na-aanvang.xml"}
DEBUG = {'log_level = "info"': 'log_level = "debug"',  # every line the code can write is swept
         'lease = "11s"': 'lease = "11s"\nvalidation_workers = 1'}


def _dashboard(config_path: Path) -> str:
    """Accounts and a free loopback port: the daemon serves its dashboard; returns its base URL."""
    port = free_port()
    with config_path.open("a") as fh:
        fh.write(f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n')
    cfg = open_config(config_path)
    add_account(cfg.dashboard.accounts_file, "olga", "operator", PASSWORDS["olga"])
    add_account(cfg.dashboard.accounts_file, "otto", "officer", PASSWORDS["otto"])
    return f"http://127.0.0.1:{port}"


def _started(log: Path) -> bool:
    return log.exists() and '"event": "started"' in log.read_text(errors="replace")


async def _until_started(daemons: dict[str, DaemonProcess], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(_started(d.log_path) for d in daemons.values()):
        for name, d in daemons.items():
            assert d.proc.poll() is None, f"{name} exited: {d.log_path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "daemons did not start"
        await asyncio.sleep(0.1)


async def _states(config, ids, states, timeout: float = 60) -> dict:
    async with await Store.open(config.store.url) as store:
        return await wait_for_states(store, ids, states, timeout=timeout)


async def test_no_bsn_name_or_birth_date_anywhere_observable(tmp_path, mail_servers, mail_users):
    servers = mail_servers
    pi_port, gm_port = free_port(), free_port()
    pi_url, gm_url = f"https://127.0.0.1:{pi_port}/as2", f"https://127.0.0.1:{gm_port}/as2"
    pi_path = make_setup(tmp_path / "pi", servers, mail_users, as2_listen=("127.0.0.1", pi_port),
                         platform={"0344": gm_url}, edits={
                             **DEBUG, 'address = "nazorg@gemeente-0772.example.nl"':
                                 'address = "bestaat-niet@gemeente-0772.example.nl"'})
    text = pi_path.read_text()  # Groningen loses its route: its message is held, its spool copy kept
    text, n = re.subn(r'\[routes\."0014"\][^\[]*', "", text)
    assert n == 1
    pi_path.write_text(text)
    rd_path = make_setup(tmp_path / "0599", servers, mail_users, party="0599", pki=tmp_path / "pi" / "keys",
                         edits=DEBUG)
    ut_path = make_setup(tmp_path / "0344", servers, mail_users, party="0344", pki=tmp_path / "pi" / "keys",
                         as2_listen=("127.0.0.1", gm_port), platform={"PI-VUGHT": pi_url}, edits=DEBUG)
    urls = {name: _dashboard(path) for name, path in (("pi", pi_path), ("0599", rd_path), ("0344", ut_path))}
    pi, rd, ut = (open_config(p) for p in (pi_path, rd_path, ut_path))
    assert pi.routes["0344"].transport == "platform" and "0014" not in pi.routes

    # what is dropped, and the personal data in it
    sent = {}  # message id -> (example name, xml)
    for name in OWN_EXAMPLES:
        data, mid = with_new_id(example(name))
        sent[mid] = (name, data)
    blad_rd, blad_rd_id = with_new_id(example("02-gemeenteblad.xml"))
    blad_ut, blad_ut_id = with_new_id(re.sub(rb">0599<", b">0344<", example("02-gemeenteblad.xml")))
    broken = {file: (EXAMPLES / "invalid" / source).read_bytes() for file, source in BROKEN.items()}
    needles = personal_data([x for _, x in sent.values()] + [blad_rd, blad_ut, *broken.values()])
    kinds = {n.kind for n in needles}
    assert kinds == {"bsn", "name", "birth date"} and len(needles) > 40, needles
    sweep = Sweep(needles)
    by_recipient = {}
    for mid, (name, _) in sent.items():
        by_recipient.setdefault(OWN_EXAMPLES[name], []).append(mid)

    daemons = {name: DaemonProcess(path, tmp_path / f"{name}.log")
               for name, path in (("pi", pi_path), ("0599", rd_path), ("0344", ut_path))}
    started = time.monotonic()
    try:
        for d in daemons.values():
            d.start()
        await _until_started(daemons)
        for mid, (_, data) in sent.items():
            drop(pi.folders.outbox, f"{mid}.xml", data)
        for file, data in broken.items():
            drop(pi.folders.outbox, file, data)
        drop(rd.folders.outbox, "blad.xml", blad_rd)
        drop(ut.folders.outbox, "blad.xml", blad_ut)

        ok = by_recipient["gemeente:0599"] + by_recipient["gemeente:0344"]
        await _states(pi, ok, [State.ACKNOWLEDGED])
        await _states(pi, by_recipient["gemeente:0772"], [State.FAILED])
        await _states(pi, by_recipient["gemeente:0014"], [State.HELD])
        await _states(rd, [blad_rd_id], [State.ACKNOWLEDGED])
        await _states(ut, [blad_ut_id], [State.ACKNOWLEDGED])
        for file in broken:
            assert (pi.folders.rejected / f"{file}.error.json").exists(), file
        assert sorted(p.name for p in pi.folders.inbox.rglob("*.xml")) == sorted(
            [f"{blad_rd_id}.xml", f"{blad_ut_id}.xml"])
        flow_seconds = time.monotonic() - started

        # the dashboards, /metrics and the probes, while the daemons serve them
        held_id = by_recipient["gemeente:0014"][0]
        typed = next(n.value for n in needles if n.kind == "bsn")
        pages = 0
        for name, base in urls.items():
            pages += await _sweep_dashboard(sweep, name, base, *((held_id, typed) if name == "pi" else (None,)))
        for name, d in daemons.items():
            assert d.terminate() == 0, f"{name} stops cleanly on SIGTERM"
    finally:
        for d in daemons.values():
            d.kill()

    # every log line of every daemon, and of the mail servers
    lines = {name: sweep.log_file(name, d.log_path) for name, d in daemons.items()}
    assert all(n > 10 for n in lines.values()), lines
    sweep.plain_log("postfix", servers.postfix_log)
    sweep.plain_log("dovecot", servers.dovecot_log)

    # every mail in every mailbox (sealed messages, DSNs, bounces, MDNs), the maildir files and the queue
    mails = 0
    for address in mail_users:
        for i, raw in enumerate(servers.messages(address, folder=None)):
            sweep.mail(f"{address} #{i}", raw)
            mails += 1
    sweep.tree("mail server file", servers.workdir, exclude=[servers.postfix_log, servers.dovecot_log])
    everything = b"".join(m for a in mail_users for m in servers.messages(a, folder=None))
    assert b"Subject: Undelivered Mail Returned to Sender" in everything, "a bounce was swept"
    assert b"Subject: Successful Mail Delivery Report" in everything, "a DSN was swept"

    # the stores: no BSN, name or birth date at all (sealed entities are encrypted)
    rows = {name: sweep.sqlite(name, cfg.store.sqlite_path) for name, cfg in (("pi", pi), ("0599", rd),
                                                                               ("0344", ut))}
    # the receivers' inbox metadata (the XML beside it is the delivery itself)
    for cfg in (pi, rd, ut):
        for meta in cfg.folders.inbox.rglob("*.json"):
            sweep.text("inbox metadata", meta.name, meta.read_text())

    # the operator CLI's JSON (the commands run their own event loop: in a thread)
    cli_outputs = 0
    for name, path in (("pi", pi_path), ("0599", rd_path), ("0344", ut_path)):
        cli_outputs += await asyncio.to_thread(_sweep_cli, sweep, name, path, len(sent) if name == "pi" else 1)

    # the sweep sees what is there: the held message's spooled copy holds the BSN (it is the one place it
    # may), swept the same way
    copy = (pi.folders.spool / f"{held_id}.xml").read_bytes()
    bsn = re.search(rb"<burgerservicenummer>(\d{9})<", copy).group(1).decode()
    assert Needle("bsn", bsn) in Sweep(needles).found_in_bytes(copy)
    # and each way of sweeping finds what is put where it looks (the receiver's inbox copy included)
    prove_it_sees(needles, tmp_path, rd.folders.inbox)

    print(f"\nflow {flow_seconds:.1f} s; swept {sum(lines.values())} log lines, {mails} mails, "
          f"{sum(rows.values())} store rows, {pages} dashboard pages, {cli_outputs} CLI outputs; "
          f"{len(needles)} needles; per category {sweep.swept}")
    assert not sweep.hits, "personal data where it must not be:\n" + "\n".join(
        f"  {where}: {kind} {value}" for where, kind, value in sweep.hits)


async def _sweep_dashboard(sweep: Sweep, name: str, base: str, held_id: str | None, typed: str = "") -> int:
    """Every page an operator sees; returns how many. On the PI's, the officer's content view of the held
    message must show its BSN (the sweep would catch it: it is not swept as an operator's page), and what an
    operator types (`typed`, a BSN: as a login name, in the search) must not reach the audit trail or the log
    (the store and the log are swept afterwards; the search page echoes the query, so it is not swept)."""
    pages = 0
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/healthz", "/readyz"):
            status, body = await get(anonymous, base + path)
            assert status == 200, (name, path, status)
            sweep.text("probe", f"{name} {path}", body)
            pages += 1
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as operator:
        await login(operator, base, "olga", PASSWORDS["olga"])
        status, listing = await get(operator, f"{base}/messages")
        ids = re.findall(r"<a href='/messages/([0-9a-f-]{36})'>", listing)
        paths = ["/", "/messages", "/held", "/failed", "/routes", "/metrics", "/subjects",
                 *(f"/messages?state={s.value}" for s in State if s is not State.REJECTED),
                 *(f"/messages/{m}" for m in sorted(set(ids))), *(f"/messages/{m}/content" for m in set(ids))]
        for path in paths:
            status, body = await get(operator, base + path)
            if path.endswith("/content") or path == "/subjects":  # the officer's views
                assert status == 403, (name, path, status)
            else:
                assert status == 200, (name, path, status)
            sweep.text("dashboard" if path != "/metrics" else "metrics", f"{name} {path}", body)
            pages += 1
        assert ids, f"{name}: the operator sees messages"
        if typed:
            status, _ = await get(operator, f"{base}/messages?id={typed}&type={typed}")
            assert status == 200
    if typed:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger:
            form = await (await stranger.get(f"{base}/login")).text()
            token = re.search(r"name='login_token' value='([^']+)'", form).group(1)
            r = await stranger.post(f"{base}/login", data={"login_token": token, "name": typed, "password": typed})
            assert r.status == 401
    if held_id is not None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as officer:
            await login(officer, base, "otto", PASSWORDS["otto"])
            status, body = await get(officer, f"{base}/messages/{held_id}/content")
            assert status == 200
            shown = {n.kind for n in sweep.found_in_text(html.unescape(body))}
            assert {"bsn", "name", "birth date"} <= shown, "the officer's view shows the person: the sweep sees it"
    return pages


def _sweep_cli(sweep: Sweep, name: str, path: Path, at_least: int) -> int:
    """status, messages list, messages show (a message in each state), dossiers, report mi: all --json."""
    today = datetime.now(timezone.utc).date().isoformat()
    commands = [["status", "--json"], ["messages", "list", "--json", "--limit", "1000"], ["dossiers", "--json"],
                ["report", "mi", "--json", "--from", "2025-01-01", "--to", today]]
    listed = json.loads(invoke("messages", "list", "--json", "--limit", "1000", "-c", str(path)).stdout)
    assert len(listed) >= at_least, (name, listed)
    one_per_state = {m["state"]: m["message_id"] for m in listed}  # each CLI call costs ~0.3 s
    commands += [["messages", "show", mid, "--json"] for mid in one_per_state.values()]
    for command in commands:
        result = invoke(*command, "-c", str(path))
        assert result.returncode == 0, (name, command, result.stdout, result.stderr)
        json.loads(result.stdout)
        sweep.text("cli", f"{name} {' '.join(command[:3])}", result.stdout + result.stderr)
    # beyond the brief, on one gateway: the other operator commands, and what a terminal shows
    others = [["audit", "verify", "--json"], ["purge", "--dry-run", "--json"], ["routes", "check", "--json"],
              ["status"], ["dossiers"], *(["messages", "show", mid] for mid in one_per_state.values())]
    for command in others if name == "pi" else []:
        result = invoke(*command, "-c", str(path))
        # routes check judges the configuration (exit 1 when a route is wrong): only its output matters here
        assert result.returncode in ((0, 1) if command[0] == "routes" else (0,)), (command, result.stderr)
        sweep.text("cli", f"{name} {' '.join(command[:3])}", result.stdout + result.stderr)
    return len(commands) + (len(others) if name == "pi" else 0)
