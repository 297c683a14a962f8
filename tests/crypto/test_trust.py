"""Trust in certificates: every refusal raises its own error, and `openssl verify` (the independent
oracle) agrees on accept or refuse wherever its S/MIME purpose checks mean the same thing.

Certificates that the dev PKI lacks are issued here, mostly under the dev PKI's own CAs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.crypto import errors
from gateway.crypto.pki import DEV_PARTIES
from gateway.crypto.trust import PartyBinding, TrustStore, TrustStoreError

NOW = datetime.now(timezone.utc)


@dataclass
class Dev:
    """The dev PKI as objects, a certificate factory, and a scratch folder."""

    folder: Path
    parties: dict[str, Path]
    make: Callable
    work: Path
    _n: int = 0
    _loaded: dict = field(default_factory=dict)  # private keys take ~50 ms to load: once each

    def cert(self, code: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.parties[code] / "cert.pem").read_bytes())

    def _key(self, path: Path):
        if path not in self._loaded:
            self._loaded[path] = serialization.load_pem_private_key(path.read_bytes(), None)
        return self._loaded[path]

    def key(self, code: str):
        return self._key(self.parties[code] / "key.pem")

    def ca(self, which: str):
        """(certificate, key) of the dev "root" or "issuing" CA."""
        ca = self.folder / "ca"
        return x509.load_pem_x509_certificate((ca / f"{which}.pem").read_bytes()), self._key(ca / f"{which}-key.pem")

    @property
    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((self.folder / "ca" / "issuing.crl.pem").read_bytes())

    def leaf(self, cn: str = "Gemeente Test", serial: str = "0001", **kw):
        """(key, cert) of an S/MIME leaf under the dev issuing CA (override anything of `make_cert`)."""
        kw.setdefault("issuer", self.ca("issuing"))
        return self.make(cn, serial=serial, email=f"nazorg@gemeente-{serial}.example.nl", **kw)

    def file(self, data: bytes) -> Path:
        self._n += 1
        path = self.work / f"t{self._n}.pem"
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def dev(dev_pki, make_cert, oracles, tmp_path_factory) -> Dev:
    folder, parties = dev_pki
    return Dev(folder, parties, make_cert, tmp_path_factory.mktemp("trust"))


def crl_of(issuer, *, revoked=(), next_update: datetime | None = NOW + timedelta(days=7),
           last_update: datetime = NOW - timedelta(days=1), delta: bool = False) -> x509.CertificateRevocationList:
    """A CRL of `issuer` = (cert, key) listing `revoked` serials."""
    cert, key = issuer
    b = (x509.CertificateRevocationListBuilder().issuer_name(cert.subject).last_update(last_update)
         .next_update(next_update))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(last_update).build())
    if delta:
        b = b.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    return b.sign(key, hashes.SHA256())


def resigned_sha1(cert: x509.Certificate, issuer_key) -> x509.Certificate:
    """`cert` signed again with SHA-1 (cryptography no longer signs certificates with SHA-1: built by hand)."""
    c = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    tbs = c["tbs_certificate"]
    tbs["signature"] = {"algorithm": "sha1_rsa"}
    tbs_der = tbs.dump(force=True)
    sig = issuer_key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA1())
    new = asn1_x509.Certificate({"tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
                                 "signature_algorithm": {"algorithm": "sha1_rsa"}, "signature_value": sig})
    return x509.load_der_x509_certificate(new.dump(force=True))


@dataclass
class Scenario:
    """A certificate to check and the world it is checked in."""

    cert: x509.Certificate
    extra: list[x509.Certificate] = field(default_factory=list)
    intermediates: list[x509.Certificate] | None = None  # None: the dev issuing CA
    crls: list[x509.CertificateRevocationList] | None = None  # None: the dev CRL
    usage: str = "sign"
    at: datetime = NOW
    party: PartyBinding | None = None
    crl_required: bool = True
    stale_crl_is_failure: bool = True


def store_for(dev: Dev, s: Scenario) -> TrustStore:
    return TrustStore([dev.ca("root")[0]], [dev.ca("issuing")[0]] if s.intermediates is None else s.intermediates,
                      [dev.crl] if s.crls is None else s.crls, crl_required=s.crl_required,
                      stale_crl_is_failure=s.stale_crl_is_failure)


def openssl_accepts(dev: Dev, s: Scenario) -> bool:
    """`openssl verify` with the same anchors, candidates, CRLs, purpose and time."""
    pem = lambda certs: b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    untrusted = s.extra + ([dev.ca("issuing")[0]] if s.intermediates is None else s.intermediates)
    args = ["openssl", "verify", "-purpose", "smimesign" if s.usage == "sign" else "smimeencrypt",
            "-CAfile", str(dev.folder / "ca" / "root.pem"), "-attime", str(int(s.at.timestamp()))]
    if untrusted:
        args += ["-untrusted", str(dev.file(pem(untrusted)))]
    crls = [dev.crl] if s.crls is None else s.crls
    if s.crl_required:  # CA certificates are checked when their issuer's CRL is there: a root CRL says so
        root = dev.ca("root")[0]
        args += ["-crl_check_all" if any(c.issuer == root.subject for c in crls) else "-crl_check"]
    for crl in crls:
        args += ["-CRLfile", str(dev.file(crl.public_bytes(serialization.Encoding.PEM)))]
    r = subprocess.run(args + [str(dev.file(pem([s.cert])))], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


# -- the table --------------------------------------------------------------------------------------

def party(code: str, **kw) -> Callable[[Dev], Scenario]:
    return lambda dev: Scenario(dev.cert(code), **kw)


def not_yet_valid(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(not_before=NOW + timedelta(days=10))[1])


def weak_rsa(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(key_bits=1024)[1])


def sha1_leaf(dev: Dev) -> Scenario:
    return Scenario(resigned_sha1(dev.leaf()[1], dev.ca("issuing")[1]))


def sha1_intermediate(dev: Dev) -> Scenario:
    root = dev.ca("root")
    ca_key, ca = dev.make("SHA-1 Issuing CA", issuer=root, ca=True)
    ca = resigned_sha1(ca, root[1])
    leaf = dev.leaf(issuer=(ca, ca_key))[1]
    return Scenario(leaf, [ca], crls=[dev.crl, crl_of((ca, ca_key))])


def without_eku(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(eku=None)[1])


def server_auth_only(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(eku=(ExtendedKeyUsageOID.SERVER_AUTH,))[1])


def sign_without_digital_signature(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(key_usage=dict(key_encipherment=True))[1])


def encrypt_without_key_encipherment(dev: Dev) -> Scenario:
    return Scenario(dev.leaf(key_usage=dict(digital_signature=True))[1], usage="encrypt")


def ca_as_signer(dev: Dev) -> Scenario:
    return Scenario(dev.ca("issuing")[0])


def foreign(dev: Dev, *, intermediate: bool, send_root: bool, our_names: bool = False) -> Scenario:
    """A leaf for 0599 under a root we do not trust (via an issuing CA or directly); with `our_names`, the
    foreign CAs carry exactly the dev CAs' subject names (other keys)."""
    root_key, root = dev.make("Vreemde Root CA", ca=True)
    ca_key, ca = dev.make("Vreemde Issuing CA", issuer=(root, root_key), ca=True) if intermediate else (root_key, root)
    if our_names:
        root = renamed(root, dev.ca("root")[0].subject, dev.ca("root")[0].subject, root_key)
        ca = renamed(ca, dev.ca("issuing")[0].subject, root.subject, root_key)
    leaf = dev.leaf(issuer=(ca, ca_key), serial="0599")[1]
    extra = ([ca] if intermediate else []) + ([root] if send_root else [])
    return Scenario(leaf, extra, crls=[dev.crl, crl_of((ca, ca_key))])


