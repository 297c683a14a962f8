"""The development PKI: certificates that an independent implementation (openssl verify) accepts
for S/MIME, the refusals it must provoke, and keys that are private and never overwritten."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.crypto.identity import IdentityError, load_pem_identity, load_pkcs12_identity
from gateway.crypto.pki import DEV_PARTIES, PkiError, init_dev_pki
from paths import EXAMPLES


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    return folder, init_dev_pki(folder)


def openssl_verify(folder, cert, purpose="smimesign"):
    return subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(folder / "ca" / "root.pem"),
                           "-untrusted", str(folder / "ca" / "issuing.pem"), "-crl_check",
                           "-CRLfile", str(folder / "ca" / "issuing.crl.pem"), str(cert)], capture_output=True, text=True)


@pytest.mark.parametrize("party", [p.code for p in DEV_PARTIES])
def test_every_party_certificate_verifies_for_smime_signing(pki, party):
    """openssl accepts each party's certificate for S/MIME signing against the dev trust anchors and CRL."""
    folder, parties = pki
    r = openssl_verify(folder, parties[party] / "cert.pem")
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr


@pytest.mark.parametrize("party", [p.code for p in DEV_PARTIES if p.key.startswith("rsa")])
def test_rsa_party_certificates_verify_for_encryption(pki, party):
    """RSA party certificates may also receive encrypted messages (keyEncipherment)."""
    folder, parties = pki
    assert openssl_verify(folder, parties[party] / "cert.pem", "smimeencrypt").returncode == 0


@pytest.mark.parametrize(("party", "reason"), [("TEST-EXPIRED", "certificate has expired"),
                                               ("TEST-REVOKED", "certificate revoked")])
def test_the_test_certificates_are_refused_by_openssl(pki, party, reason):
    """The expired and the revoked certificate exist to be refused, and openssl refuses them for that reason."""
    folder, parties = pki
    r = openssl_verify(folder, parties[party] / "cert.pem")
    assert r.returncode != 0 and reason in (r.stdout + r.stderr)


def test_every_party_of_the_valid_examples_has_a_development_identity():
    """The shipped valid examples can be sealed to and by the dev PKI: each municipality and PI they name has a party."""
    named = set()
    for f in (EXAMPLES / "valid").rglob("*.xml"):
        text = f.read_text(encoding="utf-8")
        named |= set(re.findall(r"<(?:\w+:)?gemeenteVan(?:Herkomst|Vestiging)>\s*([0-9]{4})\s*<", text))
        named |= set(re.findall(r">\s*(PI-[A-Z0-9]+)\s*<", text))
    assert {"0772", "0014", "0599", "PI-VUGHT"} <= named
    assert named <= {p.code for p in DEV_PARTIES}


def test_private_keys_are_mode_0600(pki):
    """Every private key the PKI writes is readable by its owner only."""
    folder, _ = pki
    keys = list(folder.rglob("*key.pem"))
    assert len(keys) == 2 * len(DEV_PARTIES) + 2 + 2  # S/MIME and TLS per party, the two test parties, two CAs
    assert all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)


def test_never_overwrites(pki):
    """A folder that holds anything is refused: existing keys are never replaced."""
    folder, _ = pki
    before = (folder / "parties" / "PI-VUGHT" / "key.pem").read_bytes()
    with pytest.raises(PkiError, match="not empty"):
        init_dev_pki(folder)
    assert (folder / "parties" / "PI-VUGHT" / "key.pem").read_bytes() == before


def test_identity_loads_with_chain_and_hides_key_material(pki):
    """A PEM identity loads key, certificate and intermediate; its repr names the subject only."""
    _, parties = pki
    ident = load_pem_identity(parties["0599"] / "key.pem", parties["0599"] / "chain.pem")
    assert len(ident.chain) == 1 and "0599" in ident.subject
    assert "PRIVATE" not in repr(ident) and "BEGIN" not in repr(ident)


def test_key_readable_by_others_is_refused(pki, tmp_path):
    """The gateway refuses a private key that group or others can read."""
    _, parties = pki
    exposed = tmp_path / "key.pem"
    exposed.write_bytes((parties["0599"] / "key.pem").read_bytes())
    os.chmod(exposed, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load_pem_identity(exposed, parties["0599"] / "cert.pem")


def test_key_of_another_party_is_refused(pki):
    """A key and a certificate that do not belong together are refused."""
    _, parties = pki
    with pytest.raises(IdentityError, match="does not belong"):
        load_pem_identity(parties["0599"] / "key.pem", parties["0344"] / "cert.pem")


def test_pkcs12_made_by_openssl_loads(pki, tmp_path):
    """A PKCS#12 bundle as an operator receives it (made here by openssl) loads with its passphrase."""
    _, parties = pki
    p12 = tmp_path / "id.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-inkey", str(parties["0344"] / "key.pem"),
                    "-in", str(parties["0344"] / "chain.pem"), "-out", str(p12), "-passout", "pass:geheim"], check=True)
    os.chmod(p12, 0o600)
    ident = load_pkcs12_identity(p12, b"geheim")
    assert "0344" in ident.subject and len(ident.chain) == 1
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_pkcs12_identity(p12, b"fout")


