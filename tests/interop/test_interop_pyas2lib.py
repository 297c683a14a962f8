"""Interoperability with an AS2 implementation not written here: pyas2lib 1.4.4 (PyPI), both directions,
over real HTTPS with mutual TLS on loopback, receipts verified on both sides.

1. pyas2lib sends to OUR daemon (`Gateway` with its AS2 server and the real intake: open, validate,
   entitlement, inbox, store, signed MDN). pyas2lib's defaults (neither signed nor encrypted) are
   refused ``processed/error: malformed``; signed and encrypted with its default cipher (3DES),
   ``processed/error: weak-algorithm`` (a signed MDN that pyas2lib itself verifies and reads). Set to
   AES-CBC the message is accepted, and pyas2lib verifies our signed MDN and reads ``processed`` with
   the MIC it computed itself. RSA-OAEP (SHA-1) key transport is accepted too, once pyas2lib honours
   its own ``key_enc_alg`` option (its bug; see README.md). A resend gets the same receipt, one inbox
   file. A compressed message (RFC 5402) is refused: we do not decompress (see README.md).
2. OUR `As2Client` sends to pyas2lib acting as server; its signed MDN is verified with `parse_mdn` and
   `check_receipt`: MATCH for RSA PKCS#1 v1.5 and RSA-OAEP-SHA1 with AES-256-CBC, base64 and binary
   bodies. Where pyas2lib's answer proves nothing (it cannot read OAEP-SHA256/512 or AES-GCM; a partner
   left at its defaults answers "processed" with no MIC for a message it could not even decrypt) our
   side refuses to count it as delivered: NOT_PROCESSED, MISSING. The daemon itself, with a platform
   route that names RSA-OAEP-SHA1 + AES-256-CBC, sends a dropped message to pyas2lib: acknowledged.
3. pyas2lib's weaknesses as a receipt reader, pinned (why the tests above compare MICs themselves).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import time
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509

from adapters.as2 import As2Client, As2Partner, As2Settings
from dropped import example, with_new_id
from gateway.crypto.identity import Identity, load_pem_identity
from gateway.crypto.profiles import STRONG, profile_from
from gateway.crypto.receipts import Disposition, ReceiptVerdict, build_mdn, check_receipt, parse_mdn
from gateway.crypto.seal import seal
from gateway.crypto.trust import PartyBinding, TrustStore
from gateway.store import State
from interop_gateway import free_port, receiving_config, running, sending_config, write_template
from pyas2lib_peer import PeerServer, as2, client_tls, peer_org, peer_partner, send

# pyas2lib 1.4.4 calls datetime.utcnow() when it signs; Python 3.12+ warns about it (the peer's, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

GM, PI = "0599", "PI-VUGHT"
MDN_WANTED = dict(mdn_mode="SYNC", mdn_digest_alg="sha256")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One development PKI and 0599's set-up (AS2 server, a platform route from PI-VUGHT) per module."""
    return write_template(tmp_path_factory.mktemp("interop") / "gm", party=GM, partner=PI)


@pytest.fixture(scope="module")
def keys(template) -> Path:
    return template / "keys"


@pytest.fixture(scope="module")
def trust(keys) -> TrustStore:
    return TrustStore.from_bundle(keys / "trust.pem", [keys / "ca" / "issuing.crl.pem"])


def identity(keys: Path, code: str) -> Identity:
    folder = keys / "parties" / code
    return load_pem_identity(folder / "key.pem", folder / "cert.pem", folder / "chain.pem")


def built(org, partner, xml: bytes) -> as2.Message:
    msg = as2.Message(org, partner)
    msg.build(xml, filename="meldingsbericht.xml", content_type="application/xml", subject="nazorg interop")
    return msg


def key_transport_of(msg: as2.Message) -> str:
    """The key encryption algorithm of the (only) recipient of what pyas2lib built."""
    env = asn1_cms.ContentInfo.load(msg.content)["content"]
    return env["recipient_infos"][0].chosen["key_encryption_algorithm"]["algorithm"].native


# -- 1. pyas2lib sends, our daemon receives -------------------------------------------------------

