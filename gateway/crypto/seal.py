"""Sealing: sign an XML message, then encrypt it, as one S/MIME entity (RFC 8551).

What it does: puts the XML in an ``application/xml`` part (base64, so its
bytes survive any transport unchanged), signs that part detached
(``multipart/signed``, SHA-256, signed attributes contentType, signingTime,
messageDigest, smimeCapabilities; the signer's certificate and intermediates
embedded; RSA PKCS#1 v1.5 or ECDSA), and encrypts the whole signed entity to
the recipient and to the sender itself, under the partner's
:class:`~gateway.crypto.profiles.EncryptionProfile`:

- CBC ciphers: EnvelopedData, ``smime-type=enveloped-data``;
- GCM ciphers: AuthEnvelopedData (RFC 5083/5084), ``smime-type=authEnveloped-data``;
- key transport to RSA keys: PKCS#1 v1.5 or RSAES-OAEP (SHA-1/256/512, RFC 4055);
  the sender's own copy, when the sender signs with an EC key, by ECDH key
  agreement (RFC 5753), since an EC key cannot receive key transport.

The exact MIME layout is described in :mod:`gateway.crypto.smime`, the CMS
structures in :mod:`gateway.crypto.cms`.

What it trusts: the caller, for the certificates. Sealing does not check
validity dates, revocation or key usage of the recipient's or the sender's
certificate: run ``gateway.crypto.trust`` on the recipient certificate (and
keep the own identity current) before calling :func:`seal`. It only refuses
keys it will not use.

How it fails: :class:`~gateway.crypto.errors.UnsupportedAlgorithm` for a
non-RSA recipient key (or an unsupported sender key or curve),
:class:`~gateway.crypto.errors.WeakAlgorithm` for an RSA key under 2048 bits,
``ValueError`` for empty XML, a bad file name or a naive signing time. No
exception or log carries key material, passphrases or message content.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from gateway.crypto import cms, smime
from gateway.crypto.identity import Identity
from gateway.crypto.profiles import EncryptionProfile

MIC_ALGORITHM = "sha-256"


@dataclass(frozen=True, slots=True)
class Sealed:
    #: the complete MIME entity to transmit: headers + CRLF + base64 body (CRLF line ends)
    entity: bytes
    #: the multipart/signed entity that was encrypted (canonical CRLF), for the sender's records
    signed_entity: bytes
    #: base64 SHA-256 of the signed content part (headers included) = the CMS messageDigest; AS2's MIC
    mic: str
    mic_algorithm: str = MIC_ALGORITHM

    def __repr__(self) -> str:  # never the content
        return f"<Sealed {len(self.entity)} bytes mic={self.mic_algorithm}:{self.mic}>"


def seal(xml: bytes, sender: Identity, recipient: x509.Certificate, profile: EncryptionProfile, *,
         content_filename: str = "bericht.xml", signing_time: datetime | None = None) -> Sealed:
    """Sign `xml` as `sender`, encrypt it to `recipient` and to `sender`, under `profile`.

    The caller has already checked `recipient` with ``gateway.crypto.trust`` (expiry, revocation,
    chain, key usage): this function does not. `signing_time` (timezone-aware) defaults to now.
    """
    if not xml:
        raise ValueError("refusing to seal an empty message")
    # refuse before spending a signature on a message that cannot be sent
    cms.check_rsa_recipient(recipient)
    part = smime.content_part(xml, content_filename)
    signature, digest = cms.sign_detached(part, sender.key, sender.cert, sender.chain, signing_time)
    signed_entity = smime.multipart_signed(part, signature)
    cipher = profile.content_cipher
    der = cms.envelope(signed_entity, [recipient], profile.key_transport, cipher, self_copy=sender.cert)
    return Sealed(entity=smime.pkcs7_mime(der, authenticated=cipher.authenticated),
                  signed_entity=signed_entity,
                  mic=base64.b64encode(digest).decode("ascii"))
