"""Receipts (signed MDNs, RFC 8098 / AS2 RFC 4130 §7.4) judged by an independent implementation:
`openssl cms` verifies the MDNs `build_mdn` writes and signs MDNs that `parse_mdn` must read; Python's
`email` parser reads their structure. `check_receipt` is tested on real, signed receipts only.

No mocks and no skips: a missing openssl fails these tests (the `oracles` fixture).

openssl 3.0 flags, as in test_seal.py: ``cms -verify -binary -crlfeol`` keeps the CRLF of the signed part
(without ``-crlfeol`` it re-joins the lines of a multipart it reads with bare LF and the digest no longer
matches); no ``-untrusted`` in openssl cms 3.0, so the issuing CA comes from the signature (which embeds
it) and only the root goes in ``-CAfile``. ``cms -sign -binary`` signs the input bytes as they are;
without ``-binary`` openssl signs their canonical (CRLF) form.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from cryptography import x509

from gateway.crypto import errors, smime
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.crypto.open import open_sealed
from gateway.crypto.profiles import COMPATIBLE, STRONG
from gateway.crypto.receipts import (REASON_CODES, Disposition, ReceiptVerdict, build_mdn, check_receipt,
                                     parse_mdn)
from gateway.crypto.seal import seal
from gateway.crypto.trust import PartyBinding, TrustStore

MESSAGE_ID = "20250101T120000.4f2a@pi-vught.nazorg.example.nl"
OTHER_ID = "20250101T120001.9b7c@pi-vught.nazorg.example.nl"
MIC = base64.b64encode(hashlib.sha256(b"the signed part of our message").digest()).decode()
OTHER_MIC = base64.b64encode(hashlib.sha256(b"the signed part of another message").digest()).decode()
SHA1_MIC = base64.b64encode(hashlib.sha1(b"the signed part of our message").digest()).decode()

#: personal data in a message: none of it may end up in a receipt
XML = ('<?xml version="1.0" encoding="UTF-8"?>\n'
       '<meldingsbericht xmlns="urn:nazorg:test">\n'
       '  <achternaam>Jansen-Ëlst</achternaam>\n  <voornamen>Zoë Désirée</voornamen>\n'
       '  <bsn>123456782</bsn>\n  <geboortedatum>1980-02-29</geboortedatum>\n'
       '  <adres>Kruiskade 12b, 3012 EH Rotterdam</adres>\n'
       '  <opmerking>Verblijft tijdelijk bij zus; telefoon 06-12345678</opmerking>\n'
       '</meldingsbericht>\n').encode("utf-8")


def run(args: list[str], data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=data, capture_output=True, timeout=60)


@dataclass
class Lab:
    """The dev PKI, a work folder, and openssl driven from it."""

    folder: Path
    parties: dict[str, Path]
    work: Path
    _n: int = 0
    _identities: dict = field(default_factory=dict)

    def file(self, data: bytes, suffix: str = ".bin") -> Path:
        self._n += 1
        path = self.work / f"f{self._n}{suffix}"
        path.write_bytes(data)
        return path

    @property
    def root_pem(self) -> Path:
        return self.folder / "ca" / "root.pem"

    def identity(self, code: str) -> Identity:
        if code not in self._identities:
            self._identities[code] = load_pem_identity(self.parties[code] / "key.pem", self.parties[code] / "chain.pem")
        return self._identities[code]

    def cert(self, code: str) -> x509.Certificate:
        return self.identity(code).cert

    def openssl_sign(self, report: bytes, signer: str = "0599", *, md: str = "sha256", binary: bool = True,
                     crlfeol: bool = False) -> bytes:
        """`openssl cms -sign` of a report part: a detached multipart/signed with the issuing CA embedded."""
        args = ["openssl", "cms", "-sign", "-md", md, "-signer", str(self.parties[signer] / "cert.pem"),
                "-inkey", str(self.parties[signer] / "key.pem"), "-certfile", str(self.folder / "ca" / "issuing.pem")]
        args += ["-binary"] * binary + ["-crlfeol"] * crlfeol
        r = run(args + ["-in", str(self.file(report))])
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    def openssl_verify(self, entity: bytes) -> bytes:
        """`openssl cms -verify` of a multipart/signed MDN against the root only; the signed content."""
        out = self.work / f"out{self._n}.bin"
        r = run(["openssl", "cms", "-verify", "-CAfile", str(self.root_pem), "-purpose", "smimesign",
                 "-binary", "-crlfeol", "-in", str(self.file(entity, ".eml")), "-out", str(out)])
        assert r.returncode == 0 and b"Verification successful" in r.stderr, r.stderr.decode()
        return out.read_bytes()


@pytest.fixture(scope="module")
def lab(dev_pki, oracles, tmp_path_factory) -> Lab:
    folder, parties = dev_pki
    return Lab(folder, parties, tmp_path_factory.mktemp("receipts"))


@pytest.fixture(scope="module")
def trust(lab) -> TrustStore:
    ca = lab.folder / "ca"
    return TrustStore.load(ca / "root.pem", ca / "issuing.pem", [ca / "issuing.crl.pem"])


def party(code: str) -> PartyBinding:
    return PartyBinding(subject_serial=code)


def mdn(lab: Lab, signer: str = "0599", **kw) -> bytes:
    """A signed MDN from `build_mdn` for MESSAGE_ID, processed with MIC, unless `kw` says otherwise."""
    args = dict(original_message_id=f"<{MESSAGE_ID}>", original_recipient="0599", final_recipient="0599",
                disposition=Disposition.PROCESSED, reason_code=None, mic=MIC, signer=lab.identity(signer))
    args.update(kw)
    return build_mdn(**args).entity


def parts_of(entity: bytes) -> tuple[bytes, bytes]:
    """(signed part, DER signature) of a multipart/signed entity: the boundary from Python's `email` parser
    (an independent reading of the header), the split on raw bytes (RFC 2046: the CRLF before a delimiter
    belongs to it)."""
    boundary = email.message_from_bytes(entity, policy=email.policy.compat32).get_boundary()
    assert boundary
    sections = entity.split(b"\r\n--" + boundary.encode())
    assert len(sections) == 4 and sections[3].startswith(b"--"), "preamble, 2 parts, close delimiter"
    head, body = sections[2].removeprefix(b"\r\n").split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/pkcs7-signature" in head
    return sections[1].removeprefix(b"\r\n"), base64.b64decode(body)


def report(fields: list[str], *, eol: str = "\r\n", text: str = "Receipt for a message.") -> bytes:
    """A multipart/report part written by hand (independent of `build_mdn`), with the given notification fields."""
    lines = ['Content-Type: multipart/report; report-type="disposition-notification";',
             '\tboundary="rpt-7f3a"', "", "--rpt-7f3a", "Content-Type: text/plain", "", text, "",
             "--rpt-7f3a", "Content-Type: message/disposition-notification", "", *fields, "", "--rpt-7f3a--", ""]
    return eol.join(lines).encode("utf-8")


def fields(*, disposition: str = "processed", mic: str | None = f"{MIC}, sha-256",
           message_id: str = f"<{MESSAGE_ID}>", extra: tuple[str, ...] = ()) -> list[str]:
    """The notification fields an AS2 peer writes (Received-Content-MIC left out when `mic` is None)."""
    out = ["Reporting-UA: Other AS2 Server 4.1", "Original-Recipient: rfc822; 0599",
           "Final-Recipient: rfc822; 0599", f"Original-Message-ID: {message_id}",
           f"Disposition: automatic-action/MDN-sent-automatically; {disposition}"]
    if mic is not None:
        out.append(f"Received-Content-MIC: {mic}")
    return out + list(extra)


# -- build -> parse ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trip:
    id: str
    disposition: Disposition
    reason: str | None
    mic: str | None
    signer: str = "0599"
    human_text: str | None = None
    disposition_text: str = ""  #: the Disposition field's type/modifier as it must appear in the MDN


TRIPS = [
    Trip("processed", Disposition.PROCESSED, None, MIC, disposition_text="processed"),
    Trip("processed-error-decryption-failed", Disposition.ERROR, "decryption-failed", None,
         disposition_text="processed/error: decryption-failed"),
    Trip("processed-error-with-mic", Disposition.ERROR, "schema-invalid", MIC,
         disposition_text="processed/error: schema-invalid"),
    Trip("processed-warning-duplicate", Disposition.WARNING, "duplicate", MIC,
         disposition_text="processed/warning: duplicate"),
    Trip("failed-not-entitled", Disposition.FAILED, "not-entitled", None,
         disposition_text="failed/failure: not-entitled"),
    Trip("processed-rsa3072-signer", Disposition.PROCESSED, None, MIC, signer="PI-HAAGLANDEN",
         disposition_text="processed"),
    Trip("processed-ecdsa-p256-signer", Disposition.PROCESSED, None, MIC, signer="PI-ZWOLLE",
         disposition_text="processed"),
    Trip("processed-with-human-text", Disposition.PROCESSED, None, MIC,
         human_text="Vragen? Bel de servicedesk van de gateway.\nQuestions: call the gateway service desk.",
         disposition_text="processed"),
]


@pytest.mark.parametrize("case", TRIPS, ids=[c.id for c in TRIPS])
def test_build_parse_round_trip(lab, trust, case):
    """What `build_mdn` writes, `parse_mdn` reads back field for field, with the verified signer and its chain;
    Python's `email` parser sees a multipart/report with the text part first and the notification second."""
    built = build_mdn(original_message_id=f"<{MESSAGE_ID}>", original_recipient="0599-in", final_recipient="0599",
                      disposition=case.disposition, reason_code=case.reason, mic=case.mic,
                      signer=lab.identity(case.signer), human_text=case.human_text)

    receipt = parse_mdn(built.entity, trust, expected_signer=party(case.signer))

    assert receipt.original_message_id == MESSAGE_ID
    assert (receipt.original_recipient, receipt.final_recipient) == ("0599-in", "0599")
    assert receipt.disposition == case.disposition.value
    modifier_name = case.disposition.value.partition("/")[2]
    assert receipt.modifier == (None if case.reason is None else f"{modifier_name}: {case.reason}")
    assert receipt.reason_code == case.reason
    assert (receipt.mic, receipt.mic_algorithm) == ((case.mic, "sha-256") if case.mic else (None, None))
    assert receipt.reporting_ua == "nazorg-gateway"
    assert receipt.signer == lab.cert(case.signer)
    assert [c.subject for c in receipt.chain][-1] == x509.load_pem_x509_certificate(lab.root_pem.read_bytes()).subject

    assert built.entity.startswith(b"Content-Type: " + built.content_type + b"\r\n\r\n")
    assert b"\n" not in built.entity.replace(b"\r\n", b"")  # canonical: every line ends in CRLF
    outer = email.message_from_bytes(built.entity, policy=email.policy.compat32)
    assert outer.get_content_type() == "multipart/signed" and outer.get_param("micalg") == "sha-256"
    assert outer.get_param("protocol") == "application/pkcs7-signature"
    rep, sig = outer.get_payload()
    assert rep.get_content_type() == "multipart/report"
    assert rep.get_param("report-type") == "disposition-notification"
    human, notification = rep.get_payload()
    assert human.get_content_type() == "text/plain"
    assert notification.get_content_type() == "message/disposition-notification"
    assert sig.get_content_type() == "application/pkcs7-signature"
    text = human.get_payload()
    assert f"<{MESSAGE_ID}>" in text and case.disposition.value in text
    assert case.reason is None or case.reason in text
    assert case.human_text is None or case.human_text.replace("\n", "\r\n") in text
    _, body = parts_of(built.entity)[0].split(b"\r\n\r\n", 1)
    assert (b"Disposition: automatic-action/MDN-sent-automatically; " + case.disposition_text.encode() + b"\r\n"
            in body)
    assert (b"Received-Content-MIC: " + MIC.encode() + b", sha-256\r\n" in body) == (case.mic is not None)
    assert b"Original-Message-ID: <" + MESSAGE_ID.encode() + b">\r\n" in body


