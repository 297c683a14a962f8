"""Hostile MIME and CMS at the intake (issue 7, item 4): the transport-neutral receiving path
(`gateway.pipeline.intake.Intake.receive`) on real parts — a local set-up turned into municipality
0599's, its SQLite store, the validation worker, the inbox on disk — fed what a hostile or broken peer
sends as PI-VUGHT: a truncated entity, multiparts nested 1,000 deep (outside and inside the signature),
a 1 MB header line, wrong content types, a valid signature over other content, a certificate chain
that loops, a certificate of 1 MB, unknown algorithm OIDs.

Each must be refused with a reason code, within a bound measured here (`BOUND_S`), with nothing in the
inbox, the entity in quarantine, a refused row, and a signed error receipt naming the code. The control
(`test_control_the_untouched_message_is_accepted`) shows the same path accepts the honest message, so
every refusal below is the hostile part's doing."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.smtp import compose_mail
from dropped import example, with_new_id
from gateway.config import load_config
from gateway.crypto import cms, smime
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.crypto.profiles import COMPATIBLE
from gateway.crypto.receipts import parse_mdn
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.pipeline.intake import Arrival, Intake, intake_from_config
from gateway.pipeline.validation import ValidationPool
from gateway.setup_local import init_local
from gateway.store import Store
from local_setup import copy_of

PI = "nazorg@pi-vught.example.nl"
GEMEENTE = "nazorg@gemeente-0599.example.nl"
#: generous on a loaded 2-core machine (load 10 seen while other suites run): the honest message takes
#: well under a second, each hostile one here under half a second unloaded; a hang or a blow-up crosses it
BOUND_S = 10.0


# -- the receiving gateway (0599) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def intake_template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("security-intake") / "gw"
    init_local(folder)
    return folder


@pytest.fixture(scope="module")
def validation(intake_template):
    cfg = load_config(intake_template / "gateway.toml")
    pool = ValidationPool(institutions=cfg.registries.institutions, municipalities=cfg.registries.municipalities,
                          max_bytes=cfg.limits.max_message_bytes, workers=1)
    yield pool
    pool.close()


def become_0599(setup: Path) -> Path:
    """The PI's set-up as municipality 0599's (same PKI): own party 0599, a route for PI-VUGHT."""
    path = setup / "gateway.toml"
    text = path.read_text()
    text = re.sub(r"\[party\]\ncode = \"[^\"]*\"\nkind = \"[^\"]*\"\nemail = \"[^\"]*\"\nname = \"[^\"]*\"",
                  f'[party]\ncode = "0599"\nkind = "gemeente"\nemail = "{GEMEENTE}"\nname = "Gemeente Rotterdam"',
                  text)
    text = text.replace("keys/parties/PI-VUGHT/", "keys/parties/0599/")
    route = (f'[routes."PI-VUGHT"]\ntransport = "email"\naddress = "{PI}"\n'
             'certificate = "keys/parties/PI-VUGHT/cert.pem"\nprofile = "strong"\n')
    text, n = re.subn(r'\[routes\."0599"\][^\[]*', route, text)
    assert n == 1
    path.write_text(text)
    return path


@pytest.fixture
def setup(intake_template, tmp_path) -> Path:
    return copy_of(intake_template, tmp_path)


@pytest.fixture
def municipality(setup):
    cfg = load_config(become_0599(setup))
    cfg.folders.create()
    cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
async def intake(municipality, validation):
    store = await Store.open(municipality.store.url)
    secrets = municipality.check_secrets()
    yield intake_from_config(municipality, store=store, identity=secrets.identity, trust=secrets.trust,
                             validation=validation)
    await store.close()


@pytest.fixture
def pi_trust(setup) -> TrustStore:
    return TrustStore.from_bundle(setup / "keys" / "trust.pem", [setup / "keys" / "ca" / "issuing.crl.pem"])


def identity(setup: Path, code: str) -> Identity:
    folder = setup / "keys" / "parties" / code
    return load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")


def certificate(setup: Path, code: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((setup / "keys" / "parties" / code / "cert.pem").read_bytes())


# -- building what a peer sends -------------------------------------------------------------------

def a_message() -> tuple[bytes, str]:
    return with_new_id(example("01-meldingsbericht.xml"))


def signed_entity(part: bytes, key, cert: x509.Certificate, chain=()) -> tuple[bytes, bytes]:
    """(multipart/signed over `part`, the signature DER)."""
    signature, _ = cms.sign_detached(part, key, cert, tuple(chain))
    return smime.multipart_signed(part, signature), signature


def envelope_der(setup: Path, inner: bytes) -> bytes:
    """`inner` encrypted to 0599 (and to the PI), as the sealer does with the compatible profile."""
    return cms.envelope(inner, [certificate(setup, "0599")], COMPATIBLE.key_transport, COMPATIBLE.content_cipher,
                        self_copy=certificate(setup, "PI-VUGHT"))


def as_mail(entity: bytes, mid: str) -> tuple[bytes, str]:
    """The mail the PI's gateway would send around `entity` (bytes, its Message-ID)."""
    mail = compose_mail(sealed_entity=entity, message_id=mid, label="meldingsbericht", from_address=PI,
                        to_address=GEMEENTE, receipt_to=PI, date=datetime.now(timezone.utc),
                        id_domain="pi-vught.example.nl")
    return mail.data, mail.mail_message_id


