"""Benchmark: open_sealed() (decrypt + verify + chain/CRL + MIME) against the bare primitives it needs.

For each XML size (5 KB, 50 KB) and profile (compatible, strong) messages are
sealed up front with `gateway.crypto.seal.seal`, from PI-VUGHT to 0599 of a
fresh development PKI, and opened by 0599 with one reused `TrustStore` (root,
issuing CA, the issuing CA's CRL) at the current time, as the gateway does.
Every message is a different one, as in real traffic (a pool of 200, signing
times a second apart, opened in turn): what `open_sealed` remembers from one
message to the next is only what a sender repeats (certificates, algorithm
identifiers, the layout of its messages), never a message itself. What is
timed is everything `open_sealed` does: parse the MIME entity and the CMS
envelope, unwrap the content key, decrypt, split the multipart/signed, verify
the CMS signature, check the signer's chain and revocation, decode the XML,
compute the MIC and the entity digest.

The baseline is what one opened message costs at the very least, measured in
the same run: one RSA-2048 private-key decryption of a 32-byte key
(PKCS#1 v1.5 for compatible, OAEP-SHA-256 for strong), AES-256-CBC resp.
AES-256-GCM decryption over a ciphertext of the size the message carries
(the signed entity), one RSA-2048 PKCS#1 v1.5 signature verification over a
SHA-256 digest, and SHA-256 over the signed content part. Keys and inputs are
made outside the timing. Rounds alternate between the two sides so that
machine noise hits both alike; the figure that counts is the ratio of the
medians. Goal: ratio >= 0.4.

What the gap is made of, at 50 KB (~1.2 ms over the baseline's ~0.8 ms):
base64 of the envelope (100 KB) and of the XML part (68 KB), ~0.5 ms
(stdlib binascii, ~2.3 ns per byte, plus removing the line breaks); the
chain and CRL check, ~0.25 ms (TrustStore.check: cryptography's verifier
checks two RSA-3072 signatures); SHA-256 of the decrypted entity; MIME
splitting and copies of the large parts; and what is left of CMS parsing
(matching a learnt layout, the DER check of the signed attributes, the
signing time), ~0.1 ms. At 5 KB the base64 share is small.

    .venv/bin/python bench/crypto_open.py [--rounds N] [--seconds S] [--pool N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from itertools import cycle
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asn1crypto  # noqa: E402
import cryptography  # noqa: E402

from bench.common import bare_open, machine, print_figures, rate, write_result  # noqa: E402
from bench.crypto_seal import xml_of_size  # noqa: E402
from gateway.crypto.identity import load_pem_identity  # noqa: E402
from gateway.crypto.open import open_sealed  # noqa: E402
from gateway.crypto.pki import init_dev_pki  # noqa: E402
from gateway.crypto.profiles import COMPATIBLE, STRONG  # noqa: E402
from gateway.crypto.seal import seal  # noqa: E402
from gateway.crypto.trust import TrustStore  # noqa: E402

GOAL = 0.4
SIZES = (5_000, 50_000)
POOL = 200  #: distinct messages per size and profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.3, help="per side per round")
    ap.add_argument("--pool", type=int, default=POOL, help="distinct messages per size and profile")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pki"
        parties = init_dev_pki(folder)
        sender = load_pem_identity(parties["PI-VUGHT"] / "key.pem", parties["PI-VUGHT"] / "chain.pem")
        me = load_pem_identity(parties["0599"] / "key.pem", parties["0599"] / "chain.pem")
        trust = TrustStore.load(folder / "ca" / "root.pem", folder / "ca" / "issuing.pem",
                                [folder / "ca" / "issuing.crl.pem"])

    figures = []
    for size in SIZES:
        xml = xml_of_size(size)
        for profile in (COMPATIBLE, STRONG):
            start = datetime.now(timezone.utc)
            pool = [seal(xml, sender, me.cert, profile, signing_time=start - timedelta(seconds=i)).entity
                    for i in range(args.pool)]
            bare = bare_open(sender, me, xml, profile)

            def ours(messages=cycle(pool)) -> None:
                open_sealed(next(messages), me, trust)

            for entity in pool:  # each opens to what was sealed; this also warms what a running gateway has warm
                opened = open_sealed(entity, me, trust)
                assert opened.xml == xml and opened.signer == sender.cert, "open_sealed did not return the XML"
            ours_rates, bare_rates = [], []
            for _ in range(args.rounds):
                bare_rates.append(rate(bare.run, args.seconds))
                ours_rates.append(rate(ours, args.seconds))
            o, b = statistics.median(ours_rates), statistics.median(bare_rates)
            per_round = sorted(x / y for x, y in zip(ours_rates, bare_rates))
            figures.append({"name": f"open {profile.name} {size // 1000} KB", "unit": "msg/s", "value": round(o),
                            "baseline_name": bare.name,
                            "baseline": round(b), "ratio": round(o / b, 3), "goal": GOAL,
                            "ratio_per_round_min": round(per_round[0], 3),
                            "ratio_per_round_max": round(per_round[-1], 3),
                            "per_message_us": round(1e6 / o, 1), "baseline_per_message_us": round(1e6 / b, 1),
                            "entity_bytes": bare.entity_bytes, "ciphertext_bytes": bare.ciphertext_bytes})

    result = {
        "benchmark": "crypto_open",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(),
                    "cryptography": cryptography.__version__, "asn1crypto": asn1crypto.__version__,
                    "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}},
        "rounds": args.rounds, "seconds_per_side_per_round": args.seconds, "distinct_messages": args.pool,
        "figures": figures,
    }
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"cryptography {cryptography.__version__}, asn1crypto {asn1crypto.__version__}; "
          f"sender RSA-2048, recipient RSA-2048, {args.rounds} rounds, {args.pool} distinct messages each")
    print_figures(figures, GOAL, "open msg/s")
    write_result(ROOT, "crypto_open", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
