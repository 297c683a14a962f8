"""The SMTP sender against real aiosmtpd peers on loopback with real TLS (see smtp_peer.py).

Each test looks at what the peer recorded on the wire, not only at what the sender returned."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest
import structlog
from smtp_peer import Peer, TlsMaterial

import aiosmtplib
from adapters.smtp import (Accepted, PermanentFailure, RelaySettings, SecurityFailure, SmtpSender,
                           TemporaryFailure)
from adapters.smtp.sender import xtext

FROM = "gateway@pi-vught.test"
TO = "nazorg+post@gemeente-tilburg.test"
DATA = b"Subject: nazorg test\r\nMessage-ID: <m1@pi.test>\r\n\r\nbody line\r\n.leading dot\r\n"


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> TlsMaterial:
    return TlsMaterial(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
async def start_peer(tls):
    peers: list[Peer] = []

    async def start(**knobs) -> Peer:
        peer = await Peer(tls=tls, **knobs).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await peer.stop()


@pytest.fixture
async def make_sender(tls):
    senders: list[SmtpSender] = []

    def make(peer_or_port, **settings) -> SmtpSender:
        port = peer_or_port if isinstance(peer_or_port, int) else peer_or_port.port
        settings.setdefault("ssl_context", tls.client_context())
        settings.setdefault("helo", "gateway.pi-vught.test")
        settings.setdefault("timeout", 5.0)
        sender = SmtpSender(RelaySettings(host="127.0.0.1", port=port, **settings))
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


async def send(sender: SmtpSender, *, recipient: str = TO, envid: str = "msg-0001", data: bytes = DATA):
    return await sender.send(envelope_from=FROM, recipient=recipient, data=data, envid=envid)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- acceptance and what travels ------------------------------------------------------------------

async def test_accepted_over_starttls_with_the_data_unchanged(start_peer, make_sender):
    peer = await start_peer()
    accepted = await send(make_sender(peer))
    assert accepted == Accepted(reply="250 2.0.0 Ok: queued as Q1", dsn_requested=True)
    [mail] = peer.received
    assert (mail.mail_from, mail.rcpt_tos, mail.content) == (FROM, [TO], DATA)
    # STARTTLS came right after the first EHLO; everything after it went over TLS
    assert peer.verbs()[:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert all(c.tls for c in peer.commands[2:]) and not any(c.tls for c in peer.commands[:2])


async def test_dsn_parameters_arrive_exactly(start_peer, make_sender):
    peer = await start_peer(dsn=True)
    await send(make_sender(peer), envid="abc-123 =x+", recipient="post+nazorg@gemeente.test")
    [mail] = [c.arg for c in peer.commands if c.verb == "MAIL"]
    [rcpt] = [c.arg for c in peer.commands if c.verb == "RCPT"]
    assert mail == f"FROM:<{FROM}> RET=HDRS ENVID=abc-123+20+3Dx+2B"
    assert rcpt == ("TO:<post+nazorg@gemeente.test> NOTIFY=SUCCESS,FAILURE,DELAY "
                    "ORCPT=rfc822;post+2Bnazorg@gemeente.test")


async def test_without_dsn_the_parameters_are_left_out_and_a_warning_is_logged_once(start_peer, make_sender):
    peer = await start_peer(dsn=False)  # would refuse RET/ENVID/NOTIFY/ORCPT with 555
    sender = make_sender(peer)
    with structlog.testing.capture_logs() as logs:
        results = [await send(sender, envid=f"m-{i}") for i in range(3)]
    assert {r.dsn_requested for r in results} == {False}
    assert [c.arg for c in peer.commands if c.verb == "MAIL"] == [f"FROM:<{FROM}>"] * 3
    assert [c.arg for c in peer.commands if c.verb == "RCPT"] == [f"TO:<{TO}>"] * 3
    assert [e["event"] for e in logs].count("smtp.no_dsn") == 1
    assert len(peer.received) == 3


def test_xtext():
    assert xtext("plain-id_1.x") == "plain-id_1.x"
    assert xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+E9"


# -- STARTTLS is required, trust is the context's --------------------------------------------------

async def test_a_default_aiosmtplib_client_would_send_in_plaintext(start_peer):
    """The control for the next test: the plain peer does record a plaintext MAIL when one comes."""
    peer = await start_peer(mode="none")
    await aiosmtplib.send(DATA, sender=FROM, recipients=[TO], hostname="127.0.0.1", port=peer.port,
                          local_hostname="x.test", timeout=5)
    assert "MAIL" in peer.verbs() and peer.received


async def test_no_starttls_offered_is_a_security_failure_and_nothing_is_sent(start_peer, make_sender):
    peer = await start_peer(mode="none")
    with pytest.raises(SecurityFailure) as caught:
        await send(make_sender(peer))
    assert caught.value.reason == "relay offers no STARTTLS: nothing sent"
    assert peer.verbs() == ["EHLO"]
    assert not peer.received


@pytest.mark.parametrize("certificate, what", [("untrusted", "certificate verify failed"),
                                               ("wrong_name", "mismatch")])
async def test_a_certificate_the_context_does_not_accept_gets_nothing(start_peer, make_sender, certificate, what):
    peer = await start_peer(certificate=certificate)
    with pytest.raises(SecurityFailure) as caught:
        await send(make_sender(peer))
    assert what in caught.value.reason.lower() and "nothing sent" in caught.value.reason
    assert peer.verbs() == ["EHLO", "STARTTLS"]
    assert not peer.received


async def test_starttls_refused_is_security_and_deferred_is_temporary_and_neither_sends(start_peer, make_sender):
    peer = await start_peer(starttls_reply="554 5.7.0 TLS not available to you")
    with pytest.raises(SecurityFailure, match="refused STARTTLS: 554") as caught:
        await send(make_sender(peer))
    assert caught.value.code == 554
    peer = await start_peer(starttls_reply="454 4.7.0 TLS not available due to temporary reason")
    with pytest.raises(TemporaryFailure, match="deferred STARTTLS: 454"):
        await send(make_sender(peer))
    assert "MAIL" not in peer.verbs() and not peer.received


async def test_implicit_tls(start_peer, make_sender):
    peer = await start_peer(mode="implicit")
    assert (await send(make_sender(peer, tls="implicit"))).reply.startswith("250 ")
    assert "STARTTLS" not in peer.verbs() and all(c.tls for c in peer.commands)
    assert len(peer.received) == 1


async def test_implicit_tls_with_an_untrusted_certificate_is_security_not_temporary(start_peer, make_sender):
    """aiosmtplib wraps the handshake error in SMTPConnectError (ssl.SSLError is an OSError)."""
    peer = await start_peer(mode="implicit", certificate="untrusted")
    with pytest.raises(SecurityFailure, match="certificate verify failed"):
        await send(make_sender(peer, tls="implicit"))
    assert peer.commands == []


def test_settings_refuse_a_context_that_does_not_verify(tls):
    lax = tls.client_context()
    lax.check_hostname = False
    with pytest.raises(ValueError, match="verify"):
        RelaySettings(host="h", port=25, ssl_context=lax)
    with pytest.raises(ValueError):
        RelaySettings(host="h", port=25, ssl_context=tls.client_context(), username="u")
    assert "secret" not in repr(RelaySettings(host="h", port=25, ssl_context=tls.client_context(),
                                              username="u", password="secret"))


# -- AUTH -----------------------------------------------------------------------------------------

async def test_auth_inside_tls(start_peer, make_sender):
    peer = await start_peer(credentials=("gw", "s3cret"))
    await send(make_sender(peer, username="gw", password="s3cret"))
    [auth] = [c for c in peer.commands if c.verb == "AUTH"]
    assert auth.tls and peer.verbs().index("AUTH") > peer.verbs().index("STARTTLS")
    assert len(peer.received) == 1


async def test_auth_refused_is_a_security_failure(start_peer, make_sender):
    peer = await start_peer(credentials=("gw", "s3cret"))
    with pytest.raises(SecurityFailure) as caught:
        await send(make_sender(peer, username="gw", password="wrong"))
    assert caught.value.code == 535 and "refused the credentials" in caught.value.reason
    assert "wrong" not in caught.value.reason
    assert "MAIL" not in peer.verbs()


async def test_auth_deferred_is_temporary(start_peer, make_sender):
    peer = await start_peer(credentials=("gw", "s3cret"), auth_reply="454 4.7.0 Temporary authentication failure")
    with pytest.raises(TemporaryFailure, match="deferred AUTH: 454"):
        await send(make_sender(peer, username="gw", password="wrong"))
    assert "MAIL" not in peer.verbs()


async def test_auth_not_offered_with_credentials_configured_is_a_security_failure(start_peer, make_sender):
    peer = await start_peer(credentials=("gw", "s3cret"), auth_offered=False)
    with pytest.raises(SecurityFailure, match="no AUTH"):
        await send(make_sender(peer, username="gw", password="s3cret"))
    assert "MAIL" not in peer.verbs() and "AUTH" not in peer.verbs()


# -- refusals -------------------------------------------------------------------------------------

async def test_550_at_rcpt_is_permanent_with_the_reply(start_peer, make_sender):
    reply = f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown"
    peer = await start_peer(rcpt_replies={TO: reply})
    with pytest.raises(PermanentFailure) as caught:
        await send(make_sender(peer))
    assert caught.value.code == 550
    assert caught.value.remote_reply == reply
    assert caught.value.reason == f"relay refused the recipient: {reply}"
    assert "DATA" not in peer.verbs()


async def test_451_at_rcpt_is_temporary_and_the_connection_serves_the_next_mail(start_peer, make_sender):
    peer = await start_peer(rcpt_replies={TO: "451 4.3.0 try again later"})
    sender = make_sender(peer)
    with pytest.raises(TemporaryFailure) as caught:
        await send(sender)
    assert caught.value.code == 451 and "4.3.0" in caught.value.remote_reply
    assert (await send(sender, recipient="other@gemeente.test")).reply.startswith("250")
    assert peer.connections == 1 and "RSET" in peer.verbs()


async def test_552_at_data_is_permanent(start_peer, make_sender):
    peer = await start_peer(data_reply="552 5.3.4 Message size exceeds fixed limit")
    with pytest.raises(PermanentFailure) as caught:
        await send(make_sender(peer))
    assert caught.value.code == 552 and caught.value.reason.startswith("relay refused the message: 552")


async def test_5xx_at_mail_is_permanent(start_peer, make_sender):
    peer = await start_peer(mail_reply="553 5.7.1 Sender address rejected: not owned by user")
    with pytest.raises(PermanentFailure, match="refused the sender: 553"):
        await send(make_sender(peer))


async def test_421_is_temporary(start_peer, make_sender):
    peer = await start_peer(rcpt_replies={TO: "421 4.3.2 relay.test Service shutting down"})
    sender = make_sender(peer)
    with pytest.raises(TemporaryFailure) as caught:
        await send(sender)
    assert caught.value.code == 421
    # the closed session is not reused: the next send opens a new one
    peer.rcpt_replies.clear()
    await send(sender)
    assert peer.connections == 2


async def test_disconnect_at_data_is_temporary(start_peer, make_sender):
    peer = await start_peer(close_at_data=True)
    with pytest.raises(TemporaryFailure, match="closed the connection at DATA"):
        await send(make_sender(peer))


async def test_connection_refused_is_temporary(make_sender):
    with pytest.raises(TemporaryFailure, match="could not reach relay"):
        await send(make_sender(free_port()))


async def test_a_relay_that_never_greets_times_out_as_temporary(make_sender):
    silent = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    try:
        started = time.monotonic()
        with pytest.raises(TemporaryFailure, match="timed out"):
            await send(make_sender(silent.sockets[0].getsockname()[1], timeout=0.3))
        assert time.monotonic() - started < 2
    finally:
        silent.close()
        await silent.wait_closed()


# -- one connection, many mails -------------------------------------------------------------------

async def test_one_connection_serves_ten_sends(start_peer, make_sender):
    peer = await start_peer()
    sender = make_sender(peer)
    for i in range(10):
        await send(sender, envid=f"m-{i}")
    assert peer.connections == 1
    assert peer.verbs("MAIL", "RSET").count("RSET") == 9
    assert [m.connection for m in peer.received] == [1] * 10


async def test_max_messages_per_connection(start_peer, make_sender):
    peer = await start_peer()
    sender = make_sender(peer, max_messages_per_connection=3)
    for i in range(7):
        await send(sender, envid=f"m-{i}")
    assert peer.connections == 3
    assert [m.connection for m in peer.received] == [1, 1, 1, 2, 2, 2, 3]
    assert peer.verbs().count("QUIT") == 2


async def test_concurrent_sends_are_serialised_on_one_connection(start_peer, make_sender):
    peer = await start_peer()
    sender = make_sender(peer)
    results = await asyncio.gather(*(send(sender, envid=f"m-{i}") for i in range(20)))
    assert len(results) == 20 and peer.connections == 1
    # never two transactions interleaved on the wire
    flow = [v for v in peer.verbs("MAIL", "RCPT", "DATA")]
    assert flow == ["MAIL", "RCPT", "DATA"] * 20


async def test_a_connection_dropped_while_idle_is_reopened(start_peer, make_sender):
    peer = await start_peer()
    sender = make_sender(peer)
    await send(sender)
    peer.drop_connections()
    await asyncio.sleep(0.05)
    assert (await send(sender, envid="m-2")).reply.startswith("250")
    assert peer.connections == 2 and len(peer.received) == 2


async def test_a_connection_found_dead_at_rset_is_reopened_once_transparently(start_peer, make_sender):
    """The relay closed on idle timeout but the client had not noticed yet: RSET meets 421 + close."""
    peer = await start_peer()
    sender = make_sender(peer)
    await send(sender)
    peer.rset_reply = "421 4.4.2 relay.test Error: timeout exceeded"
    with structlog.testing.capture_logs() as logs:
        assert (await send(sender, envid="m-2")).reply.startswith("250")
    assert peer.connections == 2 and len(peer.received) == 2
    assert [e["event"] for e in logs].count("smtp.reconnect") == 1


async def test_many_messages_over_one_reused_tls_connection(start_peer, make_sender):
    """A hundred messages, one connection (speed is measured in bench/pipeline.py, not here)."""
    peer = await start_peer()
    sender = make_sender(peer, max_messages_per_connection=1000)
    await send(sender)
    for i in range(100):
        await send(sender, envid=f"m-{i}", data=DATA * 40)
    assert peer.connections == 1
    assert [c.arg for c in peer.commands if c.verb == "MAIL"][-100:] == [f"FROM:<{FROM}> RET=HDRS ENVID=m-{i}" for i in range(100)]


async def test_arguments_that_could_never_be_sent(start_peer, make_sender):
    peer = await start_peer()
    sender = make_sender(peer)
    for bad in ("a@b.test\r\nRCPT TO:<x@y.test>", "Name <a@b.test>", "a@b.test, c@d.test", "", "a b@c.test"):
        with pytest.raises(ValueError):
            await sender.send(envelope_from=FROM, recipient=bad, data=DATA, envid="m-1")
    with pytest.raises(ValueError):
        await sender.send(envelope_from=FROM, recipient=TO, data=DATA, envid="x" * 101)
    with pytest.raises(ValueError):
        await sender.send(envelope_from=FROM, recipient=TO, data=b"", envid="m-1")
    assert peer.commands == []


async def test_null_sender(start_peer, make_sender):
    peer = await start_peer()
    await make_sender(peer).send(envelope_from="", recipient=TO, data=DATA, envid="m-1")
    assert [c.arg for c in peer.commands if c.verb == "MAIL"] == ["FROM:<> RET=HDRS ENVID=m-1"]


def test_tls_context_unchanged(tls):
    """The sender must not loosen the caller's context (aiosmtplib would only use it)."""
    ctx = tls.client_context()
    RelaySettings(host="h", port=25, ssl_context=ctx)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
