"""Composing the mail around a sealed entity: layout, refusals, no header injection, and a real
sealed message that `openssl cms` still decrypts and verifies from the composed mail."""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.smtp.compose import DISPOSITION_OPTIONS, MAX_LINE, ComposedMail, compose_mail
from gateway.crypto import smime

DER = bytes(range(256)) * 12
ENTITY = smime.pkcs7_mime(DER, authenticated=False)  # exactly what seal() returns, MIME-Version first
DATE = datetime(2026, 11, 29, 13, 5, 9, tzinfo=timezone(timedelta(hours=1)))
ARGS = dict(sealed_entity=ENTITY, message_id="0c9e1f2a-7d41-4c55-9a0e-3f6b2d8c1e77", label="meldingsbericht",
            from_address="gateway@pi-vught.test", to_address="nazorg@gemeente-tilburg.test",
            receipt_to="receipts@pi-vught.test", date=DATE, id_domain="pi-vught.test")
HEADER_NAMES = ["From", "To", "Date", "Subject", "Message-ID", "MIME-Version", "Disposition-Notification-To",
                "Disposition-Notification-Options", "X-Nazorg-Message-Id", "Content-Type",
                "Content-Transfer-Encoding", "Content-Disposition"]


def compose(**changes) -> ComposedMail:
    return compose_mail(**{**ARGS, **changes})


def test_layout_byte_for_byte():
    mail = compose()
    head, _, body = mail.data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"From: gateway@pi-vught.test",
        b"To: nazorg@gemeente-tilburg.test",
        b"Date: Sun, 29 Nov 2026 13:05:09 +0100",
        b"Subject: nazorg meldingsbericht 0c9e1f2a-7d41-4c55-9a0e-3f6b2d8c1e77",
        b"Message-ID: <0c9e1f2a-7d41-4c55-9a0e-3f6b2d8c1e77@pi-vught.test>",
        b"MIME-Version: 1.0",
        b"Disposition-Notification-To: <receipts@pi-vught.test>",
        b"Disposition-Notification-Options: signed-receipt-protocol=optional, pkcs7-signature; "
        b"signed-receipt-micalg=optional, sha-256",
        b"X-Nazorg-Message-Id: 0c9e1f2a-7d41-4c55-9a0e-3f6b2d8c1e77",
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
        b"Content-Transfer-Encoding: base64",
        b'Content-Disposition: attachment; filename="smime.p7m"',
    ]
    assert body == ENTITY.partition(b"\r\n\r\n")[2]  # the entity's body, unchanged
    assert mail.mail_message_id == "<0c9e1f2a-7d41-4c55-9a0e-3f6b2d8c1e77@pi-vught.test>"
    assert mail.data.count(b"MIME-Version") == 1
    assert all(len(line) <= MAX_LINE for line in mail.data.split(b"\r\n"))
    assert b"\n" not in mail.data.replace(b"\r\n", b"")
    assert "bytes" in repr(mail) and "MIIB" not in repr(mail)


def test_the_email_package_reads_it_back():
    msg = email.message_from_bytes(compose().data, policy=email.policy.default)
    assert [k for k, _ in msg.items()] == HEADER_NAMES
    assert not msg.defects
    assert msg["Disposition-Notification-Options"] == DISPOSITION_OPTIONS
    assert msg["Date"].datetime == DATE
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg.get_param("smime-type") == "enveloped-data"
    assert msg.get_payload(decode=True) == DER


def test_a_resend_carries_the_same_message_id():
    first, again = compose(), compose(date=DATE + timedelta(days=2))
    assert first.mail_message_id == again.mail_message_id
    assert first.data != again.data


def test_an_entity_without_mime_version_and_with_folded_headers():
    entity = (b"Content-Type: application/pkcs7-mime;\r\n\tsmime-type=enveloped-data\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n")
    head = compose(sealed_entity=entity).data.split(b"\r\n\r\n")[0]
    assert head.endswith(b"Content-Type: application/pkcs7-mime;\r\n\tsmime-type=enveloped-data\r\n"
                         b"Content-Transfer-Encoding: base64")


@pytest.mark.parametrize("field, value", [
    ("label", "Meldingsbericht"), ("label", "melding bericht"), ("label", "melding\r\nBcc: x@y.test"),
    ("label", ""), ("label", "-x"), ("label", "j\u00e9"), ("label", "x" * 129),
    ("message_id", "abc\ndef"), ("message_id", "a@b"), ("message_id", "<abc>"), ("message_id", "ABC"),
    ("from_address", "gateway@pi-vught.test\r\nBcc: spy@evil.test"),
    ("to_address", "Nazorg <nazorg@gemeente.test>"), ("to_address", "a@b.test, c@d.test"),
    ("to_address", "nazorg@gemeente"), ("to_address", '"quoted"@gemeente.test'), ("to_address", "a@b.test "),
    ("to_address", "n\u00e4zorg@gemeente.test"), ("to_address", "a" * 65 + "@b.test"),
    ("receipt_to", "r@pi.test>\r\nX-Evil: 1"), ("receipt_to", ""),
    ("id_domain", "pi-vught.test>\r\nBcc: x"), ("id_domain", "localhost"),
    ("date", datetime(2026, 11, 29, 12, 0)),
])
def test_refused_values(field, value):
    with pytest.raises(ValueError):
        compose(**{field: value})


