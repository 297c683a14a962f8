"""Example messages as a PI system would drop them, for the pipeline and e2e tests."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from zoneinfo import ZoneInfo

from paths import DOSSIER, EXAMPLES

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


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


_DATE = re.compile(rb"<(?P<tag>[A-Za-z]+)>(?P<day>\d{4}-\d{2}-\d{2})(?P<time>T[^<]*)?</(?P=tag)>")
#: dates a message states about the past (the validator refuses them after its aanmaaktijdstip)
_PAST_DATES = {b"datum", b"aanvangDetentie", b"datumVonnis", b"afgerondOp"}


def told_now(story: list[bytes], now: datetime) -> list[bytes]:
    """A story (one dossier's messages, oldest first) as if its first message (the melding) were made today:
    every date of the story moves by the same number of days, birth dates excepted, and each message is made
    at ``now`` (a date the validator wants in the past, a signature's ``datum``, stays at most today).
    The examples' own dates are months old: sent today, their melding is late, and every dossier alerts."""
    today = now.astimezone(AMSTERDAM).date()
    first = datetime.fromisoformat(re.search(rb"<aanmaaktijdstip>([^<]+)<", story[0]).group(1).decode())
    shift = today - first.astimezone(AMSTERDAM).date()

    def moved(m: re.Match) -> bytes:
        tag = m.group("tag")
        if tag == b"aanmaaktijdstip":
            return b"<aanmaaktijdstip>" + now.astimezone(AMSTERDAM).isoformat(timespec="seconds").encode() + \
                b"</aanmaaktijdstip>"
        if tag.startswith(b"geboortedatum"):
            return m.group(0)
        if m.group("time"):
            at = datetime.fromisoformat((m.group("day") + m.group("time")).decode()) + shift
            return b"<%s>%s</%s>" % (tag, at.isoformat(timespec="seconds").encode(), tag)
        day = date.fromisoformat(m.group("day").decode()) + shift
        if tag in _PAST_DATES:
            day = min(day, today)
        return b"<%s>%s</%s>" % (tag, day.isoformat().encode(), tag)

    return [_DATE.sub(moved, body) for body in story]
