"""Fuzzing the four parsers a peer's bytes reach first (issue 7, item 5), with hypothesis.

The property, for each: whatever the bytes, only the documented outcome comes out, in bounded time —
never an IndexError/KeyError/ValueError/RecursionError escaping, never a hang:

- the hardened XML parser + validator (`Validator.validate_bytes`): always a `Verdict` (problems or a
  message), never an exception; a valid verdict carries a message;
- the S/MIME/CMS opener (`open_sealed`): a `CryptoError`, or the exact original XML signed by the real
  sender (only bytes nobody signed may change and still open) — at four layers: the MIME entity, the
  envelope's DER, the decrypted multipart/signed (re-encrypted, so the signature code is reached), the
  signature's DER (re-encrypted);
- the MDN parser (`parse_mdn`): a `CryptoError`, or a `Receipt` whose fields are those the real signer
  signed; also reports mutated and then signed by the real signer, so the field reader is reached;
- the DSN parser (`parse_dsn`): a `Dsn`, None or `DsnError` (the parser's own fuzzers are in
  adapters/test_smtp_dsn.py; here: DSNs nested and stacked, and the time bound).

Each runs a few hundred examples in the suite; `pytest tests/security --soak` runs 10,000+ each."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.smtp.dsn import Dsn, DsnError, parse_dsn
from gateway.crypto import cms, smime
from gateway.crypto.errors import CryptoError
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.crypto.open import content_type, open_sealed, split_entity, split_signed
from gateway.crypto.profiles import COMPATIBLE, STRONG
from gateway.crypto.receipts import Disposition, Receipt, build_mdn, parse_mdn
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.messages.validate import Verdict
from paths import EXAMPLES
from security_support import EDIT, apply_edits, fuzz_examples, mutated

#: a corrupt certificate may load with a deprecation warning (e.g. a serial number that is not positive): that
#: is cryptography's warning about the input, not an outcome of the parser under test
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

#: generous: every parser here answers in milliseconds (unloaded); a hang or a quadratic blow-up crosses this
BOUND_S = 5.0

VALID_XML = [p.read_bytes() for p in sorted((EXAMPLES / "valid").rglob("*.xml"))]
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                  HealthCheck.data_too_large])


class Seeds(dict):
    """A fixture's seeds; a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<seeds {', '.join(sorted(self))}>"


def timed(fn, *args, **kwargs):
    """(result or the exception raised, seconds)."""
    start = time.monotonic()
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - judged by the caller
        result = e
    return result, time.monotonic() - start


# -- the XML parser and validator ----------------------------------------------------------------

def _check_verdict(validator, data: bytes) -> Verdict:
    verdict, took = timed(validator.validate_bytes, data, "fuzz")
    assert not isinstance(verdict, BaseException), f"{type(verdict).__name__} escaped the validator: {verdict!r}"
    assert took < BOUND_S, f"validate_bytes took {took:.1f} s"
    assert isinstance(verdict, Verdict)
    if verdict.valid:
        assert verdict.message is not None and not verdict.problems
    else:
        assert verdict.problems and all(isinstance(p.code, str) and p.code for p in verdict.problems)
    return verdict


def test_the_valid_examples_are_valid(validator):
    """The fuzzer's seeds: every valid example passes (else the mutations below start from a refusal)."""
    assert len(VALID_XML) >= 9
    assert all(_check_verdict(validator, xml).valid for xml in VALID_XML)


@settings(max_examples=fuzz_examples(200), **FUZZ)
@given(data=mutated(VALID_XML))
def test_fuzz_validator_answers_every_mutation_with_a_verdict(validator, data):
    _check_verdict(validator, data)


@st.composite
def hostile_xml(draw):
    """Structural attacks the byte mutations rarely build: deep nesting, many attributes, long names,
    many namespaces, huge text — inside a valid message, so the parser meets them after a good start."""
    xml = draw(st.sampled_from(VALID_XML))
    n = draw(st.integers(1, 5000))
    kind = draw(st.sampled_from(["nest", "attrs", "name", "ns", "text", "comments", "pis", "refs"]))
    piece = {
        "nest": b"<a>" * n + b"</a>" * n,
        "attrs": b"<a " + b" ".join(b"a%d='x'" % i for i in range(n)) + b"/>",
        "name": b"<" + b"a" * (n * 20) + b"/>",
        "ns": b"<a " + b" ".join(b"xmlns:p%d='urn:%d'" % (i, i) for i in range(n)) + b"/>",
        "text": b"<a>" + b"x" * (n * 100) + b"</a>",
        "comments": b"<!--c-->" * n,
        "pis": b"<?p x?>" * n,
        "refs": b"<a>" + b"&#65;" * n + b"</a>",
    }[kind]
    at = xml.index(b"</berichtkop>") if draw(st.booleans()) and b"</berichtkop>" in xml else xml.rindex(b"</")
    return kind, xml[:at] + piece + xml[at:]