async def test_pyas2lib_sends_to_our_daemon(template, keys, trust, tmp_path, monkeypatch):
    cfg = receiving_config(template, tmp_path / "gm", free_port())
    org, tls = peer_org(keys, PI), client_tls(keys, PI)
    inbox = cfg.folders.inbox / "meldingsbericht"
    started = time.perf_counter()
    async with running(cfg) as gw:
        url = gw.as2_server.url(cfg.as2.path)

        xml, mid = with_new_id(example("01-meldingsbericht.xml"))
        # pyas2lib's defaults: neither signed nor encrypted (AS2 allows it; we do not)
        plain = built(org, peer_partner(keys, GM, **MDN_WANTED), xml)
        answer = await send(url, plain, tls)
        assert answer.status == 200
        assert as2.Mdn().parse(answer.raw, lambda *_: plain) == ("processed/error", "malformed")

        # signed and encrypted, with pyas2lib's default cipher 3DES, which we refuse as weak, and say so
        default = peer_partner(keys, GM, sign=True, encrypt=True, **MDN_WANTED)
        assert default.enc_alg == "tripledes_192_cbc"
        msg = built(org, default, xml)
        answer = await send(url, msg, tls)
        assert answer.status == 200
        assert as2.Mdn().parse(answer.raw, lambda *_: msg) == ("processed/error", "weak-algorithm")
        refused = await gw.store.find_inbound_by_transport("as2", f"<{msg.message_id}>")
        assert (refused.outcome, refused.reason_code) == ("refused", "weak-algorithm")
        assert "3DES" in refused.reason
        assert not inbox.exists()

        # configured to AES-256-CBC (pyas2lib still uses RSA PKCS#1 v1.5 key transport): accepted
        aes = peer_partner(keys, GM, sign=True, encrypt=True, enc_alg="aes_256_cbc", **MDN_WANTED)
        msg = built(org, aes, xml)
        assert key_transport_of(msg) == "rsaes_pkcs1v15"
        answer = await send(url, msg, tls)
        assert answer.status == 200
        # pyas2lib verified our signature (chain to the development CA) and found its own MIC in it
        assert as2.Mdn().parse(answer.raw, lambda *_: msg) == ("processed", None)
        receipt = parse_mdn(answer.body, trust, content_type=answer.headers["Content-Type"],
                            expected_signer=PartyBinding(subject_serial=GM))
        assert (receipt.mic, receipt.mic_algorithm) == (msg.mic.decode(), "sha-256")  # pyas2lib's MIC, not ours
        assert receipt.original_message_id == msg.message_id and receipt.disposition == "processed"
        # MIME text canonicalisation (RFC 8551 §3.1.1): pyas2lib sends the XML as a text part, so its line
        # ends arrive as CRLF; the document is the same
        assert (inbox / f"{mid}.xml").read_bytes() == xml.replace(b"\n", b"\r\n")
        meta = json.loads((inbox / f"{mid}.json").read_text())
        assert (meta["transport"], meta["sender"], meta["mic"]) == ("as2", f"pi:{PI}", msg.mic.decode())
        accepted = await gw.store.find_inbound(mid)
        assert (accepted.outcome, accepted.transport_message_id) == ("accepted", f"<{msg.message_id}>")

        # the same request again (a peer retrying): the same receipt, nothing new in the inbox
        again = await send(url, msg, tls)
        assert again.body == answer.body
        assert as2.Mdn().parse(again.raw, lambda *_: msg) == ("processed", None)

        # RSA-OAEP (SHA-1, what pyas2lib's OAEP is) with AES-128-CBC; Partner(key_enc_alg=...) alone is
        # ignored by Message.build (peer bug), so the harness passes it on as the option promises
        oaep = peer_partner(keys, GM, sign=True, encrypt=True, enc_alg="aes_128_cbc", key_enc_alg="rsaes_oaep",
                            **MDN_WANTED)
        xml2, mid2 = with_new_id(example("01-meldingsbericht.xml").replace(b"Rick Adrianus", "Rick André".encode()))
        assert key_transport_of(built(org, oaep, xml2)) == "rsaes_pkcs1v15"  # the bug
        monkeypatch.setattr(as2, "encrypt_message",
                            functools.partial(as2.encrypt_message, key_enc_alg=oaep.key_enc_alg))
        msg2 = built(org, oaep, xml2)
        assert key_transport_of(msg2) == "rsaes_oaep"
        answer2 = await send(url, msg2, tls)
        assert as2.Mdn().parse(answer2.raw, lambda *_: msg2) == ("processed", None)
        assert (inbox / f"{mid2}.xml").read_bytes() == xml2.replace(b"\n", b"\r\n")  # UTF-8 (8bit) intact

        # compressed (RFC 5402; pyas2lib compresses before signing, Partner(compress=True)): we do not
        # decompress; it is refused by name (unsupported-algorithm), never in the inbox (see README.md)
        packed = peer_partner(keys, GM, sign=True, encrypt=True, enc_alg="aes_256_cbc", compress=True,
                              **MDN_WANTED)
        msg3 = built(org, packed, with_new_id(example("01-meldingsbericht.xml"))[0])
        answer3 = await send(url, msg3, tls)
        assert as2.Mdn().parse(answer3.raw, lambda *_: msg3) == ("processed/error", "unsupported-algorithm")
        refused3 = await gw.store.find_inbound_by_transport("as2", f"<{msg3.message_id}>")
        assert (refused3.outcome, refused3.reason_code) == ("refused", "unsupported-algorithm")
    assert sorted(p.name for p in inbox.glob("*.xml")) == sorted([f"{mid}.xml", f"{mid2}.xml"])
    kept = [json.loads(p.read_text()) for p in cfg.folders.quarantine.glob("*.json")]
    assert sorted((k["reason_code"], k["claimed_sender"]) for k in kept) == [
        ("malformed", PI), ("unsupported-algorithm", PI), ("weak-algorithm", PI)]
    print(f"\npyas2lib → our daemon: start, 7 exchanges, stop in {time.perf_counter() - started:.2f} s")


