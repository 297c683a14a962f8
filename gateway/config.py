"""The gateway's configuration: one TOML file, checked whole before anything starts.

DESCRIPTION
	`load_config(path)` reads the file (layout: ``config/gateway.example.toml``,
	which documents every key) and returns a frozen `GatewayConfig`, or raises
	one `ConfigError` that lists every problem found as ``dotted.key: what is
	wrong`` — an operator fixes them all in one round, not one per restart.

	Relative paths resolve against the folder of the configuration file, so a
	set-up folder can be moved as a whole. Durations are a number of seconds or
	a string such as "30s", "5m", "1h", "5d" (parts may be combined: "1h30m").
	Unknown keys are errors (they are usually typos) and name the allowed keys.

	Checked at load: required keys, types and ranges; that files exist and are
	readable (own key, certificate and chain, trust bundle, CRLs, route
	certificates, registries); that route certificates are PEM certificates
	with an RSA key (partners are encrypted to by RSA key transport only); that
	each route names a known municipality code (an ENDED one is accepted: the
	daemon holds messages to it) or a PI listed in the PI table; that transport
	and address agree; that folders do not coincide; that TLS is never off.

	Not read at load: private keys and secrets. `GatewayConfig.check_secrets()`
	loads the identity and the trust store and reads every secret, and returns
	them, so the daemon reads each once, at start, and fails early.

SECURITY
	Secrets are never written in the configuration file: a key named
	``password``, ``passphrase`` or ``secret`` is refused with the way to give
	it instead (``*_file``: a file only the gateway's user can read, or
	``*_env``: an environment variable). A secret file that group or others can
	read is refused, as identity.py refuses such private keys. Problems never
	quote a secret, nor the value of an unknown key.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import random
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.crypto.profiles import ContentCipher, EncryptionProfile, KeyTransport, profile_from
from gateway.messages.entitlement import Party, PartyKind
from gateway.messages.safe_parse import MAX_MESSAGE_BYTES
from gateway.routing.institutions import CODE_PATTERN as PI_CODE
from gateway.routing.institutions import InstitutionRegistry
from gateway.routing.municipalities import MunicipalityRegistry, RegistryError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from gateway.crypto.identity import Identity
    from gateway.crypto.trust import TrustStore
    from gateway.routing.parties import Parties

__all__ = [
    "ConfigError", "Folders", "GatewayConfig", "IdentityConfig", "ImapConfig", "Limits", "LoadedSecrets",
    "PartyConfig", "RegistriesConfig", "RetryPolicy", "Route", "Secret", "SmtpConfig", "StoreConfig",
    "TrustConfig", "load_config", "parse_duration",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
SECRET_NAMES = ("password", "passphrase", "secret")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_MUNICIPALITY_CODE = re.compile(r"[0-9]{4}")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AS2_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")  # RFC 4130: 1-128 printable ASCII
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MISSING: Any = object()


class ConfigError(Exception):
    """One or more problems, each naming the key (dotted path, e.g. 'routes.0599.certificate') and what is wrong."""

    def __init__(self, problems: list[str] | str, path: str | os.PathLike | None = None):
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.path = str(path) if path is not None else None
        head = f"{self.path}: " if self.path else ""
        if len(self.problems) == 1:
            text = head + self.problems[0]
        else:
            text = f"{head}{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- values -------------------------------------------------------------------------------------


def parse_duration(value: object) -> timedelta:
    """A duration: a number of seconds (int or float), or "30s", "5m", "1h", "5d", "250ms", "1h30m".

    Raises ValueError saying what is accepted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value.strip()):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value.strip()))
    else:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_shown(value)} is not a duration: write a number of seconds (not negative) or a string "
                         "such as '30s', '5m', '1h', '5d' or '1h30m'")
    return timedelta(seconds=seconds)


def _describe(d: timedelta | float) -> str:
    return f"{d.total_seconds() if isinstance(d, timedelta) else d:g}s"


