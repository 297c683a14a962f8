"""``nazorg-gateway dashboard``: run the web dashboard against the store, and manage its accounts."""

from __future__ import annotations

import asyncio
import getpass
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, invoke_without_command=True,
                  help="The operator's web dashboard (and /metrics, /healthz, /readyz).")
ConfigOption = Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")]


def _config(config: Path):
    from gateway import logs
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    logs.configure(cfg.log_level)
    return cfg


@app.callback()
def dashboard(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("-c", "--config", help="The gateway's TOML configuration.")] = None,
    listen: Annotated[Optional[str], typer.Option(help="HOST:PORT (default: dashboard.listen, 127.0.0.1:8080).")] = None,
) -> None:
    """Serve the dashboard until SIGTERM or SIGINT (standalone, next to a running daemon)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise typer.BadParameter("give the configuration: -c gateway.toml", param_hint="-c")
    import dataclasses

    cfg = _config(config)
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise typer.BadParameter(f"--listen must be HOST:PORT, not {listen!r}")
        cfg = dataclasses.replace(cfg, dashboard=dataclasses.replace(cfg.dashboard, listen=(host.strip("[]"),
                                                                                            int(port))))
    from gateway.ops.web_accounts import AccountError, load_accounts

    try:
        if not load_accounts(cfg.dashboard.accounts_file):
            typer.echo(f"warning: no accounts in {cfg.dashboard.accounts_file}: nobody can log in; add one with "
                       f"`nazorg-gateway dashboard add-account -c {config} NAME`", err=True)
    except AccountError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    asyncio.run(_serve(cfg))


async def _serve(cfg) -> None:
    from gateway.ops.web import serve_dashboard
    from gateway.store import Store

    secrets = cfg.check_secrets()
    store = await Store.open(secrets.store_url.render_as_string(hide_password=False), origin="dashboard")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve_dashboard(cfg, store, secrets, stop=stop)
    finally:
        await store.close()


@app.command("add-account")
def add_account_command(
    config: ConfigOption,
    name: Annotated[str, typer.Argument(help="The operator's login name (A-Z a-z 0-9 . _ -).")],
    role: Annotated[str, typer.Option(help="operator, or officer (may also see a message's content).")] = "operator",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin "
                                                 "(scripts) instead of prompting.")] = False,
) -> None:
    """Add or replace an account (the password is asked twice and stored as an scrypt hash)."""
    import sys

    from gateway.ops.web_accounts import AccountError, add_account

    cfg = _config(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            typer.echo("error: the passwords differ", err=True)
            raise typer.Exit(1)
    try:
        add_account(cfg.dashboard.accounts_file, name, role, password)
    except AccountError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"account {name} ({role}) written to {cfg.dashboard.accounts_file}")
