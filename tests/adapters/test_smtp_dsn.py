"""DSN parsing (RFC 3464) on real Postfix DSNs and hand-written Exim/Exchange ones (see data/README.md),
on broken variants, and fuzzed with hypothesis: the answer is a Dsn, None or DsnError, never a crash."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.smtp.dsn import MAX_DIAGNOSTIC, Dsn, DsnError, DsnRecipient, parse_dsn, xtext_decode
from adapters.smtp.sender import xtext

DATA = Path(__file__).parent / "data"
SAMPLES = {p.name: p.read_bytes() for p in sorted(DATA.glob("*.eml"))}
POSTFIX = {name: raw for name, raw in SAMPLES.items() if name.startswith("postfix-")}


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture(params=["lf", "crlf"])
def ending(request):
    """Maildir files have LF line ends, IMAP gives CRLF: both must read the same."""
    return (lambda raw: raw) if request.param == "lf" else crlf


def test_the_samples_are_there():
    assert set(POSTFIX) == {"postfix-delivered.eml", "postfix-relayed.eml", "postfix-bounce.eml",
                            "postfix-delay.eml"}
    assert all(b"Reporting-MTA: dns; mta.pi-vught.test" in raw for raw in POSTFIX.values())


# -- real Postfix DSNs ----------------------------------------------------------------------------

def test_postfix_delivered(ending):
    dsn = parse_dsn(ending(SAMPLES["postfix-delivered.eml"]))
    assert dsn == Dsn(
        envid="0c9e1f2a-0000-4000-8000-000000000001",
        original_message_id="<0c9e1f2a-0000-4000-8000-000000000001@pi-vught.test>",
        reporting_mta="mta.pi-vught.test",
        recipients=(DsnRecipient(final_recipient="ontvanger@pi-vught.test",
                                 original_recipient="ontvanger@pi-vught.test", action="delivered",
                                 status="2.0.0", diagnostic="delivery via virtual: delivered to maildir",
                                 remote_mta=None),))


def test_postfix_relayed_keeps_a_literal_plus(ending):
    dsn = parse_dsn(ending(SAMPLES["postfix-relayed.eml"]))
    [r] = dsn.recipients
    assert (r.action, r.status, r.remote_mta) == ("relayed", "2.0.0", "127.0.0.1")
    assert r.final_recipient == r.original_recipient == "nazorg+post@gemeente.test"
    assert dsn.envid == "0c9e1f2a-0000-4000-8000-000000000002"


def test_postfix_bounce(ending):
    dsn = parse_dsn(ending(SAMPLES["postfix-bounce.eml"]))
    assert dsn.envid == "0c9e1f2a-0000-4000-8000-000000000003"
    assert dsn.original_message_id == "<0c9e1f2a-0000-4000-8000-000000000003@pi-vught.test>"
    [r] = dsn.recipients
    assert (r.final_recipient, r.action, r.status) == ("onbekend@gemeente.test", "failed", "5.1.1")
    # the folded Diagnostic-Code comes back as one line
    assert r.diagnostic == ("550 5.1.1 <onbekend@gemeente.test>: Recipient address rejected: "
                            "User unknown in virtual mailbox table")


def test_postfix_delay(ending):
    dsn = parse_dsn(ending(SAMPLES["postfix-delay.eml"]))
    [r] = dsn.recipients
    assert (r.action, r.status) == ("delayed", "4.3.0")
    assert r.diagnostic.startswith("451 4.3.0")
    assert dsn.original_message_id == "<0c9e1f2a-0000-4000-8000-000000000004@pi-vught.test>"


# -- what other MTAs send (hand-written) ----------------------------------------------------------

def test_exim_style_two_recipients_and_a_returned_message(ending):
    dsn = parse_dsn(ending(SAMPLES["handwritten-exim-bounce.eml"]))
    assert dsn.envid == "0c9e1f2a-0000-4000-8000-0000000000e1"  # xtext decoded, field name in other case
    assert dsn.original_message_id == "<0c9e1f2a-0000-4000-8000-0000000000e1@pi-vught.test>"
    assert [(r.final_recipient, r.action) for r in dsn.recipients] == [
        ("nazorg@gemeente.test", "failed"), ("archief@gemeente.test", "failed")]
    assert dsn.recipients[0].original_recipient == "nazorg+post@gemeente.test"
    assert dsn.recipients[0].remote_mta == "mailstore.gemeente.test"
    assert dsn.recipients[1].diagnostic is None and dsn.recipients[1].remote_mta is None


def test_exchange_style_ndr(ending):
    dsn = parse_dsn(ending(SAMPLES["handwritten-exchange-ndr.eml"]))
    assert dsn.envid is None
    assert dsn.original_message_id == "<0c9e1f2a-0000-4000-8000-0000000000e2@pi-vught.test>"  # folded header
    [r] = dsn.recipients
    assert (r.action, r.status) == ("failed", "5.1.10")
    assert r.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")


def test_exchange_style_delivered(ending):
    dsn = parse_dsn(ending(SAMPLES["handwritten-exchange-delivered.eml"]))
    assert dsn.envid == "0c9e1f2a-0000-4000-8000-0000000000e3"
    assert [(r.action, r.status, r.original_recipient) for r in dsn.recipients] == [("delivered", "2.0.0", None)]


@pytest.mark.parametrize("raw", [
    SAMPLES["handwritten-mdn.eml"],
    b"From: a@b.test\r\nSubject: hello\r\n\r\nplain text\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
    b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x--\r\n",
    b"",
    b"\x00\xff\xfe",
])
def test_not_a_dsn_is_none(raw):
    assert parse_dsn(raw) is None


# -- broken DSNs ----------------------------------------------------------------------------------

BOUNCE = SAMPLES["postfix-bounce.eml"]
BOUNDARY = re.search(rb'boundary="([^"]+)"', BOUNCE).group(1)


@pytest.mark.parametrize("change, reason", [
    ((b"Content-Type: message/delivery-status", b"Content-Type: text/plain"), "0 delivery-status parts"),
    ((b"Final-Recipient: rfc822; onbekend@gemeente.test\n", b""), "no Final-Recipient"),
    ((b"Action: failed\n", b""), "no Action"),
    ((b"Action: failed", b"Action: vanished"), "unknown Action"),
    ((b"\nFinal-Recipient", b"Final-Recipient"), "no per-recipient block"),
    ((b"Status: 5.1.1", b"Status 5.1.1"), "not a field"),
    ((b'boundary="' + BOUNDARY + b'"', b'boundary="elsewhere"'), "no parts"),
])
def test_malformed_dsn_raises_dsn_error_with_the_reason(change, reason):
    broken = BOUNCE.replace(*change)
    assert broken != BOUNCE
    with pytest.raises(DsnError, match=reason):
        parse_dsn(broken)


def test_two_delivery_status_parts_are_refused():
    start = BOUNCE.index(b"--" + BOUNDARY + b"\nContent-Description: Delivery report")
    end = BOUNCE.index(b"--" + BOUNDARY, start + 10)
    twice = BOUNCE[:end] + BOUNCE[start:end] + BOUNCE[end:]
    assert parse_dsn(BOUNCE[:start] + BOUNCE[start:end] + BOUNCE[end:]) is not None
    with pytest.raises(DsnError, match="2 delivery-status parts"):
        parse_dsn(twice)


def test_size_limits():
    with pytest.raises(DsnError, match="over the"):
        parse_dsn(BOUNCE + b"x" * (16 * 1024 * 1024))
    many = BOUNCE.replace(b"Final-Recipient:", b"Final-Recipient: rfc822; x@y.test\nAction: failed\n\n" * 1001
                          + b"Final-Recipient:", 1)
    with pytest.raises(DsnError, match="more than 1000"):
        parse_dsn(many)
    with pytest.raises(DsnError):
        parse_dsn("a string")  # type: ignore[arg-type]


def test_diagnostic_is_shortened_and_cleaned():
    noisy = BOUNCE.replace(b"User unknown in", b"User \x1b[31munknown\x07 in " + b"z" * 1000)
    [r] = parse_dsn(noisy).recipients
    assert len(r.diagnostic) == MAX_DIAGNOSTIC and r.diagnostic.endswith("...")
    assert not any(ord(c) < 32 or ord(c) == 127 for c in r.diagnostic)


def test_non_ascii_and_encoded_delivery_status():
    accented = BOUNCE.replace(b"User unknown", "Gebruiker onbekend \u00e9".encode())
    assert "\u00e9" in parse_dsn(accented).recipients[0].diagnostic
    latin1 = BOUNCE.replace(b"User unknown", b"Gebruiker \xe9\xff")
    assert "\ufffd" in parse_dsn(latin1).recipients[0].diagnostic
    # a delivery-status part sent in base64 reads the same as the plain one
    start = BOUNCE.index(b"Reporting-MTA")
    end = BOUNCE.index(b"\n--" + BOUNDARY, start)
    encoded = base64.encodebytes(BOUNCE[start:end])
    b64 = (BOUNCE[:start].replace(b"Content-Type: message/delivery-status\n",
                                  b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n")
           + encoded + BOUNCE[end:])
    assert parse_dsn(b64) == parse_dsn(BOUNCE)


def test_xtext_round_trip():
    for value in ["0c9e1f2a-0000", "a+b=c d", "x\u00ff"]:
        assert xtext_decode(xtext(value)) == value
    assert xtext_decode("nazorg+post@x") == "nazorg+post@x"  # not +XX hex: left alone


# -- fuzzing --------------------------------------------------------------------------------------

def _assert_sane(result):
    assert result is None or isinstance(result, Dsn)
    if isinstance(result, Dsn):
        assert result.recipients
        for r in result.recipients:
            assert r.action in {"delivered", "failed", "delayed", "relayed", "expanded"}
            assert r.diagnostic is None or len(r.diagnostic) <= MAX_DIAGNOSTIC


@st.composite
def mutated(draw):
    raw = bytearray(draw(st.sampled_from(sorted(SAMPLES.values()))))
    if draw(st.booleans()):
        raw = bytearray(crlf(bytes(raw)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "cut", "line"]))
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = draw(st.sampled_from([b"\n", b"\r", b"\x00", b":", b";", b"--", b"\n\n", b" ", b"+",
                                               b"\xff", b"=?utf-8?b?AA==?=", b"Content-Type: multipart/report\n",
                                               b"Action: expanded\n", b"\n\t"]))
        elif op == "delete":
            del raw[at:at + draw(st.integers(1, 40))]
        elif op == "dup":
            raw[at:at] = raw[at:at + draw(st.integers(1, 200))]
        elif op == "cut":
            del raw[at:]
        elif op == "line":
            lines = bytes(raw).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            del lines[i]
            raw = bytearray(b"\n".join(lines))
    return bytes(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_real_dsns(raw):
    try:
        result = parse_dsn(raw)
    except DsnError:
        return
    _assert_sane(result)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_behind_a_report_header(body):
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
           b"Content-Type: message/delivery-status\n\n" + body + b"\n--b--\n")
    try:
        result = parse_dsn(raw)
    except DsnError:
        return
    _assert_sane(result)


def test_deeply_nested_report_is_an_error_not_a_crash():
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(3000))
    raw = b"Content-Type: multipart/report; report-type=delivery-status; boundary=top\n\n--top\n" + nested
    with pytest.raises(DsnError):
        parse_dsn(raw)