@pytest.mark.parametrize("entity, why", [
    (b"Bcc: spy@evil.test\r\n" + ENTITY, "not Content-"),
    (b"Content-Type: application/pkcs7-mime\r\nSubject: forged\r\n\r\nAAAA\r\n", "not Content-"),
    (ENTITY.replace(b"\r\n\r\n", b"\r\n", 1), "no header section|not Content-"),
    (b"Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64", "no header section"),
    (b"\r\n\r\nAAAA\r\n", "no header section"),
    (b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n", "no Content-Type"),
    (ENTITY.replace(b"\r\n", b"\n"), "cannot travel"),
    (ENTITY + b"AAAA\rBBBB\r\n", "cannot travel"),
    (ENTITY + "\u00e9\r\n".encode(), "cannot travel"),
    (ENTITY + b"A\x00A\r\n", "cannot travel"),
    (ENTITY + b"A" * 999 + b"\r\n", "longer than 998"),
    (b" Content-Type: x\r\n\r\nAAAA\r\n", "not Content-|continuation"),
])
def test_refused_entities(entity, why):
    with pytest.raises(ValueError, match=why):
        compose(sealed_entity=entity)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["label", "message_id", "from_address", "to_address", "receipt_to", "id_domain"]),
       value=st.text(st.characters(codec="utf-8"), max_size=80)
       | st.sampled_from(["a@b.test\r\nBcc: c@d.test", "x\nY: z", "a@b.test\r\n\r\nbody", "ok-1"]))
def test_no_value_can_add_a_header(field, value):
    """Whatever a caller passes, the mail has exactly the expected headers, or nothing is composed."""
    try:
        mail = compose(**{field: value})
    except ValueError:
        return
    msg = email.message_from_bytes(mail.data, policy=email.policy.compat32)
    assert [k for k, _ in msg.items()] == HEADER_NAMES
    assert all(len(line) <= MAX_LINE for line in mail.data.split(b"\r\n"))
    assert msg.get_payload() == ENTITY.partition(b"\r\n\r\n")[2].decode()


def test_longest_accepted_values_keep_lines_short():
    local, host = "a" * 64, "b" * 63 + "." + "b" * 63 + "." + "b" * 50 + ".test"  # 254 in all
    mail = compose(label="x" * 128, message_id="y" * 128, to_address=f"{local}@{host}",
                   from_address=f"{local}@{host}", receipt_to=f"{local}@{host}", id_domain=host)
    assert max(len(line) for line in mail.data.split(b"\r\n")) <= MAX_LINE


# -- the composed mail is still an S/MIME mail a client can open -----------------------------------

def test_openssl_decrypts_and_verifies_the_composed_mail(tmp_path):
    """Oracle: a real sealed message, composed, read by `openssl cms` straight from the mail."""
    assert shutil.which("openssl"), "openssl is needed (CI installs it)"
    from gateway.crypto.identity import load_pem_identity
    from gateway.crypto.pki import init_dev_pki
    from gateway.crypto.profiles import COMPATIBLE
    from gateway.crypto.seal import seal

    parties = init_dev_pki(tmp_path / "pki")
    sender = load_pem_identity(parties["PI-VUGHT"] / "key.pem", parties["PI-VUGHT"] / "chain.pem")
    recipient = load_pem_identity(parties["0599"] / "key.pem", parties["0599"] / "chain.pem")
    xml = b'<?xml version="1.0" encoding="UTF-8"?><bericht>proef</bericht>'
    sealed = seal(xml, sender, recipient.cert, COMPATIBLE)
    mail = tmp_path / "mail.eml"
    mail.write_bytes(compose(sealed_entity=sealed.entity).data)
    decrypted = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(mail), "-recip",
                                str(parties["0599"] / "cert.pem"), "-inkey", str(parties["0599"] / "key.pem")],
                               capture_output=True, check=True).stdout
    assert decrypted.replace(b"\r\n", b"\n") == sealed.signed_entity.replace(b"\r\n", b"\n")
    signed = tmp_path / "signed.eml"
    signed.write_bytes(decrypted)
    content = subprocess.run(["openssl", "cms", "-verify", "-in", str(signed), "-CAfile",
                              str(tmp_path / "pki" / "trust.pem"), "-purpose", "smimesign"],
                             capture_output=True, check=True).stdout
    assert b"base64" in content.lower() and b"bericht.xml" in content
