"""Which route a message takes, or why it must wait for an operator.

The recipient comes from the message (the entitlement rule of its type, applied
at validation); this module only looks up how to reach that party. Anything
doubtful holds the message with the reason — it never picks another party.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.crypto.errors import CryptoError
from gateway.crypto.trust import TrustStore, certificate_emails, describe
from gateway.routing.parties import Parties

_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class Hold:
    reason: str
    successor: str | None = None  #: the code the ended municipality became, when there is one


@dataclass(frozen=True)
class Go:
    route: object  #: gateway.config.Route
    certificate: x509.Certificate


def decide(recipient: str, routes: Mapping[str, object], certificates: Mapping[str, x509.Certificate],
           parties: Parties, trust: TrustStore, *, now: datetime, on: date) -> Go | Hold:
    """`recipient` as the messages name it ("gemeente:0599", "pi:PI-VUGHT")."""
    kind, _, code = recipient.partition(":")
    if kind == "gemeente":
        known = parties.municipalities.get(code)
        if known is None:
            return Hold(f"municipality {code} is not in the registry")
        if not known.in_force_on(on):
            successor = parties.municipalities.current_successor(code, on)
            if successor is not None and successor.code != code:
                return Hold(f"municipality {known.label()} ended on {known.ends}; its successor is "
                            f"{successor.label()}: correct the message at the source and drop it again, "
                            "or cancel it", successor=successor.code)
            return Hold(f"municipality {known.label()} is not in force on {on} and has no successor in force")
    elif kind == "pi":
        problem = parties.institution_problem(code)
        if problem:
            return Hold(problem)
    else:
        return Hold(f"recipient {recipient!r} is neither a municipality nor a PI")
    route = routes.get(code)
    if route is None:
        return Hold(f"no route configured for {recipient}: add [routes.\"{code}\"] to the configuration, "
                    "then release the message")
    cert = certificates.get(code)
    if cert is None:
        return Hold(f"the certificate of the route for {recipient} could not be read")
    problem = _certificate_problem(trust, cert, now)
    if problem is not None:
        return Hold(f"the encryption certificate of {recipient} ({describe(cert)}) cannot be used: {problem}")
    if getattr(route, "transport", None) == "email":
        # never encrypt to another organisation's certificate than the one whose mailbox it is sent to (a
        # certificate file of another party under this route would make the message readable by that party):
        # the certificate must name an address in the route address's domain
        names = certificate_emails(cert)
        domain = str(route.address).strip().lower().rpartition("@")[2]
        if not any(name.rpartition("@")[2] == domain for name in names):
            return Hold(f"the certificate of the route for {recipient} ({describe(cert)}) names "
                        f"{', '.join(sorted(names)) or 'no e-mail address'}, no address in the domain of the "
                        f"route's address {route.address}: configure that party's own certificate, then release "
                        "the message")
    return Go(route, cert)


#: trust store -> {(certificate fingerprint, minute): problem or None}. A chain and CRL check costs
#: ~0.6 ms; its answer only changes with time (validity, CRL update), so it is reused within the minute.
_CHECKED: weakref.WeakKeyDictionary[TrustStore, dict[tuple[bytes, int], str | None]] = weakref.WeakKeyDictionary()


def _certificate_problem(trust: TrustStore, cert: x509.Certificate, now: datetime) -> str | None:
    known = _CHECKED.setdefault(trust, {})
    key = (cert.fingerprint(_SHA256), int(now.timestamp() // 60))
    if key not in known:
        if len(known) > 1024:
            known.clear()
        try:
            trust.check(cert, [], now, usage="encrypt")
            known[key] = None
        except CryptoError as e:
            known[key] = str(e)
    return known[key]
