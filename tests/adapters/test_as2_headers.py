"""AS2 headers: names quoted and read back, Message-IDs derived, receipt options read, entities split,
bodies decoded the same whatever their transfer encoding; and the TLS PEM loading paths."""

from __future__ import annotations

import base64
import os
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.as2 import headers as h
from adapters.as2.tls import client_context, load_cert_chain_pem, server_context
from as2_helpers import TlsPki


@pytest.mark.parametrize("name, written", [
    ("PI-VUGHT", "PI-VUGHT"),
    ("platform.example.nl", "platform.example.nl"),
    ("Gemeente Rotterdam", '"Gemeente Rotterdam"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("a;b<c>", "a;b<c>"),
])
def test_names_are_quoted_only_when_needed(name, written):
    assert h.quote_name(name) == written
    assert h.parse_name(written) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128))
def test_every_printable_name_survives_quoting(name):
    assert h.parse_name(h.quote_name(name)) == name


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", "new\r\nline", "é"])
def test_unusable_names_are_refused(bad):
    with pytest.raises(ValueError):
        h.quote_name(bad)
    assert h.parse_name(bad) is None


def test_received_names_quoted_or_not_with_surrounding_space():
    assert h.parse_name('  "PI VUGHT"  ') == "PI VUGHT"
    assert h.parse_name("PI VUGHT") == "PI VUGHT"  # peers send spaces unquoted too
    assert h.parse_name(None) is None


def test_message_id_is_derived_and_stable():
    first = h.as2_message_id("20260101-0001", "PI-VUGHT")
    assert first == "<20260101-0001@pi-vught>" == h.as2_message_id("20260101-0001", "PI-VUGHT")
    assert h.as2_message_id("m.1", "Gemeente Rotterdam (test)") == "<m.1@gemeente-rotterdam-test>"
    assert h.as2_message_id("m", "!!!") == "<m@as2>"
    for bad in ("", "has space", "a@b", "<x>", "x" * 201, "a..b"):
        with pytest.raises(ValueError):
            h.as2_message_id(bad, "PI-VUGHT")
    assert h.bare_message_id(" <m-1@pi-vught> ") == "m-1@pi-vught"
    assert h.bare_message_id("<>") is None


@pytest.mark.parametrize("options, signed, mic", [
    (h.DISPOSITION_OPTIONS, True, "sha-256"),
    ("signed-receipt-protocol=required, pkcs7-signature; signed-receipt-micalg=required, SHA256", True, "sha-256"),
    ('signed-receipt-protocol=optional,"pkcs7-signature";signed-receipt-micalg=optional,sha1,sha-256', True, "sha1"),
    ("", False, None),
])
def test_receipt_options(options, signed, mic):
    got = h.parse_receipt_request({"Disposition-Notification-To": "x@y.example", "Disposition-Notification-Options":
                                   options, "Receipt-Delivery-Option": " https://r.example/as2 "})
    assert (got.wanted, got.signed, got.mic_algorithm, got.async_url) == (True, signed, mic, "https://r.example/as2")
    none = h.parse_receipt_request({"Disposition-Notification-Options": options, "Receipt-Delivery-Option": "x"})
    assert (none.wanted, none.signed, none.mic_algorithm, none.async_url) == (False, False, None, None)


@pytest.mark.parametrize("value, kind, smime_type", [
    ("application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m", "application/pkcs7-mime", "enveloped-data"),
    ('Application/PKCS7-MIME; smime-type="enveloped-data"; name="smime.p7m"', "application/pkcs7-mime",
     "enveloped-data"),
    ("application/x-pkcs7-mime;smime-type=enveloped-data", "application/x-pkcs7-mime", "enveloped-data"),
])
def test_content_types_quoted_or_not(value, kind, smime_type):
    got, params = h.content_type(value)
    assert (got, params["smime-type"]) == (kind, smime_type)
    assert h.is_pkcs7_mime(value)


