"""Fixtures for the end-to-end tests: private Postfix + Dovecot (see tests/mailservers.py).

Every development party (gateway.crypto.pki.DEV_PARTIES) has a mailbox; its password is in
`mailservers.dev_mail_users()`. Override `mail_users` (module scope) in a test module for other users.

- `mail_servers`: a fresh pair per test (~0.2 s to start, ~0.15 s to stop): use it when a test
  refuses recipients, stops the relay or counts mails.
- `shared_mail_servers`: one pair per module, for tests that only read their own mailboxes.
- `plain_smtp_peer`: an SMTP server that offers no STARTTLS and records what it is sent.
"""

from __future__ import annotations

import pytest

from mailservers import MailServers, PlainSmtpPeer, dev_mail_users, domains_of


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


@pytest.fixture(scope="module")
def shared_mail_servers(mail_users, mail_domains):
    with MailServers.temporary(mail_users, mail_domains) as servers:
        yield servers


@pytest.fixture
def plain_smtp_peer():
    with PlainSmtpPeer() as peer:
        yield peer
