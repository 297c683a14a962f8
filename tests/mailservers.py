"""Private Postfix + Dovecot on loopback for end-to-end tests and benchmarks (no pytest inside).

`MailServers` runs a real Dovecot (IMAP with implicit TLS, LMTP, SASL for Postfix) and a real
Postfix (STARTTLS required, SASL, DSN, virtual domains delivered to Dovecot over LMTP) under one
work folder, with a self-signed test CA. `PlainSmtpPeer` is a tiny aiosmtpd peer that offers no
STARTTLS and records what it is sent.

Why it looks the way it does (measured, see docs/research-notes.md):
- every daemon runs in its own process group; a watchdog process kills those groups when the
  process that started them dies (even by SIGKILL), because Postfix's master detaches and would
  otherwise outlive a killed test runner;
- config files and maps get an old mtime (Postfix is ~2 s slower with freshly written ones);
- mail is stored as `nobody`: Dovecot refuses uid 0, so the work folder must be reachable by others.
"""

from __future__ import annotations

import datetime as dt
import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as _AioSMTP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

POSTFIX_DAEMONS = Path("/usr/lib/postfix/sbin")
POSTQUEUE = "/usr/sbin/postqueue"
DOVECOT = "/usr/sbin/dovecot"
_OLD = time.time() - 3600  # mtime given to config files and maps (see module docstring)
_SUN_PATH_MAX = 100  # unix socket paths (108 bytes on Linux, with margin for Dovecot's own names)


#: Postfix queue folders: name, mode, owned by group postdrop (else root); owner postfix except pid/
_QUEUE_DIRS = [(n, 0o700, False) for n in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
                                          "incoming", "private", "saved", "trace")] + [
    ("maildrop", 0o730, True), ("public", 0o710, True), ("pid", 0o755, False)]


class MailServerError(RuntimeError):
    """A private mail server did not start, stop or obey in time (the message names which)."""


# -- small helpers ------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise MailServerError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically with an old mtime (a fresh main.cf or map slows Postfix down by ~2 s)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.utime(tmp, (_OLD, _OLD))
    os.replace(tmp, path)


def _check_reachable_by_others(folder: Path) -> None:
    for part in [folder, *folder.parents]:
        if not part.stat().st_mode & stat.S_IXOTH:
            raise ValueError(f"{folder}: {part} is not traversable by others; Dovecot stores mail as "
                             "'nobody' (use MailServers.temporary() or a folder under a 0755 path)")


@dataclass(frozen=True)
class MailTLS:
    """A self-signed CA and a server certificate for localhost / 127.0.0.1 (ECDSA P-256: fast)."""
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    @classmethod
    def create(cls, folder: Path) -> MailTLS:
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nazorg test mail CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                             critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        out = cls(folder / "ca.pem", folder / "server.pem", folder / "server.key")
        out.ca_pem.write_bytes(ca.public_bytes(pem))
        out.cert_pem.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
        out.key_pem.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        os.chmod(out.key_pem, 0o600)
        return out


# -- the watchdog -------------------------------------------------------------------------------

# Reads "track PGID" / "untrack PGID" / "remove FOLDER" / "exit" lines on stdin. At end of file
# (the parent died or closed the pipe without "exit") it SIGKILLs every tracked process group and
# removes the folders. Own session: a Ctrl-C to the test runner must not reach it before the
# runner has stopped the servers itself.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
groups, folders = set(), []
for line in sys.stdin:
    cmd, _, arg = line.rstrip("\n").partition(" ")
    if cmd == "track": groups.add(int(arg))
    elif cmd == "untrack": groups.discard(int(arg))
    elif cmd == "remove": folders.append(arg)
    elif cmd == "exit": sys.exit(0)
for g in groups:
    try: os.killpg(g, signal.SIGKILL)
    except OSError: pass
time.sleep(0.2)  # let the killed daemons close their files
for f in folders:
    shutil.rmtree(f, ignore_errors=True)