def test_http_form_parses(lab, trust):
    """Over AS2/HTTP the Content-Type is an HTTP header: `BuiltMdn.body` with `content_type=` parses alike."""
    built = build_mdn(original_message_id=MESSAGE_ID, original_recipient="0599", final_recipient="0599",
                      disposition=Disposition.PROCESSED, reason_code=None, mic=MIC, signer=lab.identity("0599"))
    entity, ctype = built  # a (entity, content_type) tuple
    assert built.body == entity.split(b"\r\n\r\n", 1)[1] and ctype == built.content_type

    receipt = parse_mdn(built.body, trust, content_type=ctype.decode(), expected_signer=party("0599"))

    assert check_receipt(receipt, message_id=MESSAGE_ID, sealed_mic=MIC).verdict is ReceiptVerdict.MATCH


@pytest.mark.parametrize("profile", [pytest.param(COMPATIBLE, id="compatible"), pytest.param(STRONG, id="strong")])
def test_receipt_for_sealed_message_matches(lab, trust, profile):
    """The AS2 loop: PI-VUGHT seals to 0599; 0599 opens it and answers with an MDN carrying `Opened.mic`;
    PI-VUGHT parses that MDN with its trust store, expecting 0599's signature: MATCH against `Sealed.mic`.
    The same receipt checked against another message's MIC is MISMATCH."""
    sender, recipient = lab.identity("PI-VUGHT"), lab.identity("0599")
    sealed = seal(XML, sender, recipient.cert, profile)
    opened = open_sealed(sealed.entity, recipient, trust, expected_sender=party("PI-VUGHT"))
    assert opened.mic == sealed.mic

    built = build_mdn(original_message_id=f"<{MESSAGE_ID}>", original_recipient="0599", final_recipient="0599",
                      disposition=Disposition.PROCESSED, reason_code=None, mic=opened.mic, signer=recipient)
    receipt = parse_mdn(built.entity, trust, expected_signer=party("0599"))

    check = check_receipt(receipt, message_id=MESSAGE_ID, sealed_mic=sealed.mic)
    assert check.verdict is ReceiptVerdict.MATCH and check.ok, check.reason
    other = seal(XML + b"<!-- resend -->\n", sender, recipient.cert, profile)
    assert check_receipt(receipt, message_id=MESSAGE_ID, sealed_mic=other.mic).verdict is ReceiptVerdict.MISMATCH


