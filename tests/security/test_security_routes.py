"""A message never leaves for a party its content does not entitle — over random route tables
(issue 7, item 4). messages/test_properties.py draws random messages against the one shipped
registry; here the ROUTE TABLE is drawn as well: for every party of the development PKI a route that is
right, missing, carries another party's certificate, carries an expired or revoked certificate, or a
route for a party no message names; plus routes for unknown codes.

For each drawn message (a valid example retargeted to random municipalities and PI) the validator
names the recipient from the content; `gateway.routing.routes.decide` — what the sealer calls before
it seals — must then either hold the message, or go by exactly the route the table has for THAT party,
encrypting to exactly that route's certificate, and only to a certificate that names an address in the
domain of the mailbox the message is sent to (a certificate of another party under a route is held,
never used). Liveness:
a right route with a good certificate goes (so the property is not met by holding everything).

What the route table says about a party is the operator's word: a route for 0599 that points at
another municipality's mailbox AND certificate cannot be told from a right one; `routes check` and the
operator's review are the defence there."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.config import Route
from gateway.crypto.pki import DEV_PARTIES
from gateway.crypto.profiles import COMPATIBLE
from gateway.crypto.trust import TrustStore, certificate_emails
from gateway.routing.routes import Go, Hold, decide
from paths import EXAMPLES, NOW
from security_support import fuzz_examples

#: written out independently of gateway.messages.entitlement: the source's rule in plain words
EXPECTED_RECIPIENT = {
    "meldingsbericht": ("gemeente", "herkomst"), "basisdocument": ("gemeente", "herkomst"),
    "overdrachtsdocument": ("gemeente", "vestiging"), "ontslagbericht": ("gemeente", "vestiging"),
    "spoedontslagbericht": ("gemeente", "vestiging-else-herkomst"), "gemeenteblad": ("pi", "pi"),
}
EMAIL = {p.code: p.email for p in DEV_PARTIES}
MUNICIPALITIES = sorted(c for c in EMAIL if c.isdigit())
PIS = ["PI-VUGHT", "PI-HAAGLANDEN"]  # the RSA PIs of the dev PKI (PI-ZWOLLE's key is EC: not encryptable to)
CODES = MUNICIPALITIES + PIS


def _examples_by_type() -> dict[str, list[Path]]:
    by_type: dict[str, list[Path]] = {}
    for f in sorted((EXAMPLES / "valid").rglob("*.xml")):
        by_type.setdefault(etree.QName(etree.parse(str(f)).getroot()).localname, []).append(f)
    return by_type


EXAMPLES_BY_TYPE = _examples_by_type()


def retarget(root, herkomst: str, vestiging: str | None, pi: str) -> None:
    ns = "{" + etree.QName(root).namespace + "}"
    kind = etree.QName(root).localname
    origin = root.find(ns + "gemeenteVanHerkomst")
    if origin is not None:
        origin.text = herkomst
    settle = root.find(ns + "gemeenteVanVestiging")
    if kind == "spoedontslagbericht":
        if settle is not None:
            root.remove(settle)
        if vestiging is not None:
            root.find(ns + "gemeenteVanHerkomst").addnext(etree.Element(ns + "gemeenteVanVestiging"))
            root.find(ns + "gemeenteVanVestiging").text = vestiging
    elif settle is not None:
        settle.text = vestiging
    root.find(f"{ns}penitentiaireInrichting/{ns}code").text = pi
    root.find(f"{ns}berichtkop/{ns}afzender")[0].text = herkomst if kind == "gemeenteblad" else pi
    kop = root.find(ns + "berichtkop")
    old = kop.find(ns + "ontvanger")
    if old is not None:
        kop.remove(old)


class World(dict):
    def __repr__(self) -> str:  # short: hypothesis prints the arguments of a failing example
        return "<dev PKI world>"


@pytest.fixture(scope="module")
def world(pki):
    trust = TrustStore.from_bundle(pki / "trust.pem", [pki / "ca" / "issuing.crl.pem"])
    paths = {c.name: c / "cert.pem" for c in (pki / "parties").iterdir()}
    certs = {code: x509.load_pem_x509_certificate(p.read_bytes()) for code, p in paths.items()}
    return World(trust=trust, paths=paths, certs=certs)


KINDS = ["right", "none", "cert-of-other", "expired", "revoked", "address-of-other-with-own-cert"]


@st.composite
def route_table(draw, world):
    """{code: (Route, certificate)} and, per code, what kind of route was drawn."""
    routes, certificates, kinds = {}, {}, {}
    for code in CODES:
        kind = draw(st.sampled_from(KINDS))
        kinds[code] = kind
        if kind == "none":
            continue
        address, cert_of = EMAIL[code], code
        if kind == "cert-of-other":
            cert_of = draw(st.sampled_from([c for c in CODES if c != code]))
        elif kind == "expired":
            cert_of = "TEST-EXPIRED"
        elif kind == "revoked":
            cert_of = "TEST-REVOKED"
        elif kind == "address-of-other-with-own-cert":
            address = EMAIL[draw(st.sampled_from([c for c in CODES if c != code]))]
        routes[code] = Route(code, "email", address, world["paths"][cert_of], COMPATIBLE)
        certificates[code] = world["certs"][cert_of]
    for code in draw(st.lists(st.sampled_from(["9999", "0000", "PI-NERGENS", "gemeente:0599"]), max_size=2)):
        other = draw(st.sampled_from(CODES))
        routes[code] = Route(code, "email", EMAIL[other], world["paths"][other], COMPATIBLE)
        certificates[code] = world["certs"][other]
    return routes, certificates, kinds


@settings(max_examples=fuzz_examples(200, 5_000), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_message_only_ever_goes_by_its_entitled_partys_route(validator, parties, world, data):
    kind = data.draw(st.sampled_from(sorted(EXAMPLES_BY_TYPE)))
    example = data.draw(st.sampled_from(EXAMPLES_BY_TYPE[kind]))
    herkomst, vestiging = data.draw(st.sampled_from(MUNICIPALITIES)), data.draw(st.sampled_from(MUNICIPALITIES))
    if kind == "spoedontslagbericht" and data.draw(st.booleans()):
        vestiging = None
    pi = data.draw(st.sampled_from(PIS))
    root = etree.parse(str(example)).getroot()
    retarget(root, herkomst, vestiging, pi)
    verdict = validator.validate_bytes(etree.tostring(root))
    assert verdict.valid, [str(p) for p in verdict.problems]
    party_kind, field = EXPECTED_RECIPIENT[kind]
    code = {"herkomst": herkomst, "vestiging": vestiging, "pi": pi,
            "vestiging-else-herkomst": vestiging or herkomst}[field]
    recipient = f"{party_kind}:{code}"
    assert f"{verdict.message.recipient.kind.value}:{verdict.message.recipient.code}" == recipient

    routes, certificates, kinds = data.draw(route_table(world))
    decision = decide(recipient, routes, certificates, parties, world["trust"], now=datetime.now(timezone.utc),
                      on=NOW.date())
    assert isinstance(decision, (Go, Hold))
    if isinstance(decision, Go):
        # exactly the entitled party's own entry, and its certificate: never another entry's
        assert decision.route is routes[code]
        assert decision.certificate is certificates[code]
        # and a certificate of the organisation whose mailbox it goes to (an address in its domain)
        domain = decision.route.address.lower().rpartition("@")[2]
        assert domain in {a.rpartition("@")[2] for a in certificate_emails(decision.certificate)}
        assert kinds[code] == "right"
    else:
        assert decision.reason
        if kinds[code] == "right":  # liveness: a right route with a good certificate is used
            pytest.fail(f"held though the route is right: {decision.reason}")


def test_the_route_kinds_are_all_reachable():
    """The route kinds the strategy draws are all told apart by the property above (guards the list)."""
    assert set(KINDS) == {"right", "none", "cert-of-other", "expired", "revoked", "address-of-other-with-own-cert"}
    assert date(2026, 11, 29) == NOW.date()