"""


class Watchdog:
    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE,
                                      text=True, start_new_session=True)
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def track(self, pgid: int) -> None:
        self._send(f"track {pgid}")

    def untrack(self, pgid: int) -> None:
        self._send(f"untrack {pgid}")

    def remove_on_death(self, folder: Path) -> None:
        self._send(f"remove {folder}")

    def close(self) -> None:
        self._send("exit")
        self._proc.stdin.close()  # type: ignore[union-attr]
        self._proc.wait(5)


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group, wait up to `grace` s for its leader, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)
    # SIGKILL is asynchronous: a dying smtpd still holds the listening socket for a moment
    _wait(lambda: not group_alive(proc.pid), 5, f"process group {proc.pid} to die", 0.005)


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. Zombies do not count: orphans of a killed
    master wait for init to reap them (here up to ~2 s) but hold no socket or file any more."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat_line = Path("/proc", name, "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat_line.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


# -- the pair -----------------------------------------------------------------------------------

@dataclass
class Timings:
    """Seconds measured by the harness (for reports and benchmarks)."""
    dovecot_start: float = 0.0
    postfix_start: float = 0.0
    reloads: list[float] = field(default_factory=list)  # refuse/lift/defer: until the change was observed


class MailServers:
    """Dovecot + Postfix on 127.0.0.1 under `workdir`.

    `users` maps full addresses to passwords (IMAP login and SMTP AUTH); `domains` are Postfix's
    virtual mailbox domains, all delivered to Dovecot over LMTP: a recipient of those domains that
    is not a user is accepted at RCPT and bounced (a real "Undelivered Mail Returned to Sender"
    DSN to the envelope sender). Mail to other domains is only relayed for authenticated clients,
    and then bounces at once (`default_transport = error`): nothing leaves the machine.
    `postfix_settings` are extra main.cf lines (e.g. {"delay_warning_time": "2s"}),
    `dovecot_settings` extra dovecot.conf text (e.g. "imap_capability = IMAP4rev1 UIDPLUS").
    """

    def __init__(self, workdir: Path, users: Mapping[str, str], domains: Iterable[str], *,
                 postfix_settings: Mapping[str, str] | None = None, dovecot_settings: str = "") -> None:
        self.workdir = Path(workdir).resolve()
        self.users = dict(users)
        self.domains = sorted(set(domains))
        for address, password in self.users.items():
            if any(c in address + password for c in ":\n\r\0") or "@" not in address:
                raise ValueError("addresses need an @; addresses and passwords may not hold ':' or newlines")
        if not self.users or not self.domains:
            raise ValueError("at least one user and one domain")
        self.postfix_settings = dict(postfix_settings or {})
        self.dovecot_settings = dovecot_settings
        self.smtp_host = self.imap_host = "127.0.0.1"
        self.smtp_port = free_port()
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self.timings = Timings()
        self._refused: dict[str, str] = {}
        self._deferred: dict[str, str] = {}
        self._dovecot: subprocess.Popen | None = None
        self._postfix: subprocess.Popen | None = None
        self._watchdog: Watchdog | None = None
        self._owns_workdir = False
        self._nobody = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        d = self.workdir
        self._dc_dir, self._pf_dir = d / "dovecot", d / "postfix"
        self._pf_conf, self._pf_queue = self._pf_dir / "etc", self._pf_dir / "queue"
        self._mail_dir = d / "mail"

    @classmethod
    def temporary(cls, users: Mapping[str, str], domains: Iterable[str], **kwargs) -> MailServers:
        """A pair in a fresh folder under the system temp dir (0755), removed again by `stop()`
        (or by the watchdog when the process that started it dies)."""
        folder = Path(tempfile.mkdtemp(prefix="mailsrv-"))
        os.chmod(folder, 0o755)
        servers = cls(folder, users, domains, **kwargs)
        servers._owns_workdir = True
        return servers

    # -- properties -----------------------------------------------------------------------------
    @property
    def ca_pem(self) -> Path:
        return self._ca.ca_pem

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA only (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    @property
    def dovecot_log(self) -> Path:
        return self._dc_dir / "dovecot.log"

    @property
    def postfix_log(self) -> Path:
        return self._pf_dir / "maillog"

    def process_groups(self) -> list[int]:
        """Process groups of the running daemons (each holds every process of its server)."""
        return [p.pid for p in (self._dovecot, self._postfix) if p is not None]

    # -- life cycle -----------------------------------------------------------------------------
    def __enter__(self) -> MailServers:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.workdir, 0o755)
            _check_reachable_by_others(self.workdir)
            if len(str(self._dc_dir / "run" / "login" / "imap-urlauth")) > _SUN_PATH_MAX:
                raise ValueError(f"{self.workdir}: path too long for unix sockets; use a shorter workdir")
            self._ca = MailTLS.create(self.workdir / "tls")
            self._watchdog = Watchdog()
            if self._owns_workdir:
                self._watchdog.remove_on_death(self.workdir)
            self._write_dovecot()
            self._write_postfix()
            self.start_imap()
            self.start_smtp()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers (no process survives), the watchdog, and remove an owned workdir."""
        self.stop_smtp()
        self.stop_imap()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- Dovecot --------------------------------------------------------------------------------
    def _write_dovecot(self) -> None:
        dc = self._dc_dir
        for sub in ("run", "state"):
            (dc / sub).mkdir(parents=True, exist_ok=True)
        self._mail_dir.mkdir(exist_ok=True)
        uid, gid = self._nobody
        lines = []
        for address, password in self.users.items():
            home = self._home(address)
            home.mkdir(mode=0o755, exist_ok=True)
            os.chown(home, uid, gid)
            lines.append(f"{address}:{{PLAIN}}{password}:{uid}:{gid}::{home}::")
        _write(dc / "users", "\n".join(lines) + "\n", 0o640)
        os.chown(dc / "users", 0, grp.getgrnam("dovecot").gr_gid)  # read by the auth process
        conf = f"""\
base_dir = {dc / 'run'}
state_dir = {dc / 'state'}
log_path = {self.dovecot_log}
protocols = imap lmtp
listen = 127.0.0.1
ssl = required
ssl_cert = <{self._ca.cert_pem}
ssl_key = <{self._ca.key_pem}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dc / 'users'}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dc / 'users'}
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imap_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@{self.domains[0]}
}}
{self.dovecot_settings}
"""
        _write(dc / "dovecot.conf", conf)

    def _home(self, address: str) -> Path:
        return self._mail_dir / address

    def start_imap(self) -> None:
        """Start Dovecot (IMAP, LMTP, auth) on its ports; returns when IMAP and LMTP accept."""
        if self._dovecot is not None:
            return
        t0 = time.monotonic()
        log = open(self._dc_dir / "stderr.log", "ab")
        self._dovecot = subprocess.Popen([DOVECOT, "-F", "-c", str(self._dc_dir / "dovecot.conf")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        log.close()
        assert self._watchdog is not None
        self._watchdog.track(self._dovecot.pid)

        def ready() -> bool:
            if self._dovecot is not None and self._dovecot.poll() is not None:
                raise MailServerError(f"dovecot exited: {self._tail(self._dc_dir / 'stderr.log')}"
                                      f"{self._tail(self.dovecot_log)}")
            return _port_open(self.imap_port) and _port_open(self.lmtp_port)

        _wait(ready, 10, "dovecot to listen")
        self.timings.dovecot_start = time.monotonic() - t0

    def stop_imap(self) -> None:
        """Kill Dovecot's process group: connections drop, the ports refuse until `start_imap()`."""
        if self._dovecot is None:
            return
        _kill_group(self._dovecot, grace=0.5)
        if self._watchdog is not None:
            self._watchdog.untrack(self._dovecot.pid)
        self._dovecot = None

    # -- Postfix --------------------------------------------------------------------------------
    def _write_postfix(self) -> None:
        pf = self._pf_dir
        for sub in (self._pf_conf, self._pf_queue, pf / "data"):
            sub.mkdir(parents=True, exist_ok=True)
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        os.chown(pf / "data", postfix_uid, -1)
        self._write_map("refused", {})
        self._write_map("transport", {})
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self._pf_queue),
            "data_directory": str(pf / "data"),
            "maillog_file": str(self.postfix_log),
            "maillog_file_prefixes": str(pf),
            "myhostname": "mx.localhost",
            "mydomain": "localhost",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.1/32",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP test relay",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_transport": f"lmtp:inet:127.0.0.1:{self.lmtp_port}",
            "transport_maps": f"texthash:{self._pf_conf / 'transport'}",
            "default_transport": "error:5.4.4 test relay delivers to its own domains only",
            "local_transport": "error:5.1.1 no local delivery in the test relay",
            "smtpd_reject_unlisted_recipient": "no",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access texthash:{self._pf_conf / 'refused'}",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_chain_files": f"{self._ca.key_pem}, {self._ca.cert_pem}",
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_session_cache_database": "",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": str(self._dc_dir / "run" / "auth-postfix"),
            "smtpd_peername_lookup": "no",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0",
            "lmtp_tls_security_level": "none",
            "lmtp_assume_final": "yes",  # success DSNs say "delivered", not "relayed"
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0h",
            **self.postfix_settings,
        }
        _write(self._pf_conf / "main.cf", "".join(f"{k} = {v}\n" for k, v in settings.items()))
        # chroot off everywhere (absolute socket paths, no copies of /etc in the queue)
        services = [
            (f"127.0.0.1:{self.smtp_port}", "inet", "n", "-", "smtpd"),
            ("pickup", "unix", "n", "60", "1 pickup"), ("cleanup", "unix", "n", "-", "0 cleanup"),
            ("qmgr", "unix", "n", "300", "1 qmgr"), ("tlsmgr", "unix", "-", "1000?", "1 tlsmgr"),
            ("rewrite", "unix", "-", "-", "- trivial-rewrite"), ("bounce", "unix", "-", "-", "0 bounce"),
            ("defer", "unix", "-", "-", "0 bounce"), ("trace", "unix", "-", "-", "0 bounce"),
            ("verify", "unix", "-", "-", "1 verify"), ("flush", "unix", "n", "1000?", "0 flush"),
            ("proxymap", "unix", "-", "-", "- proxymap"), ("showq", "unix", "n", "-", "- showq"),
            ("error", "unix", "-", "-", "- error"), ("retry", "unix", "-", "-", "- error"),
            ("discard", "unix", "-", "-", "- discard"), ("lmtp", "unix", "-", "-", "- lmtp"),
            ("smtp", "unix", "-", "-", "- smtp"), ("anvil", "unix", "-", "-", "1 anvil"),
            ("scache", "unix", "-", "-", "1 scache"), ("postlog", "unix-dgram", "n", "-", "1 postlogd"),
        ]
        master = []
        for name, kind, private, wakeup, rest in services:
            maxproc, command = (rest.split(" ", 1) if " " in rest else ("-", rest))
            master.append(f"{name} {kind} {private} - n {wakeup} {maxproc} {command}")
        _write(self._pf_conf / "master.cf", "\n".join(master) + "\n")
        # the queue folders `postfix check` would make (it costs 0.3 s; this costs 1 ms)
        postdrop = grp.getgrnam("postdrop").gr_gid
        for name, mode, group in _QUEUE_DIRS:
            sub = self._pf_queue / name
            sub.mkdir(exist_ok=True)
            if name != "pid":
                os.chown(sub, postfix_uid, postdrop if group else 0)
            os.chmod(sub, mode)

    def _write_map(self, name: str, entries: Mapping[str, str]) -> None:
        _write(self._pf_conf / name, "".join(f"{k} {v}\n" for k, v in entries.items()))

    def _postfix_pid(self) -> int | None:
        try:
            return int((self._pf_queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start_smtp(self) -> None:
        """Start Postfix; returns when its smtpd answers on the same port as before."""
        if self._postfix is not None:
            return
        t0 = time.monotonic()
        log = open(self._pf_dir / "stderr.log", "ab")
        # master -s stays in the foreground (no fork) and makes itself a session leader:
        # its pid is the process group of every Postfix daemon it runs.
        self._postfix = subprocess.Popen([str(POSTFIX_DAEMONS / "master"), "-s", "-c", str(self._pf_conf)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        assert self._watchdog is not None
        self._watchdog.track(self._postfix.pid)

        def ready() -> bool:
            if self._postfix is not None and self._postfix.poll() is not None:
                raise MailServerError(f"postfix exited: {self._tail(self._pf_dir / 'stderr.log')}"
                                      f"{self._tail(self.postfix_log)}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as s:
                    return s.recv(4).startswith(b"220")
            except OSError:
                return False

        _wait(ready, 15, "postfix smtpd to answer")
        self.timings.postfix_start = time.monotonic() - t0

    def stop_smtp(self) -> None:
        """Stop Postfix: connections to its port are refused until `start_smtp()`; the queue stays."""
        if self._postfix is None:
            return
        _kill_group(self._postfix, grace=2)
        if self._watchdog is not None:
            self._watchdog.untrack(self._postfix.pid)
        self._postfix = None

    def _reload(self) -> None:
        if self._postfix is None:
            raise MailServerError("postfix is not running")
        os.kill(self._postfix.pid, signal.SIGHUP)

    @staticmethod
    def _tail(path: Path, n: int = 2000) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- control for tests ----------------------------------------------------------------------
    def refuse(self, address: str, reply: str = "550 5.1.1 Recipient refused by test") -> None:
        """Make smtpd answer RCPT TO:<address> with `reply` (4xx or 5xx); returns once it does.

        Postfix wraps the text: the client sees `<code> <x.y.z> <address>: Recipient address
        rejected: <text>` (code and enhanced status code as given)."""
        code, _, text = reply.partition(" ")
        if len(code) != 3 or code[0] not in "45" or not code.isdigit():
            raise ValueError("reply must start with a 4xx or 5xx code")
        if re.match(r"\d\.\d{1,3}\.\d{1,3} ", text):
            text = text.split(" ", 1)[1]
        self._refused[address.lower()] = reply
        self._write_map("refused", self._refused)
        self._reload_until(address, lambda c, said: c == int(code) and said.endswith(text))

    def lift(self, address: str) -> None:
        """Undo `refuse(address)`; returns once RCPT TO:<address> is accepted again."""
        self._refused.pop(address.lower(), None)
        self._write_map("refused", self._refused)
        self._reload_until(address, lambda c, text: c == 250)

    def defer_delivery(self, address: str, reason: str = "4.2.0 mailbox held by test") -> None:
        """Accept mail for `address` but defer its delivery (Postfix's `retry` transport):
        it stays in the deferred queue (DELAY DSNs with `delay_warning_time`) until `resume_delivery`."""
        self._deferred[address.lower()] = f"retry:{reason}"
        self._write_map("transport", self._deferred)
        t0 = time.monotonic()
        self._reload()
        # trivial-rewrite reads the map when it starts; the new one answers once the old one is gone
        _wait(lambda: self._resolves(address) == f"retry:{reason}" or None, 10, "transport map to apply", 0.05)
        self.timings.reloads.append(time.monotonic() - t0)

    def resume_delivery(self, address: str) -> None:
        """Undo `defer_delivery(address)` and flush the queue."""
        self._deferred.pop(address.lower(), None)
        self._write_map("transport", self._deferred)
        self._reload()
        time.sleep(0.3)  # let the old trivial-rewrite exit before qmgr asks it again
        self.flush()

    def _resolves(self, address: str) -> str:
        """The transport Postfix's map gives `address` now (as configured in the file)."""
        out = subprocess.run(["/usr/sbin/postmap", "-c", str(self._pf_conf), "-q", address.lower(),
                              f"texthash:{self._pf_conf / 'transport'}"], capture_output=True, text=True)
        return out.stdout.strip()

    def _reload_until(self, address: str, effective) -> None:
        t0 = time.monotonic()
        self._reload()
        time.sleep(0.05)  # a connection made during the reload can wait a second for a new smtpd

        def probe() -> bool:
            try:
                code, text = self._rcpt_probe(address)
            except (OSError, smtplib.SMTPException):
                return False
            return effective(code, text)

        _wait(probe, 15, f"postfix to apply the recipient map for {address}", 0.05)
        self.timings.reloads.append(time.monotonic() - t0)

    def _client(self, login: tuple[str, str] | None) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.smtp_host, self.smtp_port, local_hostname="client.localhost", timeout=10)
        smtp.starttls(context=self.ssl_context())
        smtp.ehlo("client.localhost")
        if login:
            smtp.login(*login)
        return smtp

    def _rcpt_probe(self, address: str) -> tuple[int, str]:
        sender, password = next(iter(self.users.items()))
        with self._client((sender, password)) as smtp:
            smtp.mail(sender)
            code, text = smtp.rcpt(address)
            smtp.rset()
        return code, text.decode(errors="replace")

    def deliver(self, envelope_from: str, to: str | Sequence[str], data: bytes, *,
                mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = (),
                login: tuple[str, str] | None = None) -> str:
        """Submit a mail through the relay with STARTTLS, as a peer MTA would (no AUTH unless
        `login`). Returns Postfix's queue id; raises `smtplib.SMTPException` on refusal.
        E.g. `rcpt_options=["NOTIFY=SUCCESS,FAILURE"]` asks for success DSNs."""
        recipients = [to] if isinstance(to, str) else list(to)
        with self._client(login) as smtp:
            code, text = smtp.mail(envelope_from, list(mail_options))
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, envelope_from)
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt, list(rcpt_options))
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            code, text = smtp.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
        return text.decode().rsplit(" ", 1)[-1]

    def flush(self) -> None:
        """`postqueue -f`: retry every deferred mail now."""
        subprocess.run([POSTQUEUE, "-c", str(self._pf_conf), "-f"], check=True, capture_output=True, timeout=10)

    def queue(self) -> list[dict]:
        """`postqueue -j`: one dict per queued mail (queue_name, queue_id, sender, recipients…)."""
        out = subprocess.run([POSTQUEUE, "-c", str(self._pf_conf), "-j"], check=True, capture_output=True,
                             text=True, timeout=10).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- mailboxes ------------------------------------------------------------------------------
    def messages(self, address: str, folder: str | None = "INBOX") -> list[bytes]:
        """Raw mails in `address`'s Maildir (LF line ends, as Dovecot stores them), in order of
        arrival (Postfix delivers over parallel LMTP sessions: not always the order of submission):
        INBOX by default, one folder by its IMAP name ("Done", "Receipts/DSN"), or every folder
        with `folder=None`."""
        maildir = self._home(address) / "Maildir"
        if folder is None:
            roots = [maildir] + sorted(p for p in maildir.glob(".*") if p.is_dir())
        elif folder.upper() == "INBOX":
            roots = [maildir]
        else:
            roots = [maildir / ("." + folder.replace("/", "."))]
        for _ in range(20):  # Dovecot renames new/ → cur/ while we read: list again then
            try:
                files = [f for root in roots for sub in ("new", "cur") if (root / sub).is_dir()
                         for f in (root / sub).iterdir()]
                files.sort(key=lambda f: _maildir_order(f.name))
                return [f.read_bytes() for f in files]
            except FileNotFoundError:
                continue
        raise MailServerError(f"Maildir of {address} kept changing")

    def wait_for_messages(self, address: str, count: int, timeout: float = 10.0,
                          folder: str | None = "INBOX") -> list[bytes]:
        """Wait until `address` has at least `count` mails (see `messages`), and return them all."""
        found: list[bytes] = []

        def enough() -> bool:
            nonlocal found
            found = self.messages(address, folder)
            return len(found) >= count

        try:
            _wait(enough, timeout, f"{count} mail(s)", 0.02)
        except MailServerError:
            raise MailServerError(f"{len(found)} of {count} mail(s) arrived in {timeout:.1f} s") from None
        return found

    async def wait_for_messages_async(self, address: str, count: int, timeout: float = 10.0,
                                      folder: str | None = "INBOX") -> list[bytes]:
        """`wait_for_messages` for async tests: polls without blocking the event loop."""
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address, folder)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise MailServerError(f"{len(found)} of {count} mail(s) arrived in {timeout:.1f} s")
            await asyncio.sleep(0.02)


def _maildir_order(name: str) -> tuple[int, int, str]:
    """Dovecot names files `<secs>.M<usecs>P<pid>.<host>,…`: delivery order."""
    secs, _, rest = name.partition(".")
    usecs = rest[1:].split("P", 1)[0] if rest.startswith("M") else "0"
    try:
        return int(secs), int(usecs), name
    except ValueError:
        return 0, 0, name


# -- a plain SMTP peer without STARTTLS ---------------------------------------------------------

@dataclass
class ReceivedMail:
    envelope_from: str
    recipients: list[str]
    data: bytes


class _RecordingSMTP(_AioSMTP):
    """aiosmtpd's server, noting every command line it dispatches (verb and argument)."""

    def __init__(self, handler, *, commands: list[tuple[str, str]], **kwargs) -> None:
        super().__init__(handler, **kwargs)
        for verb, method in list(self._smtp_methods.items()):
            self._smtp_methods[verb] = self._recorder(verb, method, commands)

    @staticmethod
    def _recorder(verb, method, commands):
        async def record(arg):
            commands.append((verb, arg or ""))
            return await method(arg)
        return record


class PlainSmtpPeer:
    """An SMTP server on 127.0.0.1 that offers no STARTTLS (and no AUTH) and accepts everything.

    `commands` lists every (VERB, argument) a client sent, `mails` every DATA it completed.
    A sender that requires TLS must leave `mails` empty and send no MAIL FROM."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.commands: list[tuple[str, str]] = []
        self.mails: list[ReceivedMail] = []
        peer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                peer.mails.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 OK"

        commands = self.commands

        class _Controller(Controller):
            def factory(self):
                return _RecordingSMTP(self.handler, commands=commands, **self.SMTP_kwargs)

        self._controller = _Controller(Handler(), hostname=self.host, port=self.port)

    @property
    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.commands]

    def start(self) -> PlainSmtpPeer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> PlainSmtpPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def dev_mail_users() -> dict[str, str]:
    """A mailbox with a password for every party of the development PKI (what the test servers serve)."""
    from gateway.crypto.pki import DEV_PARTIES

    return {party.email: "pw-" + party.email.replace("@", "-at-") for party in DEV_PARTIES}


def domains_of(users: Mapping[str, str]) -> list[str]:
    return sorted({address.split("@", 1)[1] for address in users})