def renamed(cert: x509.Certificate, subject: x509.Name, issuer: x509.Name, signing_key) -> x509.Certificate:
    """`cert` with other subject and issuer names (same key, validity and extensions), signed by `signing_key`."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(cert.public_key())
         .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
         .not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            b = b.add_extension(ext.value, ext.critical)
    return b.sign(signing_key, hashes.SHA256())


def self_signed_leaf(dev: Dev) -> Scenario:
    return Scenario(dev.make("Gemeente Zelf", serial="0599", email="nazorg@gemeente-0599.example.nl")[1])


def missing_intermediate(dev: Dev) -> Scenario:
    return Scenario(dev.cert("0599"), intermediates=[])


def forged_leaf(dev: Dev) -> Scenario:
    """Names the dev issuing CA as issuer, but another key signed it."""
    impostor = dev.make("Nazorg ontwikkel Issuing CA", ca=True)
    cert = dev.leaf(issuer=(dev.ca("issuing")[0], impostor[0]))[1]
    return Scenario(cert)


def expired_intermediate(dev: Dev) -> Scenario:
    root = dev.ca("root")
    ca_key, ca = dev.make("Verlopen Issuing CA", issuer=root, ca=True, not_before=NOW - timedelta(days=400), days=30)
    leaf = dev.leaf(issuer=(ca, ca_key))[1]
    return Scenario(leaf, [ca], crls=[dev.crl, crl_of((ca, ca_key))])


def leaf_issued_by_leaf(dev: Dev) -> Scenario:
    """0344's own S/MIME certificate used as a CA: the path exists, the profile forbids it."""
    leaf = dev.leaf(issuer=(dev.cert("0344"), dev.key("0344")))[1]
    return Scenario(leaf, [dev.cert("0344")], crls=[dev.crl, crl_of((dev.cert("0344"), dev.key("0344")))])


