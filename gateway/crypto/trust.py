"""Trust in certificates: chain, validity, revocation, S/MIME usage, and which party a certificate is.

DESCRIPTION
	A TrustStore holds the configured trust anchors (roots), intermediates, and
	CRLs. `TrustStore.check(cert, extra_chain, at, usage=…, party=…)` returns the
	validated chain [cert, …, anchor] or raises the one error that says what is
	wrong. Opening runs it with usage="sign" on a signer; the sealer's caller
	runs it with usage="encrypt" on a recipient certificate before sealing.

	Checks, in this order (the first failure is raised):
	1. the certificate's own algorithms: RSA keys under 2048 bits and SHA-1/MD5
	   certificate signatures are WeakAlgorithm; keys other than RSA and EC
	   P-256/384/521 are UnsupportedAlgorithm; usage "encrypt" with an EC key
	   is UnsupportedAlgorithm (the sealer encrypts to partners by RSA key
	   transport only, ECDH being for an EC sender's own copy: the partner
	   needs an RSA encryption certificate).
	2. validity at `at`: CertificateNotYetValid / CertificateExpired.
	3. S/MIME profile of the certificate: not a CA; keyUsage, when present,
	   with digitalSignature (sign) or keyEncipherment (encrypt); extendedKeyUsage
	   present with emailProtection (anyExtendedKeyUsage alone is not enough).
	   Otherwise CertificatePolicy.
	4. the chain, by `cryptography.x509.verification` with an S/MIME extension
	   policy (end entity: webpki defaults, emailProtection EKU required; CA:
	   webpki defaults, an EKU may be present if it allows emailProtection or
	   any use), up to a configured anchor, at time `at`. Candidates are the
	   certificates the message carries plus the configured intermediates.
	   When the verifier refuses, the path is rebuilt here by name and
	   signature to say why (rule below).
	5. revocation, by the configured CRLs (hand-checked: signature against the
	   issuer in the chain, scope, freshness). The end-entity certificate must
	   be covered by a CRL of its issuer when `crl_required` (else
	   RevocationUnknown); CA certificates are checked against a CRL of their
	   issuer when one is configured, and pass when none is (roots publish
	   CRLs rarely and the development PKI has none). A certificate listed on
	   any in-scope CRL is CertificateRevoked, whatever the revocation date and
	   even when that CRL is stale. A CRL past its nextUpdate (or without one)
	   is RevocationUnknown when `stale_crl_is_failure`, else it is used.
	6. the binding to the expected party (PartyBinding): every field given
	   must match, else WrongSender.

	Rule for a refused chain: walk up from the certificate, each step to a
	certificate (from the message, the intermediates or the anchors) whose
	subject is the issuer's name and whose key verifies the signature.
	- reaches an anchor: the path exists, so the refusal is the profile
	  (basicConstraints, key usage of a CA, path length, name constraints):
	  CertificatePolicy; or a CA certificate on the way is expired or not yet
	  valid (CertificateExpired / CertificateNotYetValid) or weak (WeakAlgorithm).
	- reaches a self-signed certificate that is not an anchor: a foreign root,
	  SignerNotTrusted.
	- stops at a CA certificate whose issuer is nowhere (neither sent nor
	  configured): the chain leads to a root we do not know, SignerNotTrusted.
	- stops at the end-entity certificate itself, its issuer nowhere: an
	  intermediate is missing, ChainBroken.
	- a certificate with the issuer's name exists but its key does not verify
	  the signature: ChainBroken (an intermediate that is wrong or altered);
	  SignerNotTrusted when the only such certificates are trust anchors (a
	  foreign CA that uses our root's name).
	The walk cannot tell a missing upper intermediate of our own PKI (below a
	sent lower one) from a foreign root: that case says SignerNotTrusted.

SECURITY
	Trusts only the operator's anchor, intermediate and CRL files. Certificates
	sent in a message are candidates for path building, never trust. Messages
	name CA subjects and identify end-entity certificates by their subject
	serialNumber (party code) and fingerprint prefix, never by personal names.

PERFORMANCE
	The Store and extension policies are built once per TrustStore; a verifier
	is cheap to build (~500,000/s) and is built per validation time; verifying
	a chain costs ~0.2 ms. CRL signatures are verified once per (CRL, issuer).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from gateway.crypto.errors import (CertificateExpired, CertificateNotYetValid, CertificatePolicy, CertificateRevoked,
                                   ChainBroken, MalformedMessage, RevocationUnknown, SignerNotTrusted, UnsupportedAlgorithm,
                                   WeakAlgorithm, WrongSender)

Usage = Literal["sign", "encrypt"]
PathLike = str | os.PathLike
MIN_RSA_BITS = 2048
MAX_CHAIN_DEPTH = 8
#: how long a validated path is reused before it is built and verified again
CHAIN_REUSE = timedelta(minutes=5)
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_WEAK_HASHES = {"md5": "MD5", "sha1": "SHA-1"}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TrustStoreError(Exception):
    """The trust configuration could not be loaded; the message names the file and the reason."""


@dataclass(frozen=True)
class PartyBinding:
    """How a certificate is tied to a party. Every field given must match (at least one must be given).

    `email` is compared, ignoring case, with the certificate's SAN rfc822Name values (or, when it has
    none, the subject's emailAddress); `fingerprint_sha256` (hex, colons and case ignored) with the
    certificate's SHA-256 fingerprint; `subject_serial` exactly with the subject's serialNumber
    attribute (the party code in the development PKI, the OIN in PKIoverheid)."""

    email: str | None = None
    fingerprint_sha256: str | None = None
    subject_serial: str | None = None

    def __post_init__(self) -> None:
        if not (self.email or self.fingerprint_sha256 or self.subject_serial):
            raise ValueError("a PartyBinding needs an email, a fingerprint_sha256 or a subject_serial")

    def mismatches(self, cert: x509.Certificate) -> list[str]:
        """The names of the given fields that do not match `cert` (empty: bound)."""
        wrong = []
        if self.email and self.email.strip().lower() not in certificate_emails(cert):
            wrong.append("email")
        if self.fingerprint_sha256:
            want = re.sub(r"[^0-9a-f]", "", self.fingerprint_sha256.lower())
            if want != cert.fingerprint(hashes.SHA256()).hex():
                wrong.append("fingerprint_sha256")
        if self.subject_serial and self.subject_serial not in subject_serials(cert):
            wrong.append("subject_serial")
        return wrong


def certificate_emails(cert: x509.Certificate) -> set[str]:
    """The SAN rfc822Name addresses (lower case); the subject emailAddress only when there are none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = {e.strip().lower() for e in san.get_values_for_type(x509.RFC822Name)}
    except x509.ExtensionNotFound:
        found = set()
    if not found:
        found = {str(a.value).strip().lower() for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)}
    return found


