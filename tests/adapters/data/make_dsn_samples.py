"""Make the Postfix DSN samples in this folder with a real, private Postfix (run by hand, as root).

    .venv/bin/python tests/adapters/data/make_dsn_samples.py

What happens: a private Postfix (own config, queue and mail folders in a temp dir; smtpd on a
random loopback port with STARTTLS required) accepts mails from the gateway's own SmtpSender
(which asks for DSNs) and either delivers them into a local Maildir (`pi-vught.test`) or relays
them to an aiosmtpd "municipality" (`gemeente.test`) that accepts, refuses (550 5.1.1) or defers
(451 4.3.0) per recipient. The DSNs Postfix writes back to the sender's Maildir are copied here:

    postfix-delivered.eml   NOTIFY=SUCCESS, delivered into the local Maildir ("delivered")
    postfix-relayed.eml     NOTIFY=SUCCESS, handed to a next hop without DSN  ("relayed")
    postfix-bounce.eml      NOTIFY=FAILURE, next hop said 550 5.1.1            ("failed")
    postfix-delay.eml       NOTIFY=DELAY, next hop keeps saying 451 4.3.0      ("delayed")

Postfix is stopped (and its queue thrown away) at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path[:0] = [str(ROOT), str(HERE.parent)]

from aiosmtpd.smtp import SMTP  # noqa: E402
from smtp_peer import TlsMaterial  # noqa: E402

from adapters.smtp import RelaySettings, SmtpSender, compose_mail  # noqa: E402

SENDER = "gateway@pi-vught.test"
RECIPIENTS = {  # file name: (recipient, NOTIFY wanted)
    "postfix-delivered.eml": "ontvanger@pi-vught.test",
    "postfix-relayed.eml": "nazorg+post@gemeente.test",
    "postfix-bounce.eml": "onbekend@gemeente.test",
    "postfix-delay.eml": "later@gemeente.test",
}
ENTITY = (b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
          b"Content-Transfer-Encoding: base64\r\n"
          b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
          b"MIAGCSqGSIb3DQEHA6CAMIACAQAxggE=\r\n")

MASTER_CF = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
tlsmgr unix - - n 1000? 1 tlsmgr
postlog unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/lib
maillog_file = {d}/log/postfix.log
maillog_file_prefixes = {d}/log
mail_owner = postfix
myhostname = mta.pi-vught.test
mydomain = pi-vught.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = encrypt
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtp_tls_security_level = none
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
virtual_mailbox_domains = pi-vught.test
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = inline:{{ gateway@pi-vught.test=gateway/, ontvanger@pi-vught.test=ontvanger/ }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
transport_maps = inline:{{ gemeente.test=smtp:[127.0.0.1]:{remote} }}
delay_warning_time = 1s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


class Municipality:
    """The next hop: accepts anyone else, refuses onbekend@ (550), defers later@ (451)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local == "onbekend":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        if local == "later":
            return "451 4.3.0 <later@gemeente.test>: Temporary lookup failure"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued as 4G1mnicipal"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def old_mtime(path: Path) -> None:
    """Postfix starts ~2 s slower when main.cf was written in the last seconds (research notes)."""
    t = time.time() - 60
    os.utime(path, (t, t))


async def run(d: Path) -> dict[str, bytes]:
    tls = TlsMaterial(d)
    loop = asyncio.get_running_loop()
    remote = await loop.create_server(lambda: SMTP(Municipality(), hostname="mx.gemeente.test", loop=loop),
                                      "127.0.0.1", 0)
    remote_port = remote.sockets[0].getsockname()[1]
    port = free_port()
    etc = d / "etc"
    for sub in ("etc", "spool", "lib", "log", "mail"):
        (d / sub).mkdir()
    os.chown(d / "mail", 65534, 65534)
    os.chown(d / "lib", *(lambda p: (p.pw_uid, p.pw_gid))(__import__("pwd").getpwnam("postfix")))
    cert, key = tls.server
    (etc / "main.cf").write_text(MAIN_CF.format(d=d, cert=cert, key=key, remote=remote_port))
    (etc / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{port}"))
    for f in ("main.cf", "master.cf"):
        old_mtime(etc / f)
    d.chmod(0o755)
    master = subprocess.Popen(["/usr/sbin/postfix", "-c", str(etc), "start-fg"], start_new_session=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("postfix did not listen: see " + str(d / "log/postfix.log"))
        sender = SmtpSender(RelaySettings(host="127.0.0.1", port=port, ssl_context=tls.client_context(),
                                          helo="gateway.pi-vught.test", timeout=10))
        for n, (name, rcpt) in enumerate(RECIPIENTS.items(), 1):
            message_id = f"0c9e1f2a-0000-4000-8000-00000000000{n}"
            mail = compose_mail(sealed_entity=ENTITY, message_id=message_id, label="meldingsbericht",
                                from_address=SENDER, to_address=rcpt, receipt_to=SENDER,
                                date=datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc), id_domain="pi-vught.test")
            accepted = await sender.send(envelope_from=SENDER, recipient=rcpt, data=mail.data, envid=message_id)
            print(name, accepted)
        await sender.close()
        inbox = d / "mail" / "gateway" / "new"
        wanted = {"delivered", "relayed", "failed", "delayed"}
        found: dict[str, bytes] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(found) != wanted:
            await asyncio.sleep(0.5)
            for f in sorted(inbox.glob("*")) if inbox.exists() else []:
                raw = f.read_bytes()
                for action in wanted:
                    if f"Action: {action}".encode() in raw:
                        found[action] = raw
        if set(found) != wanted:
            raise RuntimeError(f"only {sorted(found)} arrived; see {d / 'log/postfix.log'}")
        return {"postfix-delivered.eml": found["delivered"], "postfix-relayed.eml": found["relayed"],
                "postfix-bounce.eml": found["failed"], "postfix-delay.eml": found["delayed"]}
    finally:
        subprocess.run(["/usr/sbin/postfix", "-c", str(etc), "stop"], check=False, capture_output=True)
        try:
            master.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
        remote.close()


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="dsn-samples-"))
    try:
        samples = asyncio.run(run(d))
    except BaseException:
        print("postfix log:\n" + (d / "log/postfix.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        keep = os.environ.get("KEEP_POSTFIX_DIR")
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
    for name, raw in samples.items():
        (HERE / name).write_bytes(raw)
        print("wrote", HERE / name, len(raw), "bytes")


if __name__ == "__main__":
    main()