@settings(max_examples=fuzz_examples(100, 2_000), **FUZZ)
@given(case=hostile_xml())
def test_fuzz_validator_refuses_structural_attacks_in_bounded_time(validator, case):
    """Refused in bounded time; comments and processing instructions are XML's own and may pass."""
    kind, data = case
    verdict = _check_verdict(validator, data)
    if kind not in ("comments", "pis"):
        assert not verdict.valid


# -- the S/MIME/CMS opener ----------------------------------------------------------------------

class Party:
    def __init__(self, pki: Path, code: str):
        folder = pki / "parties" / code
        self.identity: Identity = load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")
        self.cert = self.identity.cert


@pytest.fixture(scope="module")
def crypto(pki):
    trust = TrustStore.from_bundle(pki / "trust.pem", [pki / "ca" / "issuing.crl.pem"])
    sender, receiver = Party(pki, "PI-VUGHT"), Party(pki, "0599")
    xml = VALID_XML[0]
    part = smime.content_part(xml, "meldingsbericht.xml")
    signature, _ = cms.sign_detached(part, sender.identity.key, sender.cert, sender.identity.chain)
    signed = smime.multipart_signed(part, signature)
    envelopes = {}
    for profile in (COMPATIBLE, STRONG):
        der = cms.envelope(signed, [receiver.cert], profile.key_transport, profile.content_cipher,
                           self_copy=sender.cert)
        envelopes[profile.name] = der
    return Seeds(trust=trust, sender=sender, receiver=receiver, xml=xml, part=part, signature=signature,
                 signed=signed, envelopes=envelopes)


def wrap(der: bytes, profile: str) -> bytes:
    return smime.pkcs7_mime(der, authenticated=profile == "strong")


def encrypt(signed: bytes, crypto, profile: str = "compatible") -> bytes:
    p = STRONG if profile == "strong" else COMPATIBLE
    der = cms.envelope(signed, [crypto["receiver"].cert], p.key_transport, p.content_cipher,
                       self_copy=crypto["sender"].cert)
    return wrap(der, profile)


def _check_open(crypto, entity: bytes) -> str:
    """Open `entity` as 0599 expecting PI-VUGHT: a typed refusal, or exactly the original. Returns the outcome."""
    opened, took = timed(open_sealed, entity, crypto["receiver"].identity, crypto["trust"],
                         expected_sender=PartyBinding(email="nazorg@pi-vught.example.nl"))
    assert took < BOUND_S, f"open_sealed took {took:.1f} s"
    if isinstance(opened, CryptoError):
        assert opened.code and isinstance(opened.code, str)
        return opened.code
    assert not isinstance(opened, BaseException), f"{type(opened).__name__} escaped open_sealed: {opened!r}"
    # it opened: then it must be what the PI signed, from the PI
    assert opened.xml == crypto["xml"]
    assert opened.signer == crypto["sender"].cert
    return "opened"


def test_the_unmutated_entities_open(crypto):
    """Control: each seed opens (so a refusal below is the mutation's doing, not the set-up's)."""
    for profile, der in crypto["envelopes"].items():
        assert _check_open(crypto, wrap(der, profile)) == "opened"
    assert _check_open(crypto, encrypt(crypto["signed"], crypto)) == "opened"


PROFILES = ["compatible", "strong"]
#: what the opener and MDN fuzzers draw: edits only (the seeds come from fixtures and are chosen by index),
#: so what hypothesis draws never depends on a fixture's bytes
EDITS = st.lists(EDIT, min_size=1, max_size=8)
FEW_EDITS = st.lists(EDIT, min_size=1, max_size=3)


@settings(max_examples=fuzz_examples(100), **FUZZ)
@given(profile=st.sampled_from(PROFILES), edits=EDITS)
def test_fuzz_opener_mime_entity(crypto, profile, edits):
    """Mutations of the entity as it arrives (MIME headers, base64 lines)."""
    _check_open(crypto, apply_edits(wrap(crypto["envelopes"][profile], profile), edits))


@settings(max_examples=fuzz_examples(120), **FUZZ)
@given(profile=st.sampled_from(PROFILES), edits=FEW_EDITS)
def test_fuzz_opener_envelope_der(crypto, profile, edits):
    """Mutations of the EnvelopedData/AuthEnvelopedData DER, well wrapped: the ASN.1 and decryption code."""
    der = apply_edits(crypto["envelopes"][profile], edits)
    _check_open(crypto, wrap(der, profile))


