"""The configuration loader: the reference example and an `init` set-up load; each class of mistake is
reported under its dotted key, all of them at once; secrets are read only by check_secrets."""

from __future__ import annotations

import os
import random
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.config import (ConfigError, ImapConfig, Limits, RetryPolicy, Secret, SmtpConfig, load_config,
                            parse_duration)
from gateway.crypto.profiles import COMPATIBLE, STRONG
from gateway.setup_local import init_local
from paths import ROOT

EXAMPLE = ROOT / "config" / "gateway.example.toml"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """An `init` set-up for PI-VUGHT, shared by the module: tests only add files to it."""
    return init_local(tmp_path_factory.mktemp("config") / "site").parent


@pytest.fixture(scope="module")
def base_text(site) -> str:
    return (site / "gateway.toml").read_text(encoding="utf-8")


@pytest.fixture
def variant(site, base_text, request):
    """variant(edits, append="") writes the init config with each (old, new) edit applied into the set-up
    folder (so relative paths still hold) and returns its path; each `old` must occur exactly once."""
    def make(edits=(), append: str = "", text: str | None = None) -> Path:
        text = base_text if text is None else text
        for old, new in edits:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        path = site / (re.sub(r"\W", "_", request.node.name) + ".toml")
        path.write_text(text + append, encoding="utf-8")
        return path
    return make


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def only(found: list[str], key: str) -> str:
    """The one problem of `key` (asserting there is exactly one, and nothing else)."""
    assert len(found) == 1 and found[0].startswith(key + ": "), found
    return found[0]


# -- what must load -------------------------------------------------------------------------------


def test_the_reference_example_loads_in_an_init_folder(site):
    """config/gateway.example.toml, copied into an `init` folder, loads and passes check_secrets as it is."""
    shutil.copyfile(EXAMPLE, site / "example.toml")
    config = load_config(site / "example.toml")
    loaded = config.check_secrets()
    assert str(config.party.party) == "pi:PI-VUGHT" and config.party.name == "PI Vught"
    assert set(config.routes) == {"0599", "PI-HAAGLANDEN"}
    assert config.routes["0599"].profile == COMPATIBLE and config.routes["PI-HAAGLANDEN"].profile == STRONG
    assert loaded.smtp_password == (site / "secrets" / "smtp-password").read_text().rstrip("\n")
    assert "PI-VUGHT" in loaded.identity.subject and loaded.trust.crl_required
    assert loaded.smtp_password not in repr(loaded)
    assert config.parties().institution_problem("PI-HAAGLANDEN") is None  # the registries read at load


