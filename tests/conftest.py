"""Shared fixtures: the registries as shipped, and a validator with a fixed clock."""

from __future__ import annotations

import pytest

from gateway.messages.validate import Validator
from gateway.routing.parties import Parties
from paths import NOW


@pytest.fixture(scope="session")
def parties() -> Parties:
    return Parties.load()


@pytest.fixture(scope="session")
def validator(parties) -> Validator:
    return Validator(parties, clock=lambda: NOW)
