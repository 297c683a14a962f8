"""The security suite's shared parts: the `--soak` switch for the fuzzers, one development PKI per session.

`pytest tests/security --soak` runs every fuzzer with 10,000+ examples (by hand, minutes to an hour);
without it each fuzzer runs a few hundred examples in the normal suite. The option is only known when
this folder is named on the command line (pytest reads a sub-folder's conftest late): `fuzz_examples`
therefore falls back to the bounded count when the option is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

import security_support


def pytest_addoption(parser):
    try:
        parser.addoption("--soak", action="store_true", default=False,
                         help="long runs of the security fuzzers (10,000+ examples each)")
    except ValueError:  # another suite's conftest added the same switch: one switch for both
        pass


def pytest_configure(config):
    try:
        security_support.SOAK = bool(config.getoption("--soak"))
    except ValueError:
        security_support.SOAK = False


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A development PKI (`init_dev_pki`), made once for the suite."""
    from gateway.crypto.pki import init_dev_pki

    folder = tmp_path_factory.mktemp("security-pki")
    init_dev_pki(folder)
    return folder
