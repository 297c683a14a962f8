"""The ``nazorg-gateway`` command line.

Exit codes: 0 all good, 1 something was checked and found wrong, 2 usage
errors (bad options, a path that does not exist, a folder without messages).
Colours only on a terminal; ``--json`` for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The nazorg gateway: secure message exchange for prison aftercare.")

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


@app.callback()
def _root() -> None:
    """The nazorg gateway: secure message exchange for prison aftercare."""


def _message_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their *.xml files (recursively, hidden and temporary files skipped)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.xml")
                           if not any(part.startswith(".") for part in f.relative_to(p).parts) and f.is_file())
            if not found:
                raise typer.BadParameter(f"folder {p} holds no *.xml files", param_hint="PATHS")
            files += found
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise typer.BadParameter(f"{p} does not exist", param_hint="PATHS")
    return files


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Message files, or folders of *.xml files.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")] = False,
    municipalities: Annotated[Optional[Path], typer.Option(help="Municipality registry CSV (default: the shipped one).")] = None,
    institutions: Annotated[Optional[Path], typer.Option(help="PI table, TOML (default: config/institutions.toml).")] = None,
) -> None:
    """Check messages against their XSD and the domain rules: OK <type> <id>, or what is wrong and where."""
    from gateway.messages.validate import Validator
    from gateway.routing.municipalities import RegistryError
    from gateway.routing.parties import DEFAULT, Parties

    files = _message_files(paths)
    try:
        parties = Parties.load(municipalities, institutions if institutions is not None else DEFAULT)
    except (RegistryError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    validator = Validator(parties)
    verdicts = [validator.validate_file(f) for f in files]
    invalid = sum(not v.valid for v in verdicts)

    if as_json:
        json.dump({"valid": len(verdicts) - invalid, "invalid": invalid, "files": [v.as_dict() for v in verdicts]},
                  sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console(highlight=False, soft_wrap=True)
        for v in verdicts:
            if v.valid:
                out.print(f"[green]OK[/] {v.message.type.value} {v.message.message_id}  {escape(v.source)}")
            else:
                what = " ".join(x for x in (v.declared_type, v.declared_id) if x)
                out.print(f"[bold red]INVALID[/] {escape(v.source)}" + (f"  ({escape(what)})" if what else ""))
                for p in v.problems:
                    out.print(f"  {escape(str(p))}")
        if len(verdicts) > 1:
            out.print(f"{len(verdicts) - invalid} valid, {invalid} invalid")
    raise typer.Exit(EXIT_INVALID if invalid else EXIT_OK)


keys_app = typer.Typer(no_args_is_help=True, help="Keys and certificates.")
app.add_typer(keys_app, name="keys")


@keys_app.command("init-dev")
def keys_init_dev(
    folder: Annotated[Path, typer.Argument(help="An empty or missing folder to write the development PKI into.")],
) -> None:
    """Write a development PKI (root and issuing CA, CRL, one identity per party, an expired and a revoked one)."""
    from gateway.crypto.pki import PkiError, init_dev_pki

    try:
        parties = init_dev_pki(folder)
    except PkiError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    out = Console(highlight=False)
    out.print(f"development PKI written to {escape(str(folder))} (private keys mode 0600; for development only)")
    out.print(f"  trust anchors: {escape(str(Path(folder) / 'trust.pem'))}   CRL: {escape(str(Path(folder) / 'ca' / 'issuing.crl.pem'))}")
    for code, where in parties.items():
        out.print(f"  {code:15} {escape(str(where))}")


def main() -> None:
    app()
