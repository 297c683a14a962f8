"""Who may receive a message: derived from its content, never given beside it.

The covenant and the platform protocol ("Beveiliging") entitle a municipality
only to dossiers of detainees who come from it (screening: meldingsbericht,
basisdocument) or who will settle in it after release (transfer and release:
overdrachtsdocument, ontslagbericht); the gemeenteblad goes back to the PI the
dossier belongs to. ``RECIPIENT_FIELDS`` is that rule as one table; routing
uses ``recipient_of`` and nothing else to decide where a message may go.

A spoedontslagbericht (unexpected immediate release) goes to the municipality
of settlement when the PI knows it, otherwise to the municipality of origin —
the person stays registered there (section III, 4-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from lxml import etree

from .catalogue import MessageType


class PartyKind(StrEnum):
    MUNICIPALITY = "gemeente"
    INSTITUTION = "pi"


class Party(NamedTuple):
    """A party of the exchange. A NamedTuple: two are made for every message, and it is cheap."""

    kind: PartyKind
    code: str  #: 4-digit municipality code or PI code

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.code}"


@dataclass(frozen=True, slots=True)
class RecipientRule:
    kind: PartyKind
    #: element paths below the root, in order of preference; the first present one names the recipient
    fields: tuple[tuple[str, ...], ...]

    def describe(self) -> str:
        return " or else ".join("/".join(f) for f in self.fields)


_HERKOMST = ("gemeenteVanHerkomst",)
_VESTIGING = ("gemeenteVanVestiging",)
_PI = ("penitentiaireInrichting", "code")

RECIPIENT_FIELDS: dict[MessageType, RecipientRule] = {
    MessageType.MELDINGSBERICHT: RecipientRule(PartyKind.MUNICIPALITY, (_HERKOMST,)),
    MessageType.BASISDOCUMENT: RecipientRule(PartyKind.MUNICIPALITY, (_HERKOMST,)),
    MessageType.OVERDRACHTSDOCUMENT: RecipientRule(PartyKind.MUNICIPALITY, (_VESTIGING,)),
    MessageType.ONTSLAGBERICHT: RecipientRule(PartyKind.MUNICIPALITY, (_VESTIGING,)),
    MessageType.SPOEDONTSLAGBERICHT: RecipientRule(PartyKind.MUNICIPALITY, (_VESTIGING, _HERKOMST)),
    MessageType.GEMEENTEBLAD: RecipientRule(PartyKind.INSTITUTION, (_PI,)),
}

#: who sends each type: PIs send everything but the gemeenteblad
SENDER_KIND: dict[MessageType, PartyKind] = {
    t: (PartyKind.MUNICIPALITY if t is MessageType.GEMEENTEBLAD else PartyKind.INSTITUTION)
    for t in MessageType
}


def recipient_field(message_type: MessageType, root: etree._Element) -> tuple[etree._Element, tuple[str, ...]] | None:
    """The element that names the recipient, and its path; None if none is present."""
    ns = root.tag[: root.tag.index("}") + 1]
    for path in RECIPIENT_FIELDS[message_type].fields:
        el = root
        for step in path:  # direct children only: cheaper than ElementPath, and no wildcard surprises
            el = next((c for c in el if c.tag == ns + step), None)
            if el is None:
                break
        if el is not None and el.text:
            return el, path
    return None


def recipient_of(message_type: MessageType, root: etree._Element) -> Party | None:
    """The one party entitled to receive this message, as its content names it."""
    found = recipient_field(message_type, root)
    if found is None:
        return None
    return Party(RECIPIENT_FIELDS[message_type].kind, found[0].text.strip())
