"""A receiving gateway's AS2 endpoint under the cases that must end with nothing in any inbox and a clear
reason: sealed for another municipality, a signer that is not the AS2-From partner, an untrusted client
certificate, a tampered body — and a replay, which gets the same receipt again and no second file."""

from __future__ import annotations

import base64

import pytest

from adapters.as2 import As2Client, As2Partner, As2Security, As2Settings
from dropped import example, with_new_id
from e2e_gateway import identity, make_setup, open_config, running
from gateway.crypto.pki import init_dev_pki
from gateway.crypto.profiles import STRONG
from gateway.crypto.receipts import parse_mdn
from gateway.crypto.seal import seal
from gateway.crypto.trust import TrustStore
from mailservers import free_port


@pytest.fixture
async def utrecht(tmp_path, shared_mail_servers, mail_users):
    """0344's gateway, running, with its AS2 server; PI Vught's set-up (same PKI) beside it, not running."""
    port, pi_port = free_port(), free_port()
    make_setup(tmp_path / "pi", shared_mail_servers, mail_users, platform={"0344": f"https://127.0.0.1:{port}/as2"})
    cfg = open_config(make_setup(tmp_path / "gm", shared_mail_servers, mail_users, party="0344",
                                 pki=tmp_path / "pi" / "keys", as2_listen=("127.0.0.1", port),
                                 platform={"PI-VUGHT": f"https://127.0.0.1:{pi_port}/as2"}))
    async with running(cfg) as gateway:
        yield gateway, cfg, f"https://127.0.0.1:{port}/as2", tmp_path / "pi"


def as2_client(pi, url: str, *, tls_party: str = "PI-VUGHT", keys=None, as2_from: str = "PI-VUGHT") -> As2Client:
    folder = (keys or pi / "keys") / "parties" / tls_party
    settings = As2Settings(as2_from=as2_from, client_cert_chain_pem=(folder / "tls-chain.pem").read_bytes(),
                           client_key_pem=(folder / "tls-key.pem").read_bytes(), receipt_to="nazorg@pi-vught.example.nl")
    return As2Client(settings, As2Partner(url, "0344", (pi / "keys" / "trust.pem").read_bytes()))


def inbox_files(cfg) -> list:
    return sorted(p.name for p in cfg.folders.inbox.rglob("*.xml"))


async def refused_with(cfg, pi, response, message_id) -> str:
    trust = TrustStore.from_bundle(pi / "keys" / "trust.pem", [pi / "keys" / "ca" / "issuing.crl.pem"])
    receipt = parse_mdn(response.mdn_entity, trust)
    assert receipt.disposition == "processed/error", receipt
    assert inbox_files(cfg) == []
    return receipt.reason_code


async def test_sealed_for_another_municipality(utrecht):
    gateway, cfg, url, pi = utrecht
    data, mid = with_new_id(example("04-overdrachtsdocument.xml"))
    sealed = seal(data, identity(pi, "PI-VUGHT"), identity(pi, "0599").cert, STRONG)  # for Rotterdam
    c = as2_client(pi, url)
    try:
        response = await c.post_entity(message_id=mid, entity=sealed.entity, subject="test")
    finally:
        await c.close()
    assert await refused_with(cfg, pi, response, mid) in ("not-for-us", "decryption-failed")
    assert any(cfg.folders.quarantine.iterdir())


async def test_signer_is_not_the_as2_from_partner(utrecht):
    gateway, cfg, url, pi = utrecht
    data, mid = with_new_id(example("04-overdrachtsdocument.xml"))
    sealed = seal(data, identity(pi, "PI-HAAGLANDEN"), identity(pi, "0344").cert, STRONG)  # signed by another PI
    c = as2_client(pi, url)  # ... but sent as PI-VUGHT
    try:
        response = await c.post_entity(message_id=mid, entity=sealed.entity, subject="test")
    finally:
        await c.close()
    assert await refused_with(cfg, pi, response, mid) in ("wrong-sender", "signer-not-trusted")


async def test_tampered_body(utrecht):
    gateway, cfg, url, pi = utrecht
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    entity = seal(data, identity(pi, "PI-VUGHT"), identity(pi, "0344").cert, STRONG).entity
    head, body = entity.split(b"\r\n\r\n", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-40] ^= 0x01  # one bit of the ciphertext
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(raw)).replace(b"\n", b"\r\n")
    c = as2_client(pi, url)
    try:
        response = await c.post_entity(message_id=mid, entity=tampered, subject="test")
    finally:
        await c.close()
    assert await refused_with(cfg, pi, response, mid) in ("decryption-failed", "content-altered", "malformed")


async def test_untrusted_client_certificate_gets_nothing_in(utrecht, tmp_path):
    gateway, cfg, url, pi = utrecht
    foreign = tmp_path / "foreign-pki"
    init_dev_pki(foreign)  # same names, another CA: not trusted by Utrecht
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    entity = seal(data, identity(pi, "PI-VUGHT"), identity(pi, "0344").cert, STRONG).entity
    c = as2_client(pi, url, keys=foreign)
    try:
        with pytest.raises(As2Security):
            await c.post_entity(message_id=mid, entity=entity, subject="test")
    finally:
        await c.close()
    assert inbox_files(cfg) == [] and await gateway.store.find_inbound(mid) is None


async def test_replay_gets_the_same_receipt_and_no_second_file(utrecht):
    gateway, cfg, url, pi = utrecht
    data, mid = with_new_id(example("05-ontslagbericht.xml"))
    entity = seal(data, identity(pi, "PI-VUGHT"), identity(pi, "0344").cert, STRONG).entity
    c = as2_client(pi, url)
    try:
        first = await c.post_entity(message_id=mid, entity=entity, subject="test")
        again = await c.post_entity(message_id=mid, entity=entity, subject="test")
    finally:
        await c.close()
    assert first.status == again.status == 200 and first.mdn_entity == again.mdn_entity
    assert inbox_files(cfg) == [f"{mid}.xml"]
