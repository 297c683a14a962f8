"""Shared fixtures: the registries as shipped, a validator with a fixed clock, the examples."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from gateway.messages.validate import Validator
from gateway.routing.parties import Parties

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOSSIER = EXAMPLES / "valid" / "dossier-langverblijver"
#: the day the tests pretend it is: after every example was written
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def parties() -> Parties:
    return Parties.load()


@pytest.fixture(scope="session")
def validator(parties) -> Validator:
    return Validator(parties, clock=lambda: NOW)
