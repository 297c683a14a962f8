"""Paths and the fixed test clock, importable by every test module (`from paths import …`)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOSSIER = EXAMPLES / "valid" / "dossier-langverblijver"
#: the day the tests pretend it is: after every example was written
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
