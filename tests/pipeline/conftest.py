"""A complete local set-up (as `nazorg-gateway init` writes it) and the pipeline's parts over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.pipeline.validation import ValidationPool
from gateway.setup_local import init_local
from local_setup import copy_of, loaded, opened_store


@pytest.fixture(scope="session")
def setup_template(tmp_path_factory) -> Path:
    """One `init` per session (key generation takes a second); tests copy it."""
    folder = tmp_path_factory.mktemp("setup") / "gw"
    init_local(folder)
    return folder


@pytest.fixture
def setup(setup_template, tmp_path) -> Path:
    return copy_of(setup_template, tmp_path)


@pytest.fixture
def config(setup):
    return loaded(setup / "gateway.toml")


@pytest.fixture
def secrets(config):
    return config.check_secrets()


@pytest.fixture
async def store(config):
    async with opened_store(config) as s:
        yield s


@pytest.fixture(scope="session")
def validation(setup_template):
    cfg = load_config(setup_template / "gateway.toml")
    pool = ValidationPool(institutions=cfg.registries.institutions, municipalities=cfg.registries.municipalities,
                          max_bytes=cfg.limits.max_message_bytes, workers=1)
    yield pool
    pool.close()