def test_receipt_carries_no_personal_data(lab, trust):
    """Receipts for a message full of personal data, processed and refused, hold none of its text: no text
    node, no word of five letters or more, in UTF-8, Latin-1 or lower case; the MDN is pure ASCII."""
    recipient = lab.identity("0599")
    sealed = seal(XML, lab.identity("PI-VUGHT"), recipient.cert, COMPATIBLE)
    opened = open_sealed(sealed.entity, recipient, trust)
    texts = [t.strip() for t in re.findall(r">([^<]+)<", XML.decode()) if t.strip()]
    words = {w for t in texts for w in re.findall(r"\w{5,}", t)}
    assert "Jansen-Ëlst" in texts and "123456782" in words

    for kw in (dict(disposition=Disposition.PROCESSED, reason_code=None, mic=opened.mic),
               dict(disposition=Disposition.ERROR, reason_code="schema-invalid", mic=opened.mic),
               dict(disposition=Disposition.FAILED, reason_code="not-entitled", mic=None)):
        entity = build_mdn(original_message_id=MESSAGE_ID, original_recipient="0599", final_recipient="0599",
                           signer=recipient, **kw).entity
        entity.decode("ascii")
        lowered = entity.lower()
        for needle in (*texts, *words):
            for encoded in (needle.encode("utf-8"), needle.encode("latin-1", "replace")):
                assert encoded not in entity and encoded.lower() not in lowered, needle
        assert base64.b64encode(opened.xml)[:40] not in entity


