"""Benchmark: seal() (sign + encrypt to two recipients, S/MIME) against the bare primitives it needs.

For each XML size (5 KB, 50 KB) and profile (compatible, strong) the baseline
is what one sealed message costs at the very least, measured in the same run:
one RSA-2048 PKCS#1 v1.5 signature over a SHA-256 digest, two RSA-2048 key
transports of a 32-byte key (PKCS#1 v1.5 for compatible, OAEP-SHA-256 for
strong), and AES-256-CBC resp. AES-256-GCM over the message bytes. Keys are
generated and loaded once, outside the timing. Rounds alternate between the
two sides so that machine noise hits both alike; the figure that counts is
the ratio of the medians. Goal: ratio >= 0.5.

What the gap is made of, at 50 KB: base64 of the XML part and of the
envelope (~2 µs per KB each, stdlib binascii), SHA-256 of the signed part,
AES over the larger signed entity, and ~80 page faults per message from
glibc returning freed heap to the kernel between messages (setting
MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ to e.g. 67108864 for the
gateway process removes those; the JSON records any MALLOC_* setting).

    .venv/bin/python bench/crypto_seal.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asn1crypto  # noqa: E402
import cryptography  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, utils  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from bench.common import machine, print_figures, rate, write_result  # noqa: E402
from gateway.crypto.identity import load_pem_identity  # noqa: E402
from gateway.crypto.pki import init_dev_pki  # noqa: E402
from gateway.crypto.profiles import COMPATIBLE, STRONG  # noqa: E402
from gateway.crypto.seal import seal  # noqa: E402

GOAL = 0.5
SIZES = (5_000, 50_000)


def xml_of_size(size: int) -> bytes:
    """A UTF-8 XML document of exactly `size` bytes, with non-ASCII text as real messages have."""
    head = '<?xml version="1.0" encoding="UTF-8"?>\n<bericht xmlns="urn:nazorg:bench">\n'.encode()
    tail = b"</bericht>\n"
    item = "  <regel>Zoë Çelik, Désirée van ’t Hof — 1234 AB Rotterdam</regel>\n".encode()
    body = item * ((size - len(head) - len(tail)) // len(item) + 1)
    data = head + body[: size - len(head) - len(tail)] + tail
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.3, help="per side per round")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        parties = init_dev_pki(Path(tmp) / "pki")
        sender = load_pem_identity(parties["PI-VUGHT"] / "key.pem", parties["PI-VUGHT"] / "chain.pem")
        recipient = x509.load_pem_x509_certificate((parties["0599"] / "cert.pem").read_bytes())
    key, pub_self, pub_rec = sender.key, sender.cert.public_key(), recipient.public_key()
    cek = os.urandom(32)

    figures = []
    for size in SIZES:
        xml = xml_of_size(size)
        for profile in (COMPATIBLE, STRONG):
            kt_pad = (padding.PKCS1v15() if profile is COMPATIBLE else
                      padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))

            def bare(xml=xml, kt_pad=kt_pad, gcm=profile.content_cipher.authenticated) -> None:
                h = hashes.Hash(hashes.SHA256())
                h.update(xml)
                key.sign(h.finalize(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
                pub_rec.encrypt(cek, kt_pad)
                pub_self.encrypt(cek, kt_pad)
                if gcm:
                    AESGCM(cek).encrypt(b"\0" * 12, xml, None)
                else:
                    e = Cipher(algorithms.AES(cek), modes.CBC(b"\0" * 16)).encryptor()
                    pad = 16 - len(xml) % 16
                    e.update(xml)
                    e.update(bytes((pad,)) * pad)  # PKCS#7 padding to whole blocks
                    e.finalize()

            def ours(xml=xml, profile=profile) -> None:
                seal(xml, sender, recipient, profile)

            ours()  # warm the per-certificate caches, as a running gateway has them
            ours_rates, bare_rates = [], []
            for _ in range(args.rounds):
                bare_rates.append(rate(bare, args.seconds))
                ours_rates.append(rate(ours, args.seconds))
            o, b = statistics.median(ours_rates), statistics.median(bare_rates)
            per_round = sorted(x / y for x, y in zip(ours_rates, bare_rates))
            figures.append({"name": f"seal {profile.name} {size // 1000} KB", "unit": "msg/s", "value": round(o),
                            "baseline_name": "RSA-2048 sign + 2 RSA key transports + AES-256-"
                                             + ("GCM" if profile.content_cipher.authenticated else "CBC"),
                            "baseline": round(b), "ratio": round(o / b, 3), "goal": GOAL,
                            "ratio_per_round_min": round(per_round[0], 3),
                            "ratio_per_round_max": round(per_round[-1], 3),
                            "per_message_us": round(1e6 / o, 1), "baseline_per_message_us": round(1e6 / b, 1),
                            "entity_bytes": len(seal(xml, sender, recipient, profile).entity)})

    result = {
        "benchmark": "crypto_seal",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(),
                    "cryptography": cryptography.__version__, "asn1crypto": asn1crypto.__version__,
                    # glibc malloc tuning changes the result (page faults from heap trimming): record it
                    "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}},
        "figures": figures,
    }
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"cryptography {cryptography.__version__}, asn1crypto {asn1crypto.__version__}; "
          f"sender RSA-2048, recipient RSA-2048, {args.rounds} rounds")
    print_figures(figures, GOAL, "seal msg/s")
    write_result(ROOT, "crypto_seal", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