def honest(setup: Path) -> tuple[bytes, str, bytes]:
    """(the honest mail, its Message-ID, the sealed S/MIME entity in it)."""
    xml, mid = a_message()
    pi = identity(setup, "PI-VUGHT")
    signed, _ = signed_entity(smime.content_part(xml, "meldingsbericht.xml"), pi.key, pi.cert, pi.chain)
    entity = smime.pkcs7_mime(envelope_der(setup, signed), authenticated=False)
    data, mail_id = as_mail(entity, mid)
    return data, mail_id, entity


def rogue_cert(subject: x509.Name, issuer: x509.Name, key, signing_key, *, ca: bool, email: str | None = None,
               extensions: list[x509.ExtensionType] = ()) -> x509.Certificate:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
         .not_valid_after(now + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=not ca, key_encipherment=not ca,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), critical=True))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    return b.sign(signing_key, hashes.SHA256())


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_KEYS: list = []


def rsa_key():
    """RSA keys for rogue certificates (a few, made once: key generation is the slow part)."""
    if not _KEYS:
        _KEYS.extend(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
    return _KEYS


def sealed_by_rogue(setup: Path, signer_key, signer_cert, chain) -> tuple[bytes, str]:
    xml, mid = a_message()
    signed, _ = signed_entity(smime.content_part(xml, "meldingsbericht.xml"), signer_key, signer_cert, chain)
    return as_mail(smime.pkcs7_mime(envelope_der(setup, signed), authenticated=False), mid)


# -- the check ------------------------------------------------------------------------------------

def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def refused_in_time(intake: Intake, municipality, data: bytes, mail_id: str, pi_trust: TrustStore,
                          codes: set[str]):
    """Receive the mail; expect a refusal with one of `codes` within BOUND_S, nothing in the inbox, the
    entity kept in quarantine with its reason, a refused row, and a signed error receipt naming the code."""
    arrival = Arrival(entity=data, transport="email", transport_message_id=mail_id, claimed_sender=PI,
                      reply_to=PI)
    start = time.monotonic()
    outcome = await intake.receive(arrival)
    took = time.monotonic() - start
    assert took < BOUND_S, f"the refusal took {took:.1f} s"
    assert (outcome.accepted, outcome.duplicate) == (False, False), outcome.reason
    assert outcome.reason_code in codes, (outcome.reason_code, outcome.reason)
    assert files(municipality.folders.inbox) == []
    kept = sorted(municipality.folders.quarantine.glob("*.p7m"))
    assert len(kept) == 1 and kept[0].read_bytes() == data
    report = json.loads(kept[0].with_suffix(".json").read_text())
    assert report["reason_code"] == outcome.reason_code
    receipt = parse_mdn(outcome.mdn.entity, pi_trust, expected_signer=PartyBinding(email=GEMEENTE))
    assert receipt.disposition == "processed/error" and receipt.reason_code == outcome.reason_code
    row = await intake.store.find_inbound_by_transport("email", mail_id)
    assert (row.outcome, row.reason_code, row.inbox_path) == ("refused", outcome.reason_code, None)
    return outcome


async def test_control_the_untouched_message_is_accepted(setup, municipality, intake):
    """The honest message on the same path is accepted and lands in the inbox: the refusals below are
    caused by what each case changes, not by the set-up."""
    data, mail_id, _ = honest(setup)
    start = time.monotonic()
    outcome = await intake.receive(Arrival(data, "email", mail_id, PI, PI))
    assert outcome.accepted, outcome.reason
    assert time.monotonic() - start < BOUND_S
    assert len(files(municipality.folders.inbox)) == 2  # .json + .xml


@pytest.mark.parametrize("where", [0.05, 0.5, 0.999])
async def test_a_truncated_entity_is_refused(setup, municipality, intake, pi_trust, where):
    data, mail_id, _ = honest(setup)
    cut = data[:int(len(data) * where)]
    await refused_in_time(intake, municipality, cut, mail_id, pi_trust, {"malformed", "decryption-failed"})


def nested_multipart(depth: int, leaf: bytes) -> bytes:
    head = b""
    tail = b""
    for i in range(depth):
        head += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        tail = b"\r\n--b%d--\r\n" % i + tail
    return head + leaf + tail


async def test_a_mail_nested_a_thousand_multiparts_deep_is_refused(setup, municipality, intake, pi_trust):
    """The sealed entity at the bottom of 1,000 nested multipart/mixed: not an S/MIME message."""
    _, mail_id, entity = honest(setup)
    data = (f"From: {PI}\r\nTo: {GEMEENTE}\r\nMessage-ID: {mail_id}\r\nMIME-Version: 1.0\r\n").encode() + \
        nested_multipart(1000, entity)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"malformed"})