@settings(max_examples=fuzz_examples(100), **FUZZ)
@given(edits=EDITS)
def test_fuzz_opener_signed_entity(crypto, edits):
    """Mutations of the decrypted multipart/signed, then encrypted properly: the MIME splitter and the
    signature check meet them. Only changes outside the signed part may still open (to the original)."""
    signed = apply_edits(crypto["signed"], edits)
    _check_open(crypto, encrypt(signed, crypto))


@settings(max_examples=fuzz_examples(100), **FUZZ)
@given(edits=FEW_EDITS)
def test_fuzz_opener_signature_der(crypto, edits):
    """Mutations of the SignedData DER (certificates, attributes, signature), in a well-formed
    multipart/signed, encrypted properly: the CMS verifier and the certificate code meet them."""
    sig = apply_edits(crypto["signature"], edits)
    _check_open(crypto, encrypt(smime.multipart_signed(crypto["part"], sig), crypto))


def test_regression_an_embedded_certificate_with_an_invalid_version_is_malformed(crypto):
    """Found by test_fuzz_opener_signature_der (--soak): one bit flipped in an embedded certificate's
    version (v3 -> "3"/"6") made cryptography raise InvalidVersion — no ValueError — which escaped
    open_sealed. Now MalformedMessage."""
    sig = crypto["signature"]
    at = sig.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT version INTEGER 2 (v3) of the first certificate
    for bad_version in (3, 6):
        bad = sig[:at + 4] + bytes([bad_version]) + sig[at + 5:]
        entity = encrypt(smime.multipart_signed(crypto["part"], bad), crypto)
        assert _check_open(crypto, entity) == "malformed"


def _corrupt_first(data: bytes, pattern: bytes, offset: int, value: int, occurrence: int = 0) -> bytes:
    at = -1
    for _ in range(occurrence + 1):
        at = data.index(pattern, at + 1)
    at += offset
    return data[:at] + bytes([value]) + data[at + 1:]


@pytest.mark.parametrize("case", ["key-type-unknown", "duplicate-extension", "name-value-bit-string"])
def test_regression_certificates_broken_inside_are_malformed(crypto, case):
    """Found by test_fuzz_opener_signature_der (--soak), each a one-bit flip in the embedded signer
    certificate that cryptography loads but then raises on: an unknown key type at public_key()
    (cryptography's UnsupportedAlgorithm), a second extension of one kind (DuplicateExtension, in the
    trust check), a name attribute whose value became a BIT STRING (TypeError, in the trust check).
    Each escaped open_sealed; now MalformedMessage."""
    sig = crypto["signature"]
    bad = {
        # rsaEncryption 1.2.840.113549.1.1.1 -> ...1.1.0
        "key-type-unknown": lambda: _corrupt_first(sig, bytes.fromhex("06092a864886f70d010101"), 10, 0x00),
        # subjectKeyIdentifier 2.5.29.14 -> authorityKeyIdentifier 2.5.29.35: two AKIs
        "duplicate-extension": lambda: _corrupt_first(sig, bytes.fromhex("0603551d0e"), 4, 0x23),
        # the signer's own commonName value (its second commonName: the first is its issuer's) -> BIT STRING
        "name-value-bit-string": lambda: _corrupt_first(sig, bytes.fromhex("0603550403"), 5, 0x03, occurrence=1),
    }[case]()
    assert bad != sig
    entity = encrypt(smime.multipart_signed(crypto["part"], bad), crypto)
    assert _check_open(crypto, entity) == "malformed"


# -- the MDN parser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mdn(crypto):
    receiver = crypto["receiver"].identity
    built = {d: build_mdn(original_message_id="<m-1@pi-vught.example.nl>", original_recipient="nazorg@gemeente-0599.example.nl",
                          final_recipient="nazorg@gemeente-0599.example.nl", disposition=d,
                          reason_code=None if d == Disposition.PROCESSED else "not-entitled",
                          mic=base64.b64encode(b"\x01" * 32).decode(), signer=receiver)
             for d in (Disposition.PROCESSED, Disposition.ERROR)}
    reports = [smime_report(b.entity) for b in built.values()]
    return Seeds(built=built, reports=reports, signer=receiver)


def smime_report(entity: bytes) -> bytes:
    """The signed report part of a multipart/signed MDN as built (first part, between the boundaries)."""
    boundary = entity.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    first = entity.split(b"--" + boundary + b"\r\n", 2)[1]
    return first[:-2]  # the CRLF before the next delimiter belongs to it


def _check_mdn(crypto, entity: bytes, *, signed_by_receiver: bool = False) -> str:
    receipt, took = timed(parse_mdn, entity, crypto["trust"],
                          expected_signer=PartyBinding(email="nazorg@gemeente-0599.example.nl"))
    assert took < BOUND_S, f"parse_mdn took {took:.1f} s"
    if isinstance(receipt, CryptoError):
        return receipt.code
    assert not isinstance(receipt, BaseException), f"{type(receipt).__name__} escaped parse_mdn: {receipt!r}"
    assert isinstance(receipt, Receipt)
    assert receipt.signer == crypto["receiver"].cert
    for value in (receipt.original_message_id, receipt.disposition, receipt.mic, receipt.modifier):
        assert value is None or isinstance(value, str)
    return "parsed"


