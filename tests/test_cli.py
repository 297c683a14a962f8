"""The `validate` command as an operator and a script use it: verdict lines, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paths import DOSSIER, EXAMPLES, ROOT


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "gateway", "validate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=env)


def test_valid_file_prints_ok_type_and_id():
    """One valid file: exit 0 and `OK <type> <message id>`."""
    r = run(str(DOSSIER / "01-meldingsbericht.xml"))
    assert r.returncode == 0, r.stdout + r.stderr
    words = r.stdout.split()
    assert words[:2] == ["OK", "meldingsbericht"]
    assert len(words[2]) == 36 and words[2].count("-") == 4


def test_folder_is_validated_recursively():
    """A folder means every *.xml below it; all valid examples give exit 0 and a summary."""
    r = run(str(EXAMPLES / "valid"))
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(list((EXAMPLES / "valid").rglob("*.xml")))
    assert r.stdout.count("OK ") == n
    assert f"{n} valid, 0 invalid" in r.stdout


def test_invalid_file_lists_problems_and_exits_1():
    """An invalid file: exit 1, INVALID with the path, then each problem with line, path, rule."""
    bad = EXAMPLES / "invalid" / "bsn-faalt-elfproef.xml"
    r = run(str(bad))
    assert r.returncode == 1
    assert r.stdout.startswith("INVALID")
    assert "persoon/burgerservicenummer" in r.stdout and "[bsn-check]" in r.stdout and "line " in r.stdout


def test_mixed_input_exits_1_and_json_reports_each_file():
    """--json gives one document with a verdict per file, valid and invalid alike."""
    good, bad = DOSSIER / "02-gemeenteblad.xml", EXAMPLES / "invalid" / "leeg.xml"
    r = run("--json", str(good), str(bad))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert (doc["valid"], doc["invalid"]) == (1, 1)
    first, second = doc["files"]
    assert first["valid"] and first["type"] == "gemeenteblad" and first["recipient"].startswith("pi:PI-")
    assert not second["valid"] and second["problems"][0]["code"] == "empty"
    assert set(second["problems"][0]) == {"code", "message", "line", "path", "value"}


@pytest.mark.parametrize("args", [[], ["/nonexistent/path.xml"], ["--no-such-option", "x.xml"]],
                         ids=["no arguments", "missing path", "unknown option"])
def test_usage_errors_exit_2(args):
    """Usage mistakes are not verdicts: exit 2 and a message on stderr."""
    r = run(*args)
    assert r.returncode == 2
    assert r.stderr.strip()


def test_empty_folder_is_a_usage_error(tmp_path):
    """A folder without messages is almost certainly the wrong folder: exit 2."""
    r = run(str(tmp_path))
    assert r.returncode == 2
    assert "no *.xml" in r.stderr


def test_hostile_file_gets_a_verdict_not_a_crash(tmp_path):
    """A billion-laughs file is refused by name, quickly, with exit 1 and no traceback."""
    bomb = tmp_path / "lol.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                    + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(9))
                    + ']><l>&j;</l>')
    r = run("--json", str(bomb))
    assert r.returncode == 1
    assert json.loads(r.stdout)["files"][0]["problems"][0]["code"] == "doctype"
    assert "Traceback" not in r.stderr


def test_python_m_and_console_script_agree():
    """`nazorg-gateway validate` is the same command as `python -m gateway validate`."""
    script = os.path.join(os.path.dirname(sys.executable), "nazorg-gateway")
    r = subprocess.run([script, "validate", "--json", str(DOSSIER)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["valid"] == 5
