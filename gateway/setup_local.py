"""`init`: a complete local set-up in one folder, for development and trials — never for production.

DESCRIPTION
	`init_local(folder)` writes into a missing or empty folder everything the
	daemon needs to start: the development PKI (``keys/``), the working folders,
	a copy of the shipped PI table (``config/institutions.toml``), random SMTP
	and IMAP passwords (``secrets/``), ``gateway.toml`` and a ``README.txt``.
	``gateway.toml`` names the own party and a route to every other party of
	the development PKI (e-mail to its development address; profile
	``compatible`` for municipalities, whose people read mail in ordinary
	clients, ``strong`` between PI gateways). `load_config` and
	`check_secrets` accept the result as it is (the tests hold it to that).

	PI-ZWOLLE's development certificate has an EC key: the gateway encrypts to
	RSA certificates only, so it gets no route (it can still be the own party).

SECURITY
	Refuses a folder that holds anything (existing keys and secrets are never
	overwritten). Private keys and secrets are mode 0600, ``secrets/`` 0700.
	The passwords are random placeholders: the README says to put the real ones
	there. ``ca_file`` stays unset (the system's trust store) unless a relay CA
	is given: the development CA signs S/MIME certificates, not mail servers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.crypto.pki import DEV_PARTIES, DevParty, init_dev_pki
from gateway.routing.parties import DEFAULT_INSTITUTIONS_PATH
from gateway.privacy import new_subject_key

__all__ = ["SetupError", "init_local"]

log = structlog.get_logger(__name__)

CONFIG_NAME = "gateway.toml"
FOLDERS = ("outbox", "rejected", "inbox", "spool", "quarantine", "state")


class SetupError(ValueError):
    """The local set-up could not be written (the folder is not empty, or the party is unknown).

    A ValueError: what the caller gave cannot be used (the CLI reports it as a usage error)."""


def _kind(code: str) -> str:
    return "pi" if code.startswith("PI-") else "gemeente"


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML ones)."""
    return json.dumps(value)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _encrypts_to(cert_pem: Path) -> bool:
    """Whether the sealer can encrypt to this certificate (RSA key transport only)."""
    return isinstance(x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_key(), rsa.RSAPublicKey)


def _route(party: DevParty, cert: Path, folder: Path, platform_url: str | None = None) -> str:
    if platform_url is not None:  # gateways read AES-GCM: the strong profile
        return (f"[routes.{_toml(party.code)}]  # {party.name}, on the platform\n"
                f"transport = \"platform\"\n"
                f"address = {_toml(platform_url)}\n"
                f"as2_id = {_toml(party.code)}\n"
                f"certificate = {_toml(cert.relative_to(folder).as_posix())}\n"
                f"profile = \"strong\"\n")
    profile = "compatible" if _kind(party.code) == "gemeente" else "strong"
    return (f"[routes.{_toml(party.code)}]  # {party.name}\n"
            f"transport = \"email\"\n"
            f"address = {_toml(party.email)}\n"
            f"certificate = {_toml(cert.relative_to(folder).as_posix())}\n"
            f"profile = \"{profile}\"\n")


def _as2_text(me: DevParty, listen: tuple[str, int] | None) -> str:
    keys = f"keys/parties/{me.code}"
    return ("\n[as2]\n"
            f"as2_id = {_toml(me.code)}\n"
            f"tls_cert = {_toml(keys + '/tls-chain.pem')}\n"
            f"tls_key = {_toml(keys + '/tls-key.pem')}\n"
            + (f"listen = {_toml(f'{listen[0]}:{listen[1]}')}\n" if listen else "# listen = \"127.0.0.1:4080\"\n"))


def _config_text(me: DevParty, routes: list[str], smtp: tuple[str, int], imap: tuple[str, int],
                 relay_ca: Path | None, skipped: list[DevParty]) -> str:
    keys = f"keys/parties/{me.code}"
    ca_line = f"ca_file = {_toml(str(relay_ca))}\n" if relay_ca else "# ca_file = \"...\"  # unset: the system's trust store\n"
    smtp_tls = "implicit" if smtp[1] == 465 else "starttls"
    skipped_text = "".join(f"# no route to {p.code} ({p.name}): its development certificate is EC; the gateway "
                           "encrypts to RSA certificates only\n" for p in skipped)
    return f"""\
# A LOCAL DEVELOPMENT SET-UP written by `init` (gateway/setup_local.py). Not for production:
# the keys come from the development PKI in keys/. Every key is explained in
# config/gateway.example.toml of the gateway's source.
log_level = "info"

[party]
code = {_toml(me.code)}
kind = "{_kind(me.code)}"
email = {_toml(me.email)}
name = {_toml(me.name)}

[identity]
key = "{keys}/key.pem"
cert = "{keys}/cert.pem"
chain = "{keys}/chain.pem"

[trust]
bundle = "keys/trust.pem"
crls = ["keys/ca/issuing.crl.pem"]

[folders]
outbox = "outbox"
rejected = "rejected"
inbox = "inbox"
spool = "spool"
quarantine = "quarantine"

[store]
url = "sqlite+aiosqlite:///state/gateway.db"

[registries]
institutions = "config/institutions.toml"

[smtp]
host = {_toml(smtp[0])}
port = {smtp[1]}
tls = "{smtp_tls}"
{ca_line}username = {_toml(me.email)}
password_file = "secrets/smtp-password"

[imap]
host = {_toml(imap[0])}
port = {imap[1]}
{ca_line}username = {_toml(me.email)}
password_file = "secrets/imap-password"

# The key under which the store names the persons messages are about (subject-access, subject-erase).
[privacy]
subject_key_file = "secrets/subject-key"

[retry]
first_delay = "5m"
multiplier = 2
max_delay = "4000s"
give_up_after = "5d"
jitter = 0.2

[limits]
workers = 4

{skipped_text}
""" + "\n".join(routes)


