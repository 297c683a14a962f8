"""Encryption profiles: which key transport and which content cipher a partner gets.

`compatible` is what every S/MIME mail client reads (RSA PKCS#1 v1.5 key
transport, AES-256-CBC in EnvelopedData). `strong` is what Digikoppeling and
the NCSC ask for between gateways (RSA-OAEP with SHA-256, AES-256-GCM in
AuthEnvelopedData, RFC 5083/5084). Between the two, key transport and content
cipher are chosen separately per partner, e.g. AES-256-CBC with RSA-OAEP,
which third-party AS2 peers read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class KeyTransport(StrEnum):
    RSA_PKCS1V15 = "rsa-pkcs1v15"
    RSA_OAEP_SHA1 = "rsa-oaep-sha1"  #: read from peers; OAEP's own SHA-1 is not a weakness
    RSA_OAEP_SHA256 = "rsa-oaep-sha256"
    RSA_OAEP_SHA512 = "rsa-oaep-sha512"


class ContentCipher(StrEnum):
    AES128_CBC = "aes128-cbc"
    AES192_CBC = "aes192-cbc"
    AES256_CBC = "aes256-cbc"
    AES128_GCM = "aes128-gcm"
    AES256_GCM = "aes256-gcm"

    @property
    def authenticated(self) -> bool:
        """GCM goes in AuthEnvelopedData, CBC in EnvelopedData."""
        return self.value.endswith("-gcm")


@dataclass(frozen=True, slots=True)
class EncryptionProfile:
    name: str
    key_transport: KeyTransport
    content_cipher: ContentCipher


COMPATIBLE = EncryptionProfile("compatible", KeyTransport.RSA_PKCS1V15, ContentCipher.AES256_CBC)
STRONG = EncryptionProfile("strong", KeyTransport.RSA_OAEP_SHA256, ContentCipher.AES256_GCM)
NAMED = {p.name: p for p in (COMPATIBLE, STRONG)}


def profile_from(name: str | None = None, *, key_transport: str | None = None,
                 content_cipher: str | None = None) -> EncryptionProfile:
    """A named profile, or a custom one from its two parts (what a route table entry says).

    Raises ValueError naming the allowed values when a name is unknown.
    """
    if name is not None and key_transport is None and content_cipher is None:
        try:
            return NAMED[name]
        except KeyError:
            raise ValueError(f"unknown encryption profile {name!r}; known: {', '.join(NAMED)}, "
                             "or give key_transport and content_cipher") from None
    base = NAMED.get(name or "compatible", COMPATIBLE)
    try:
        kt = KeyTransport(key_transport) if key_transport else base.key_transport
        cc = ContentCipher(content_cipher) if content_cipher else base.content_cipher
    except ValueError as e:
        raise ValueError(f"{e}; key transports: {', '.join(KeyTransport)}; content ciphers: {', '.join(ContentCipher)}") from None
    return EncryptionProfile(f"custom({kt.value},{cc.value})", kt, cc)