def stale(dev: Dev, **kw) -> Scenario:
    crl = crl_of(dev.ca("issuing"), next_update=NOW - timedelta(days=1), last_update=NOW - timedelta(days=30))
    return Scenario(dev.cert("0599"), crls=[crl], **kw)


def revoked_on_stale(dev: Dev, **kw) -> Scenario:
    crl = crl_of(dev.ca("issuing"), revoked=[dev.cert("0599").serial_number], next_update=NOW - timedelta(days=1),
                 last_update=NOW - timedelta(days=30))
    return Scenario(dev.cert("0599"), crls=[crl], **kw)


def crl_by_wrong_key(dev: Dev, with_real: bool) -> Scenario:
    """A CRL in the issuing CA's name, signed by another key, that lists 0599: it must be ignored."""
    impostor = dev.make("x", ca=True)[0]
    fake = crl_of((dev.ca("issuing")[0], impostor), revoked=[dev.cert("0599").serial_number])
    return Scenario(dev.cert("0599"), crls=[fake] + ([dev.crl] if with_real else []))


def delta_only(dev: Dev) -> Scenario:
    return Scenario(dev.cert("0599"), crls=[crl_of(dev.ca("issuing"), delta=True)])


def revoked_intermediate(dev: Dev) -> Scenario:
    root_crl = crl_of(dev.ca("root"), revoked=[dev.ca("issuing")[0].serial_number])
    return Scenario(dev.cert("0599"), crls=[dev.crl, root_crl])


@dataclass(frozen=True)
class Case:
    id: str
    scenario: Callable[[Dev], Scenario]
    error: type[errors.CryptoError] | None  #: None: accepted
    oracle: bool = True  #: openssl verify must agree on accept/refuse
    why_not: str = ""  #: why openssl is not asked


