"""`init` and `run` on the command line: a set-up that loads, and configuration errors that name the key."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.config import load_config


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout)


def test_init_writes_a_set_up_that_loads_and_refuses_to_overwrite(tmp_path):
    done = cli("init", str(tmp_path / "gw"), "--smtp", "relay.example.nl:587", "--imap", "imap.example.nl:993")
    assert done.returncode == 0, done.stderr
    assert "nazorg-gateway run -c" in done.stdout
    cfg = load_config(tmp_path / "gw" / "gateway.toml")
    assert (cfg.smtp.host, cfg.smtp.port, cfg.imap.host) == ("relay.example.nl", 587, "imap.example.nl")
    cfg.check_secrets()
    again = cli("init", str(tmp_path / "gw"))
    assert again.returncode == 2 and "error:" in again.stderr


def test_run_names_the_wrong_key_and_exits_2(tmp_path):
    assert cli("init", str(tmp_path / "gw")).returncode == 0
    config = tmp_path / "gw" / "gateway.toml"
    config.write_text(config.read_text().replace('[limits]\nworkers = 4', '[limits]\nworkers = 0\nwrokers = 2'))
    done = cli("run", "-c", str(config))
    assert done.returncode == 2
    assert "limits.workers" in done.stderr and "limits.wrokers" in done.stderr


def test_run_refuses_a_private_key_others_can_read(tmp_path):
    assert cli("init", str(tmp_path / "gw")).returncode == 0
    os.chmod(tmp_path / "gw" / "keys" / "parties" / "PI-VUGHT" / "key.pem", 0o644)
    done = cli("run", "-c", str(tmp_path / "gw" / "gateway.toml"))
    assert done.returncode == 2 and "readable by others" in done.stderr


def test_seal_and_open_take_identity_trust_and_routes_from_the_configuration(tmp_path):
    from paths import DOSSIER

    gw = tmp_path / "gw"
    assert cli("init", str(gw)).returncode == 0
    config = str(gw / "gateway.toml")
    sealed = subprocess.run([sys.executable, "-m", "gateway", "seal", "-c", config, "--to", "0599",
                             str(DOSSIER / "01-meldingsbericht.xml")], capture_output=True, timeout=60)
    assert sealed.returncode == 0, sealed.stderr
    assert b"sealed: compatible" in sealed.stderr  # the route's profile
    (tmp_path / "m.p7m").write_bytes(sealed.stdout)
    keys = gw / "keys" / "parties" / "0599"
    as_0599 = cli("open", "--key", str(keys / "key.pem"), "--cert", str(keys / "chain.pem"),
                  "--trust", str(gw / "keys" / "trust.pem"), "--crl", str(gw / "keys" / "ca" / "issuing.crl.pem"),
                  "--from-email", "nazorg@pi-vught.example.nl", "-o", str(tmp_path / "out.xml"), str(tmp_path / "m.p7m"))
    assert as_0599.returncode == 0, as_0599.stderr
    assert (tmp_path / "out.xml").read_bytes() == (DOSSIER / "01-meldingsbericht.xml").read_bytes()
    own_copy = cli("open", "-c", config, "-o", str(tmp_path / "own.xml"), str(tmp_path / "m.p7m"))
    assert own_copy.returncode == 0 and (tmp_path / "own.xml").read_bytes() == (tmp_path / "out.xml").read_bytes()
    neither = cli("open", str(tmp_path / "m.p7m"))
    assert neither.returncode == 2 and "-c CONFIG" in neither.stderr


def test_run_refuses_a_lost_or_broken_store_and_starts_nothing(tmp_path):
    """A store file gone while the spool holds messages, or a store file that is not a database: a clear
    refusal (exit 2) naming the file and what to do, never a silent empty queue."""
    config = tmp_path / "gw" / "gateway.toml"
    assert cli("init", str(config.parent)).returncode == 0
    (config.parent / "spool" / "0b1c.xml").write_bytes(b"<a/>")  # what the lost store owned
    lost = cli("run", "-c", str(config))
    assert lost.returncode == 2, lost.stderr
    assert "store file" in lost.stderr and "is missing" in lost.stderr and "1 file(s)" in lost.stderr
    assert not (config.parent / "state" / "gateway.db").exists(), "nothing was created in its place"

    (config.parent / "state" / "gateway.db").write_bytes(b"this was a database once" * 200)
    broken = cli("run", "-c", str(config))
    assert broken.returncode == 2, broken.stderr
    assert "store cannot be opened: file is not a database" in broken.stderr and "Traceback" not in broken.stderr