_README = """\
Local nazorg gateway set-up for {code} ({name}), written {when} by `init`.
DEVELOPMENT ONLY: the keys below come from a development PKI that nobody else trusts.

What is where
  gateway.toml             the configuration (every key: config/gateway.example.toml in the source)
  keys/                    the development PKI: ca/ (root, issuing CA, CRL), trust.pem (the trust
                           bundle), parties/<code>/{{key,cert,chain}}.pem (own and partners' identities)
  config/institutions.toml the PI table (a copy of the shipped example: replace it with the real one)
  secrets/smtp-password    the SMTP password (random placeholder: put the real one here, mode 600)
  secrets/imap-password    the IMAP password (random placeholder: put the real one here, mode 600)
  secrets/subject-key      the subject index key (random; back it up with the private key)
  outbox/                  put messages (XML) to send here
  rejected/                invalid messages, each with NAME.error.json saying why
  inbox/                   messages received and verified
  spool/                   the gateway's work in progress (do not touch)
  quarantine/              what arrived and could not be opened or verified (kept, never deleted)
  state/                   the message store (SQLite)

How to start
  1. Put the real SMTP and IMAP passwords in secrets/ (printf '%s' '...' > secrets/smtp-password).
  2. Point [smtp] and [imap] in gateway.toml at the real servers; set ca_file when their
     certificates come from a private CA.
  3. nazorg-gateway run -c gateway.toml
"""


def init_local(folder: str | os.PathLike, *, party: str = "PI-VUGHT", smtp: tuple[str, int] = ("127.0.0.1", 587),
               imap: tuple[str, int] = ("127.0.0.1", 993), now: datetime | None = None,
               relay_ca: Path | None = None, pki: Path | None = None, as2_listen: tuple[str, int] | None = None,
               platform: dict[str, str] | None = None) -> Path:
    """Write a complete local set-up into `folder` (missing or empty) for `party`; returns the config path.

    `relay_ca`: the CA file of the SMTP relay and the IMAP server (both), when they use a private CA.
    `pki`: the keys folder of another set-up to share (so several local gateways trust each other);
    default: a new development PKI. `as2_listen`: run this gateway's AS2 server there (an [as2] table
    is written with the party's development TLS certificate). `platform`: party code → https URL of
    its AS2 endpoint, for the routes that go over the platform instead of e-mail."""
    root = Path(folder)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SetupError(f"{root} is not an empty folder: a local set-up is only written into an empty or new "
                         "folder (existing keys and secrets are never overwritten)")
    me = next((p for p in DEV_PARTIES if p.code == party and p.code != "PLATFORM"), None)
    if me is None:
        known = ", ".join(p.code for p in DEV_PARTIES if p.code != "PLATFORM")
        raise SetupError(f"{party!r} is not a party of the development PKI; choose one of {known}")
    if not DEFAULT_INSTITUTIONS_PATH.is_file():
        raise SetupError(f"the shipped PI table {DEFAULT_INSTITUTIONS_PATH} is missing: cannot copy it")
    relay_ca = Path(relay_ca).resolve() if relay_ca is not None else None
    if relay_ca is not None and not relay_ca.is_file():
        raise SetupError(f"relay CA file {relay_ca} does not exist")

    root.mkdir(parents=True, exist_ok=True)
    if pki is not None:
        shutil.copytree(pki, root / "keys")
        parties = {p.name: p for p in (root / "keys" / "parties").iterdir()}
    else:
        parties = init_dev_pki(root / "keys", now=now)
    for name in FOLDERS:
        (root / name).mkdir(mode=0o750)
    (root / "config").mkdir()
    shutil.copyfile(DEFAULT_INSTITUTIONS_PATH, root / "config" / "institutions.toml")
    for name in ("smtp-password", "imap-password"):
        _write_private(root / "secrets" / name, secrets.token_urlsafe(24).encode() + b"\n")
    _write_private(root / "secrets" / "subject-key", new_subject_key().encode() + b"\n")

    routes, skipped = [], []
    for other in DEV_PARTIES:
        if other.code in (me.code, "PLATFORM"):
            continue
        cert = parties[other.code] / "cert.pem"
        if _encrypts_to(cert):
            routes.append(_route(other, cert, root, (platform or {}).get(other.code)))
        else:
            skipped.append(other)
    config = root / CONFIG_NAME
    text = _config_text(me, routes, smtp, imap, relay_ca, skipped)
    if as2_listen is not None or platform:
        text = text.replace("\n[retry]", _as2_text(me, as2_listen) + "\n[retry]", 1)
    config.write_text(text, encoding="utf-8")
    (root / "README.txt").write_text(_README.format(code=me.code, name=me.name,
                                                     when=(now or datetime.now()).strftime("%Y-%m-%d %H:%M")),
                                     encoding="utf-8")
    log.info("setup.local.written", party=me.code, routes=len(routes))
    return config
