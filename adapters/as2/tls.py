"""TLS contexts for AS2 over HTTPS with mutual TLS: built from PEM bytes, no system trust, TLS 1.2 at least.

- Client: verifies the server's certificate against the partner's CA file only (never the system
  store), with host name checking on (the URL's host must be in the certificate's SAN), and shows
  our client certificate.
- Server: requires a client certificate that chains to the configured client CAs (CERT_REQUIRED:
  a client without one, or with an untrusted one, fails the handshake before any HTTP is read).

Both: TLS 1.2 minimum (1.3 is negotiated whenever the peer has it), TLS 1.2 suites limited to
ECDHE/DHE with AES-GCM or ChaCha20 (forward secrecy, AEAD), no renegotiation, no compression.

OpenSSL's default purpose checks apply: a server certificate with an extendedKeyUsage must allow
serverAuth, a client certificate with one must allow clientAuth. S/MIME party certificates (EKU
emailProtection only, as the development PKI makes them) are therefore refused as TLS certificates:
TLS needs its own certificates.

``SSLContext.load_cert_chain`` only reads files. The PEM is handed to it through an anonymous
in-memory file (``memfd_create``, read back through ``/proc/self/fd``), so the private key never
touches a file system; where that is unavailable, through a 0600 file in a fresh 0700 temporary
folder that is removed before this returns.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!SHA1"


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_trust(ctx: ssl.SSLContext, trust_pem: Path | str | bytes, what: str) -> None:
    try:
        if isinstance(trust_pem, (bytes, bytearray)):
            ctx.load_verify_locations(cadata=bytes(trust_pem).decode("ascii"))
        else:
            ctx.load_verify_locations(cafile=os.fspath(trust_pem))
    except (ssl.SSLError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{what} could not be loaded ({type(e).__name__})") from None
    if not ctx.get_ca_certs():
        raise ValueError(f"{what} holds no CA certificate")


def load_cert_chain_pem(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, *, in_memory: bool = True) -> None:
    """Load a certificate chain and its private key from PEM bytes (see the module for how)."""
    if not chain_pem or not key_pem:
        raise ValueError("a certificate chain and a private key are required")
    if in_memory and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for data in (chain_pem, key_pem):
                fd = os.memfd_create("as2-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        except ssl.SSLError:
            raise ValueError("the certificate chain or private key could not be loaded (PEM, unencrypted, "
                             "key matching the first certificate)") from None
        finally:
            for fd in fds:
                os.close(fd)
    folder = tempfile.mkdtemp(prefix="as2-tls-")  # mode 0700
    try:
        paths = []
        for name, data in (("chain.pem", chain_pem), ("key.pem", key_pem)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        ctx.load_cert_chain(*paths)
    except ssl.SSLError:
        raise ValueError("the certificate chain or private key could not be loaded (PEM, unencrypted, "
                         "key matching the first certificate)") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def client_context(*, server_trust_pem: Path | str | bytes, client_cert_chain_pem: bytes,
                   client_key_pem: bytes) -> ssl.SSLContext:
    """A client context: server certificate checked against `server_trust_pem` only, host name checked."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED  # PROTOCOL_TLS_CLIENT's defaults
    _load_trust(ctx, server_trust_pem, "the partner's server trust")
    load_cert_chain_pem(ctx, client_cert_chain_pem, client_key_pem)
    return ctx


def server_context(*, server_cert_chain_pem: bytes, server_key_pem: bytes, client_ca_pem: bytes) -> ssl.SSLContext:
    """A server context that requires a client certificate chaining to `client_ca_pem`."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_trust(ctx, client_ca_pem, "the client CA trust")
    load_cert_chain_pem(ctx, server_cert_chain_pem, server_key_pem)
    return ctx


def identity_pem(identity) -> tuple[bytes, bytes]:
    """(certificate chain PEM, unencrypted PKCS#8 key PEM) of an identity with `.key`, `.cert`, `.chain`
    (``gateway.crypto.identity.Identity``). The key PEM is secret: never log or store it."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (identity.cert, *identity.chain))
    key = identity.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return chain, key