# -- openssl as the oracle -----------------------------------------------------------------------

@pytest.mark.parametrize("signer", ["0599", "PI-HAAGLANDEN", "PI-ZWOLLE"], ids=["rsa2048", "rsa3072", "ecdsa-p256"])
def test_openssl_verifies_our_mdn(lab, signer):
    """`openssl cms -verify -CAfile root.pem -purpose smimesign -binary -crlfeol` accepts our MDN, and the
    content it hands out is exactly the report part (the bytes between the boundaries)."""
    entity = mdn(lab, signer, disposition=Disposition.ERROR, reason_code="decryption-failed", mic=None)
    part, _ = parts_of(entity)
    assert part.startswith(b"Content-Type: multipart/report; report-type=disposition-notification; ")

    assert lab.openssl_verify(entity) == part


@dataclass(frozen=True)
class Foreign:
    id: str
    signer: str = "0599"
    sign: dict = field(default_factory=dict)
    eol: str = "\r\n"
    fields: dict = field(default_factory=dict)


FOREIGN = [
    Foreign("binary-crlf"),
    Foreign("binary-crlfeol", sign=dict(crlfeol=True)),
    Foreign("text-mode-lf-report-canonicalised-by-openssl", sign=dict(binary=False), eol="\n"),
    Foreign("sha512-digest", sign=dict(md="sha512")),
    Foreign("rsa3072-signer", signer="PI-HAAGLANDEN"),
    Foreign("ecdsa-p256-signer", signer="PI-ZWOLLE"),
    Foreign("mic-spelled-sha256", fields=dict(mic=f"{MIC}, sha256")),
    Foreign("mic-spelled-SHA-256", fields=dict(mic=f"{MIC},SHA-256")),
    Foreign("message-id-without-brackets", fields=dict(message_id=MESSAGE_ID)),
    Foreign("folded-disposition-field", fields=dict(extra=("X-Note: folded", "\tcontinuation"))),
]


