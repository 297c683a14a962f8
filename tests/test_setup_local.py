"""`init`: a local set-up that the configuration loader and check_secrets accept as it is, for a PI and for a
municipality, with routes the sealer can encrypt to; it never writes into a folder that holds anything."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone

import pytest
from cryptography import x509

from gateway.config import load_config
from gateway.crypto.pki import DEV_PARTIES
from gateway.crypto.profiles import COMPATIBLE, STRONG
from gateway.setup_local import SetupError, init_local
from paths import ROOT


@pytest.fixture(scope="module")
def pi_site(tmp_path_factory):
    return init_local(tmp_path_factory.mktemp("init") / "vught", smtp=("relay.example.test", 2587),
                      imap=("imap.example.test", 1993))


def test_a_pi_set_up_loads_and_passes_check_secrets(pi_site):
    """The written gateway.toml loads, its identity, trust store and both secrets load, and the routes go to
    every other party of the dev PKI the sealer can encrypt to, with the profile of its kind."""
    config = load_config(pi_site)
    loaded = config.check_secrets()
    assert str(config.party.party) == "pi:PI-VUGHT" and config.party.email == "nazorg@pi-vught.example.nl"
    expected = {p.code for p in DEV_PARTIES} - {"PI-VUGHT", "PLATFORM", "PI-ZWOLLE"}  # PI-ZWOLLE's key is EC
    assert set(config.routes) == expected
    for code, route in config.routes.items():
        assert route.transport == "email" and route.certificate == pi_site.parent / "keys" / "parties" / code / "cert.pem"
        assert route.profile == (STRONG if code.startswith("PI-") else COMPATIBLE)
        assert route.address == next(p.email for p in DEV_PARTIES if p.code == code)
    assert (config.smtp.host, config.smtp.port, config.smtp.tls, config.smtp.ca_file) == ("relay.example.test", 2587,
                                                                                           "starttls", None)
    assert (config.imap.host, config.imap.port, config.imap.ca_file) == ("imap.example.test", 1993, None)
    assert loaded.smtp_password != loaded.imap_password and len(loaded.smtp_password) >= 32
    assert len(loaded.subject_key) == 32 and loaded.subject_key.hex() not in repr(loaded)
    assert "PI-ZWOLLE" in pi_site.read_text() and "EC" in pi_site.read_text()  # says why it has no route


def test_every_route_certificate_is_one_the_trust_store_lets_us_encrypt_to(pi_site):
    """The routes are usable: each recipient certificate passes the trust store's encryption checks today."""
    config = load_config(pi_site)
    trust = config.check_secrets().trust
    for route in config.routes.values():
        cert = x509.load_pem_x509_certificate(route.certificate.read_bytes())
        assert trust.check(cert, [], datetime.now(timezone.utc), usage="encrypt")


def test_folders_secrets_and_readme(pi_site):
    """The working folders exist; secrets are 0600 in a 0700 folder; the README says how to start."""
    site = pi_site.parent
    config = load_config(pi_site)
    f = config.folders
    assert all(p.is_dir() for p in (f.outbox, f.rejected, f.inbox, f.spool, f.quarantine))
    assert config.store.sqlite_path.parent.is_dir()
    assert stat.S_IMODE(os.stat(site / "secrets").st_mode) == 0o700
    for name in ("smtp-password", "imap-password", "subject-key"):
        assert stat.S_IMODE(os.stat(site / "secrets" / name).st_mode) == 0o600
    readme = (site / "README.txt").read_text()
    assert "nazorg-gateway run -c gateway.toml" in readme and "secrets/smtp-password" in readme
    assert (site / "config" / "institutions.toml").read_bytes() == (ROOT / "config" / "institutions.toml").read_bytes()


def test_a_municipality_set_up_with_a_relay_ca_moves_as_a_whole(tmp_path, pi_site):
    """party='0599' works: its routes reach the PIs (strong) and the other municipalities; a relay CA is the
    ca_file of both SMTP and IMAP; implicit TLS on 465; the folder still loads after it is moved."""
    relay_ca = tmp_path / "relay-ca.pem"
    relay_ca.write_bytes((pi_site.parent / "keys" / "ca" / "root.pem").read_bytes())  # any CA certificate will do
    config = load_config(init_local(tmp_path / "rotterdam", party="0599", relay_ca=relay_ca, smtp=("relay.example.test", 465)))
    config.check_secrets()
    assert str(config.party.party) == "gemeente:0599" and config.party.name == "Gemeente Rotterdam"
    assert config.routes["PI-VUGHT"].profile == STRONG and config.routes["PI-HAAGLANDEN"].profile == STRONG
    assert config.routes["0772"].profile == COMPATIBLE and "0599" not in config.routes
    assert config.smtp.ca_file == config.imap.ca_file == relay_ca
    assert (config.smtp.port, config.smtp.tls) == (465, "implicit")

    (tmp_path / "rotterdam").rename(tmp_path / "elders")
    moved = load_config(tmp_path / "elders" / "gateway.toml")
    moved.check_secrets()
    assert moved.identity.key == tmp_path / "elders" / "keys" / "parties" / "0599" / "key.pem"


def test_a_folder_that_holds_anything_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SetupError, match="not an empty folder"):
        init_local(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_unknown_party_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(SetupError, match=r"'PI-NERGENS' is not a party of the development PKI; choose one of PI-VUGHT"):
        init_local(tmp_path / "x", party="PI-NERGENS")
    with pytest.raises(SetupError, match="not a party"):
        init_local(tmp_path / "x", party="PLATFORM")
    assert not (tmp_path / "x").exists()
