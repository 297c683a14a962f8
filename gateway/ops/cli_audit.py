"""``audit verify`` and ``purge``: prove the audit trail intact, enforce retention.

Registered on the main app by ``register`` (``gateway/cli.py``). Exit codes as there:
0 good, 1 something found wrong (a break in the trail, named), 2 usage. Both commands
are themselves audited (actor ``operator:<login>``), with counts and ids, never content.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from cryptography import x509
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

ConfigOption = Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")]

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")


def _actor() -> str:
    return f"operator:{getpass.getuser()}"


def _run(config: Path, work: Any) -> Any:
    """Load the configuration, open the store, run ``work(cfg, store)``, close."""
    from gateway.cli import _config_or_exit
    from gateway.store import Store

    cfg = _config_or_exit(config)

    async def go() -> Any:
        store = await Store.open(cfg.store.connect_url().render_as_string(hide_password=False))
        try:
            return await work(cfg, store)
        finally:
            await store.close()

    return asyncio.run(go())


def _own_certificates(cfg: Any, extra: list[Path]) -> list[x509.Certificate]:
    """The gateway's certificate (the first in its file) and any earlier ones the operator names."""
    certs = [x509.load_pem_x509_certificates(cfg.identity.cert.read_bytes())[0]]
    for path in extra:
        try:
            certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as e:
            typer.echo(f"error: {path}: not a PEM certificate file ({type(e).__name__})", err=True)
            raise typer.Exit(EXIT_USAGE)
    return certs


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption,
    cert: Annotated[Optional[list[Path]], typer.Option(
        "--cert", help="Also accept checkpoints signed with this (earlier) certificate of the gateway.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Walk the hash chain and check every signed checkpoint; exit 1 naming the first break."""
    from gateway.ops.audit import verify

    async def work(cfg: Any, store: Any) -> Any:
        report = await verify(store, _own_certificates(cfg, cert or []))
        bad = report.first_bad
        result = f"intact rows={report.rows}" if report.ok else f"broken at {bad.id}: {bad.kind}"
        await store.audit(action="audit.verify", object="audit", result=result, actor=_actor())
        return report

    report = _run(config, work)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        console = Console()
        if report.ok:
            console.print(f"[green]audit trail intact[/]: {report.rows} rows, {report.checkpoints} signed checkpoints"
                          f" (covered up to row {report.covered_up_to or '-'}, last row {report.last_id or '-'})")
        else:
            bad = report.first_bad
            console.print(f"[red]audit trail BROKEN[/] at row {bad.id}: {bad.kind}: {bad.detail}")
            table = Table("row", "what", "detail")
            for p in report.problems:
                table.add_row(str(p.id), p.kind, p.detail)
            console.print(table)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_INVALID)


def purge_command(
    config: ConfigOption,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove what is past its retention time (plaintext copies, then whole dossiers); audited."""
    from gateway.ops.retention import purge

    async def work(cfg: Any, store: Any) -> Any:
        r = cfg.retention
        return await purge(store, plaintext_after=r.plaintext_after, keep_years=r.keep_years, dry_run=dry_run,
                           actor=_actor())

    plan = _run(config, work)
    if as_json:
        typer.echo(json.dumps(plan.as_dict(), indent=2))
        raise typer.Exit(EXIT_OK)
    console = Console()
    console.print(("[bold]dry run[/]: would remove" if dry_run else "removed") +
                  f" (plaintext acknowledged before {plan.plaintext_before:%Y-%m-%d %H:%M} UTC, dossiers whose last "
                  f"message is before {plan.records_before:%Y-%m-%d} UTC)")
    table = Table("what", "count", "ids" if dry_run else "")
    shown = {"plaintext": plan.plaintext, "dossiers": plan.dossiers, "messages": plan.messages,
             "inbound": plan.inbound, "rejected": [str(i) for i in plan.rejected]}
    for name, ids in shown.items():
        listed = ", ".join(ids[:10]) + (f", … ({len(ids) - 10} more)" if len(ids) > 10 else "")
        table.add_row(name, str(len(ids)), listed if dry_run else "")
    if not dry_run:
        table.add_row("files removed", str(plan.files_removed), "")
    console.print(table)
    raise typer.Exit(EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``audit verify`` and ``purge`` to the main app."""
    app.add_typer(audit_app, name="audit")
    app.command("purge")(purge_command)
