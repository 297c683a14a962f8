"""Build ``gemeenten.csv``, the municipality registry the gateway loads, from the two source files.

Usage (from the project root)::

    .venv/bin/python gateway/routing/data/build_gemeenten.py            # rewrite gemeenten.csv
    .venv/bin/python gateway/routing/data/build_gemeenten.py --check    # exit 1 if gemeenten.csv is stale

Inputs (both in this directory, see SOURCES.md):

* ``gemeenten-2025.csv`` - the municipalities in force on 2025-01-01 (CBS);
* ``gemeenten-1990-2025-met-opvolger.csv`` - every code since 1990 with end date and successor
  (CBS joined with BRP Tabel 33).

Output columns: gemeentecode, gm_code, gemeentenaam, provincienaam, begindatum, einddatum,
opvolger_gemeentecode; one row per code, sorted by code, UTF-8, LF line ends.

Merge rules (each one is checked, the script stops on anything unexpected):

1. A code listed on several history rows (0620 Vianen: Zuid-Holland 1970-2002, Utrecht
   2002-2019 - a change of province, not a merger) becomes one row: the periods must join up
   without gap or overlap; the earliest begin date and the latest row's name, province, end date
   and successor are kept.
2. The municipalities in force must be exactly those of ``gemeenten-2025.csv``, with the same GM
   code, name, province and begin date; name and province are taken from that file.
3. For an ended code the BRP Tabel 33 name is used when there is one: the CBS names of several
   ended codes are damaged (e.g. "Oh‚ en Laak" for Ohé en Laak, "Vessem, Wintelre en Knegse",
   "Skasterlân") and BRP disambiguates look-alikes (0713 "Sluis (oud)" next to 1714 Sluis).
4. Every successor must be in the output, must not be the code itself, and following successors
   from any code must end at a municipality in force (no cycles, no dead ends).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
CURRENT = HERE / "gemeenten-2025.csv"
HISTORY = HERE / "gemeenten-1990-2025-met-opvolger.csv"
OUTPUT = HERE / "gemeenten.csv"
REFERENCE_DATE = date(2025, 1, 1)

COLUMNS = (
    "gemeentecode",
    "gm_code",
    "gemeentenaam",
    "provincienaam",
    "begindatum",
    "einddatum",
    "opvolger_gemeentecode",
)


class BuildError(Exception):
    pass


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _collapse(rows: list[dict[str, str]]) -> dict[str, str]:
    """One output row for a code that the history file lists on one or more rows."""
    rows = sorted(rows, key=lambda r: r["begindatum"])
    for earlier, later in zip(rows, rows[1:]):
        if earlier["einddatum"] != later["begindatum"]:
            raise BuildError(
                f"code {earlier['gemeentecode']}: history rows do not join up "
                f"({earlier['begindatum']}..{earlier['einddatum']} then "
                f"{later['begindatum']}..{later['einddatum']})"
            )
    last = rows[-1]
    merged = dict(last)
    merged["begindatum"] = rows[0]["begindatum"]
    return merged


def build() -> list[dict[str, str]]:
    current = {r["gemeentecode"]: r for r in _read(CURRENT)}
    by_code: dict[str, list[dict[str, str]]] = {}
    for row in _read(HISTORY):
        by_code.setdefault(row["gemeentecode"], []).append(row)

    out: dict[str, dict[str, str]] = {}
    for code, rows in by_code.items():
        row = _collapse(rows)
        ended = bool(row["einddatum"])
        if ended:
            name = row["brp_tabel33_naam"] or row["gemeentenaam"]
        else:
            cur = current.get(code)
            if cur is None:
                raise BuildError(f"code {code} is not ended in the history file but missing from {CURRENT.name}")
            for field in ("gm_code", "gemeentenaam", "provincienaam", "begindatum"):
                if cur[field] != row[field]:
                    raise BuildError(f"code {code}: {field} differs ({cur[field]!r} vs {row[field]!r})")
            name = cur["gemeentenaam"]
        out[code] = {
            "gemeentecode": code,
            "gm_code": row["gm_code"],
            "gemeentenaam": name,
            "provincienaam": row["provincienaam"],
            "begindatum": row["begindatum"],
            "einddatum": row["einddatum"],
            "opvolger_gemeentecode": row["opvolger_gemeentecode"],
        }

    # Rule 2: exactly the 2025 list is in force on the reference date.
    def in_force(r: dict[str, str], on: date) -> bool:
        return date.fromisoformat(r["begindatum"]) <= on and (
            not r["einddatum"] or on < date.fromisoformat(r["einddatum"])
        )

    in_force_codes = {c for c, r in out.items() if in_force(r, REFERENCE_DATE)}
    if in_force_codes != set(current):
        raise BuildError(
            f"in force on {REFERENCE_DATE}: missing {sorted(set(current) - in_force_codes)}, "
            f"extra {sorted(in_force_codes - set(current))}"
        )

    # Rule 4: successors exist and every chain ends at a municipality in force.
    for code, row in out.items():
        seen = [code]
        cur = row
        while cur["opvolger_gemeentecode"]:
            nxt = cur["opvolger_gemeentecode"]
            if nxt not in out:
                raise BuildError(f"code {cur['gemeentecode']}: successor {nxt} is not in the output")
            if nxt in seen:
                raise BuildError(f"successor cycle: {' -> '.join(seen + [nxt])}")
            seen.append(nxt)
            cur = out[nxt]
        if cur["einddatum"]:
            raise BuildError(f"code {code}: chain {' -> '.join(seen)} ends at an ended code without successor")

    return [out[c] for c in sorted(out)]


def render(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the output file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"output path (default {OUTPUT.name})")
    args = parser.parse_args(argv)
    try:
        text = render(build())
    except BuildError as exc:
        print(f"build_gemeenten: {exc}", file=sys.stderr)
        return 2
    if args.check:
        existing = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if existing != text:
            print(f"build_gemeenten: {args.output} is stale; rerun without --check", file=sys.stderr)
            return 1
        print(f"build_gemeenten: {args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8", newline="")
    print(f"build_gemeenten: wrote {text.count(chr(10)) - 1} rows to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
