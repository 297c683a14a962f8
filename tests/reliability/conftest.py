"""Fixtures of the reliability suite: the private mail servers (as in tests/e2e), a size-limited file
system mounted by the test (root), and `--soak` for the long runs made by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # e2e_gateway: shared by both suites

from mailservers import MailServers, dev_mail_users, domains_of  # noqa: E402


def pytest_addoption(parser):
    try:
        parser.addoption("--soak", action="store_true", default=False,
                         help="long runs, by hand: the reliability suite's load with 50,000 messages")
    except ValueError:  # the security suite's conftest added the same switch: one switch for both
        pass


@pytest.fixture(scope="session")
def soak(pytestconfig) -> bool:
    """`pytest tests/reliability --soak` (the option is known only when a suite that adds it is named)."""
    return bool(pytestconfig.getoption("--soak", default=False))


@pytest.fixture(scope="module")
def mail_users() -> dict[str, str]:
    return dev_mail_users()


@pytest.fixture(scope="module")
def mail_domains(mail_users) -> list[str]:
    return domains_of(mail_users)


@pytest.fixture
def mail_servers(mail_users, mail_domains):
    with MailServers.temporary(mail_users, mail_domains) as servers:
        yield servers


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory) -> Path:
    """One development PKI (keys/ of a local set-up) for the whole session: `make_setup(..., pki=dev_pki)`
    copies it instead of making new keys for every set-up (~2 s each on this machine)."""
    from gateway.setup_local import init_local

    folder = tmp_path_factory.mktemp("pki") / "gw"
    init_local(folder)
    return folder / "keys"


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few MiB at tmp_path/disk (mounted as root, unmounted at the end); returns a function
    mounting it with the size asked for."""
    mounted: list[Path] = []

    def mount(size_kib: int, name: str = "disk") -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(point)],
                       check=True, capture_output=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=True, capture_output=True)


@pytest.fixture
async def relay_gate(mail_servers):
    """A loopback stand-in in front of the private Postfix that the test can make answer 421 or cut
    (tcp_forward.RelayGate); point the gateway's smtp port at ``relay_gate.port``."""
    from tcp_forward import RelayGate

    gate = RelayGate(mail_servers.smtp_port)
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()