def subject_serials(cert: x509.Certificate) -> set[str]:
    return {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)}


def describe(cert: x509.Certificate) -> str:
    """How errors name a certificate: CAs by subject; others by serialNumber attribute and fingerprint prefix."""
    if _is_ca(cert):
        return f"CA certificate '{cert.subject.rfc4514_string()}'"
    serials = ",".join(sorted(subject_serials(cert))) or "-"
    return f"certificate serialNumber={serials} sha256={cert.fingerprint(hashes.SHA256()).hex()[:16]}"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _utc(at: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC."""
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, _CryptoUnsupported):
        return False


def _ee_eku(_policy, _cert, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
        raise ValueError("end-entity extendedKeyUsage lacks emailProtection")


def _ca_eku(_policy, _cert, eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and not ({ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                & set(eku)):
        raise ValueError("CA extendedKeyUsage excludes emailProtection")


#: S/MIME extension policies for the verifier (the stock client policy demands clientAuth)
EE_POLICY = ExtensionPolicy.webpki_defaults_ee().require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ee_eku)
CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ca_eku)


class TrustStore:
    """Trust anchors, intermediates and CRLs, with the checks a certificate must pass (see the module)."""

    def __init__(self, anchors: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate] = (),
                 crls: Sequence[x509.CertificateRevocationList] = (), *, crl_required: bool = True,
                 stale_crl_is_failure: bool = True):
        if not anchors:
            raise TrustStoreError("no trust anchors given")
        self.anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        self.intermediates: tuple[x509.Certificate, ...] = tuple(c for c in intermediates if c not in self.anchors)
        self.crls: tuple[x509.CertificateRevocationList, ...] = tuple(crls)
        self.crl_required = crl_required
        self.stale_crl_is_failure = stale_crl_is_failure
        self._anchor_set = frozenset(self.anchors)
        self._store = Store(list(self.anchors))
        self._crls_by_issuer: dict[bytes, list[int]] = {}
        for i, crl in enumerate(self.crls):
            self._crls_by_issuer.setdefault(crl.issuer.public_bytes(), []).append(i)
        self._crl_signature_ok: dict[tuple[int, bytes], bool] = {}
        #: (validation time, verifier) of the last check; replaced as one tuple, so threads may share a store
        self._verifier: tuple[datetime, object] | None = None
        #: validated chain -> the earliest next update of the CRLs that found it unrevoked (None: none)
        self._unrevoked: dict[tuple[x509.Certificate, ...], datetime | None] = {}
        #: (certificate, extra chain) -> (validated chain, valid from, reusable until)
        self._chains: dict[tuple, tuple[tuple[x509.Certificate, ...], datetime, datetime]] = {}

    @classmethod
    def load(cls, anchors_pem: PathLike, intermediates_pem: PathLike | None = None, crls: Sequence[PathLike] = (),
             *, crl_required: bool = True, stale_crl_is_failure: bool = True) -> TrustStore:
        """Anchors (PEM, one or more), optional intermediates (PEM), CRL files (PEM with one or more CRLs, or DER)."""
        if isinstance(crls, (str, os.PathLike)):
            crls = [crls]
        return cls(_read_certificates(anchors_pem), _read_certificates(intermediates_pem) if intermediates_pem else (),
                   [c for path in crls for c in _read_crls(path)],
                   crl_required=crl_required, stale_crl_is_failure=stale_crl_is_failure)

    @classmethod
    def from_bundle(cls, bundle_pem: PathLike, crls: Sequence[PathLike] = (), **options) -> TrustStore:
        """One PEM holding anchors and intermediates (what `keys init-dev` writes as trust.pem):
        self-signed certificates are the anchors, the others intermediates."""
        certs = _read_certificates(bundle_pem)
        anchors = [c for c in certs if _self_signed(c)]
        return cls(anchors, [c for c in certs if not _self_signed(c)],
                   [c for path in crls for c in _read_crls(path)], **options)

    def __repr__(self) -> str:
        return (f"<TrustStore anchors={len(self.anchors)} intermediates={len(self.intermediates)} crls={len(self.crls)}"
                f" crl_required={self.crl_required} stale_crl_is_failure={self.stale_crl_is_failure}>")

    # -- the check -----------------------------------------------------------------------------

    def check(self, cert: x509.Certificate, extra_chain: Sequence[x509.Certificate], at: datetime, *,
              usage: Usage, party: PartyBinding | None = None) -> list[x509.Certificate]:
        """The validated chain [cert, …, anchor], or the specific error (see the module for the order)."""
        if usage not in ("sign", "encrypt"):
            raise ValueError(f"usage must be 'sign' or 'encrypt', not {usage!r}")
        at = _utc(at)
        try:
            self._check_own_algorithms(cert, usage)
            _check_validity(cert, at)
            _check_profile(cert, usage)
            chain = self._chain(cert, list(extra_chain), at)
            self._check_revocation(chain, at)
            if party is not None:
                wrong = party.mismatches(cert)
                if wrong:
                    raise WrongSender(f"{describe(cert)} is not the expected party "
                                      f"({', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not match)")
        except (ValueError, x509.InvalidVersion) as e:
            # cryptography parses names, extensions and versions lazily: a corrupt certificate that
            # loaded fails here, on first access; for the operator that is a malformed message
            raise MalformedMessage(f"a certificate in the message cannot be read ({type(e).__name__})") from None
        return chain

    @staticmethod
    def _check_own_algorithms(cert: x509.Certificate, usage: Usage) -> None:
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise WeakAlgorithm(f"{describe(cert)} has an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, _CURVES):
                raise UnsupportedAlgorithm(f"{describe(cert)} has an EC key on {key.curve.name} "
                                           "(P-256/384/521 are supported)")
            if usage == "encrypt":
                raise UnsupportedAlgorithm(f"{describe(cert)} has an EC key: partners are encrypted to by RSA key "
                                           "transport only; the partner needs an RSA encryption certificate")
        else:
            raise UnsupportedAlgorithm(f"{describe(cert)} has a {type(key).__name__} key (RSA and EC are supported)")
        _check_signature_hash(cert)

    def _chain(self, cert: x509.Certificate, extra: list[x509.Certificate], at: datetime) -> list[x509.Certificate]:
        # a path once built holds while every certificate on it is valid: reuse it for a few minutes (the
        # verifier costs two RSA signature checks per message); revocation is still checked every time
        key = (cert, tuple(extra))
        known = self._chains.get(key)
        if known is not None and known[1] <= at < known[2]:
            return list(known[0])
        chain = self._verify_chain(cert, extra, at)
        if len(self._chains) >= 4096:
            self._chains.clear()
        self._chains[key] = (tuple(chain), max(c.not_valid_before_utc for c in chain),
                             min([c.not_valid_after_utc for c in chain] + [at + CHAIN_REUSE]))
        return chain

    def _verify_chain(self, cert: x509.Certificate, extra: list[x509.Certificate], at: datetime) -> list[x509.Certificate]:
        cached = self._verifier
        if cached is None or cached[0] != at:
            cached = (at, PolicyBuilder().store(self._store).time(at).max_chain_depth(MAX_CHAIN_DEPTH)
                      .extension_policies(ca_policy=CA_POLICY, ee_policy=EE_POLICY).build_client_verifier())
            self._verifier = cached
        try:
            return list(cached[1].verify(cert, extra + list(self.intermediates)).chain)
        except VerificationError as e:
            self._diagnose(cert, extra, at, str(e))
            raise AssertionError("unreachable")  # _diagnose always raises

    def _diagnose(self, cert: x509.Certificate, extra: list[x509.Certificate], at: datetime, reason: str) -> None:
        """Rebuild the path by name and signature to turn the verifier's refusal into a specific error."""
        pool = [*self.anchors, *extra, *self.intermediates]
        cur, depth = cert, 0
        while cur not in self._anchor_set:
            if cur is not cert:
                _check_validity(cur, at)
                _check_signature_hash(cur)
            if _self_signed(cur):
                raise SignerNotTrusted(f"the chain ends at self-signed {describe(cur)}, which is not a trust anchor")
            named = [c for c in pool if c.subject == cur.issuer and c != cur]
            issuer = next((c for c in named if _issued_by(cur, c)), None)
            if issuer is None:
                if named and all(c in self._anchor_set for c in named):
                    raise SignerNotTrusted(f"{describe(cur)} names trust anchor '{cur.issuer.rfc4514_string()}' as "
                                           "its issuer, but that anchor did not sign it")
                if named:
                    raise ChainBroken(f"{describe(cur)} does not verify under the certificate named "
                                      f"'{cur.issuer.rfc4514_string()}' (wrong or altered issuer certificate)")
                if cur is cert:
                    raise ChainBroken(f"the issuer '{cur.issuer.rfc4514_string()}' of {describe(cur)} is neither "
                                      "in the message nor among the configured intermediates or anchors")
                raise SignerNotTrusted(f"the chain leads through {describe(cur)} to "
                                       f"'{cur.issuer.rfc4514_string()}', which is not a trust anchor")
            key = issuer.public_key()
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
                raise WeakAlgorithm(f"{describe(issuer)} has an RSA key of {key.key_size} bits")
            cur, depth = issuer, depth + 1
            if depth > MAX_CHAIN_DEPTH:
                raise ChainBroken(f"no path to a trust anchor within {MAX_CHAIN_DEPTH} certificates")
        # the verifier's text names certificates by full subject (perhaps a person's name): not in our errors
        reason = re.sub(r"<Certificate\(subject=<Name\(.*?\)>, \.\.\.\)>", "a certificate", reason)
        raise CertificatePolicy(f"the chain of {describe(cert)} to its trust anchor breaks the S/MIME profile: "
                                f"{reason}")

    # -- revocation ----------------------------------------------------------------------------

    def _check_revocation(self, chain: list[x509.Certificate], at: datetime) -> None:
        # the CRLs of a store never change: a chain found unrevoked stays so until a CRL it relied on is due
        key = tuple(chain)
        if key in self._unrevoked:
            due = self._unrevoked[key]
            if due is None or not self.stale_crl_is_failure or at <= due:
                return
        due = self._revocation(chain, at)
        if len(self._unrevoked) >= 4096:
            self._unrevoked.clear()
        self._unrevoked[key] = due

    def _revocation(self, chain: list[x509.Certificate], at: datetime) -> datetime | None:
        """Raise if revoked or unknown; else the earliest next update of the CRLs relied on (None: none)."""
        earliest = None
        for i, cert in enumerate(chain[:-1]):
            issuer = chain[i + 1]
            in_scope = [crl for crl in self._crls_of(issuer) if _covers(crl, cert)]
            for crl in in_scope:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None and _reason(entry) != x509.ReasonFlags.remove_from_crl:
                    why = _reason(entry)
                    raise CertificateRevoked(f"{describe(cert)} was revoked on "
                                             f"{entry.revocation_date_utc:%Y-%m-%d %H:%M:%SZ}"
                                             + (f" ({why.value})" if why else ""))
            complete = [crl for crl in in_scope if not _partial(crl)]
            if not complete:
                if i == 0 and self.crl_required:
                    raise RevocationUnknown(f"no CRL of '{issuer.subject.rfc4514_string()}' is configured: "
                                            f"the revocation status of {describe(cert)} is unknown")
                continue
            freshest = max(complete, key=lambda c: c.next_update_utc or c.last_update_utc)
            due = freshest.next_update_utc
            if self.stale_crl_is_failure and (due is None or due < at):
                raise RevocationUnknown(f"the CRL of '{issuer.subject.rfc4514_string()}' is stale (next update "
                                        + (f"was due {due:%Y-%m-%d %H:%M:%SZ}" if due else "not announced")
                                        + f"): the revocation status of {describe(cert)} is unknown")
            if due is not None:
                earliest = due if earliest is None else min(earliest, due)
        return earliest

    def _crls_of(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs named after `issuer` whose signature its key verifies (cached per CRL and key)."""
        found = []
        key_der = issuer.public_key().public_bytes(*_SPKI)
        for i in self._crls_by_issuer.get(issuer.subject.public_bytes(), ()):
            ok = self._crl_signature_ok.get((i, key_der))
            if ok is None:
                try:
                    ok = self.crls[i].is_signature_valid(issuer.public_key())
                except (TypeError, ValueError, _CryptoUnsupported):
                    ok = False
                self._crl_signature_ok[(i, key_der)] = ok
            if ok:
                found.append(self.crls[i])
        return found


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise CertificateNotYetValid(f"{describe(cert)} is not valid before "
                                     f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}")
    if at > cert.not_valid_after_utc:
        raise CertificateExpired(f"{describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")


def _check_signature_hash(cert: x509.Certificate) -> None:
    try:
        h = cert.signature_hash_algorithm
    except _CryptoUnsupported:
        raise UnsupportedAlgorithm(f"{describe(cert)} is signed with an unsupported algorithm "
                                   f"({cert.signature_algorithm_oid.dotted_string})") from None
    if h is not None and h.name in _WEAK_HASHES:
        raise WeakAlgorithm(f"{describe(cert)} is signed with {_WEAK_HASHES[h.name]}")


def _check_profile(cert: x509.Certificate, usage: Usage) -> None:
    ext = cert.extensions
    if _is_ca(cert):
        raise CertificatePolicy(f"{describe(cert)} is a CA certificate, not an S/MIME end-entity certificate")
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None  # RFC 5280: no keyUsage, no restriction
    if ku is not None:
        if usage == "sign" and not ku.digital_signature:
            raise CertificatePolicy(f"{describe(cert)} may not sign: keyUsage lacks digitalSignature")
        if usage == "encrypt" and not ku.key_encipherment:
            raise CertificatePolicy(f"{describe(cert)} may not receive encrypted messages: "
                                    "keyUsage lacks keyEncipherment")
    try:
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificatePolicy(f"{describe(cert)} has no extendedKeyUsage (emailProtection is required)") from None
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
        raise CertificatePolicy(f"{describe(cert)} is not for S/MIME: extendedKeyUsage lacks emailProtection")


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _idp(crl: x509.CertificateRevocationList) -> x509.IssuingDistributionPoint | None:
    try:
        return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None


def _covers(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether `crl` speaks about `cert`: not a delta CRL, not indirect, and its scope includes the cert's kind."""
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return False
    except x509.ExtensionNotFound:
        pass
    idp = _idp(crl)
    if idp is None:
        return True
    if idp.indirect_crl or idp.only_contains_attribute_certs:
        return False
    return not ((idp.only_contains_ca_certs and not _is_ca(cert)) or (idp.only_contains_user_certs and _is_ca(cert)))


def _partial(crl: x509.CertificateRevocationList) -> bool:
    """A CRL limited to some reasons cannot prove that a certificate is not revoked."""
    idp = _idp(crl)
    return idp is not None and idp.only_some_reasons is not None


def _read_certificates(path: PathLike) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrustStoreError(f"cannot read certificates from {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise TrustStoreError(f"{path} holds no readable certificates (PEM or DER)") from None
    return certs


_CRL_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def _read_crls(path: PathLike) -> list[x509.CertificateRevocationList]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrustStoreError(f"cannot read CRLs from {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            crls = [x509.load_pem_x509_crl(block) for block in _CRL_PEM.findall(data)]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustStoreError(f"{path} holds an unreadable CRL") from None
    if not crls:
        raise TrustStoreError(f"{path} holds no CRL")
    return crls
