"""The parties a message may name: municipalities (gemeenten) and penitentiary institutions (PIs)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Final

from gateway.routing.institutions import PROJECT_ROOT, InstitutionRegistry
from gateway.routing.municipalities import MunicipalityRegistry, RegistryError

__all__ = ["DEFAULT", "DEFAULT_INSTITUTIONS_PATH", "Parties"]

DEFAULT_INSTITUTIONS_PATH: Final = PROJECT_ROOT / "config" / "institutions.toml"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()


class Parties:
    """Both registries behind the one small interface the message rules need.

    Both checks run per message: each is a dictionary lookup on data indexed at load time
    (plus two date comparisons for municipalities); nothing is parsed per call.
    """

    __slots__ = ("municipalities", "institutions", "_municipality_check", "_institution_check")

    def __init__(self, municipalities: MunicipalityRegistry, institutions: InstitutionRegistry):
        self.municipalities = municipalities
        self.institutions = institutions
        self._municipality_check = municipalities.check
        self._institution_check = institutions.check

    def municipality_problem(self, code: str, on: date) -> str | None:
        """None when ``code`` ("0363" or "GM0363") is a municipality in force on ``on``; else a sentence."""
        return self._municipality_check(code, on)

    def institution_problem(self, code: str) -> str | None:
        """None when ``code`` is a known, active PI; else a sentence for the operator."""
        return self._institution_check(code)

    @classmethod
    def load(
        cls,
        municipalities_path: str | os.PathLike[str] | None = None,
        institutions_path: str | os.PathLike[str] | _Default = DEFAULT,
    ) -> "Parties":
        """Load both registries.

        ``municipalities_path`` None = the shipped ``gateway/routing/data/gemeenten.csv``;
        ``institutions_path`` DEFAULT = ``<project>/config/institutions.toml``.
        Raises RegistryError when a file is missing or invalid.
        """
        if isinstance(institutions_path, _Default):
            if not DEFAULT_INSTITUTIONS_PATH.is_file():
                raise RegistryError(
                    DEFAULT_INSTITUTIONS_PATH,
                    "no PI table configured: this default file does not exist; "
                    "create it or pass the path of the operator's PI table",
                )
            institutions_path = DEFAULT_INSTITUTIONS_PATH
        return cls(MunicipalityRegistry.load(municipalities_path), InstitutionRegistry.load(Path(institutions_path)))
