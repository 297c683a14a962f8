"""A local set-up as `nazorg-gateway init` writes it, for the test suites: copied from a template made
once per session (key generation takes a second), loaded, and its store opened."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.store import Store


def copy_of(template: Path, tmp_path: Path) -> Path:
    """A private copy of a set-up folder (tests may change its files and folders freely)."""
    target = tmp_path / "gw"
    shutil.copytree(template, target, symlinks=True)
    return target


def loaded(config_path: Path) -> GatewayConfig:
    """The configuration, with its folders and the store's folder created, as `run` does at start."""
    cfg = load_config(config_path)
    cfg.folders.create()
    cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return cfg


@asynccontextmanager
async def opened_store(cfg: GatewayConfig) -> AsyncIterator[Store]:
    store = await Store.open(cfg.store.url)
    try:
        yield store
    finally:
        await store.close()