# -- 2. our client sends, pyas2lib receives -------------------------------------------------------

def our_client(keys: Path, url: str, **settings) -> As2Client:
    folder = keys / "parties" / PI
    return As2Client(As2Settings(as2_from=PI, client_cert_chain_pem=(folder / "tls-chain.pem").read_bytes(),
                                 client_key_pem=(folder / "tls-key.pem").read_bytes(),
                                 receipt_to="nazorg@pi-vught.example.nl", **settings),
                     As2Partner(url=url, as2_to=GM, server_trust_pem=keys / "trust.pem"))


def gm_certificate(keys: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((keys / "parties" / GM / "cert.pem").read_bytes())


async def exchange(keys: Path, trust: TrustStore, profile, *, strict: bool = True, encoding: str = "base64"):
    """Seal for 0599 under `profile`, post with our client to pyas2lib, verify its MDN. Returns
    (the XML, what we sealed, what pyas2lib made of it, our receipt, our verdict)."""
    xml, mid = with_new_id(example("01-meldingsbericht.xml"))
    sealed = seal(xml, identity(keys, PI), gm_certificate(keys), profile)
    rules = dict(sign=True, encrypt=True) if strict else {}  # pyas2lib's defaults: neither required
    async with PeerServer(keys, peer_org(keys, GM), {PI: peer_partner(keys, PI, **rules)}, code=GM) as peer:
        client = our_client(keys, peer.url(), body_encoding=encoding)
        try:
            resp = await client.post_entity(message_id=mid, entity=sealed.entity, subject="nazorg interop")
        finally:
            await client.close()
    [got] = peer.received
    receipt = parse_mdn(resp.mdn_entity, trust, expected_signer=PartyBinding(subject_serial=GM))
    verdict = check_receipt(receipt, message_id=resp.as2_message_id, sealed_mic=sealed.mic)
    return xml, sealed, got, receipt, verdict


@pytest.mark.parametrize("key_transport, encoding", [("rsa-pkcs1v15", "base64"), ("rsa-oaep-sha1", "binary")])
async def test_our_client_to_pyas2lib_ends_in_a_matching_receipt(keys, trust, key_transport, encoding):
    profile = profile_from(key_transport=key_transport, content_cipher="aes256-cbc")
    xml, sealed, got, receipt, verdict = await exchange(keys, trust, profile, encoding=encoding)
    assert (got.status, got.error) == ("processed", None)
    assert got.payload == xml  # byte for byte: our part is base64, so no line-end canonicalisation
    assert got.mic == sealed.mic
    assert got.headers["Content-Transfer-Encoding"] == encoding and got.tls_client == PI
    assert verdict.verdict == ReceiptVerdict.MATCH, verdict
    assert (receipt.mic_algorithm, receipt.reporting_ua) == ("sha-256", "pyAS2 Open Source AS2 Software")


@pytest.mark.parametrize("key_transport", ["rsa-oaep-sha256", "rsa-oaep-sha512"])
async def test_pyas2lib_cannot_read_oaep_sha2_and_we_do_not_count_its_receipt(keys, trust, key_transport):
    profile = profile_from(key_transport=key_transport, content_cipher="aes256-cbc")
    _, _, got, receipt, verdict = await exchange(keys, trust, profile)
    assert got.status == "processed/Error" and "decrypt" in str(got.error)  # oscrypto's OAEP is SHA-1 only
    assert (receipt.disposition, receipt.reason_code, receipt.mic) == ("processed/error", "decryption-failed", None)
    assert verdict.verdict == ReceiptVerdict.NOT_PROCESSED


@pytest.mark.parametrize("strict", [True, False], ids=["sign-and-encrypt-required", "pyas2lib-defaults"])
async def test_aes_gcm_is_unreadable_for_pyas2lib_and_never_counts_as_delivered(keys, trust, strict):
    _, _, got, receipt, verdict = await exchange(keys, trust, STRONG, strict=strict)
    assert got.mic is None
    if strict:  # it does not recognise authEnveloped-data, so finds nothing signed: an honest error
        assert got.status == "processed/Error" and "must be signed" in str(got.error)
        assert verdict.verdict == ReceiptVerdict.NOT_PROCESSED
    else:  # peer bug: the undecrypted envelope is taken as the payload and answered "processed", no MIC
        assert (got.status, got.error, receipt.disposition, receipt.mic) == ("processed", None, "processed", None)
        assert got.payload.startswith(b"\x30")  # the DER of the envelope, not the message
        assert verdict.verdict == ReceiptVerdict.MISSING, verdict
        assert not verdict.ok


async def test_our_daemon_sends_to_pyas2lib_over_a_platform_route_and_is_acknowledged(keys, tmp_path):
    """The route names the encryption pyas2lib reads (key_transport, content_cipher); the dispatcher's
    platform transport verifies pyas2lib's signed MDN and compares its MIC: acknowledged."""
    async with PeerServer(keys, peer_org(keys, GM), {PI: peer_partner(keys, PI, sign=True, encrypt=True)},
                          code=GM) as peer:
        cfg = sending_config(keys, tmp_path / "pi", party=PI, partner=GM, url=peer.url(),
                             key_transport="rsa-oaep-sha1", content_cipher="aes256-cbc")
        xml, mid = with_new_id(example("01-meldingsbericht.xml"))
        async with running(cfg) as gw:
            (cfg.folders.outbox / f"{mid}.xml.tmp").write_bytes(xml)
            (cfg.folders.outbox / f"{mid}.xml.tmp").rename(cfg.folders.outbox / f"{mid}.xml")
            deadline = time.monotonic() + 30
            while (record := await gw.store.get(mid)) is None or record.state not in (
                    State.ACKNOWLEDGED, State.FAILED, State.HELD):
                assert time.monotonic() < deadline, record
                await asyncio.sleep(0.02)
            assert record is not None and record.state == State.ACKNOWLEDGED, record
            path = [t.to_state for t in await gw.store.timeline(mid)]
            receipts = {(r.kind, r.verdict) for r in await gw.store.receipts(mid)}
    assert path == [State.RECEIVED, State.QUEUED, State.SENDING, State.SENT, State.ACKNOWLEDGED], path
    assert ("mdn", "match") in receipts
    [got] = peer.received
    assert (got.status, got.error, got.payload, got.tls_client) == ("processed", None, xml, PI)
    assert got.headers["AS2-From"] == PI and got.headers["AS2-To"] == GM


# -- 3. pyas2lib as a reader of receipts -----------------------------------------------------------

def test_pyas2lib_accepts_receipts_that_prove_nothing(keys):
    """Why test 1 compares the MIC itself: pyas2lib's verdict "processed" does not mean the MIC matched."""
    msg = built(peer_org(keys, PI), peer_partner(keys, GM, sign=True, encrypt=True, enc_alg="aes_256_cbc",
                                                 **MDN_WANTED), b"<x/>\n")
    gm = identity(keys, GM)

    def mdn(mic: str | None) -> bytes:
        m = build_mdn(original_message_id=msg.message_id, original_recipient=GM, final_recipient=GM,
                      disposition=Disposition.PROCESSED, reason_code=None, mic=mic, signer=gm)
        return b"Content-Type: " + m.content_type + b"\r\n\r\n" + m.body

    other = base64.b64encode(hashlib.sha256(b"another message").digest()).decode()

    def verdict(raw: bytes) -> tuple[str, str | None]:
        return as2.Mdn().parse(raw, lambda *_: msg)

    assert verdict(mdn(msg.mic.decode())) == ("processed", None)
    assert verdict(mdn(None)) == ("processed", None)  # no MIC at all: still "processed"
    assert verdict(mdn(other)) == ("processed/warning", "Message Integrity check failed.")  # only a warning
    # the control: it does verify the signature
    tampered = mdn(msg.mic.decode()).replace(b"; processed\r\n", b"; processed \r\n")
    assert verdict(tampered)[0] == "failed/Failure"