CASES = [
    Case("rsa-party-encrypt", party("0344", usage="encrypt"), None),
    Case("ec-party-sign", party("PI-ZWOLLE"), None),
    Case("ec-party-encrypt", party("PI-ZWOLLE", usage="encrypt"), errors.UnsupportedAlgorithm),
    Case("expired", party("TEST-EXPIRED"), errors.CertificateExpired),
    Case("revoked", party("TEST-REVOKED"), errors.CertificateRevoked),
    Case("not-yet-valid", not_yet_valid, errors.CertificateNotYetValid),
    Case("judged-before-issuance", party("0599", at=NOW - timedelta(days=2)), errors.CertificateNotYetValid),
    Case("judged-after-expiry", party("0599", at=NOW + timedelta(days=900)), errors.CertificateExpired,
         oracle=False, why_not="openssl judges the CRL's nextUpdate at -attime too (stale) and stops there"),
    Case("rsa-1024", weak_rsa, errors.WeakAlgorithm, oracle=False, why_not="openssl security level 1 allows RSA-1024"),
    Case("sha1-signed-leaf", sha1_leaf, errors.WeakAlgorithm, oracle=False,
         why_not="openssl 3.0 at security level 1 accepts SHA-1 certificate signatures"),
    Case("sha1-signed-intermediate", sha1_intermediate, errors.WeakAlgorithm, oracle=False, why_not="as above"),
    Case("no-eku", without_eku, errors.CertificatePolicy, oracle=False,
         why_not="openssl takes a missing EKU as any use; we require emailProtection"),
    Case("eku-server-auth-only", server_auth_only, errors.CertificatePolicy),
    Case("sign-without-digitalSignature", sign_without_digital_signature, errors.CertificatePolicy),
    Case("encrypt-without-keyEncipherment", encrypt_without_key_encipherment, errors.CertificatePolicy),
    Case("ca-certificate-as-signer", ca_as_signer, errors.CertificatePolicy),
    Case("self-signed-signer", self_signed_leaf, errors.SignerNotTrusted),
    Case("foreign-root-chain-without-root", lambda d: foreign(d, intermediate=True, send_root=False),
         errors.SignerNotTrusted),
    Case("foreign-root-sent-along", lambda d: foreign(d, intermediate=True, send_root=True), errors.SignerNotTrusted),
    Case("foreign-root-direct-leaf-root-sent", lambda d: foreign(d, intermediate=False, send_root=True),
         errors.SignerNotTrusted),
    Case("foreign-cas-with-our-names", lambda d: foreign(d, intermediate=True, send_root=False, our_names=True),
         errors.SignerNotTrusted),
    Case("missing-intermediate", missing_intermediate, errors.ChainBroken),
    Case("leaf-not-signed-by-named-issuer", forged_leaf, errors.ChainBroken),
    Case("expired-intermediate", expired_intermediate, errors.CertificateExpired),
    Case("leaf-issued-by-a-leaf", leaf_issued_by_leaf, errors.CertificatePolicy),
    Case("stale-crl", stale, errors.RevocationUnknown),
    Case("stale-crl-tolerated", lambda d: stale(d, stale_crl_is_failure=False), None,
         oracle=False, why_not="openssl always refuses an expired CRL"),
    Case("revoked-on-stale-crl", revoked_on_stale, errors.CertificateRevoked),
    Case("revoked-on-stale-crl-tolerated", lambda d: revoked_on_stale(d, stale_crl_is_failure=False),
         errors.CertificateRevoked),
    Case("no-crl", party("0599", crls=[]), errors.RevocationUnknown),
    Case("no-crl-not-required", party("0599", crls=[], crl_required=False), None),
    Case("crl-signed-by-wrong-key-alone", lambda d: crl_by_wrong_key(d, False), errors.RevocationUnknown),
    Case("crl-signed-by-wrong-key-ignored", lambda d: crl_by_wrong_key(d, True), None, oracle=False,
         why_not="openssl fails on the first CRL whose signature does not verify"),
    Case("delta-crl-alone", delta_only, errors.RevocationUnknown, oracle=False,
         why_not="openssl needs -use_deltas and a base CRL"),
    Case("revoked-intermediate-on-root-crl", revoked_intermediate, errors.CertificateRevoked),
    Case("binding-email-any-case", party("0599", party=PartyBinding(email="Nazorg@Gemeente-0599.example.nl")), None),
    Case("binding-serial", party("0599", party=PartyBinding(subject_serial="0599")), None),
    Case("wrong-sender-email", party("0599", party=PartyBinding(email="nazorg@gemeente-0344.example.nl")),
         errors.WrongSender, oracle=False, why_not="openssl has no notion of the expected party"),
    Case("wrong-sender-serial", party("0599", party=PartyBinding(subject_serial="0344")), errors.WrongSender,
         oracle=False, why_not="as above"),
    Case("wrong-sender-one-field-of-two", party("0599", party=PartyBinding(email="nazorg@gemeente-0599.example.nl",
                                                                           subject_serial="0344")),
         errors.WrongSender, oracle=False, why_not="as above"),
]


@pytest.fixture(scope="module")
def scenario(dev):
    """Each case's scenario, built once per module (key generation is the slow part)."""
    built: dict[str, Scenario] = {}

    def get(case: Case) -> Scenario:
        if case.id not in built:
            built[case.id] = case.scenario(dev)
        return built[case.id]
    return get


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check(dev, scenario, case):
    """Each scenario is accepted (the chain ends at the dev root) or refused with its specific error."""
    s = scenario(case)
    store = store_for(dev, s)
    if case.error is None:
        chain = store.check(s.cert, s.extra, s.at, usage=s.usage, party=s.party)
        assert chain[0] == s.cert and chain[-1] == dev.ca("root")[0]
    else:
        with pytest.raises(errors.CryptoError) as caught:
            store.check(s.cert, s.extra, s.at, usage=s.usage, party=s.party)
        assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"