async def test_signed_content_nested_a_thousand_multiparts_deep_is_refused(setup, municipality, intake, pi_trust):
    """The PI's real key signs (and the envelope really is for 0599) a content part that is 1,000
    multiparts deep: the signature holds, the content is no XML document."""
    xml, mid = a_message()
    pi = identity(setup, "PI-VUGHT")
    part = nested_multipart(1000, smime.content_part(xml, "meldingsbericht.xml"))
    signed, _ = signed_entity(part, pi.key, pi.cert, pi.chain)
    data, mail_id = as_mail(smime.pkcs7_mime(envelope_der(setup, signed), authenticated=False), mid)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"malformed"})


@pytest.mark.parametrize("shape", ["one-line", "folded", "many-headers"])
async def test_a_one_megabyte_header_is_refused(setup, municipality, intake, pi_trust, shape):
    """1 MB of header in the mail around an honest message: one line (RFC 5322 allows 998 characters),
    the same folded into 900-character lines, or 1 MB of short headers (over the 64 KiB cap)."""
    data, mail_id, _ = honest(setup)
    head, body = data.split(b"\r\n\r\n", 1)
    padding = {"one-line": b"X-Padding: " + b"A" * (1 << 20),
               "folded": b"X-Padding: A" + b"\r\n " + b"\r\n ".join([b"A" * 900] * 1166),
               "many-headers": b"\r\n".join([b"X-Padding: " + b"A" * 60] * 14_900)}[shape]
    data = head + b"\r\n" + padding + b"\r\n\r\n" + body
    assert len(data) > 1 << 20
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"malformed"})


async def test_a_one_megabyte_content_type_parameter_is_refused(setup, municipality, intake, pi_trust):
    data, mail_id, _ = honest(setup)
    data = data.replace(b"smime-type=", b"x=" + b"\"" + b"A" * (1 << 20) + b"\"; smime-type=", 1)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"malformed"})


def _wrong_type_cases(setup: Path) -> dict[str, bytes]:
    xml, _ = a_message()
    pi = identity(setup, "PI-VUGHT")
    part = smime.content_part(xml, "meldingsbericht.xml")
    signed, signature = signed_entity(part, pi.key, pi.cert, pi.chain)
    enc = base64.encodebytes(envelope_der(setup, signed)).replace(b"\n", b"\r\n")
    unsigned_inner = smime.pkcs7_mime(envelope_der(setup, part), authenticated=False)
    return {
        # the outer entity: not encrypted, or declared as something else
        "text-plain": b"Content-Type: text/plain\r\n\r\n" + xml,
        "signed-only-multipart": signed,  # signed, never encrypted: plaintext on the way
        "signed-only-opaque": (b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
                               b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(signature)),
        "signature-as-message": (b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64"
                                 b"\r\n\r\n" + enc),
        "smime-type-compressed": (b"Content-Type: application/pkcs7-mime; smime-type=compressed-data\r\n"
                                  b"Content-Transfer-Encoding: base64\r\n\r\n" + enc),
        "application-xml": b"Content-Type: application/xml\r\nContent-Transfer-Encoding: base64\r\n\r\n" + enc,
        # the inner entity: encrypted for 0599 but not signed
        "encrypted-not-signed": unsigned_inner,
    }


@pytest.mark.parametrize("case", ["text-plain", "signed-only-multipart", "signed-only-opaque", "signature-as-message",
                                  "smime-type-compressed", "application-xml", "encrypted-not-signed"])
async def test_a_wrong_content_type_is_refused(setup, municipality, intake, pi_trust, case):
    _, mid = a_message()
    mail_id = f"<{mid}@pi-vught.example.nl>"
    data = f"From: {PI}\r\nTo: {GEMEENTE}\r\nMessage-ID: {mail_id}\r\nMIME-Version: 1.0\r\n".encode() + \
        _wrong_type_cases(setup)[case]
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"malformed"})