@pytest.mark.parametrize("case", FOREIGN, ids=[c.id for c in FOREIGN])
def test_openssl_signed_mdn_parses(lab, trust, case):
    """An MDN that openssl signed (detached multipart/signed, MIME-Version header, quoted micalg, LF line
    ends in its own MIME lines unless -crlfeol) over a report written by hand parses: fields, signer, and
    MATCH against our MIC."""
    entity = lab.openssl_sign(report(fields(**case.fields), eol=case.eol), case.signer, **case.sign)

    receipt = parse_mdn(entity, trust, expected_signer=party(case.signer))

    assert receipt.signer == lab.cert(case.signer)
    assert (receipt.original_message_id, receipt.final_recipient, receipt.original_recipient) == (
        MESSAGE_ID, "0599", "0599")
    assert (receipt.disposition, receipt.modifier, receipt.mic_algorithm) == ("processed", None, "sha-256")
    assert receipt.reporting_ua == "Other AS2 Server 4.1"
    check = check_receipt(receipt, message_id=f"<{MESSAGE_ID}>", sealed_mic=MIC)
    assert check.verdict is ReceiptVerdict.MATCH, check.reason


# -- verdicts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    id: str
    verdict: ReceiptVerdict
    reason: str  #: a piece of the verdict's reason
    build: dict | None = None  #: build_mdn arguments (our builder) ...
    fields: dict | None = None  #: ... or `fields()` arguments (hand-written report, signed by openssl)
    reason_code: str | None = None  #: what Receipt.reason_code must say


VERDICTS = [
    Verdict("match", ReceiptVerdict.MATCH, "MIC matches", build={}),
    Verdict("mic-of-another-message", ReceiptVerdict.MISMATCH, "differs", build=dict(mic=OTHER_MIC)),
    Verdict("no-received-content-mic", ReceiptVerdict.MISSING, "no Received-Content-MIC", build=dict(mic=None)),
    Verdict("processed-error-decryption-failed", ReceiptVerdict.NOT_PROCESSED, "processed/error: decryption-failed",
            build=dict(disposition=Disposition.ERROR, reason_code="decryption-failed", mic=None),
            reason_code="decryption-failed"),
    Verdict("processed-error-with-our-mic", ReceiptVerdict.NOT_PROCESSED, "processed/error: schema-invalid",
            build=dict(disposition=Disposition.ERROR, reason_code="schema-invalid"), reason_code="schema-invalid"),
    Verdict("processed-warning", ReceiptVerdict.NOT_PROCESSED, "processed/warning: duplicate",
            build=dict(disposition=Disposition.WARNING, reason_code="duplicate"), reason_code="duplicate"),
    Verdict("failed-failure", ReceiptVerdict.NOT_PROCESSED, "failed/failure: not-for-us",
            build=dict(disposition=Disposition.FAILED, reason_code="not-for-us", mic=None), reason_code="not-for-us"),
    Verdict("original-message-id-of-another-message", ReceiptVerdict.WRONG_MESSAGE, OTHER_ID,
            build=dict(original_message_id=OTHER_ID)),
    Verdict("sha1-mic", ReceiptVerdict.MISMATCH, "sha1, not sha-256", fields=dict(mic=f"{SHA1_MIC}, sha1")),
    Verdict("md5-mic", ReceiptVerdict.MISMATCH, "md5, not sha-256", fields=dict(mic=f"{SHA1_MIC}, md5")),
    Verdict("mic-not-base64", ReceiptVerdict.MISMATCH, "not base64", fields=dict(mic="not*base64!, sha-256")),
    Verdict("as2-error-other-case", ReceiptVerdict.NOT_PROCESSED, "processed/error: authentication-failed",
            fields=dict(disposition="Processed/Error: authentication-failed", mic=None),
            reason_code="authentication-failed"),
    Verdict("processed-error-without-reason", ReceiptVerdict.NOT_PROCESSED, "processed/error",
            fields=dict(disposition="processed/error", mic=None)),
    Verdict("rfc8098-displayed", ReceiptVerdict.NOT_PROCESSED, "displayed", fields=dict(disposition="displayed")),
    Verdict("foreign-other-message-id", ReceiptVerdict.WRONG_MESSAGE, "not <",
            fields=dict(message_id=f"<{OTHER_ID}>")),
]


