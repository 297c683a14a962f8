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