@pytest.mark.parametrize("case", [c for c in CASES if c.oracle], ids=[c.id for c in CASES if c.oracle])
def test_openssl_agrees(dev, scenario, case):
    """openssl verify, with the same anchors, candidates, CRLs, purpose and time, accepts exactly what we accept."""
    s = scenario(case)
    assert openssl_accepts(dev, s) is (case.error is None)


@pytest.mark.parametrize("code", [p.code for p in DEV_PARTIES])
def test_every_dev_party_may_sign(dev, code):
    """Every party of the dev PKI passes for signing, bound to itself by e-mail, party code and fingerprint."""
    cert = dev.cert(code)
    store = TrustStore.load(dev.folder / "ca" / "root.pem", dev.folder / "ca" / "issuing.pem",
                            dev.folder / "ca" / "issuing.crl.pem")
    binding = PartyBinding(email=next(p.email for p in DEV_PARTIES if p.code == code), subject_serial=code,
                           fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex().upper())
    assert len(store.check(cert, [], NOW, usage="sign", party=binding)) == 3


def test_anchor_and_intermediate_from_one_trust_file(dev):
    """trust.pem (root + issuing CA) as anchors: the chain then ends at the issuing CA, which is trusted as such."""
    store = TrustStore.load(dev.folder / "trust.pem", crls=[dev.folder / "ca" / "issuing.crl.pem"])
    assert store.check(dev.cert("0599"), [], NOW, usage="sign")[-1] == dev.ca("issuing")[0]


def test_chain_is_found_from_the_message_certificates(dev):
    """Intermediates sent along (as in a signature) complete the chain when none are configured."""
    store = TrustStore.load(dev.folder / "ca" / "root.pem", crls=[dev.folder / "ca" / "issuing.crl.pem"])
    chain = store.check(dev.cert("0599"), [dev.cert("0599"), dev.ca("issuing")[0]], NOW, usage="sign")
    assert chain == [dev.cert("0599"), dev.ca("issuing")[0], dev.ca("root")[0]]


def test_load_reads_der_crls_and_several_pem_crls(dev, tmp_path):
    """CRL files may be DER, or PEM holding several CRLs; a file of another kind is a TrustStoreError."""
    der = tmp_path / "issuing.crl"
    der.write_bytes(dev.crl.public_bytes(serialization.Encoding.DER))
    two = tmp_path / "two.pem"
    two.write_bytes(crl_of(dev.ca("root")).public_bytes(serialization.Encoding.PEM)
                    + dev.crl.public_bytes(serialization.Encoding.PEM))
    for crls in ([der], [two]):
        store = TrustStore.load(dev.folder / "ca" / "root.pem", dev.folder / "ca" / "issuing.pem", crls)
        assert len(store.check(dev.cert("0599"), [], NOW, usage="sign")) == 3
    with pytest.raises(TrustStoreError, match="no CRL"):
        TrustStore.load(dev.folder / "ca" / "root.pem", crls=[dev.folder / "ca" / "root.pem"])
    with pytest.raises(TrustStoreError, match="cannot read"):
        TrustStore.load(tmp_path / "missing.pem")


def test_binding_needs_a_field():
    """An empty PartyBinding would match anyone: it is refused at construction."""
    with pytest.raises(ValueError):
        PartyBinding()


def test_usage_must_be_sign_or_encrypt(dev):
    """A typo in the usage is a programming error, not a certificate problem."""
    store = TrustStore([dev.ca("root")[0]])
    with pytest.raises(ValueError):
        store.check(dev.cert("0599"), [], NOW, usage="signing")  # type: ignore[arg-type]


def test_errors_do_not_name_persons(dev):
    """End-entity certificates are named by party code and fingerprint, not by their subject's common name."""
    store = TrustStore([dev.ca("root")[0]], [dev.ca("issuing")[0]], [dev.crl])
    with pytest.raises(errors.CertificateExpired) as caught:
        store.check(dev.cert("TEST-EXPIRED"), [], NOW, usage="sign")
    assert "Verlopen certificaat" not in str(caught.value) and "TEST-EXPIRED" in str(caught.value)