def test_the_unmutated_mdns_parse(crypto, mdn):
    for built in mdn["built"].values():
        assert _check_mdn(crypto, built.entity) == "parsed"
    signer = mdn["signer"]
    for report in mdn["reports"]:
        sig, _ = cms.sign_detached(report, signer.key, signer.cert, signer.chain)
        assert _check_mdn(crypto, smime.multipart_signed(report, sig)) == "parsed"


@settings(max_examples=fuzz_examples(120), **FUZZ)
@given(which=st.integers(0, 1), edits=EDITS)
def test_fuzz_mdn_as_received(crypto, mdn, which, edits):
    """Mutations of a signed MDN as it arrives: refused typed, or read — and then only if still signed
    by the receiver (a mutation inside the signed report must break the signature)."""
    entity = apply_edits([b.entity for b in mdn["built"].values()][which], edits)
    outcome = _check_mdn(crypto, entity)
    if outcome == "parsed":  # the part parse_mdn verified, found the way it finds it: one of the signed reports
        headers, body = split_entity(entity, "the MDN")
        _, params = content_type(headers.get("content-type"))
        _, report = split_signed(body, 0, params)
        assert report in mdn["reports"], "a changed report was read as signed"


@settings(max_examples=fuzz_examples(120), **FUZZ)
@given(which=st.integers(0, 1), edits=EDITS)
def test_fuzz_mdn_report_signed_by_the_peer(crypto, mdn, which, edits):
    """A peer that signs garbage: the report is mutated, then signed properly, so the notification
    field reader meets every mutation. A typed refusal or a Receipt, nothing else."""
    report = apply_edits(mdn["reports"][which], edits)
    signer = mdn["signer"]
    sig, _ = cms.sign_detached(report, signer.key, signer.cert, signer.chain)
    _check_mdn(crypto, smime.multipart_signed(report, sig))


# -- the DSN parser ------------------------------------------------------------------------------

def _dsn(envid: str = "m-1", action: str = "failed") -> bytes:
    return (b"From: MAILER-DAEMON@relay.example.nl\r\nTo: nazorg@pi-vught.example.nl\r\n"
            b"Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; relay.example.nl\r\nOriginal-Envelope-Id: " + envid.encode() + b"\r\n\r\n"
            b"Final-Recipient: rfc822; nazorg@gemeente-0599.example.nl\r\nAction: " + action.encode() + b"\r\n"
            b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\n"
            b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m-1@pi-vught.example.nl>\r\n\r\n"
            b"--B--\r\n")


def _check_dsn(raw: bytes):
    result, took = timed(parse_dsn, raw)
    assert took < BOUND_S, f"parse_dsn took {took:.1f} s"
    assert result is None or isinstance(result, (Dsn, DsnError)), \
        f"{type(result).__name__} escaped parse_dsn: {result!r}"
    return result


def test_the_dsn_seed_parses():
    dsn = _check_dsn(_dsn())
    assert isinstance(dsn, Dsn) and dsn.envid == "m-1" and dsn.recipients[0].action == "failed"


@st.composite
def stacked_dsn(draw):
    """A DSN whose report is nested in multiparts n deep, or with n recipient blocks, or n parts."""
    n = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["nested", "recipients", "parts", "fields"]))
    raw = _dsn()
    if kind == "nested":
        head, body = raw.split(b"\r\n\r\n", 1)
        for i in range(n):
            body = (b"--N%d\r\nContent-Type: multipart/mixed; boundary=\"N%d\"\r\n\r\n" % (i, i + 1)) + body + \
                   b"\r\n--N%d--\r\n" % i
        return head.replace(b'boundary="B"', b'boundary="N0"') + b"\r\n\r\n" + body
    if kind == "recipients":
        block = b"Final-Recipient: rfc822; x@y.nl\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n"
        return raw.replace(b"--B\r\nContent-Type: text/rfc822", block * n + b"--B\r\nContent-Type: text/rfc822")
    if kind == "parts":
        return raw.replace(b"--B--", b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" * n + b"--B--")
    return raw.replace(b"Reporting-MTA", b"X-F: v\r\n" * n + b"Reporting-MTA")


@settings(max_examples=fuzz_examples(60, 2_000), **FUZZ)
@given(raw=st.one_of(stacked_dsn(), mutated([_dsn(), _dsn(action="delivered")])))
def test_fuzz_dsn_nested_stacked_and_mutated(raw):
    _check_dsn(raw)
