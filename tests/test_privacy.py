"""The subject key and the subject hash: the store's name for a person, useless without the key."""

from __future__ import annotations

import os

import pytest

from gateway.config import ConfigError, load_config
from gateway.privacy import SubjectKeyError, new_subject_key, normalise_bsn, parse_subject_key, subject_hash
from gateway.setup_local import init_local


def test_the_hash_depends_on_the_key_and_on_nothing_but_the_bsn():
    one, two = parse_subject_key(new_subject_key()), parse_subject_key(new_subject_key())
    assert one != two and len(one) == 32
    assert subject_hash(one, "999998226") == subject_hash(one, " 999998226\n")
    assert subject_hash(one, "999998226") != subject_hash(two, "999998226")
    assert subject_hash(one, "999998226") != subject_hash(one, "999998238")
    assert subject_hash(one, "12345672") == subject_hash(one, "012345672")  # leading zero written or not
    assert "999998226" not in subject_hash(one, "999998226") and len(subject_hash(one, "999998226")) == 64


@pytest.mark.parametrize("bad", ["", "12345", "9999982260", "99999822a", "999 998 226"])
def test_what_is_not_a_bsn_is_refused(bad):
    with pytest.raises(ValueError, match="9 digits"):
        normalise_bsn(bad)


@pytest.mark.parametrize("text", ["", "00" * 31, "zz" * 32, "00" * 33])
def test_a_key_that_is_not_32_hex_bytes_is_refused(text):
    with pytest.raises(SubjectKeyError, match="64 hex digits"):
        parse_subject_key(text)


def test_a_broken_or_exposed_key_file_is_named_at_start(tmp_path):
    config_path = init_local(tmp_path / "site")
    key_file = tmp_path / "site" / "secrets" / "subject-key"
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config_path).check_secrets()
    assert caught.value.problems == ["privacy.subject_key: must hold 64 hex digits (32 random bytes)"]
    key_file.write_text(new_subject_key() + "\n")
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError, match=r"privacy.subject_key_file: .* is readable by others"):
        load_config(config_path).check_secrets()