def test_every_documented_optional_key_is_a_real_key_with_the_documented_default(site):
    """Uncommenting the example's optional keys (but the secret and CA files, which it only names) changes
    nothing but the platform route it shows: the documented defaults are the code's."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"# ((\w+) = .*|\[routes\.\w+\]|\[as2\])", line)
        if m and not (m.group(2) or "").endswith(("_file", "_env")) and m.group(2) not in ("ca_file", "municipalities"):
            line = m.group(1)
        lines.append(line)
    (site / "example-all.toml").write_text("\n".join(lines), encoding="utf-8")
    config = load_config(site / "example-all.toml")
    assert config.limits == Limits() and config.retry == RetryPolicy()
    assert config.imap == ImapConfig(config.imap.host, config.imap.username, config.imap.password)
    assert config.smtp.timeout == SmtpConfig("x").timeout
    assert config.smtp.max_messages_per_connection == SmtpConfig("x").max_messages_per_connection
    platform = config.routes["0363"]
    assert (platform.transport, platform.profile, platform.as2_id) == ("platform", STRONG, "GEMEENTE-0363")
    as2 = config.as2
    assert (as2.as2_id, as2.listen, as2.path, as2.max_body, as2.timeout) == ("PI-VUGHT", ("127.0.0.1", 4080), "/as2",
                                                                             10485760, 60.0)
    assert as2.tls_cert.name == "tls-chain.pem" and as2.tls_cert.is_absolute()


def test_relative_paths_resolve_against_the_config_folder_not_the_working_folder(site, variant, tmp_path, monkeypatch):
    """Whatever the working folder, files, folders and the sqlite database lie beside the configuration."""
    monkeypatch.chdir(tmp_path)
    config = load_config(variant())
    assert config.identity.key == site / "keys" / "parties" / "PI-VUGHT" / "key.pem"
    assert config.folders.outbox == site / "outbox" and config.trust.crls == (site / "keys" / "ca" / "issuing.crl.pem",)
    assert config.store.url == f"sqlite+aiosqlite:///{site}/state/gateway.db"
    assert config.store.sqlite_path == site / "state" / "gateway.db"
    assert config.store.connect_url().database == str(site / "state" / "gateway.db")


def test_omitted_tables_take_their_defaults(site, variant):
    """Without [store], [folders], [retry] and [limits] the defaults hold (the store beside the file)."""
    text = (site / "gateway.toml").read_text()
    for table in ("store", "folders", "retry", "limits"):
        text = re.sub(rf"\[{table}\]\n(?:[^\[\n#].*\n)*", "", text)
    config = load_config(variant(text=text))
    assert config.store.url == f"sqlite+aiosqlite:///{site}/state/gateway.db"
    assert config.folders.spool == site / "spool" and config.retry == RetryPolicy() and config.limits == Limits()


def test_a_route_to_an_ended_municipality_is_accepted(variant, site):
    """Appingedam (0003) ended in 2021: its route loads (the daemon holds messages to it, naming the successor)."""
    config = load_config(variant(append='\n[routes.0003]\ntransport = "email"\naddress = "nazorg@appingedam.example.nl"\n'
                                       'certificate = "keys/parties/0599/cert.pem"\n'))
    assert config.routes["0003"].address == "nazorg@appingedam.example.nl"
    assert config.routes["0003"].profile == COMPATIBLE  # the default for e-mail


# -- each class of mistake --------------------------------------------------------------------------


def test_a_missing_file_is_named_by_its_key(variant):
    """A key, a CRL and a route certificate that do not exist: each problem names its key and the path."""
    found = problems(variant([('key = "keys/parties/PI-VUGHT/key.pem"', 'key = "keys/parties/PI-VUGHT/nokey.pem"'),
                              ('crls = ["keys/ca/issuing.crl.pem"]', 'crls = ["keys/ca/issuing.crl.pem", "keys/ca/old.crl"]'),
                              ('certificate = "keys/parties/0599/cert.pem"', 'certificate = "keys/0599.pem"')]))
    assert len(found) == 3, found
    assert found[0].startswith("identity.key: file ") and found[0].endswith("nokey.pem does not exist")
    assert found[1].startswith("trust.crls.1: file ") and "old.crl" in found[1]
    assert found[2].startswith("routes.0599.certificate: file ")


def test_an_unknown_key_is_named_with_a_suggestion(variant):
    """A typo is an error that names the key, the likely intended one, and leaves the value out."""
    found = problems(variant([("[smtp]\n", '[smtp]\nhots = "mail.example.nl"\n')]))
    problem = only(found, "smtp.hots")
    assert "unknown key" in problem and "did you mean 'host'?" in problem and "mail.example.nl" not in problem


def test_an_unknown_table_is_an_unknown_key(variant):
    found = problems(variant(append="\n[smpt]\nhost = \"x\"\n"))
    assert "unknown key" in only(found, "smpt") and "did you mean 'smtp'?" in found[0]


@pytest.mark.parametrize(("table", "name", "way"), [("imap", "password", "password_file"),
                                                    ("identity", "passphrase", "passphrase_file"),
                                                    ("store", "password", "password_file"),
                                                    ("party", "secret", None)])
def test_a_secret_written_in_the_file_is_refused_without_repeating_it(variant, table, name, way):
    """password/passphrase/secret with a value: refused, saying how to give it; the value is never quoted."""
    path = variant([(f"[{table}]\n", f"[{table}]\n{name} = \"hunter2-geheim\"\n")] if table != "store" else
                   [("[store]\n", f"[store]\n{name} = \"hunter2-geheim\"\n")])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problem = only(caught.value.problems, f"{table}.{name}")
    assert "never written in the configuration file" in problem
    assert (way in problem) if way else "takes none" in problem
    assert "hunter2" not in str(caught.value)


def test_a_password_in_the_database_url_is_refused_and_not_shown(variant):
    found = problems(variant([('url = "sqlite+aiosqlite:///state/gateway.db"',
                               'url = "postgresql+asyncpg://gw:hunter2@db.example.nl/nazorg"')]))
    problem = only(found, "store.url")
    assert "password_file" in problem and "hunter2" not in problem


@pytest.mark.parametrize("value", ['"5 minutes"', '"5x"', '"-5m"', "-3", '"m5"', "true", "nan"])
def test_a_bad_duration_says_what_is_accepted(variant, value):
    found = problems(variant([('first_delay = "5m"', f"first_delay = {value}")]))
    assert "is not a duration" in only(found, "retry.first_delay") and "'5m'" in found[0]


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), (0.5, 0.5), ("30", 30), ("30s", 30), ("5m", 300),
                                                ("1h", 3600), ("5d", 432000), ("250ms", 0.25), ("1h30m", 5400),
                                                (" 4000s ", 4000)])
def test_durations(value, seconds):
    assert parse_duration(value) == timedelta(seconds=seconds)


def test_a_duration_out_of_range_says_the_range(variant):
    found = problems(variant([('first_delay = "5m"', 'first_delay = "2d"')]))
    assert only(found, "retry.first_delay").endswith("172800s is out of range (1s to 86400s)")


@pytest.mark.parametrize(("code", "says"), [
    ("9998", "municipality code 9998 is not in the municipality registry"),
    ('"PI-NERGENS"', "PI code PI-NERGENS is not in the PI table"),
    ("GM0599", "write the municipality code without GM: [routes.0599]"),
    ("ROTTERDAM", "is neither a 4-digit municipality code nor a PI code"),
    ('"PI-VUGHT"', "a route to the gateway's own party"),
])
def test_a_route_for_an_unknown_party_is_refused(variant, code, says):
    found = problems(variant(append=f'\n[routes.{code}]\ntransport = "email"\naddress = "a@b.example.nl"\n'
                                    'certificate = "keys/parties/0599/cert.pem"\n'))
    assert says in only(found, "routes." + code.strip('"'))


@pytest.mark.parametrize(("transport", "address", "key", "says"), [
    ("email", "https://platform.example.nl/as2", "address", "needs an e-mail address (name@domain), not a URL"),
    ("platform", "nazorg@gemeente-0599.example.nl", "address", "needs an https:// URL, not an e-mail address"),
    ("platform", "http://platform.example.nl/as2", "address", "must be an https:// URL"),
    ("platform", "https://user:pw@platform.example.nl/as2", "address", "holds credentials"),
    ("email", "Gemeente Rotterdam <nazorg@gemeente-0599.example.nl>", "address", "without a display name"),
    ("email", "a@gemeente-0599.example.nl, b@gemeente-0599.example.nl", "address", "a single e-mail address"),
    ("email", "nazorg@localhost", "address", "is not an e-mail address"),
    ("post", "nazorg@gemeente-0599.example.nl", "transport", "is not one of 'email', 'platform'"),
])
def test_transport_and_address_must_agree(variant, transport, address, key, says):
    as2_id = '\nas2_id = "GM0599"' if transport == "platform" else ""
    found = problems(variant([('transport = "email"\naddress = "nazorg@gemeente-0599.example.nl"',
                               f'transport = "{transport}"\naddress = "{address}"{as2_id}')]))
    # (a platform route also needs an [as2] table: that problem is reported too, under its own key)
    assert says in only([p for p in found if not p.startswith("as2: ")], f"routes.0599.{key}")


def test_as2_id_belongs_to_platform_routes(variant):
    found = problems(variant([('address = "nazorg@gemeente-0599.example.nl"',
                               'address = "nazorg@gemeente-0599.example.nl"\nas2_id = "GM0599"')]))
    assert "platform routes only" in only(found, "routes.0599.as2_id")


def test_a_route_certificate_must_be_an_rsa_pem_certificate(variant):
    """The sealer encrypts by RSA key transport only: an EC certificate (PI-ZWOLLE's) or a non-certificate is refused."""
    found = problems(variant([('certificate = "keys/parties/0599/cert.pem"', 'certificate = "keys/parties/PI-ZWOLLE/cert.pem"'),
                              ('certificate = "keys/parties/0344/cert.pem"', 'certificate = "README.txt"')]))
    assert len(found) == 2, found
    assert found[0].startswith("routes.0344.certificate:") and "holds no PEM certificate" in found[0]
    assert found[1].startswith("routes.0599.certificate:") and "an EC certificate" in found[1] and "RSA" in found[1]


def test_a_bad_profile_is_named_with_the_known_ones(variant):
    found = problems(variant([('profile = "compatible"\n\n[routes."0344"]', 'profile = "snel"\n\n[routes."0344"]'),
                              ('certificate = "keys/parties/0344/cert.pem"\nprofile = "compatible"',
                               'certificate = "keys/parties/0344/cert.pem"\nkey_transport = "rsa-oaep-md5"')]))
    assert found[0].startswith("routes.0344.key_transport:") and "rsa-oaep-sha256" in found[0]
    assert found[1].startswith("routes.0599.profile:") and "known: compatible, strong" in found[1]


@pytest.mark.parametrize(("edit", "key"), [('tls = "none"', "smtp.tls"), ("tls = false", "smtp.tls"),
                                           ('tls = "starttls"\nstarttls = false', "smtp.starttls")])
def test_tls_cannot_be_turned_off(variant, edit, key):
    found = problems(variant([('tls = "starttls"', edit)]))
    problem = only(found, key)
    assert "TLS cannot be turned off" in problem and 'tls = "implicit"' in problem


def test_smtp_port_and_tls_mode_must_agree(variant):
    found = problems(variant([("port = 587", "port = 465")]))
    assert 'set tls = "implicit"' in only(found, "smtp.port")


def test_imap_has_no_tls_switch(variant):
    found = problems(variant([("[imap]\n", "[imap]\nstarttls = true\n")]))
    assert "implicit TLS only" in only(found, "imap.starttls")


@pytest.mark.parametrize(("old", "new", "key", "says"), [
    ('spool = "spool"', 'spool = "outbox"', "folders.spool", "is the same folder as folders.outbox"),
    ('quarantine = "quarantine"', 'quarantine = "inbox/quarantine"', "folders.quarantine", "lies inside folders.inbox"),
    ('outbox = "outbox"', 'outbox = "spool/out"', "folders.outbox", "lies inside folders.spool"),
    ('inbox = "inbox"', 'inbox = "README.txt"', "folders.inbox", "exists but is not a folder"),
])
def test_folders_must_not_coincide_or_nest(variant, old, new, key, says):
    assert says in only(problems(variant([(old, new)])), key)


def test_rejected_may_lie_inside_the_outbox(variant, site):
    """outbox/rejected is the architecture's own layout: allowed."""
    config = load_config(variant([('rejected = "rejected"', 'rejected = "outbox/rejected"')]))
    assert config.folders.rejected == site / "outbox" / "rejected"


@pytest.mark.parametrize(("old", "new", "key", "says"), [
    ("workers = 4", "workers = 0", "limits.workers", "0 is out of range (1 to 256)"),
    ("workers = 4", 'workers = "4"', "limits.workers", "must be a whole number, not '4'"),
    ("jitter = 0.2", "jitter = 1.0", "retry.jitter", "out of range (0 to 1, exclusive)"),
    ('max_delay = "4000s"', 'max_delay = "1m"', "retry.max_delay", "shorter than retry.first_delay"),
    ("workers = 4", 'workers = 4\nlease = "30s"', "limits.lease", "not longer than smtp.timeout"),
    ('kind = "pi"', 'kind = "gemeente"', "party.code", "is not a 4-digit municipality code, as kind = 'gemeente' says"),
    ('kind = "pi"', 'kind = "PI"', "party.kind", "is not one of 'pi', 'gemeente'"),
    ('email = "nazorg@pi-vught.example.nl"', 'email = "nazorg at pi-vught"', "party.email", "bare e-mail address"),
    ('log_level = "info"', 'log_level = "verbose"', "log_level", "is not one of 'debug', 'info'"),
    ('host = "127.0.0.1"\nport = 587', 'host = "smtp://relay"\nport = 587', "smtp.host", "not a host name"),
    ('url = "sqlite+aiosqlite:///state/gateway.db"', 'url = "sqlite:///state/gateway.db"', "store.url",
     "driver 'pysqlite' is not asynchronous: write sqlite+aiosqlite://"),
    ('password_file = "secrets/imap-password"', 'password_file = "secrets/imap-password"\npassword_env = "X"',
     "imap.password", "not both"),
    ('password_file = "secrets/imap-password"', "", "imap.password_file", "missing: give password_file"),
    ('tls = "starttls"', 'tls = "starttls"\nca_file = "README.txt"', "smtp.ca_file", "holds no PEM certificate"),
    ("[registries]\n", "[registries]\nmunicipalities = 5\n", "registries.municipalities", "must be a non-empty string"),
    ("[registries]\n", '[registries]\nmunicipalities = "README.txt"\n', "registries.municipalities",
     "header lacks column(s) gemeentecode"),
    ("[imap]\n", '[imap]\nprocessed_folder = "inbox"\n', "imap.processed_folder",
     "is the same mailbox as imap.mailbox"),
])
def test_values_out_of_range_or_in_conflict(variant, old, new, key, says):
    assert says in only(problems(variant([(old, new)])), key)


def test_a_party_code_must_be_listed_and_in_force(variant):
    found = problems(variant([('code = "PI-VUGHT"', 'code = "PI-EXAMPLE"')]))
    assert "marked inactive" in only(found, "party.code")
    found = problems(variant([('code = "PI-VUGHT"\nkind = "pi"', 'code = "0003"\nkind = "gemeente"')]))
    assert "ended on 2021-01-01; its successor is 1979" in only(found, "party.code")


def test_email_routes_need_an_smtp_table(variant, site):
    text = re.sub(r"\[smtp\]\n(?:[^\[].*\n|\n)*?(?=\[imap\])", "", (site / "gateway.toml").read_text())
    found = problems(variant(text=text))
    assert "need an [smtp] table" in only(found, "smtp") and "0599" in found[0]


def test_the_lease_outlasts_an_as2_post(variant, site):
    """A delivery whose lease ends while its POST may still be waiting for an answer would be claimed and
    posted again by the next claim (the receiver drops the copy by its Message-ID, but the check is cheap)."""
    keys = "keys/parties/PI-VUGHT"
    as2 = f'\n[as2]\nas2_id = "PI-VUGHT"\ntls_cert = "{keys}/tls-chain.pem"\ntls_key = "{keys}/tls-key.pem"\n'
    assert (site / keys / "tls-chain.pem").is_file()
    found = problems(variant([("workers = 4", 'workers = 4\nlease = "2m"')], append=as2 + "timeout = 120\n"))
    assert "not longer than as2.timeout" in only(found, "limits.lease")
    assert load_config(variant([("workers = 4", 'workers = 4\nlease = "2m"')], append=as2 + "timeout = 119\n"))


def test_not_toml_at_all(variant):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(variant(append="\n[party\n"))


def test_every_problem_is_reported_at_once_each_under_its_key(variant):
    """One ConfigError lists all mistakes, in one message an operator can work through."""
    with pytest.raises(ConfigError) as caught:
        load_config(variant([('tls = "starttls"', 'tls = "none"'), ('first_delay = "5m"', 'first_delay = "soon"'),
                             ('spool = "spool"', 'spool = "outbox"'), ("workers = 4", "workerz = 4"),
                             ('address = "nazorg@gemeente-0344.example.nl"', 'address = "https://x.example.nl/as2"')],
                            append='\n[routes.9998]\ntransport = "email"\naddress = "a@b.example.nl"\n'
                                   'certificate = "keys/parties/0599/cert.pem"\n'))
    keys = [p.split(": ", 1)[0] for p in caught.value.problems]
    assert sorted(keys) == sorted(["smtp.tls", "retry.first_delay", "folders.spool", "limits.workerz",
                                   "routes.0344.address", "routes.9998"])
    text = str(caught.value)
    assert "6 problems:" in text and all(f"  - {p}" in text for p in caught.value.problems)


# -- secrets: read by check_secrets only ------------------------------------------------------------------


def test_a_secret_file_readable_by_others_is_refused(variant, site):
    """load_config reads no secret; check_secrets refuses a group-readable one, naming the key, not the secret."""
    exposed = site / "secrets" / "smtp-exposed"
    exposed.write_text("hunter2-geheim\n")
    os.chmod(exposed, 0o640)
    config = load_config(variant([('password_file = "secrets/smtp-password"', 'password_file = "secrets/smtp-exposed"')]))
    with pytest.raises(ConfigError) as caught:
        config.check_secrets()
    problem = only(caught.value.problems, "smtp.password_file")
    assert "readable by others (mode 0640)" in problem and "chmod 600" in problem and "hunter2" not in str(caught.value)


def test_check_secrets_lists_every_problem(variant, monkeypatch):
    """An unset variable, an own certificate for another address: both reported, by key."""
    monkeypatch.delenv("NAZORG_TEST_UNSET", raising=False)
    config = load_config(variant([('password_file = "secrets/imap-password"', 'password_env = "NAZORG_TEST_UNSET"'),
                                  ('email = "nazorg@pi-vught.example.nl"', 'email = "nazorg@elders.example.nl"')]))
    with pytest.raises(ConfigError) as caught:
        config.check_secrets()
    found = caught.value.problems
    assert len(found) == 2, found
    assert found[0].startswith("identity.cert: the certificate is not for party.email nazorg@elders.example.nl")
    assert found[1] == "imap.password_env: environment variable NAZORG_TEST_UNSET is not set"


def test_a_private_key_readable_by_others_is_refused_at_check_secrets(variant, site):
    exposed = site / "exposed-key.pem"
    exposed.write_bytes((site / "keys" / "parties" / "PI-VUGHT" / "key.pem").read_bytes())
    os.chmod(exposed, 0o644)
    config = load_config(variant([('key = "keys/parties/PI-VUGHT/key.pem"', 'key = "exposed-key.pem"')]))
    with pytest.raises(ConfigError, match=r"identity: private key .* is readable by others"):
        config.check_secrets()


def test_secret_read_strips_one_newline_and_names_its_key(tmp_path, monkeypatch):
    f = tmp_path / "s"
    f.write_bytes(b"geheim\n\n")
    os.chmod(f, 0o600)
    assert Secret(file=f, key="smtp.password").read() == "geheim\n"
    f.write_bytes(b"geheim\r\n")
    assert Secret(file=f).read() == "geheim"
    f.write_bytes(b"\n")
    with pytest.raises(ConfigError, match=r"^smtp.password_file: .* is empty$"):
        Secret(file=f, key="smtp.password").read()
    with pytest.raises(ConfigError, match=r"^smtp.password_file: cannot read .*nothing"):
        Secret(file=tmp_path / "nothing", key="smtp.password").read()
    monkeypatch.setenv("NAZORG_TEST_SECRET", "uit-de-omgeving")
    assert Secret(env="NAZORG_TEST_SECRET").read() == "uit-de-omgeving"
    monkeypatch.setenv("NAZORG_TEST_SECRET", "")
    with pytest.raises(ConfigError, match="^imap.password_env: environment variable NAZORG_TEST_SECRET is empty$"):
        Secret(env="NAZORG_TEST_SECRET", key="imap.password").read()


# -- the retry policy -------------------------------------------------------------------------------


def test_retry_delays_double_up_to_the_cap():
    policy = RetryPolicy(jitter=0)
    assert [policy.delay(n).total_seconds() for n in range(1, 8)] == [300, 600, 1200, 2400, 4000, 4000, 4000]
    assert policy.delay(100_000) == timedelta(seconds=4000)  # no overflow however long it goes on
    with pytest.raises(ValueError):
        policy.delay(0)


def test_retry_jitter_spreads_within_bounds_and_never_past_the_cap():
    policy = RetryPolicy()
    rng = random.Random(7)
    first = [policy.delay(1, rng).total_seconds() for _ in range(500)]
    assert all(240 <= d <= 360 for d in first) and max(first) - min(first) > 60
    late = [policy.delay(9, rng).total_seconds() for _ in range(500)]
    assert all(3200 <= d <= 4000 for d in late) and min(late) < 3400
    assert RetryPolicy().delay(1, random.Random(1)) == RetryPolicy().delay(1, random.Random(1))
