"""The table of penitentiary institutions (PIs) the gateway exchanges messages with.

No public machine-readable list of Dutch PIs exists, so the table is configuration: a TOML file
(by default ``config/institutions.toml``) with one ``[[institution]]`` table per PI::

    [[institution]]
    code = "PI-VUGHT"              # required; PI- + 2 to 12 of A-Z 0-9; unique
    name = "PI Vught"              # required
    location = "Nieuw Vosseveld"   # required
    place = "Vught"                # required
    phone = "0800-555 0101"        # optional
    email = "nazorg@example.nl"    # optional
    postal_address = "..."         # optional
    visiting_address = "..."       # optional
    active = true                  # optional, default true; false = known but refused

Any other key, a missing required key, a malformed code or a duplicate code makes loading fail
with a RegistryError naming the file, the entry (number, code, line) and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from gateway.routing.municipalities import RegistryError

__all__ = ["CODE_PATTERN", "Institution", "InstitutionRegistry", "PROJECT_ROOT", "RegistryError"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CODE_PATTERN = re.compile(r"PI-[A-Z0-9]{2,12}")  # always used with fullmatch

REQUIRED = ("code", "name", "location", "place")
OPTIONAL_TEXT = ("phone", "email", "postal_address", "visiting_address")
KEYS = REQUIRED + OPTIONAL_TEXT + ("active",)

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9][0-9 ()\-]{5,24}")
_ENTRY_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*institution[ \t]*\]\]", re.MULTILINE)
_MAX_SHOWN = 40


@dataclass(frozen=True, slots=True)
class Institution:
    code: str
    name: str
    location: str
    place: str
    phone: str | None
    email: str | None
    postal_address: str | None
    visiting_address: str | None
    active: bool = True


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def display_path(path: str | os.PathLike[str]) -> str:
    """The path relative to the project root when it lies inside it (shorter operator messages)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except (ValueError, OSError):
        return str(path)


class InstitutionRegistry:
    """The configured PIs, indexed by code."""

    __slots__ = ("path", "_by_code", "_problems")

    def __init__(self, institutions: list[Institution] | tuple[Institution, ...], path: str = "<memory>"):
        self.path = path
        self._by_code: dict[str, Institution] = {}
        for inst in institutions:
            if inst.code in self._by_code:
                raise ValueError(f"duplicate PI code {inst.code}")
            self._by_code[inst.code] = inst
        # Precomputed answer per known code: None (accepted) or the inactive sentence.
        self._problems: dict[str, str | None] = {
            inst.code: None
            if inst.active
            else f"PI code {inst.code} ({inst.name}) is marked inactive in the configured PI table ({path})"
            for inst in self._by_code.values()
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "InstitutionRegistry":
        """Read and validate a PI table (TOML)."""
        shown = display_path(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise RegistryError(shown, f"cannot be read ({exc.strerror or exc})") from exc
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            raise RegistryError(shown, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(shown, f"not valid TOML: {exc}") from exc
        return cls(_validate(data, text, shown), shown)

    def get(self, code: str) -> Institution | None:
        return self._by_code.get(code)  # type: ignore[arg-type]

    def check(self, code: str) -> str | None:
        """None if ``code`` is a known, active PI; otherwise one sentence for the operator."""
        try:
            return self._problems[code]
        except (KeyError, TypeError):
            pass
        if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
            return (
                f"PI code {_shown(code)} is malformed: expected PI- followed by 2 to 12 "
                "uppercase letters or digits (for example PI-VUGHT)"
            )
        return f"PI code {code} is not in the configured PI table ({self.path})"

    def __len__(self) -> int:
        return len(self._by_code)

    def __iter__(self) -> Iterator[Institution]:
        return iter(self._by_code.values())

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and code in self._by_code

    def __repr__(self) -> str:
        return f"<InstitutionRegistry {len(self)} PIs from {self.path}>"


def _validate(data: dict[str, Any], text: str, path: str) -> list[Institution]:
    problems: list[str] = []
    unknown_top = sorted(k for k in data if k != "institution")
    if unknown_top:
        problems.append(
            f"unknown top-level key(s) {', '.join(map(repr, unknown_top))}; "
            "the file must contain only [[institution]] tables"
        )
    entries = data.get("institution")
    if entries is None:
        problems.append("no [[institution]] tables found")
        raise RegistryError(path, problems)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append("'institution' must be written as [[institution]] tables")
        raise RegistryError(path, problems)
    if not entries:
        problems.append("no [[institution]] tables found")

    # Line of the n-th "[[institution]]" header, to point the operator at the entry.
    header_lines = [text.count("\n", 0, m.start()) + 1 for m in _ENTRY_HEADER.finditer(text)]
    if len(header_lines) != len(entries):
        header_lines = []

    result: list[Institution] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        code = entry.get("code")
        where = f"[[institution]] entry {index}"
        if isinstance(code, str):
            where += f" ({code})"
        if header_lines:
            where += f", line {header_lines[index - 1]}"
        before = len(problems)

        for key in sorted(k for k in entry if k not in KEYS):
            problems.append(f"{where}: unknown key {key!r} (allowed: {', '.join(KEYS)})")
        for key in REQUIRED:
            if key not in entry:
                problems.append(f"{where}: missing required key {key!r}")
        for key in REQUIRED + OPTIONAL_TEXT:
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                problems.append(f"{where}: key {key!r} must be a non-empty string, not {_shown(entry[key])}")
        if "active" in entry and not isinstance(entry["active"], bool):
            problems.append(f"{where}: key 'active' must be true or false, not {_shown(entry['active'])}")
        if isinstance(code, str) and code.strip():
            if not CODE_PATTERN.fullmatch(code):
                problems.append(
                    f"{where}: key 'code' value {_shown(code)} is malformed: expected PI- followed by "
                    "2 to 12 uppercase letters or digits (for example PI-VUGHT)"
                )
            elif code in first_seen:
                problems.append(f"{where}: key 'code': duplicate PI code {code} (first in entry {first_seen[code]})")
            else:
                first_seen[code] = index
        email = entry.get("email")
        if isinstance(email, str) and email.strip() and not _EMAIL.fullmatch(email):
            problems.append(f"{where}: key 'email' value {_shown(email)} is not an e-mail address")
        phone = entry.get("phone")
        if isinstance(phone, str) and phone.strip() and not _PHONE.fullmatch(phone):
            problems.append(f"{where}: key 'phone' value {_shown(phone)} is not a telephone number")

        if len(problems) == before:
            result.append(
                Institution(
                    code=entry["code"],
                    name=entry["name"],
                    location=entry["location"],
                    place=entry["place"],
                    phone=entry.get("phone"),
                    email=entry.get("email"),
                    postal_address=entry.get("postal_address"),
                    visiting_address=entry.get("visiting_address"),
                    active=entry.get("active", True),
                )
            )

    if problems:
        raise RegistryError(path, problems)
    return result
