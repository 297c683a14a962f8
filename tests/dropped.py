"""Example messages as a PI system would drop them, for the pipeline and e2e tests."""

from __future__ import annotations

import re
import uuid

from paths import DOSSIER, EXAMPLES


def example(name: str) -> bytes:
    path = DOSSIER / name if (DOSSIER / name).exists() else EXAMPLES / "valid" / name
    return path.read_bytes()


def with_new_id(xml: bytes) -> tuple[bytes, str]:
    """The same message under a fresh berichtId (so one example can be dropped many times)."""
    new = str(uuid.uuid4())
    return re.sub(rb"<berichtId>[^<]+</berichtId>", f"<berichtId>{new}</berichtId>".encode(), xml, count=1), new


def dossier_of(xml: bytes) -> str:
    """The message's dossier reference (dossierreferentie, in the header)."""
    return re.search(rb"<dossierreferentie>([^<]+)</dossierreferentie>", xml).group(1).decode()


def in_dossier(xml: bytes, reference: str) -> bytes:
    """The same message in another dossier (``reference`` must match the XSD's Dossierreferentie:
    ``[A-Za-z0-9][A-Za-z0-9._/-]{2,39}``)."""
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/\-]{2,39}", reference), reference
    return re.sub(rb"<dossierreferentie>[^<]+</dossierreferentie>",
                  f"<dossierreferentie>{reference}</dossierreferentie>".encode(), xml, count=1)


#: examples sent by PI-VUGHT (the party of the local set-up) and whom they go to
OWN_EXAMPLES = {
    "01-meldingsbericht.xml": "gemeente:0599",
    "03-basisdocument.xml": "gemeente:0599",
    "04-overdrachtsdocument.xml": "gemeente:0344",
    "05-ontslagbericht.xml": "gemeente:0344",
    "basisdocument-niet-gescreend.xml": "gemeente:0772",
    "meldingsbericht-veroordeeld-executie.xml": "gemeente:0772",
    "spoedontslagbericht-met-vestiging.xml": "gemeente:0014",
}
