"""Helpers for the subject-rights tests (no tests here): messages about a chosen BSN, spooled, accepted,
routed and sealed by the real sealer (so the own sealed copy exists), arrivals with an inbox or quarantine
copy, and their ``subject_index`` rows."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

from cryptography import x509
from sqlalchemy import insert, select

from adapters.inbox_fs import InboxWriter, quarantine
from dropped import example, with_new_id
from gateway.pipeline.sealer import Sealer
from gateway.privacy import subject_hash
from gateway.store import NewMessage, State, Store
from gateway.store.schema import subject_index

#: valid BSNs (11-proof) of two persons and of nobody in the store
ANNA, BERT, NOBODY = "111222333", "123456782", "999990019"


def _dossier(bsn: str) -> str:
    return "D-" + hashlib.sha256(bsn.encode()).hexdigest()[:8]  # one per person, without the BSN


def about(name: str, bsn: str) -> tuple[bytes, str]:
    """An example message under a fresh id, about the person with ``bsn``."""
    xml, mid = with_new_id(example(name))
    xml = re.sub(rb"<burgerservicenummer>\d+</burgerservicenummer>",
                 f"<burgerservicenummer>{bsn}</burgerservicenummer>".encode(), xml, count=1)
    return xml, mid


async def index(store: Store, key: bytes, bsn: str, direction: str, mid: str) -> None:
    """The subject index row the pick-up or intake writes for a message about ``bsn``."""
    row = dict(subject=subject_hash(key, bsn), direction=direction, message_id=mid,
               recorded_at=datetime.now(timezone.utc))

    def tx(conn) -> None:
        if conn.execute(select(subject_index.c.id).where(subject_index.c.subject == row["subject"],
                                                         subject_index.c.message_id == mid)).first() is None:
            conn.execute(insert(subject_index).values(**row))

    await store.run_write(tx)


async def outbound(store: Store, cfg, secrets, name: str, type_: str, recipient: str, bsn: str,
                   *, seal: bool = True) -> str:
    """Spooled, accepted, indexed and (``seal``) routed and sealed by the real sealer: queued."""
    xml, mid = about(name, bsn)
    spool = cfg.folders.spool / f"{mid}.xml"
    spool.write_bytes(xml)
    await store.accept(NewMessage(
        message_id=mid, type=type_, version="1.0", sender="pi:PI-VUGHT", recipient=recipient, dossier=_dossier(bsn),
        replies_to=None, supersedes=None, priority=0, created_at=datetime.now(timezone.utc), file_name=f"{mid}.xml",
        size=len(xml), sha256=hashlib.sha256(xml).hexdigest(), spool_path=str(spool)))
    await index(store, secrets.subject_key, bsn, "outbound", mid)
    if seal:
        certificates = {c: x509.load_pem_x509_certificate(r.certificate.read_bytes()) for c, r in cfg.routes.items()}
        sealer = Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=cfg.parties(),
                        routes=cfg.routes, certificates=certificates, queued=lambda: None)
        assert await sealer.route_and_seal(mid) is State.QUEUED
    return mid


async def settle(store: Store, mid: str, state: State) -> None:
    """queued -> sending -> acknowledged (via sent) or failed."""
    now = datetime.now(timezone.utc)
    await store.transition(mid, State.SENDING, actor="t", lease_owner="t", lease_until=now.replace(year=now.year + 1))
    if state is State.FAILED:
        await store.transition(mid, State.FAILED, reason="refused permanently: 550", actor="t")
        return
    await store.transition(mid, State.SENT, actor="t", remote_reply="250 ok")
    await store.transition(mid, State.ACKNOWLEDGED, actor="receipts")


async def arrived(store: Store, cfg, secrets, bsn: str) -> tuple[str, str]:
    """An accepted gemeenteblad (inbox copy) and a refused one (quarantined), both indexed: their ids."""
    xml, mid = about("02-gemeenteblad.xml", bsn)
    entry = InboxWriter(cfg.folders.inbox).deliver("gemeenteblad", mid, xml, {"sender": "gemeente:0599"})
    await store.record_inbound(message_id=mid, transport="email", sha256=hashlib.sha256(xml).hexdigest(),
                               outcome="accepted", sender="gemeente:0599", type="gemeenteblad",
                               dossier=_dossier(bsn), inbox_path=str(entry.xml_path))
    await index(store, secrets.subject_key, bsn, "inbound", mid)
    refused_xml, refused = about("02-gemeenteblad.xml", bsn)
    kept = quarantine(cfg.folders.quarantine, b"sealed bytes of " + refused.encode(), {"reason": "test"},
                      datetime.now(timezone.utc))
    await store.record_inbound(message_id=refused, transport="email",
                               sha256=hashlib.sha256(refused_xml).hexdigest(), outcome="refused",
                               reason_code="signer-not-trusted", reason="test", quarantine_path=str(kept))
    await index(store, secrets.subject_key, bsn, "inbound", refused)
    return mid, refused