@pytest.mark.parametrize("case", VERDICTS, ids=[c.id for c in VERDICTS])
def test_check_receipt_verdicts(lab, trust, case):
    """Each rule of `check_receipt` on a real signed receipt (ours, or one openssl signed): the verdict, a
    reason naming the cause, and only MATCH is `ok`."""
    if case.build is not None:
        entity = mdn(lab, **case.build)
    else:
        entity = lab.openssl_sign(report(fields(**case.fields)))
    receipt = parse_mdn(entity, trust, expected_signer=party("0599"))

    check = check_receipt(receipt, message_id=MESSAGE_ID, sealed_mic=MIC)

    assert check.verdict is case.verdict, check.reason
    assert case.reason in check.reason
    assert check.ok == (case.verdict is ReceiptVerdict.MATCH)
    assert receipt.reason_code == case.reason_code


def test_unsigned_mdn_only_with_allow_unsigned(lab, trust):
    """A bare multipart/report (AS2 allows unsigned MDNs) is MalformedMessage by default; with
    `allow_unsigned=True` it parses with signer=None and is UNSIGNED, never MATCH, though its MIC is ours."""
    bare = report(fields())
    with pytest.raises(errors.MalformedMessage, match="not signed"):
        parse_mdn(bare, trust)

    receipt = parse_mdn(bare, trust, allow_unsigned=True)

    assert receipt.signer is None and receipt.mic == MIC and receipt.original_message_id == MESSAGE_ID
    check = check_receipt(receipt, message_id=MESSAGE_ID, sealed_mic=MIC)
    assert check.verdict is ReceiptVerdict.UNSIGNED and not check.ok


def test_allow_unsigned_does_not_excuse_a_bad_signature(lab, trust):
    """`allow_unsigned` accepts a missing signature, never a broken one: a signed MDN altered after signing
    still fails."""
    entity = mdn(lab).replace(b"; processed\r\nReceived", b"; processed/error: duplicate\r\nReceived")
    with pytest.raises(errors.ContentAltered):
        parse_mdn(entity, trust, allow_unsigned=True)


# -- parse failures ------------------------------------------------------------------------------

def _flip_signature(entity: bytes) -> bytes:
    """The same MDN with the last byte of the DER SignedData (the signature value) flipped."""
    part, der = parts_of(entity)
    return smime.multipart_signed(part, der[:-1] + bytes([der[-1] ^ 1]))


def _untrusted(lab: Lab, make_cert) -> bytes:
    """An MDN signed by a key from a foreign root (embedded in the signature), posing as 0599."""
    ca_key, ca = make_cert("Foreign Root CA", ca=True)
    key, cert = make_cert("Gemeente Rotterdam", issuer=(ca, ca_key), serial="0599",
                          email="nazorg@gemeente-0599.example.nl")
    return build_mdn(original_message_id=MESSAGE_ID, original_recipient="0599", final_recipient="0599",
                     disposition=Disposition.PROCESSED, reason_code=None, mic=MIC,
                     signer=Identity(key, cert, (ca,))).entity