def test_cli_init_dev(tmp_path):
    """`nazorg-gateway keys init-dev DIR` writes the PKI; a second run on the same folder exits 2."""
    target = tmp_path / "dev"
    run = lambda: subprocess.run([sys.executable, "-m", "gateway", "keys", "init-dev", str(target)],
                                 capture_output=True, text=True, timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    assert (target / "trust.pem").is_file() and (target / "parties" / "PLATFORM" / "key.pem").is_file()
    second = run()
    assert second.returncode == 2 and "not empty" in second.stderr


def test_seal_and_open_commands_work_on_an_init_dev_folder(pki, tmp_path):
    """`seal` then `open` by hand, with nothing but the files `keys init-dev` wrote: the XML comes back,
    the signer and the MIC are printed; opened by the wrong party it is refused with its reason."""
    folder, parties = pki
    xml = (tmp_path / "bericht.xml")
    xml.write_bytes("<bericht>Zoë Çelik</bericht>".encode())
    trust = ["--trust", str(folder / "trust.pem"), "--crl", str(folder / "ca" / "issuing.crl.pem")]
    me = lambda code: ["--key", str(parties[code] / "key.pem"), "--cert", str(parties[code] / "chain.pem")]
    gw = lambda *args: subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, timeout=120)

    sealed = gw("seal", "--to", str(parties["0599"] / "cert.pem"), "--profile", "strong", *me("PI-VUGHT"), *trust, str(xml))
    assert sealed.returncode == 0, sealed.stderr
    assert b"smime-type=authEnveloped-data" in sealed.stdout and "Zoë".encode() not in sealed.stdout
    (tmp_path / "sealed.p7m").write_bytes(sealed.stdout)

    opened = gw("open", *me("0599"), *trust, "--from-email", "nazorg@pi-vught.example.nl",
                "-o", str(tmp_path / "out.xml"), str(tmp_path / "sealed.p7m"))
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "out.xml").read_bytes() == xml.read_bytes()
    assert b"PI-VUGHT" in opened.stdout and b"MIC (sha-256)" in opened.stdout

    refused = gw("open", *me("0344"), *trust, str(tmp_path / "sealed.p7m"))
    assert refused.returncode == 1 and b"[not-for-us]" in refused.stderr


def test_seal_refuses_a_revoked_recipient(pki, tmp_path):
    """The gateway never encrypts to a revoked certificate."""
    folder, parties = pki
    xml = tmp_path / "b.xml"
    xml.write_bytes(b"<b/>")
    r = subprocess.run([sys.executable, "-m", "gateway", "seal", "--to", str(parties["TEST-REVOKED"] / "cert.pem"),
                        "--key", str(parties["PI-VUGHT"] / "key.pem"), "--cert", str(parties["PI-VUGHT"] / "chain.pem"),
                        "--trust", str(folder / "trust.pem"), "--crl", str(folder / "ca" / "issuing.crl.pem"), str(xml)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "[certificate-revoked]" in r.stderr and r.stdout == ""


def test_tls_certificates_serve_mutual_tls_for_the_platform_route(pki):
    """Each dev party has a TLS certificate (serverAuth + clientAuth, its code in serialNumber, localhost and
    127.0.0.1 as names) chaining to the dev trust anchors: what the AS2 route's mutual TLS needs."""
    import ssl

    folder, parties = pki
    for party in DEV_PARTIES:
        chain = x509.load_pem_x509_certificates((parties[party.code] / "tls-chain.pem").read_bytes())
        tls = chain[0]
        eku = tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert tls.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == party.code
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(parties[party.code] / "tls-chain.pem", parties[party.code] / "tls-key.pem")
        client = ssl.create_default_context(cafile=str(folder / "trust.pem"))
        client.load_cert_chain(parties[party.code] / "tls-chain.pem", parties[party.code] / "tls-key.pem")
    # a real mutual handshake: PI Vught's client to Rotterdam's server, each checking the other
    import socket
    import threading

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "trust.pem"))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(parties["0599"] / "tls-chain.pem", parties["0599"] / "tls-key.pem")
    client = ssl.create_default_context(cafile=str(folder / "trust.pem"))
    client.load_cert_chain(parties["PI-VUGHT"] / "tls-chain.pem", parties["PI-VUGHT"] / "tls-key.pem")
    a, b = socket.socketpair()
    seen = {}

    def serve():
        with server.wrap_socket(b, server_side=True) as tls:
            seen["client"] = tls.getpeercert()["subject"]

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(a, server_hostname="localhost") as tls:
        seen["server"] = tls.getpeercert()["subject"]
    t.join(10)
    assert (("serialNumber", "PI-VUGHT"),) in seen["client"] and (("serialNumber", "0599"),) in seen["server"]