@dataclass(frozen=True)
class Secret:
    """Where a secret comes from (a file or an environment variable): never the TOML itself."""

    file: Path | None = None
    env: str | None = None
    #: dotted key of the setting ("smtp.password"), for problems; not part of equality
    key: str = field(default="secret", compare=False)

    def read(self) -> str:
        """The secret, one trailing newline stripped; ConfigError naming the key when missing, empty or exposed."""
        if self.file is not None:
            value = self._read_file()
            where = f"{self.key}_file"
        elif self.env is not None:
            where = f"{self.key}_env"
            found = os.environ.get(self.env)
            if found is None:
                raise ConfigError(f"{where}: environment variable {self.env} is not set")
            value = found
        else:
            raise ConfigError(f"{self.key}: neither {self.key}_file nor {self.key}_env is given")
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        if not value:
            source = self.file if self.file is not None else f"environment variable {self.env}"
            raise ConfigError(f"{where}: {source} is empty")
        return value

    def _read_file(self) -> str:
        where = f"{self.key}_file"
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ConfigError(f"{where}: cannot read {self.file} ({e.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())  # the opened file itself: no race with a swapped path
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{where}: {self.file} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(f"{where}: {self.file} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                  "restrict it to the gateway's user (chmod 600) and consider the secret exposed")
            data = fh.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {self.file} is not UTF-8 text") from None


# -- the configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class PartyConfig:
    """The gateway's own party."""

    code: str  #: "PI-XXXX" (kind pi) or a 4-digit municipality code (kind gemeente)
    kind: Literal["pi", "gemeente"]
    email: str
    name: str | None = None  #: from the file, else from the registry

    @property
    def party(self) -> Party:
        """As the messages write it: str() is "pi:PI-VUGHT" or "gemeente:0599"."""
        return Party(PartyKind(self.kind), self.code)


@dataclass(frozen=True)
class IdentityConfig:
    key: Path
    cert: Path
    chain: Path | None = None
    passphrase: Secret | None = None

    def load(self) -> Identity:
        """Key, certificate and chain; ConfigError naming the key when a file, the passphrase or the key's mode is wrong."""
        from gateway.crypto.identity import IdentityError, load_pem_identity

        passphrase = self.passphrase.read().encode() if self.passphrase is not None else None
        try:
            return load_pem_identity(self.key, self.cert, self.chain, passphrase)
        except IdentityError as e:
            raise ConfigError(f"identity: {e}") from None


@dataclass(frozen=True)
class TrustConfig:
    bundle: Path
    crls: tuple[Path, ...] = ()
    crl_required: bool = True
    #: a CRL past its nextUpdate makes revocation unknown (a failure); False uses it anyway
    stale_crl_is_failure: bool = True

    def load(self) -> TrustStore:
        from gateway.crypto.trust import TrustStore, TrustStoreError

        try:
            return TrustStore.from_bundle(self.bundle, self.crls, crl_required=self.crl_required,
                                          stale_crl_is_failure=self.stale_crl_is_failure)
        except TrustStoreError as e:
            raise ConfigError(f"trust: {e}") from None


@dataclass(frozen=True)
class Folders:
    outbox: Path
    rejected: Path
    inbox: Path
    spool: Path
    quarantine: Path

    def create(self) -> None:
        """Make the folders that do not exist yet (owner and group only: they hold personal data)."""
        for p in (self.outbox, self.rejected, self.inbox, self.spool, self.quarantine):
            p.mkdir(mode=0o750, parents=True, exist_ok=True)


@dataclass(frozen=True)
class StoreConfig:
    url: str  #: SQLAlchemy async URL without a password; relative sqlite paths already resolved
    password: Secret | None = None  #: database password (PostgreSQL), never in the URL

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a sqlite URL (its folder must exist before connecting); None otherwise."""
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
            return None
        return Path(u.database)

    def connect_url(self) -> URL:
        """The URL to connect with, the password (read now) in it: pass the URL object, never its string."""
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        return u.set(password=self.password.read()) if self.password is not None else u


@dataclass(frozen=True)
class RegistriesConfig:
    institutions: Path
    municipalities: Path | None = None  #: None = the shipped gateway/routing/data/gemeenten.csv


@dataclass(frozen=True)
class Route:
    party: str  #: the key of the route table: "0599" or "PI-HAAGLANDEN"
    transport: Literal["email", "platform"]
    address: str  #: e-mail address, or https URL for platform
    certificate: Path  #: the recipient's encryption certificate (PEM)
    profile: EncryptionProfile
    max_concurrency: int = 2
    as2_id: str | None = None  #: platform routes


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    tls: Literal["starttls", "implicit"] = "starttls"
    ca_file: Path | None = None  #: None = the system's trust store
    username: str | None = None
    password: Secret | None = None
    timeout: float = 60.0
    helo: str | None = None
    max_messages_per_connection: int = 100


@dataclass(frozen=True)
class ImapConfig:
    """The own mailbox, read over implicit TLS (aioimaplib has no STARTTLS)."""

    host: str
    username: str
    password: Secret
    port: int = 993
    ca_file: Path | None = None
    mailbox: str = "INBOX"
    processed_folder: str = "nazorg/verwerkt"
    unrecognised_folder: str = "nazorg/onbekend"
    poll_interval: float = 30.0
    idle: bool = True


@dataclass(frozen=True)
class As2Config:
    """The platform route (AS2 over HTTPS with mutual TLS): our AS2 name, our TLS identity, and the
    optional AS2 server (intake) of this gateway."""

    as2_id: str  #: our AS2 name (AS2-From of what we send; AS2-To of what we accept)
    tls_cert: Path  #: our TLS certificate with its chain (PEM): the client certificate, and the server's
    tls_key: Path  #: its private key (PEM, mode 0600)
    listen: tuple[str, int] | None = None  #: where the AS2 server listens; None: this gateway only sends
    path: str = "/as2"
    max_body: int = 10 * 1024 * 1024
    receipt_url: str | None = None  #: when set: ask partners for asynchronous MDNs at this https URL
    timeout: float = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between delivery attempts, as Postfix's queue manager does it."""

    first_delay: timedelta = timedelta(minutes=5)
    multiplier: float = 2.0
    max_delay: timedelta = timedelta(seconds=4000)  # Postfix maximal_backoff_time
    give_up_after: timedelta = timedelta(days=5)  # Postfix maximal_queue_lifetime
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """The wait after failed attempt number `attempt` (1 = the first attempt failed).

        first_delay × multiplier^(attempt-1), capped at max_delay, then spread by ±jitter (never past
        max_delay) so that messages that failed together do not all come back together."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, not {attempt}")
        cap = self.max_delay.total_seconds()
        try:
            seconds = min(self.first_delay.total_seconds() * self.multiplier ** (attempt - 1), cap)
        except OverflowError:
            seconds = cap
        if self.jitter:
            seconds *= (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return timedelta(seconds=min(seconds, cap))


@dataclass(frozen=True)
class Limits:
    workers: int = 4
    max_message_bytes: int = MAX_MESSAGE_BYTES
    lease: timedelta = timedelta(minutes=5)
    rescan_interval: float = 30.0
    stable_after: float = 0.5  #: seconds a file must stay unchanged before pick-up, unless no one holds it open
    receipt_overdue: timedelta = timedelta(hours=24)
    validation_workers: int = 2


@dataclass(frozen=True, repr=False)
class LoadedSecrets:
    """What `check_secrets` loaded, so the daemon reads every secret once. Its repr shows no secret."""

    identity: Identity
    trust: TrustStore
    smtp_password: str | None
    imap_password: str | None
    store_url: URL
    #: the key of the subject index (``gateway.privacy``); None when [privacy] names none
    subject_key: bytes | None = None

    def __repr__(self) -> str:
        return f"<LoadedSecrets {self.identity!r}>"


@dataclass(frozen=True)
class DashboardConfig:
    """The operator's web dashboard (``nazorg-gateway dashboard``): where it listens, who may log in."""

    listen: tuple[str, int] = ("127.0.0.1", 8080)  #: loopback by default: put a TLS proxy in front for more
    accounts_file: Path | None = None  #: None: secrets/dashboard-accounts next to the configuration


@dataclass(frozen=True)
class PrivacyConfig:
    """The data subject's rights (``gateway.privacy``): the key under which the store names persons."""

    subject_key: Secret | None = None  #: None: no subject index is kept, subject-access cannot answer


@dataclass(frozen=True)
class Retention:
    """How long what is kept (``gateway.ops.retention``; covenant art. 9)."""

    plaintext_after: timedelta = timedelta(days=30)  #: spool copies, after the message was acknowledged
    keep_years: int = 5  #: everything else, after the dossier's last message
    purge_every: timedelta = timedelta(hours=24)  #: the daemon's scheduled purge
    checkpoint_every: timedelta = timedelta(hours=1)  #: the daemon's signed audit checkpoints


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    party: PartyConfig
    identity: IdentityConfig
    trust: TrustConfig
    folders: Folders
    store: StoreConfig
    registries: RegistriesConfig
    routes: Mapping[str, Route]
    smtp: SmtpConfig | None
    imap: ImapConfig | None
    retry: RetryPolicy = RetryPolicy()
    limits: Limits = Limits()
    log_level: str = "info"
    as2: As2Config | None = None
    #: the registries as read at load, reused by parties()
    _registries: tuple[MunicipalityRegistry, InstitutionRegistry] | None = field(default=None, repr=False,
                                                                                  compare=False)
    dashboard: DashboardConfig = DashboardConfig()
    retention: Retention = Retention()
    privacy: PrivacyConfig = PrivacyConfig()

    def parties(self) -> Parties:
        """Both registries behind the interface the validator takes (those read at load, not read again)."""
        from gateway.routing.parties import Parties

        if self._registries is not None:
            return Parties(*self._registries)
        return Parties.load(self.registries.municipalities, self.registries.institutions)

    def check_secrets(self) -> LoadedSecrets:
        """Load the identity and the trust store and read every secret; ConfigError listing all problems."""
        from gateway.crypto.trust import certificate_emails

        problems: list[str] = []

        def attempt(load: Callable[[], Any]) -> Any:
            try:
                return load()
            except ConfigError as e:
                problems.extend(e.problems)
                return None

        identity = attempt(self.identity.load)
        if identity is not None and self.party.email.lower() not in certificate_emails(identity.cert):
            problems.append(f"identity.cert: the certificate is not for party.email {self.party.email} (it names "
                            f"{', '.join(sorted(certificate_emails(identity.cert))) or 'no address'}): receivers "
                            "match the signer to the sender's address and would refuse every message")
        trust = attempt(self.trust.load)
        smtp_password = attempt(self.smtp.password.read) if self.smtp and self.smtp.password else None
        imap_password = attempt(self.imap.password.read) if self.imap else None
        store_url = attempt(self.store.connect_url)
        subject_key = attempt(self._subject_key) if self.privacy.subject_key else None
        if problems:
            raise ConfigError(problems, self.path)
        return LoadedSecrets(identity, trust, smtp_password, imap_password, store_url, subject_key)

    def _subject_key(self) -> bytes:
        from gateway.privacy import SubjectKeyError, parse_subject_key

        assert self.privacy.subject_key is not None
        try:
            return parse_subject_key(self.privacy.subject_key.read())
        except SubjectKeyError as e:
            raise ConfigError(f"privacy.subject_key: {e}") from None


# -- reading ------------------------------------------------------------------------------------


class _Context:
    """What every table reader shares: the problems found so far and the folder paths resolve against."""

    def __init__(self, base: Path):
        self.base = base
        self.problems: list[str] = []
        self.municipalities: MunicipalityRegistry | None = None
        self.institutions: InstitutionRegistry | None = None


class _Table:
    """One TOML table: typed getters that record problems under dotted keys, and the unknown-key check.

    A getter returns the default (or None when there is none) for a missing or wrong value, after recording
    the problem, so reading goes on and every problem is found."""

    def __init__(self, data: dict[str, Any], where: str, ctx: _Context):
        self.data, self.where, self.ctx = data, where, ctx
        self.seen: set[str] = set()
        self.secrets: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where and name else self.where or name

    def problem(self, name: str, text: str) -> None:
        self.ctx.problems.append(f"{self.key(name)}: {text}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self.seen.add(name)
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.problem(name, "missing (required)")
                return None
            return default
        return value

    def _typed(self, name: str, default: Any, ok: Callable[[Any], bool], want: str) -> Any:
        value = self.raw(name, default)
        if value is None or value is default:
            return value
        if not ok(value):
            self.problem(name, f"must be {want}, not {_shown(value)}")
            return None if default is _MISSING else default
        return value

    def text(self, name: str, default: Any = _MISSING) -> str | None:
        return self._typed(name, default, lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")

    def boolean(self, name: str, default: bool) -> bool:
        return self._typed(name, default, lambda v: isinstance(v, bool), "true or false")

    def integer(self, name: str, default: Any, lo: int, hi: int) -> int | None:
        value = self._typed(name, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number")
        if isinstance(value, int) and value is not default and not lo <= value <= hi:
            self.problem(name, f"{value} is out of range ({lo} to {hi})")
            return None if default is _MISSING else default
        return value

    def number(self, name: str, default: float, lo: float, hi: float, *, hi_open: bool = False) -> float:
        value = self._typed(name, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                            and math.isfinite(v), "a number")
        if value is not default and not (lo <= value < hi if hi_open else lo <= value <= hi):
            self.problem(name, f"{value} is out of range ({lo:g} to {hi:g}{', exclusive' if hi_open else ''})")
            return default
        return float(value)

    def duration(self, name: str, default: timedelta, lo: timedelta, hi: timedelta) -> timedelta:
        value = self.raw(name, default)
        if value is default:
            return default
        try:
            d = parse_duration(value)
        except ValueError as e:
            self.problem(name, str(e))
            return default
        if not lo <= d <= hi:
            self.problem(name, f"{_describe(d)} is out of range ({_describe(lo)} to {_describe(hi)})")
            return default
        return d

    def seconds(self, name: str, default: float, lo: float, hi: float) -> float:
        return self.duration(name, timedelta(seconds=default), timedelta(seconds=lo),
                             timedelta(seconds=hi)).total_seconds()

    def choice(self, name: str, default: Any, choices: Iterable[str]) -> str | None:
        choices = tuple(choices)
        value = self.raw(name, default)
        if value is None or value is default:
            return value
        if value not in choices:
            self.problem(name, f"{_shown(value)} is not one of {', '.join(map(repr, choices))}")
            return None if default is _MISSING else default
        return value

    def resolve(self, value: str) -> Path:
        return Path(os.path.normpath(self.ctx.base / value))

    def path(self, name: str, default: Any = _MISSING, *, kind: Literal["file", "dir"] | None = "file") -> Path | None:
        """A path relative to the configuration's folder; `file` must be a readable file, `dir` a folder if it exists."""
        value = self.text(name, default)
        if value is None or value is default:
            return value
        path = self.resolve(value)
        self.check_path(name, path, kind)
        return path

    def check_path(self, name: str, path: Path, kind: Literal["file", "dir"] | None) -> None:
        if kind == "file":
            if not path.exists():
                self.problem(name, f"file {path} does not exist")
            elif not path.is_file():
                self.problem(name, f"{path} is not a file")
            elif not os.access(path, os.R_OK):
                self.problem(name, f"file {path} is not readable by this user")
        elif kind == "dir" and path.exists() and not path.is_dir():
            self.problem(name, f"{path} exists but is not a folder")

    def paths(self, name: str) -> tuple[Path, ...] | None:
        value = self.raw(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.problem(name, "must be a list of file names")
            return None
        found = tuple(self.resolve(v) for v in value)
        for i, p in enumerate(found):
            self.check_path(f"{name}.{i}", p, "file")
        return found

    def secret(self, name: str, *, required: bool) -> Secret | None:
        """`name`_file or `name`_env; `name` itself is refused (a secret written in the file)."""
        self.secrets.add(name)
        file, env = self.raw(f"{name}_file", None), self.raw(f"{name}_env", None)
        if name in self.data:
            return None  # reported by finish()
        if file is not None and env is not None:
            self.problem(name, f"give {name}_file or {name}_env, not both")
            return None
        if file is None and env is None:
            if required:
                self.problem(f"{name}_file", f"missing: give {name}_file (a file only the gateway's user can read) "
                                             f"or {name}_env (an environment variable)")
            return None
        if file is not None:
            if not isinstance(file, str) or not file.strip():
                self.problem(f"{name}_file", f"must be a file name, not {_shown(file)}")
                return None
            path = self.resolve(file)
            if not path.is_file():
                self.problem(f"{name}_file", f"file {path} does not exist")
            return Secret(file=path, key=self.key(name))
        if not isinstance(env, str) or not _ENV_NAME.fullmatch(env):
            self.problem(f"{name}_env", f"must be the name of an environment variable, not {_shown(env)}")
            return None
        return Secret(env=env, key=self.key(name))

    def table(self, name: str, *, required: bool = False) -> _Table | None:
        value = self.raw(name, _MISSING if required else None)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(name, f"must be a table ([{self.key(name)}]), not {_shown(value)}")
            return None
        return _Table(value, self.key(name), self.ctx)

    def finish(self, hints: Mapping[str, str] | None = None) -> None:
        """Report every key no getter asked for: a secret written in the file, or an unknown key (a typo)."""
        allowed = sorted(self.seen)
        for name in sorted(k for k in self.data if k not in self.seen):
            if name in SECRET_NAMES or name in self.secrets:
                takes = name if name in self.secrets else min(self.secrets, default=None)
                if takes is not None:
                    how = (f"; put it in a file only the gateway's user can read ({takes}_file = \"...\") "
                           f"or an environment variable ({takes}_env = \"...\")")
                else:
                    how = "; this table takes none: remove it"
                self.problem(name, "secrets are never written in the configuration file" + how)
            elif hints and name in hints:
                self.problem(name, hints[name])
            else:
                close = difflib.get_close_matches(name, allowed, n=1)
                self.problem(name, "unknown key (usually a typo)"
                             + (f"; did you mean {close[0]!r}?" if close else "")
                             + (f" Allowed here: {', '.join(allowed)}" if allowed else ""))


def _email_problem(value: str) -> str | None:
    if "," in value or ";" in value:
        return f"{_shown(value)} must be a single e-mail address"
    if "<" in value or ">" in value or " " in value.strip():
        return f"{_shown(value)} must be a bare e-mail address (name@domain), without a display name or brackets"
    if len(value) > 254 or not _ADDR_SPEC.fullmatch(value) or len(value.split("@")[0]) > 64:
        return f"{_shown(value)} is not an e-mail address (name@domain)"
    return None


def _host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        return f"{_shown(value)} is not a host name or IP address"
    return None


def _registries(t: _Table) -> RegistriesConfig:
    """Read both registries now: the party and the routes are checked against them."""
    institutions = t.path("institutions")
    municipalities = t.path("municipalities", None)
    t.finish()
    if institutions is not None and institutions.is_file():
        try:
            t.ctx.institutions = InstitutionRegistry.load(institutions)
        except RegistryError as e:
            t.problem("institutions", str(e))
    given = t.has("municipalities")
    if (not given) or (municipalities is not None and municipalities.is_file()):  # not given: the shipped one
        try:
            t.ctx.municipalities = MunicipalityRegistry.load(municipalities)
        except RegistryError as e:
            t.problem("municipalities", str(e))
    return RegistriesConfig(institutions, municipalities)


def _party(t: _Table) -> PartyConfig:
    kind = t.choice("kind", _MISSING, ("pi", "gemeente"))
    code = t.text("code")
    email = t.text("email")
    name = t.text("name", None)
    t.finish()
    if email is not None and (why := _email_problem(email)):
        t.problem("email", why)
    ctx = t.ctx
    if code is not None and kind == "pi":
        if not PI_CODE.fullmatch(code):
            t.problem("code", f"{_shown(code)} is not a PI code (PI- and 2 to 12 of A-Z, 0-9), as kind = 'pi' says")
        elif ctx.institutions is not None:
            if why := ctx.institutions.check(code):
                t.problem("code", why)
            elif name is None:
                name = ctx.institutions.get(code).name
    elif code is not None and kind == "gemeente":
        if not _MUNICIPALITY_CODE.fullmatch(code):
            t.problem("code", f"{_shown(code)} is not a 4-digit municipality code, as kind = 'gemeente' says")
        elif ctx.municipalities is not None:
            if why := ctx.municipalities.check(code, datetime.now(AMSTERDAM).date()):
                t.problem("code", why)
            elif name is None:
                name = f"Gemeente {ctx.municipalities.get(code).name}"
    return PartyConfig(code, kind, email, name)


def _identity(t: _Table) -> IdentityConfig:
    ident = IdentityConfig(t.path("key"), t.path("cert"), t.path("chain", None),
                           t.secret("passphrase", required=False))
    t.finish()
    return ident


def _trust(t: _Table) -> TrustConfig:
    bundle, crls = t.path("bundle"), t.paths("crls")
    trust = TrustConfig(bundle, crls or (), t.boolean("crl_required", True),
                        t.boolean("stale_crl_is_failure", True))
    t.finish()
    if trust.crl_required and crls == ():
        t.problem("crls", "empty while crl_required = true: every certificate would be refused (revocation "
                          "unknown); list the CRL files of the CAs, or set crl_required = false")
    return trust


_FOLDERS = ("outbox", "rejected", "inbox", "spool", "quarantine")


def _folders(t: _Table | None, ctx: _Context) -> Folders:
    t = t or _Table({}, "folders", ctx)
    found = {name: t.resolve(t.text(name, name) or name) for name in _FOLDERS}  # default: named after its role
    for name, path in found.items():
        t.check_path(name, path, "dir")
    t.finish()
    real = {n: p.resolve() for n, p in found.items()}
    for i, a in enumerate(_FOLDERS):
        for b in _FOLDERS[i + 1:]:
            if real[a] == real[b]:
                t.problem(b, f"is the same folder as folders.{a} ({found[a]}): each folder needs its own")
            for outer, inner in ((a, b), (b, a)):
                if real[inner] != real[outer] and real[inner].is_relative_to(real[outer]) \
                        and (outer, inner) != ("outbox", "rejected"):  # outbox/rejected is the architecture's layout
                    t.problem(inner, f"lies inside folders.{outer} ({found[outer]}): the folders must not nest")
    return Folders(**found)


_ASYNC_DRIVERS = {"sqlite": ("aiosqlite",), "postgresql": ("asyncpg", "psycopg")}


def _store(t: _Table | None, ctx: _Context) -> StoreConfig:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    t = t or _Table({}, "store", ctx)
    url_text = t.text("url", f"sqlite+aiosqlite:///{ctx.base / 'state' / 'gateway.db'}")
    password = t.secret("password", required=False)
    t.finish()
    try:
        url = make_url(url_text)
    except ArgumentError:
        t.problem("url", f"{_shown(url_text)} is not a database URL (e.g. sqlite+aiosqlite:///state/gateway.db)")
        return StoreConfig(url_text, password)
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend not in _ASYNC_DRIVERS:
        t.problem("url", f"database {backend!r} is not supported (sqlite or postgresql)")
    elif driver not in _ASYNC_DRIVERS[backend]:
        t.problem("url", f"driver {driver!r} is not asynchronous: write {backend}+{_ASYNC_DRIVERS[backend][0]}://...")
    if url.password:
        t.problem("url", "the URL holds a password: secrets are never written in the configuration file; put it "
                         "in a file (password_file = \"...\") or an environment variable (password_env = \"...\")")
        url = url.set(password=None)
    if backend == "sqlite" and url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        url = url.set(database=os.path.normpath(ctx.base / url.database))
    return StoreConfig(url.render_as_string(hide_password=False), password)


def _certificate_problem(path: Path) -> str | None:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return f"{path} holds no PEM certificate"
    key = certs[0].public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        kind = "an EC" if isinstance(key, ec.EllipticCurvePublicKey) else f"a {type(key).__name__}"
        return (f"{path} holds {kind} certificate: partners are encrypted to by RSA key transport only; "
                "the partner needs an RSA encryption certificate")
    return None


def _route(t: _Table, code: str, own: str | None) -> Route | None:
    ctx = t.ctx
    transport = t.choice("transport", _MISSING, ("email", "platform"))
    address = t.text("address")
    certificate = t.path("certificate")
    name, kt, cc = t.text("profile", None), t.text("key_transport", None), t.text("content_cipher", None)
    max_concurrency = t.integer("max_concurrency", 2, 1, 64)
    as2_id = t.text("as2_id", None)
    t.finish()

    if PI_CODE.fullmatch(code):
        if ctx.institutions is not None and code not in ctx.institutions:
            t.problem("", f"PI code {code} is not in the PI table ({ctx.institutions.path})")
    elif _MUNICIPALITY_CODE.fullmatch(code):
        if ctx.municipalities is not None and ctx.municipalities.get(code) is None:
            t.problem("", f"municipality code {code} is not in the municipality registry")
        # an ended municipality is accepted: the daemon holds messages to it, naming the successor
    elif re.fullmatch(r"GM[0-9]{4}", code):
        t.problem("", f"write the municipality code without GM: [routes.{code[2:]}]")
    else:
        t.problem("", f"{_shown(code)} is neither a 4-digit municipality code nor a PI code (PI-XXXX)")
    if own is not None and code == own:
        t.problem("", "a route to the gateway's own party: messages to it never leave; remove the route")

    if address is not None and transport == "email":
        if address.lower().startswith(("https://", "http://")):
            t.problem("address", "transport 'email' needs an e-mail address (name@domain), not a URL; "
                                 "for the platform set transport = \"platform\"")
        elif why := _email_problem(address):
            t.problem("address", why)
    elif address is not None and transport == "platform":
        _platform_address(t, address)
    if as2_id is not None and transport == "email":
        t.problem("as2_id", "is for platform routes only (transport = \"platform\")")
    elif as2_id is not None and not _AS2_ID.fullmatch(as2_id):
        t.problem("as2_id", f"{_shown(as2_id)} is not an AS2 name (1 to 128 printable ASCII characters)")

    if certificate is not None and certificate.is_file() and (why := _certificate_problem(certificate)):
        t.problem("certificate", why)
    if name is None and kt is None and cc is None:
        name = "strong" if transport == "platform" else "compatible"  # mail clients read only compatible
    try:
        profile = profile_from(name, key_transport=kt, content_cipher=cc)
    except ValueError as e:
        wrong = ("key_transport" if kt is not None and kt not in set(KeyTransport) else
                 "content_cipher" if cc is not None and cc not in set(ContentCipher) else "profile")
        t.problem(wrong, str(e))
        profile = None
    return Route(code, transport, address, certificate, profile, max_concurrency, as2_id)


def _platform_address(t: _Table, address: str) -> None:
    if "@" in address and "://" not in address:
        t.problem("address", "transport 'platform' needs an https:// URL, not an e-mail address; "
                             "for e-mail set transport = \"email\"")
        return
    try:
        u = urlsplit(address)
        host = u.hostname
    except ValueError:
        u, host = None, None
    if u is None or u.scheme.lower() != "https":
        t.problem("address", f"{_shown(address)} must be an https:// URL (the platform is never reached without TLS)")
    elif not host:
        t.problem("address", f"{_shown(address)} names no host")
    elif u.username or u.password:
        t.problem("address", "the URL holds credentials: secrets are never written in the configuration file")
    elif u.fragment:
        t.problem("address", f"{_shown(address)} must not have a #fragment")


def _routes(t: _Table | None, own: str | None) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for code in sorted((t.data if t else {})):
        sub = t.table(code)
        if sub is not None and (route := _route(sub, code, own)) is not None:
            routes[code] = route
    return routes


def _ca_file(t: _Table) -> Path | None:
    """The CA certificates (PEM) a mail server's certificate is checked against; None: the system's."""
    path = t.path("ca_file", None)
    if path is not None and path.is_file():
        try:
            x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            t.problem("ca_file", f"{path} holds no PEM certificate")
    return path


_TLS_OFF = "TLS cannot be turned off: messages and credentials would cross the network readable; "


def _smtp(t: _Table) -> SmtpConfig:
    host = t.text("host")
    tls_value = t.raw("tls", "starttls")
    if tls_value in ("starttls", "implicit"):
        tls = tls_value
    elif tls_value in (False, "none", "off", "no", "plain", "plaintext", "false", ""):
        t.problem("tls", _TLS_OFF + "use tls = \"starttls\" (port 587) or tls = \"implicit\" (port 465)")
        tls = "starttls"
    else:
        t.problem("tls", f"{_shown(tls_value)} is not one of 'starttls', 'implicit'")
        tls = "starttls"
    port = t.integer("port", 465 if tls == "implicit" else 587, 1, 65535)
    smtp = SmtpConfig(
        host=host, port=port, tls=tls, ca_file=_ca_file(t), username=t.text("username", None),
        password=t.secret("password", required=False), timeout=t.seconds("timeout", 60.0, 1.0, 3600.0),
        helo=t.text("helo", None),
        max_messages_per_connection=t.integer("max_messages_per_connection", 100, 1, 10000))
    starttls = t.data.get("starttls")
    t.finish({"starttls": (_TLS_OFF if starttls is False else "there is no starttls switch: TLS is always on; ")
                          + "write tls = \"starttls\" (port 587) or tls = \"implicit\" (port 465)"})
    if host is not None and (why := _host_problem(host)):
        t.problem("host", why)
    if smtp.helo is not None and (why := _host_problem(smtp.helo)):
        t.problem("helo", why)
    if port == 465 and tls == "starttls":
        t.problem("port", "465 is SMTP over implicit TLS: set tls = \"implicit\" (or use port 587 for STARTTLS)")
    if port in (25, 587) and tls == "implicit":
        t.problem("port", f"{port} speaks STARTTLS, not implicit TLS: set tls = \"starttls\" (or use port 465)")
    if (smtp.username is None) != (smtp.password is None) and "password" not in t.data:
        t.problem("username" if smtp.username is None else "password_file",
                  "username and password_file/password_env go together: give both or neither")
    return smtp


def _as2(t: _Table) -> As2Config:
    as2_id = t.text("as2_id")
    if as2_id is not None and not _AS2_ID.fullmatch(as2_id):
        t.problem("as2_id", f"{_shown(as2_id)} is not an AS2 name (1 to 128 printable ASCII characters)")
    listen_text = t.text("listen", None)
    listen = None
    if listen_text is not None:
        host, _, port = listen_text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            t.problem("listen", f"{_shown(listen_text)} is not HOST:PORT")
        else:
            listen = (host.strip("[]"), int(port))
    path = t.text("path", "/as2")
    if path is not None and not path.startswith("/"):
        t.problem("path", "must start with /")
    receipt_url = t.text("receipt_url", None)
    if receipt_url is not None and not receipt_url.startswith("https://"):
        t.problem("receipt_url", "must be an https:// URL (receipts never travel without TLS)")
    config = As2Config(as2_id=as2_id or "", tls_cert=t.path("tls_cert"), tls_key=t.path("tls_key"), listen=listen,
                       path=path or "/as2", max_body=t.integer("max_body", 10 * 1024 * 1024, 1024, 1 << 30),
                       receipt_url=receipt_url, timeout=t.seconds("timeout", 60.0, 1.0, 3600.0))
    t.finish()
    return config


def _imap(t: _Table) -> ImapConfig:
    no_switch = "IMAP is read over implicit TLS only (port 993): there is nothing to switch; remove it"
    imap = ImapConfig(
        host=t.text("host"), username=t.text("username"), password=t.secret("password", required=True),
        port=t.integer("port", 993, 1, 65535), ca_file=_ca_file(t),
        mailbox=t.text("mailbox", "INBOX"), processed_folder=t.text("processed_folder", "nazorg/verwerkt"),
        unrecognised_folder=t.text("unrecognised_folder", "nazorg/onbekend"),
        poll_interval=t.seconds("poll_interval", 30.0, 1.0, 3600.0), idle=t.boolean("idle", True))
    t.finish({"tls": no_switch, "starttls": no_switch})
    if imap.host is not None and (why := _host_problem(imap.host)):
        t.problem("host", why)
    names = {"mailbox": imap.mailbox, "processed_folder": imap.processed_folder,
             "unrecognised_folder": imap.unrecognised_folder}
    for i, (a, va) in enumerate(names.items()):
        for b, vb in list(names.items())[i + 1:]:
            if va and vb and va.lower() == vb.lower():
                t.problem(b, f"is the same mailbox as imap.{a} ({va!r}): each needs its own")
    return imap


def _retry(t: _Table | None, ctx: _Context) -> RetryPolicy:
    t = t or _Table({}, "retry", ctx)
    d = RetryPolicy()
    policy = RetryPolicy(
        first_delay=t.duration("first_delay", d.first_delay, timedelta(seconds=1), timedelta(days=1)),
        multiplier=t.number("multiplier", d.multiplier, 1.0, 10.0),
        max_delay=t.duration("max_delay", d.max_delay, timedelta(seconds=1), timedelta(days=1)),
        give_up_after=t.duration("give_up_after", d.give_up_after, timedelta(minutes=1), timedelta(days=30)),
        jitter=t.number("jitter", d.jitter, 0.0, 1.0, hi_open=True))
    t.finish()
    if policy.max_delay < policy.first_delay:
        t.problem("max_delay", f"{_describe(policy.max_delay)} is shorter than retry.first_delay "
                               f"({_describe(policy.first_delay)})")
    if policy.give_up_after < policy.first_delay:
        t.problem("give_up_after", f"{_describe(policy.give_up_after)} is shorter than retry.first_delay: "
                                   "no retry would ever happen")
    return policy


def _limits(t: _Table | None, ctx: _Context) -> Limits:
    t = t or _Table({}, "limits", ctx)
    d = Limits()
    limits = Limits(
        workers=t.integer("workers", d.workers, 1, 256),
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, 1024, 100 * 2**20),
        lease=t.duration("lease", d.lease, timedelta(seconds=10), timedelta(days=1)),
        rescan_interval=t.seconds("rescan_interval", d.rescan_interval, 0.1, 3600.0),
        stable_after=t.seconds("stable_after", d.stable_after, 0.0, 60.0),
        receipt_overdue=t.duration("receipt_overdue", d.receipt_overdue, timedelta(minutes=1), timedelta(days=30)),
        validation_workers=t.integer("validation_workers", d.validation_workers, 1, 64))
    t.finish()
    return limits


def _dashboard(t: _Table | None, ctx: _Context) -> DashboardConfig:
    t = t or _Table({}, "dashboard", ctx)
    listen_text = t.text("listen", "127.0.0.1:8080") or "127.0.0.1:8080"
    host, _, port = listen_text.rpartition(":")
    listen = DashboardConfig.listen
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        t.problem("listen", f"{_shown(listen_text)} is not HOST:PORT")
    else:
        listen = (host.strip("[]"), int(port))
    accounts = t.resolve(t.text("accounts_file", "secrets/dashboard-accounts") or "secrets/dashboard-accounts")
    t.check_path("accounts_file", accounts, None)
    t.finish()
    return DashboardConfig(listen, accounts)


def _retention(t: _Table | None, ctx: _Context) -> Retention:
    t = t or _Table({}, "retention", ctx)
    d = Retention()
    retention = Retention(
        plaintext_after=t.duration("plaintext_after", d.plaintext_after, timedelta(0), timedelta(days=5 * 366)),
        keep_years=t.integer("keep_years", d.keep_years, 1, 100) or d.keep_years,
        purge_every=t.duration("purge_every", d.purge_every, timedelta(minutes=1), timedelta(days=31)),
        checkpoint_every=t.duration("checkpoint_every", d.checkpoint_every, timedelta(seconds=10),
                                    timedelta(days=1)))
    t.finish()
    return retention


def _privacy(t: _Table | None, ctx: _Context) -> PrivacyConfig:
    t = t or _Table({}, "privacy", ctx)
    privacy = PrivacyConfig(subject_key=t.secret("subject_key", required=False))
    t.finish()
    return PrivacyConfig() if privacy.subject_key is None else privacy


def load_config(path: str | os.PathLike) -> GatewayConfig:
    """Read and check the configuration file; ConfigError lists every problem (`key: problem`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot be read ({e.strerror})", path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path) from None
    path = path.resolve()
    ctx = _Context(path.parent)
    top = _Table(data, "", ctx)

    log_level = top.choice("log_level", "info", LOG_LEVELS)
    registries_table = top.table("registries", required=True)
    registries = _registries(registries_table) if registries_table else None
    party_table = top.table("party", required=True)
    party = _party(party_table) if party_table else None
    identity_table = top.table("identity", required=True)
    identity = _identity(identity_table) if identity_table else None
    trust_table = top.table("trust", required=True)
    trust = _trust(trust_table) if trust_table else None
    folders = _folders(top.table("folders"), ctx)
    store = _store(top.table("store"), ctx)
    smtp_table, imap_table = top.table("smtp"), top.table("imap")
    smtp = _smtp(smtp_table) if smtp_table else None
    imap = _imap(imap_table) if imap_table else None
    as2_table = top.table("as2")
    as2 = _as2(as2_table) if as2_table else None
    retry = _retry(top.table("retry"), ctx)
    limits = _limits(top.table("limits"), ctx)
    routes = _routes(top.table("routes"), party.code if party else None)
    dashboard = _dashboard(top.table("dashboard"), ctx)
    retention = _retention(top.table("retention"), ctx)
    privacy = _privacy(top.table("privacy"), ctx)
    top.finish()

    if smtp is None and (by_mail := [c for c, r in routes.items() if r.transport == "email"]):
        ctx.problems.append(f"smtp: missing: routes {', '.join(by_mail)} use transport 'email' and need an [smtp] table")
    if as2 is None and (by_platform := [c for c, r in routes.items() if r.transport == "platform"]):
        ctx.problems.append(f"as2: missing: routes {', '.join(by_platform)} use transport 'platform' and need an "
                            "[as2] table (our AS2 name and TLS certificate)")
    for code, r in routes.items():
        if r.transport == "platform" and not r.as2_id:
            ctx.problems.append(f"routes.{code}.as2_id: missing: a platform route names the partner's AS2 name")
    if smtp is not None and limits.lease.total_seconds() <= smtp.timeout:
        ctx.problems.append(f"limits.lease: {_describe(limits.lease)} is not longer than smtp.timeout "
                            f"({_describe(smtp.timeout)}): a delivery could outlive its lease and be sent twice")
    if as2 is not None and limits.lease.total_seconds() <= as2.timeout:
        ctx.problems.append(f"limits.lease: {_describe(limits.lease)} is not longer than as2.timeout "
                            f"({_describe(as2.timeout)}): a POST could outlive its lease and be sent twice")
    if ctx.problems:
        raise ConfigError(ctx.problems, path)
    assert party and identity and trust and registries and log_level
    assert ctx.institutions is not None and ctx.municipalities is not None
    return GatewayConfig(path, party, identity, trust, folders, store, registries, MappingProxyType(routes), smtp,
                         imap, retry, limits, log_level, as2, (ctx.municipalities, ctx.institutions),
                         dashboard=dashboard, retention=retention, privacy=privacy)