async def test_a_valid_signature_over_other_content_is_refused(setup, municipality, intake, pi_trust):
    """The PI's genuine signature of one message, attached to another message (same size, both valid,
    both from the PI to 0599), encrypted properly for 0599."""
    xml_a, _ = a_message()
    xml_b, mid_b = a_message()
    assert len(xml_a) == len(xml_b) and xml_a != xml_b
    pi = identity(setup, "PI-VUGHT")
    _, signature_a = signed_entity(smime.content_part(xml_a, "meldingsbericht.xml"), pi.key, pi.cert, pi.chain)
    forged = smime.multipart_signed(smime.content_part(xml_b, "meldingsbericht.xml"), signature_a)
    data, mail_id = as_mail(smime.pkcs7_mime(envelope_der(setup, forged), authenticated=False), mid_b)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"content-altered", "signature-invalid"})


async def test_a_certificate_chain_loop_is_refused(setup, municipality, intake, pi_trust):
    """A signer certificate (with the PI's address) issued by a CA named like the real issuing CA, which
    is issued by a second CA, which is issued by the first: a loop, embedded in the signature."""
    k_leaf, k_x, k_y = rsa_key()
    real_issuing = x509.load_pem_x509_certificate((setup / "keys" / "ca" / "issuing.pem").read_bytes())
    x_name, y_name = real_issuing.subject, name("Loop CA Y")
    ca_x = rogue_cert(x_name, y_name, k_x, k_y, ca=True)
    ca_y = rogue_cert(y_name, x_name, k_y, k_x, ca=True)
    leaf = rogue_cert(name("PI Vught"), x_name, k_leaf, k_x, ca=False, email=PI)
    data, mail_id = sealed_by_rogue(setup, k_leaf, leaf, [ca_x, ca_y, ca_x, ca_y])
    outcome = await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"signer-not-trusted"})
    assert "[chain-broken]" in outcome.reason or "[signer-not-trusted]" in outcome.reason, outcome.reason


async def test_an_enormous_certificate_is_refused(setup, municipality, intake, pi_trust):
    """A signer certificate carrying 1 MB of extensions (with the PI's address), embedded in the
    signature: read, found untrusted, refused in bounded time."""
    k_leaf, k_x, _ = rsa_key()
    padding = [x509.UnrecognizedExtension(x509.ObjectIdentifier(f"1.3.6.1.4.1.99999.{i}"), b"\x04\x82\xff\xf0"
                                          + bytes(0xFFF0)) for i in range(16)]
    leaf = rogue_cert(name("PI Vught"), name("Rogue CA"), k_leaf, k_x, ca=False, email=PI, extensions=padding)
    from cryptography.hazmat.primitives.serialization import Encoding
    assert len(leaf.public_bytes(Encoding.DER)) > 1_000_000
    data, mail_id = sealed_by_rogue(setup, k_leaf, leaf, [])
    assert len(data) < intake.max_entity_bytes  # it reaches the opener, not only the size check
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"signer-not-trusted"})


#: DER of the OIDs replaced: aes256-CBC (content encryption), sha256 (the signature's digest)
AES256_CBC = bytes.fromhex("060960864801650304012a")
SHA256 = bytes.fromhex("0609608648016503040201")
UNKNOWN_ARC = 0x7F  # 2.16.840.1.101.3.4.1.127 / 2.16.840.1.101.3.4.2.127: assigned to nothing


async def test_an_unknown_content_encryption_algorithm_is_refused(setup, municipality, intake, pi_trust):
    xml, mid = a_message()
    pi = identity(setup, "PI-VUGHT")
    signed, _ = signed_entity(smime.content_part(xml, "meldingsbericht.xml"), pi.key, pi.cert, pi.chain)
    der = envelope_der(setup, signed)
    assert der.count(AES256_CBC) == 1
    der = der.replace(AES256_CBC, AES256_CBC[:-1] + bytes([UNKNOWN_ARC]))
    data, mail_id = as_mail(smime.pkcs7_mime(der, authenticated=False), mid)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust, {"unsupported-algorithm"})


async def test_an_unknown_digest_algorithm_is_refused(setup, municipality, intake, pi_trust):
    xml, mid = a_message()
    pi = identity(setup, "PI-VUGHT")
    _, signature = signed_entity(smime.content_part(xml, "meldingsbericht.xml"), pi.key, pi.cert, pi.chain)
    n = signature.count(SHA256)
    assert n >= 2  # digestAlgorithms and the SignerInfo's digestAlgorithm
    signature = signature.replace(SHA256, SHA256[:-1] + bytes([UNKNOWN_ARC]))
    signed = smime.multipart_signed(smime.content_part(xml, "meldingsbericht.xml"), signature)
    data, mail_id = as_mail(smime.pkcs7_mime(envelope_der(setup, signed), authenticated=False), mid)
    await refused_in_time(intake, municipality, data, mail_id, pi_trust,
                          {"unsupported-algorithm", "signature-invalid"})