DER = bytes([0x30, 0x82, 0x01, 0x10]) + bytes(range(256)) * 2


def test_split_sealed_and_bodies_decode_to_the_same_bytes():
    b64 = h.encode_base64(DER)
    entity = (b"MIME-Version: 1.0\r\nContent-Disposition: attachment; filename=\"smime.p7m\"\r\n"
              b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=\"smime.p7m\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n" + b64)
    ctype, body, cte = h.split_sealed(entity)
    assert ctype == 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'
    assert (body, cte) == (b64, "base64")
    assert h.split_sealed(entity.replace(b"\r\n", b"\n"))[1] == b64.replace(b"\r\n", b"\n")
    for raw, enc in ((b64, "base64"), (DER, "binary"), (DER, None), (b64, None), (b64.replace(b"\r\n", b"\n"), None)):
        assert h.decoded_body(raw, ctype, enc) == DER
    with pytest.raises(ValueError):
        h.decoded_body(b"not base64 at all!", ctype, "base64")
    # a body that is not S/MIME is left as it is
    assert h.decoded_body(b"MIME text", "text/plain", None) == b"MIME text"
    assert h.entity_of(ctype, DER) == b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + DER


@pytest.mark.parametrize("entity", [b"no header section", b"Content-Type: a/b\r\n\r\n",
                                    b"X-Only: 1\r\n\r\nbody", b"Content-Type: a/b\r\nContent-Type: c/d\r\n\r\nx"])
def test_split_sealed_refuses_unusable_entities(entity):
    with pytest.raises(ValueError):
        h.split_sealed(entity)


def test_shorten_removes_control_characters_and_bounds_length():
    assert h.shorten(b"bad\r\nrequest\x00 \x1b[31m  x") == "bad request [31m x"
    assert len(h.shorten("y" * 1000, 50)) == 50
    assert h.shorten(b"\r\n") is None


# -- TLS contexts from PEM bytes ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki() -> TlsPki:
    return TlsPki()


@pytest.mark.parametrize("in_memory", [True, False])
def test_cert_chain_loads_from_memory_or_a_removed_private_file(pki, in_memory, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    load_cert_chain_pem(ctx, pki.client.chain_pem, pki.client.key_pem, in_memory=in_memory)
    assert os.listdir(tmp_path) == []  # nothing left behind (the fallback's folder is gone)
    with pytest.raises(ValueError, match="could not be loaded"):
        load_cert_chain_pem(ctx, pki.client.chain_pem, pki.server.key_pem, in_memory=in_memory)  # key of another
    assert os.listdir(tmp_path) == []


def test_contexts_verify_tls12_minimum_and_no_system_trust(pki, tmp_path):
    (tmp_path / "ca.pem").write_bytes(pki.ca.pem)
    for trust in (pki.ca.pem, tmp_path / "ca.pem"):
        c = client_context(server_trust_pem=trust, client_cert_chain_pem=pki.client.chain_pem,
                           client_key_pem=pki.client.key_pem)
        assert (c.verify_mode, c.check_hostname, c.minimum_version) == (ssl.CERT_REQUIRED, True,
                                                                       ssl.TLSVersion.TLSv1_2)
        assert [x["subject"] for x in c.get_ca_certs()] == [((("commonName", "AS2 test CA"),),)]
    s = server_context(server_cert_chain_pem=pki.server.chain_pem, server_key_pem=pki.server.key_pem,
                       client_ca_pem=pki.ca.pem)
    assert (s.verify_mode, s.minimum_version) == (ssl.CERT_REQUIRED, ssl.TLSVersion.TLSv1_2)
    assert not any("CBC" in x["name"] or x["name"].endswith("-SHA") for x in s.get_ciphers())
    for bad in (b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", base64.b64encode(b"x")):
        with pytest.raises(ValueError):
            client_context(server_trust_pem=bad, client_cert_chain_pem=pki.client.chain_pem,
                           client_key_pem=pki.client.key_pem)
