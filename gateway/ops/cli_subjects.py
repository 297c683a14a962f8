"""``subject-access`` and ``subject-erase``: the data subject's rights, for an officer (covenant art. 12-15).

Registered on the main app by ``register`` (``gateway/cli.py``). The officer names themself
(``--officer``) and gives their dashboard password (prompted; ``NAZORG_OFFICER_PASSWORD`` for
scripts), checked against the dashboard accounts: only the ``officer`` role passes. Exit codes as
in ``gateway/cli.py``: 0 done, 1 refused (not an officer, messages in flight, not confirmed),
2 usage (no valid BSN, no subject key configured, PDF not printable). The BSN is never echoed,
logged or audited: the audit trail names the subject by the first 16 hex digits of its hash.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
PASSWORD_ENV = "NAZORG_OFFICER_PASSWORD"
ORIGIN = "cli"

ConfigOption = Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")]
BsnOption = Annotated[str, typer.Option("--bsn", help="The data subject's BSN (9 digits, 11-proof).",
                                        show_default=False)]
OfficerOption = Annotated[str, typer.Option("--officer", help="Your dashboard account (role officer); the "
                                                              f"password is asked, or taken from {PASSWORD_ENV}.",
                                            show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts.")]


class _Refused(Exception):
    pass


def _prepare(config: Path, bsn: str, officer: str) -> tuple[Any, Any, str, str]:
    """(configuration, secrets, subject hash, BSN): every check that needs no store, in the order that
    tells the officer the most without revealing anything."""
    from gateway.cli import _config_or_exit
    from gateway.config import ConfigError
    from gateway.ops.subjects import InvalidBsn, check_bsn, subject_of

    cfg = _config_or_exit(config)
    try:
        secrets = cfg.check_secrets()
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if secrets.subject_key is None:
        typer.echo("error: no [privacy] subject_key_file is configured: this gateway keeps no subject index, "
                   "so it cannot say which messages were about a person", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        digits = check_bsn(bsn)
    except InvalidBsn as e:
        typer.echo(f"error: --bsn: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    return cfg, secrets, subject_of(secrets.subject_key, digits), digits


def _password() -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    return typer.prompt("Officer password", hide_input=True)


async def _authorise(store: Any, cfg: Any, officer: str, password: str, action: str, subject: str) -> None:
    """Refuse (audited, unless the name is unknown: it may be a password typed in the wrong place)."""
    from gateway.ops.subjects import OfficerRefused, check_officer
    from gateway.ops.web_accounts import AccountError

    try:
        await asyncio.to_thread(check_officer, cfg.dashboard.accounts_file, officer, password)
    except AccountError as e:
        typer.echo(f"error: the accounts file: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    except OfficerRefused as e:
        if e.account is not None:
            await store.audit(action=action, object=subject[:16], result=f"refused: {e.why}", origin=ORIGIN,
                              actor=e.account.name)
        typer.echo(f"refused: {officer if e.account else 'that account'} may not ({e.why})", err=True)
        raise _Refused() from None


def _run(cfg: Any, work: Any) -> Any:
    from gateway.store import Store

    async def go() -> Any:
        store = await Store.open(cfg.check_secrets().store_url.render_as_string(hide_password=False))
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except _Refused:
        raise typer.Exit(EXIT_INVALID)


def subject_access(
    config: ConfigOption, bsn: BsnOption, officer: OfficerOption,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the overview as a self-contained HTML file.")]
    = None,
    pdf: Annotated[Optional[Path], typer.Option("--pdf", help="Write it as PDF (headless Chromium).")] = None,
    as_json: JsonOption = False,
) -> None:
    """The overview art. 13.3 of the covenant asks for: purposes, data and categories, recipients, origin, dates.

    From the gateway's own records (the subject index, the message log, the own sealed copies and the
    inbox copies). Headings in Dutch: it is handed to the data subject. Officer only; audited."""
    from gateway.ops.subjects import PdfError, access_report, render_html, render_pdf, write_html

    cfg, secrets, subject, digits = _prepare(config, bsn, officer)
    password = _password()

    async def work(store: Any) -> Any:
        await _authorise(store, cfg, officer, password, "subject.access", subject)
        return await access_report(store, subject=subject, bsn=digits, officer=officer, identity=secrets.identity,
                                   trust=secrets.trust, parties=cfg.parties(), own_party=str(cfg.party.party),
                                   origin=ORIGIN)

    report = _run(cfg, work)
    html = render_html(report)
    if out is not None:
        write_html(out, html)
    if pdf is not None:
        try:
            render_pdf(html, pdf)
        except PdfError as e:
            typer.echo(f"error: --pdf: {e}", err=True)
            raise typer.Exit(EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    console = Console(highlight=False)
    counts = report.counts()
    console.print(f"subject {report.subject_ref}: {counts['messages']} message(s) "
                  f"({counts['outbound']} sent, {counts['inbound']} received)")
    for e in report.entries:
        console.print(f"  {e.message_id}  {e.direction} {e.type or '-'}  {e.sender or '?'} -> {e.recipient or '?'}  "
                      f"{e.state or '(purged)'}  categories from: {e.source}", soft_wrap=True)
    for what, path in (("HTML", out), ("PDF", pdf)):
        if path is not None:
            console.print(f"{what} written to {escape(str(path))} (mode 0600: hand it over, do not keep copies)")
    raise typer.Exit(EXIT_OK)


def subject_erase(
    config: ConfigOption, bsn: BsnOption, officer: OfficerOption,
    include_inbox: Annotated[bool, typer.Option(
        "--include-inbox", help="Also remove the inbox copies of received messages. Once handed over they belong "
                                "to the receiving systems, which may have taken them already: erase there too.")]
    = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Shield a person's data: remove the spool, sealed and quarantined copies and detention dates the gateway keeps.

    Keeps the metadata (ids, types, parties, dates, states: no personal data) and the audit trail, and
    marks the subject index erased. Refused while any of the messages is still in flight: cancel those
    first (messages cancel), or wait for a sent one's receipt. Idempotent. Officer only; audited."""
    from gateway.ops.subjects import erase, plan_erase

    cfg, _, subject, _ = _prepare(config, bsn, officer)
    password = _password()
    console = Console(highlight=False, stderr=as_json)

    async def work(store: Any) -> Any:
        await _authorise(store, cfg, officer, password, "subject.erase", subject)
        plan = await plan_erase(store, subject, include_inbox=include_inbox)
        _show(console, plan)
        if plan.items and not plan.in_flight and not yes:
            if not typer.confirm("Erase these copies?", default=False):
                await store.audit(action="subject.erase", object=plan.subject_ref, result="not confirmed",
                                  origin=ORIGIN, actor=officer)
                console.print("nothing erased")
                raise _Refused()
        return await erase(store, subject, actor=officer, origin=ORIGIN, include_inbox=include_inbox)

    plan = _run(cfg, work)
    if as_json:
        typer.echo(json.dumps(plan.as_dict(), indent=2))
    if plan.in_flight:
        console.print(f"[red]refused[/]: {len(plan.in_flight)} message(s) still in flight:", soft_wrap=True)
        for i in plan.in_flight:
            console.print(f"  {i.message_id} ({i.state})", soft_wrap=True)
        console.print("Cancel those not yet sent (nazorg-gateway messages cancel ID), or wait until a sent one is "
                      "delivered, acknowledged or failed; then erase again.", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    if not as_json:
        removed = ", ".join(f"{k} {v}" for k, v in plan.removed.items())
        console.print(f"erased: {len(plan.items)} message(s) of subject {plan.subject_ref}; removed {removed}. "
                      "Metadata and audit trail kept.", soft_wrap=True)
    raise typer.Exit(EXIT_OK)


def _show(console: Console, plan: Any) -> None:
    """One line a message (ids are long: a table would wrap them on a narrow terminal)."""
    if not plan.items:
        console.print(f"subject {plan.subject_ref}: no messages on record")
        return
    console.print(f"subject {plan.subject_ref}: {len(plan.items)} message(s)")
    for i in plan.items:
        kept = [name for name, there in (("spool copy", i.spool), ("sealed copy", i.sealed),
                                         ("quarantined copy", i.quarantine), ("inbox copy", i.inbox),
                                         ("detention dates", i.dates)) if there]
        erased = f", erased before on {i.erased_at:%Y-%m-%d}" if i.erased_at else ""
        console.print(f"  {i.message_id}  {i.direction} {i.type or '-'} ({i.state or 'purged'}{erased}): "
                      + ("remove " + ", ".join(kept) if kept else "nothing left to remove"), soft_wrap=True)
    if not plan.include_inbox and any(i.direction == "inbound" for i in plan.items):
        console.print("  inbox copies are kept (they belong to the receiving systems): --include-inbox removes "
                      "those still in the inbox", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``subject-access`` and ``subject-erase`` to the main app."""
    app.command("subject-access")(subject_access)
    app.command("subject-erase")(subject_erase)
