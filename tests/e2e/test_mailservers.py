"""The private mail servers themselves: TLS and AUTH enforced, real DSNs, controls, no leftovers."""

from __future__ import annotations

import email
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from email.message import Message
from pathlib import Path

import pytest

from mailservers import MailServerError, MailServers, group_alive

PI = "nazorg@pi-vught.example.nl"
GEM = "nazorg@gemeente-0599.example.nl"
GEM2 = "nazorg@gemeente-0344.example.nl"


def _mail(subject: str, to: str = GEM) -> bytes:
    return (f"From: {PI}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            f"body of {subject}\r\n").encode()


def _delivery_status(raw: bytes) -> tuple[Message, list[Message]]:
    """(the report, its per-recipient status groups) of a DSN."""
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    groups = status.get_payload()
    return msg, groups[1:]  # the first group is per message, the rest per recipient


def _gone(pgid: int) -> bool:
    return not group_alive(pgid)


def test_delivery_and_success_dsn(mail_servers):
    t0 = time.monotonic()
    queue_id = mail_servers.deliver(PI, GEM, _mail("m1"), mail_options=["ENVID=m1-envid"],
                                    rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    [got] = mail_servers.wait_for_messages(GEM, 1)
    delivered = time.monotonic() - t0
    assert b"body of m1" in got and b"Subject: m1" in got
    [dsn] = mail_servers.wait_for_messages(PI, 1)
    dsn_time = time.monotonic() - t0
    report, [rcpt] = _delivery_status(dsn)
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert rcpt["Action"] == "delivered" and rcpt["Status"] == "2.0.0"
    assert rcpt["Final-Recipient"] == f"rfc822; {GEM}"
    assert f"X-Postfix-Queue-ID: {queue_id}".encode() in dsn
    assert b"Original-Envelope-Id: m1-envid" in dsn
    assert mail_servers.queue() == []
    t = mail_servers.timings
    print(f"\nstart dovecot {t.dovecot_start:.3f} s, postfix {t.postfix_start:.3f} s;"
          f" mail in mailbox {delivered:.3f} s, success DSN {dsn_time:.3f} s")


def test_unknown_user_bounces_to_the_sender(mail_servers):
    stranger = "nobody-here@gemeente-0599.example.nl"
    mail_servers.deliver(PI, stranger, _mail("m2", stranger))  # accepted at RCPT: it bounces later
    [dsn] = mail_servers.wait_for_messages(PI, 1)
    report, [rcpt] = _delivery_status(dsn)
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Final-Recipient"] == f"rfc822; {stranger}"


def test_smtpd_requires_starttls_and_auth_to_relay(mail_servers, mail_users):
    with smtplib.SMTP(mail_servers.smtp_host, mail_servers.smtp_port, timeout=5) as plain:
        plain.ehlo()
        assert plain.has_extn("starttls") and not plain.has_extn("auth")
        assert plain.mail(PI)[0] == 530  # "Must issue a STARTTLS command first"
    with smtplib.SMTP(mail_servers.smtp_host, mail_servers.smtp_port, timeout=5) as smtp:
        smtp.starttls(context=mail_servers.ssl_context())
        smtp.ehlo()
        assert smtp.has_extn("auth") and smtp.has_extn("dsn")
        smtp.mail(PI)
        assert smtp.rcpt("someone@elsewhere.example")[0] == 554  # relay access denied
        smtp.rset()
        smtp.user, smtp.password = PI, "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("PLAIN", smtp.auth_plain)  # one mechanism: each failure takes Dovecot 0.5 s
    # authenticated, the same relay attempt is accepted (and bounces: nothing leaves the machine)
    mail_servers.deliver(PI, "someone@elsewhere.example", _mail("m3", "someone@elsewhere.example"),
                         login=(PI, mail_users[PI]))
    [dsn] = mail_servers.wait_for_messages(PI, 1)
    assert _delivery_status(dsn)[1][0]["Action"] == "failed"


def test_server_certificate_is_signed_by_the_test_ca(mail_servers):
    with smtplib.SMTP(mail_servers.smtp_host, mail_servers.smtp_port, timeout=5) as smtp:
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=ssl.create_default_context())
    ctx = mail_servers.ssl_context()
    with socket.create_connection((mail_servers.imap_host, mail_servers.imap_port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(100).startswith(b"* OK")


def test_refuse_and_lift_change_the_rcpt_reply(mail_servers):
    mail_servers.refuse(GEM)
    mail_servers.refuse(GEM2, "451 4.3.0 Try again later (test)")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail_servers.deliver(PI, GEM, _mail("m4"))
    code, text = refused.value.recipients[GEM]
    assert code == 550 and text.startswith(b"5.1.1 ") and text.endswith(b"Recipient refused by test")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        mail_servers.deliver(PI, GEM2, _mail("m5", GEM2))
    code, text = deferred.value.recipients[GEM2]
    assert code == 451 and text.startswith(b"4.3.0 ") and text.endswith(b"Try again later (test)")
    mail_servers.lift(GEM)
    mail_servers.deliver(PI, GEM, _mail("m6"))
    assert len(mail_servers.wait_for_messages(GEM, 1)) == 1
    assert mail_servers.messages(GEM2) == []
    assert len(mail_servers.timings.reloads) == 3
    print(f"\nrefuse/lift effective after {', '.join(f'{t:.2f}' for t in mail_servers.timings.reloads)} s")


def test_stopped_relay_refuses_connections_and_comes_back_on_its_port(mail_servers):
    port = mail_servers.smtp_port
    mail_servers.stop_smtp()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mail_servers.smtp_host, port), timeout=2).close()
    mail_servers.start_smtp()
    assert mail_servers.smtp_port == port
    mail_servers.deliver(PI, GEM, _mail("m7"))
    assert b"body of m7" in mail_servers.wait_for_messages(GEM, 1)[0]


def test_deferred_delivery_waits_in_the_queue_until_resumed(mail_servers):
    mail_servers.defer_delivery(GEM)
    queue_id = mail_servers.deliver(PI, GEM, _mail("m8"))
    # a generous bound: the queue manager can take seconds on a loaded machine (a CI run saw > 5 s in
    # 'incoming'); the loop ends as soon as the mail is deferred
    deadline = time.monotonic() + 60
    while not (entries := mail_servers.queue()) or entries[0]["queue_name"] != "deferred":
        assert time.monotonic() < deadline, entries
        time.sleep(0.05)
    [entry] = entries
    assert entry["queue_id"] == queue_id
    assert "mailbox held by test" in entry["recipients"][0]["delay_reason"]
    assert mail_servers.messages(GEM) == []
    mail_servers.resume_delivery(GEM)
    assert len(mail_servers.wait_for_messages(GEM, 1, timeout=60)) == 1
    assert mail_servers.queue() == []


def test_imap_login_and_idle_push(mail_servers, mail_users):
    ctx = mail_servers.ssl_context()
    with ctx.wrap_socket(socket.create_connection((mail_servers.imap_host, mail_servers.imap_port), 5),
                         server_hostname="localhost") as imap:
        f = imap.makefile("rb")
        assert f.readline().startswith(b"* OK")
        for _ in range(2):  # Dovecot answers failures on a 0.5 s timer; no penalty adds to it
            t0 = time.monotonic()
            imap.sendall(b'a1 LOGIN "' + GEM.encode() + b'" "wrong"\r\n')
            assert f.readline().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
            assert time.monotonic() - t0 < 0.9
        imap.sendall(f'a2 LOGIN "{GEM}" "{mail_users[GEM]}"\r\n'.encode())
        assert f.readline().startswith(b"a2 OK")
        imap.sendall(b"a3 SELECT INBOX\r\n")
        while not (line := f.readline()).startswith(b"a3 "):
            pass
        assert line.startswith(b"a3 OK")
        imap.sendall(b"a4 IDLE\r\n")
        assert f.readline().startswith(b"+ ")
        t0 = time.monotonic()
        mail_servers.deliver(PI, GEM, _mail("m9"))
        assert f.readline().rstrip() == b"* 1 EXISTS"
        print(f"\nIDLE push {time.monotonic() - t0:.3f} s after submission")
        imap.sendall(b"DONE\r\na5 LOGOUT\r\n")


def test_messages_by_folder(mail_servers, mail_users):
    """`messages(folder=None)` reads every folder; a named folder only that one."""
    mail_servers.deliver(PI, GEM, _mail("m10"))
    mail_servers.deliver(PI, GEM, _mail("m11"))
    inbox = mail_servers.wait_for_messages(GEM, 2)  # in order of arrival (LMTP runs in parallel)
    assert sorted(b"m10" in m for m in inbox) == [False, True] and any(b"m11" in m for m in inbox)
    ctx = mail_servers.ssl_context()
    import imaplib
    with imaplib.IMAP4_SSL(mail_servers.imap_host, mail_servers.imap_port, ssl_context=ctx) as imap:
        imap.login(GEM, mail_users[GEM])
        imap.create("Done/Receipts")
        imap.select("INBOX")
        assert imap.copy("1", "Done/Receipts")[0] == "OK"
    [copied] = mail_servers.messages(GEM, "Done/Receipts")
    assert copied in inbox
    assert len(mail_servers.messages(GEM)) == 2
    assert len(mail_servers.messages(GEM, None)) == 3


def test_plain_peer_offers_no_starttls_and_records(plain_smtp_peer):
    with smtplib.SMTP(plain_smtp_peer.host, plain_smtp_peer.port, timeout=5) as smtp:
        smtp.ehlo("me.test")
        assert not smtp.has_extn("starttls")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.starttls()
        smtp.sendmail(PI, [GEM], _mail("m12"))
    assert plain_smtp_peer.verbs == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert plain_smtp_peer.commands[0] == ("EHLO", "me.test")
    [mail] = plain_smtp_peer.mails
    assert (mail.envelope_from, mail.recipients) == (PI, [GEM]) and b"body of m12" in mail.data


def test_stop_leaves_no_process(mail_users, mail_domains):
    servers = MailServers.temporary(mail_users, mail_domains)
    with servers:
        groups = servers.process_groups()
        assert len(groups) == 2 and not any(_gone(g) for g in groups)
    assert all(_gone(g) for g in groups)
    assert not servers.workdir.exists()


def test_no_process_outlives_a_killed_runner(tmp_path):
    """A runner killed with SIGKILL cannot clean up: the watchdog kills the servers."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from mailservers import MailServers
        s = MailServers.temporary({{"a@x.test": "pw"}}, ["x.test"])
        s.start()
        print(s.workdir, *s.process_groups(), flush=True)
        time.sleep(60)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workdir, *groups = runner.stdout.readline().split()  # type: ignore[union-attr]
    try:
        assert len(groups) == 2 and not any(_gone(int(g)) for g in groups)
        runner.send_signal(signal.SIGKILL)
        runner.wait(5)
        deadline = time.monotonic() + 5
        while not all(_gone(int(g)) for g in groups):
            assert time.monotonic() < deadline, "mail servers outlived their runner"
            time.sleep(0.02)
        while Path(workdir).exists():  # the watchdog removes what MailServers.temporary() made
            assert time.monotonic() < deadline, "the work folder outlived its runner"
            time.sleep(0.02)
    finally:
        runner.kill()
        runner.stdout.close()  # type: ignore[union-attr]
        subprocess.run(["rm", "-rf", workdir], check=False)


def test_workdir_must_be_reachable_by_the_mail_user(tmp_path, mail_users, mail_domains):
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not traversable"):
        MailServers(hidden / "mail", mail_users, mail_domains).start()


def test_wait_for_messages_reports_what_arrived(shared_mail_servers):
    with pytest.raises(MailServerError, match="0 of 1 mail"):
        shared_mail_servers.wait_for_messages(GEM2, 1, timeout=0.2)
