"""What is wrong with a message, in words an operator understands.

A ``Problem`` names the rule that was broken (a short stable ``code``), says
what is wrong in one sentence, and points at the place: line, element path
without namespace noise, and the offending value.

The value can be personal data (a BSN that fails the 11-proef is still a BSN).
Verdicts are shown to operators and stored beside the rejected input, which
holds the same data; they must never be logged. Log ``code`` and ``path`` only
(see ``Problem.for_log``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  #: stable slug of the broken rule, e.g. "bsn-check", "schema", "not-xml"
    message: str  #: one sentence for an operator
    line: int | None = None
    path: str = ""  #: e.g. "meldingsbericht/persoon/burgerservicenummer"
    value: str | None = None  #: the offending value, if there is one

    def as_dict(self) -> dict:
        return asdict(self)

    def for_log(self) -> dict:
        """The part of a problem that may be logged: no values, no free text."""
        return {"code": self.code, "path": self.path, "line": self.line}

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "-"
        parts = [where]
        if self.path:
            parts.append(self.path)
        text = "  ".join(parts) + f": {self.message}"
        if self.value is not None and self.value not in self.message:
            text += f" (value '{self.value}')"
        return f"{text} [{self.code}]"