@dataclass(frozen=True)
class Bad:
    id: str
    make: Callable  #: (lab, make_cert) -> MDN bytes
    error: type[errors.CryptoError]
    expected: str | None = "0599"  #: the expected signer's party code
    match: str | None = None


BAD = [
    # signature and content
    Bad("disposition-changed-after-signing", lambda lab, mc: mdn(
        lab, disposition=Disposition.ERROR, reason_code="decryption-failed", mic=None).replace(
        b"MDN-sent-automatically; processed/error: decryption-failed", b"MDN-sent-automatically; processed"),
        errors.ContentAltered),
    Bad("mic-changed-after-signing", lambda lab, mc: mdn(lab).replace(MIC.encode(), OTHER_MIC.encode()),
        errors.ContentAltered),
    Bad("signature-value-altered", lambda lab, mc: _flip_signature(mdn(lab)), errors.SignatureInvalid),
    Bad("sha1-signature-digest", lambda lab, mc: lab.openssl_sign(report(fields()), md="sha1"),
        errors.WeakAlgorithm),
    # signer
    Bad("untrusted-key", _untrusted, errors.SignerNotTrusted),
    Bad("signed-by-the-wrong-party", lambda lab, mc: mdn(lab, signer="0344"), errors.WrongSender),
    Bad("openssl-signed-by-the-wrong-party", lambda lab, mc: lab.openssl_sign(report(fields()), "0363"),
        errors.WrongSender),
    Bad("expired-signer", lambda lab, mc: lab.openssl_sign(report(fields()), "TEST-EXPIRED"),
        errors.CertificateExpired, expected=None),
    Bad("revoked-signer", lambda lab, mc: lab.openssl_sign(report(fields()), "TEST-REVOKED"),
        errors.CertificateRevoked, expected=None),
    # structure
    Bad("unsigned-report", lambda lab, mc: report(fields()), errors.MalformedMessage, match="not signed"),
    Bad("not-an-mdn", lambda lab, mc: b"Content-Type: application/xml\r\n\r\n<a/>\r\n", errors.MalformedMessage,
        match="not an MDN"),
    Bad("no-mime-headers", lambda lab, mc: b"processed\r\n", errors.MalformedMessage),
    Bad("empty", lambda lab, mc: b"", errors.MalformedMessage),
    Bad("truncated-no-closing-boundary", lambda lab, mc: mdn(lab)[:-60], errors.MalformedMessage),
    Bad("signature-part-not-pkcs7", lambda lab, mc: re.sub(rb"application/pkcs7-signature; name",
                                                           b"text/plain; name", mdn(lab)),
        errors.MalformedMessage, match="expected application/pkcs7-signature"),
    Bad("signature-not-base64", lambda lab, mc: re.sub(rb'filename="smime.p7s"\r\n\r\n[A-Za-z0-9+/]{4}',
                                                       b'filename="smime.p7s"\r\n\r\n*!*!', mdn(lab)),
        errors.MalformedMessage, match="base64"),
    Bad("signed-part-not-a-report", lambda lab, mc: lab.openssl_sign(b"Content-Type: text/plain\r\n\r\nok\r\n"),
        errors.MalformedMessage, match="expected multipart/report"),
    Bad("report-without-notification-part", lambda lab, mc: lab.openssl_sign(
        report(fields()).replace(b"message/disposition-notification", b"text/plain")),
        errors.MalformedMessage, match="disposition-notification parts"),
    Bad("no-original-message-id", lambda lab, mc: lab.openssl_sign(
        report([f for f in fields() if not f.startswith("Original-Message-ID")])),
        errors.MalformedMessage, match="original-message-id"),
    Bad("two-disposition-fields", lambda lab, mc: lab.openssl_sign(
        report(fields(extra=("Disposition: automatic-action/MDN-sent-automatically; failed/failure: x",)))),
        errors.MalformedMessage, match="more than one disposition"),
    Bad("disposition-without-mode", lambda lab, mc: lab.openssl_sign(
        report([f for f in fields() if not f.startswith("Disposition")] + ["Disposition: processed"])),
        errors.MalformedMessage, match="Disposition field"),
    Bad("mic-without-algorithm", lambda lab, mc: lab.openssl_sign(report(fields(mic=MIC))),
        errors.MalformedMessage, match="Received-Content-MIC"),
    Bad("control-character-in-a-field", lambda lab, mc: lab.openssl_sign(
        report(fields(message_id=f"<{MESSAGE_ID}\x1b[2J>"))), errors.MalformedMessage, match="control"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_parse_mdn_refuses(lab, trust, make_cert, case):
    """Each broken, altered, untrusted or misdirected MDN raises the one typed error that names it.

    Documented outcomes: a report altered after signing is ContentAltered (its digest no longer matches the
    signed messageDigest; the signature over the signed attributes is intact); an altered signature value
    is SignatureInvalid; an unsigned MDN is MalformedMessage ("not signed")."""
    entity = case.make(lab, make_cert)
    expected = party(case.expected) if case.expected else None
    with pytest.raises(case.error, match=case.match) as caught:
        parse_mdn(entity, trust, expected_signer=expected)
    assert type(caught.value) is case.error


# -- build-time refusals -------------------------------------------------------------------------

REFUSED = [
    pytest.param(dict(reason_code="decryption failed"), "reason code", id="reason-with-space"),
    pytest.param(dict(reason_code="J. Jansen, BSN 123456782"), "reason code", id="reason-with-personal-data"),
    pytest.param(dict(reason_code="Decryption-Failed"), "reason code", id="reason-upper-case"),
    pytest.param(dict(reason_code="x" * 65), "reason code", id="reason-too-long"),
    pytest.param(dict(reason_code=""), "reason code", id="reason-empty"),
    pytest.param(dict(reason_code="duplicate\r\nBcc: x"), "reason code", id="reason-header-injection"),
    pytest.param(dict(reason_code="zoë"), "reason code", id="reason-non-ascii"),
    pytest.param(dict(disposition=Disposition.ERROR, reason_code=None), "needs a reason code",
                 id="error-without-reason"),
    pytest.param(dict(disposition=Disposition.PROCESSED, reason_code="duplicate"), "takes no reason code",
                 id="processed-with-reason"),
    pytest.param(dict(disposition="processed/ok"), "not a valid Disposition", id="unknown-disposition"),
    pytest.param(dict(original_message_id="abc\r\nBcc: x@y"), "message id", id="message-id-header-injection"),
    pytest.param(dict(original_message_id="<a b@c>"), "message id", id="message-id-with-space"),
    pytest.param(dict(original_message_id="<>"), "message id", id="message-id-empty"),
    pytest.param(dict(final_recipient="0599\r\nX: y"), "final_recipient", id="recipient-header-injection"),
    pytest.param(dict(original_recipient=""), "original_recipient", id="recipient-empty"),
    pytest.param(dict(reporting_ua="gateway\n"), "reporting_ua", id="reporting-ua-newline"),
    pytest.param(dict(mic="not base64"), "mic", id="mic-not-base64"),
    pytest.param(dict(mic=SHA1_MIC), "mic", id="mic-sha1-length"),
    pytest.param(dict(human_text="Zoë Çelik"), "human_text", id="human-text-non-ascii"),
    pytest.param(dict(human_text="line\r\nBcc: x"), "human_text", id="human-text-carriage-return"),
    pytest.param(dict(human_text="x" * 901), "human_text", id="human-text-too-long"),
]


@pytest.mark.parametrize(("kw", "says"), REFUSED)
def test_build_mdn_refuses(lab, kw, says):
    """Anything that is not a slug, an id, a party name or a SHA-256 MIC is refused before signing, so neither
    free text nor personal data nor a header can get into a receipt; the error does not echo the value."""
    with pytest.raises(ValueError, match=says) as caught:
        mdn(lab, **kw)
    for value in kw.values():
        if type(value) is str and len(value) > 3 and value != "processed/ok":  # the enum names a bad disposition
            assert value not in str(caught.value)


def test_reason_codes_are_slugs_and_include_the_error_codes():
    """Every documented reason code is a valid slug, and the opening errors' codes are among them."""
    for code in REASON_CODES:
        assert re.fullmatch(r"[a-z0-9-]{1,64}", code)
    for cls in (errors.DecryptionFailed, errors.NotForUs, errors.SignatureInvalid, errors.WrongSender):
        assert cls.code in REASON_CODES
    assert {"schema-invalid", "not-entitled", "duplicate"} <= set(REASON_CODES)
