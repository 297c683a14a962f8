"""One RFC 5084 GCMParameters for sealing and opening, registered with asn1crypto once, whatever the import order.

Each check runs in a fresh interpreter (the registration is process-wide, and this test session has long
imported everything): it notes asn1crypto's registries before any gateway import, imports the sealing and
the opening side in the given order, then seals a STRONG message (AES-256-GCM, RSA-OAEP-SHA256) from
PI-VUGHT to 0599 with the development PKI and opens it again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import importlib, json, sys
    from pathlib import Path
    from asn1crypto import algos, cms as acms

    registries = (algos.EncryptionAlgorithm._oid_specs, acms.KeyEncryptionAlgorithm._oid_specs)
    before = [dict(r) for r in registries]
    first, second, pki, parties = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
    importlib.import_module(first)
    importlib.import_module(second)

    from gateway.crypto import asn1, cms
    from gateway.crypto.identity import load_pem_identity
    from gateway.crypto.open import open_sealed
    from gateway.crypto.profiles import STRONG
    from gateway.crypto.seal import seal
    from gateway.crypto.trust import TrustStore

    after = [dict(r) for r in registries]
    asn1.register_asn1crypto_extensions()  # a second call changes nothing
    again = [dict(r) for r in registries]

    sender = load_pem_identity(Path(parties["PI-VUGHT"]) / "key.pem", Path(parties["PI-VUGHT"]) / "chain.pem")
    me = load_pem_identity(Path(parties["0599"]) / "key.pem", Path(parties["0599"]) / "chain.pem")
    trust = TrustStore.load(pki / "ca" / "root.pem", pki / "ca" / "issuing.pem", [pki / "ca" / "issuing.crl.pem"])
    xml = '<?xml version="1.0" encoding="UTF-8"?>\\n<bericht>Zoë</bericht>\\n'.encode()
    opened = open_sealed(seal(xml, sender, me.cert, STRONG).entity, me, trust)

    print(json.dumps({
        "kept": all(a.get(k) is v for b, a in zip(before, after) for k, v in b.items()),
        "added": sorted(k for b, a in zip(before, after) for k in a if k not in b),
        "idempotent": after == again,
        "gcm_spec": [f"{c.__module__}.{c.__qualname__}" for c in
                     (algos.EncryptionAlgorithm._oid_specs[n] for n in ("aes128_gcm", "aes192_gcm", "aes256_gcm"))],
        "one_class": cms.GCMParameters is asn1.GCMParameters,
        "opened": opened.xml == xml and opened.signer == sender.cert,
        "cipher": opened.content_cipher, "transport": opened.key_transport,
    }))
''')

SEALING, OPENING = "gateway.crypto.seal", "gateway.crypto.open"


@pytest.mark.parametrize("first, second", [(SEALING, OPENING), (OPENING, SEALING)],
                         ids=["seal-then-open", "open-then-seal"])
def test_one_gcm_parameters_whatever_the_import_order(dev_pki, first, second):
    folder, parties = dev_pki
    r = subprocess.run([sys.executable, "-c", SCRIPT, first, second, str(folder),
                        json.dumps({k: str(v) for k, v in parties.items()})],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got == {
        "kept": True,  # asn1crypto's own entries are untouched
        "added": ["1.3.132.1.11.1", "1.3.132.1.11.2", "1.3.132.1.11.3", "aes128_gcm", "aes192_gcm", "aes256_gcm"],
        "idempotent": True,
        "gcm_spec": ["gateway.crypto.asn1.GCMParameters"] * 3,
        "one_class": True,
        "opened": True, "cipher": "aes256-gcm", "transport": "rsa-oaep-sha256",
    }
