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


def _own_identity(key: Path, cert: Path):
    from gateway.crypto.errors import CryptoError
    from gateway.crypto.identity import IdentityError, load_pem_identity

    try:
        return load_pem_identity(key, cert)
    except (IdentityError, CryptoError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)


def _trust_store(trust: Path, crls: list[Path]):
    """Trust anchors (self-signed) and intermediates from one PEM, plus CRLs."""
    from gateway.crypto.trust import TrustStore, TrustStoreError

    try:
        return TrustStore.from_bundle(trust, crls)
    except TrustStoreError as e:
        typer.echo(f"error: cannot load trust from {trust}: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)


KeyOpt = Annotated[Optional[Path], typer.Option("--key", help="Own private key (PEM, mode 0600); or use -c.")]
CertOpt = Annotated[Optional[Path], typer.Option("--cert", help="Own certificate, with its chain (PEM); or use -c.")]
TrustOpt = Annotated[Optional[Path], typer.Option("--trust", help="Trust anchors and intermediates (one PEM); or use -c.")]
CrlOpt = Annotated[Optional[list[Path]], typer.Option("--crl", help="CRL file(s), PEM or DER; repeat for several.")]
ConfigFileOpt = Annotated[Optional[Path], typer.Option("-c", "--config", help="Take identity, trust and routes from "
                                                                              "the gateway's configuration.")]


def _identity_and_trust(config: Path | None, key: Path | None, cert: Path | None, trust: Path | None,
                        crl: list[Path] | None):
    """(own identity, trust store, configuration or None): from -c CONFIG, or from the explicit files."""
    if config is not None:
        from gateway.config import ConfigError

        cfg = _config_or_exit(config)
        try:
            secrets = cfg.check_secrets()
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USAGE)
        return secrets.identity, secrets.trust, cfg
    missing = [name for name, value in (("--key", key), ("--cert", cert), ("--trust", trust)) if value is None]
    if missing:
        typer.echo(f"error: give -c CONFIG, or {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    return _own_identity(key, cert), _trust_store(trust, crl or []), None


@app.command()
def seal(
    file: Annotated[Path, typer.Argument(help="The XML message to seal.")],
    to: Annotated[str, typer.Option("--to", help="The recipient's certificate (PEM), or with -c a party code "
                                                 "of the route table (its certificate and profile).")],
    key: KeyOpt = None, cert: CertOpt = None, trust: TrustOpt = None, crl: CrlOpt = None, config: ConfigFileOpt = None,
    profile: Annotated[Optional[str], typer.Option(help="compatible | strong (default: the route's, else compatible)")] = None,
) -> None:
    """Sign and encrypt FILE for the holder of --to; the sealed MIME entity goes to stdout."""
    from datetime import datetime, timezone

    from cryptography import x509

    from gateway.crypto.errors import CryptoError
    from gateway.crypto.profiles import profile_from
    from gateway.crypto.seal import seal as seal_message

    own, store, cfg = _identity_and_trust(config, key, cert, trust, crl)
    route = cfg.routes.get(to) if cfg is not None else None
    try:
        chosen = profile_from(profile) if profile else (route.profile if route else profile_from("compatible"))
        recipient = x509.load_pem_x509_certificates((route.certificate if route else Path(to)).read_bytes())[0]
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:  # never encrypt to an expired, revoked or untrusted certificate
        store.check(recipient, [], datetime.now(timezone.utc), usage="encrypt")
        sealed = seal_message(file.read_bytes(), own, recipient, chosen)
    except CryptoError as e:
        typer.echo(f"refused [{e.code}]: {e.message}", err=True)
        raise typer.Exit(EXIT_INVALID)
    sys.stdout.buffer.write(sealed.entity)
    typer.echo(f"sealed: {chosen.name}, mic {sealed.mic} ({sealed.mic_algorithm})", err=True)


@app.command("open")
def open_command(
    file: Annotated[Path, typer.Argument(help="A sealed S/MIME entity (MIME, or raw DER/BER).")],
    key: KeyOpt = None, cert: CertOpt = None, trust: TrustOpt = None, crl: CrlOpt = None, config: ConfigFileOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the XML here.")] = None,
    sender_email: Annotated[Optional[str], typer.Option("--from-email", help="Require this signer e-mail address.")] = None,
) -> None:
    """Decrypt and verify FILE: prints the signer, the checks passed and the digest."""
    from gateway.crypto.errors import CryptoError
    from gateway.crypto.open import open_sealed
    from gateway.crypto.trust import PartyBinding

    own, store, _ = _identity_and_trust(config, key, cert, trust, crl)
    try:
        opened = open_sealed(file.read_bytes(), own, store,
                             expected_sender=PartyBinding(email=sender_email) if sender_email else None)
    except CryptoError as e:
        typer.echo(f"REFUSED [{e.code}]: {e.message}", err=True)
        raise typer.Exit(EXIT_INVALID)
    except OSError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    out = Console(highlight=False, stderr=output is None)
    out.print(f"[green]OPENED[/] signer: {escape(opened.signer.subject.rfc4514_string())}")
    out.print(f"  checks: decrypted ({opened.key_transport}, {opened.content_cipher}), signature valid, "
              "content digest matches, chain trusted, not revoked")
    out.print(f"  MIC (sha-256): {opened.mic}   signed entity sha-256: {opened.signed_entity_sha256}")
    if output is not None:
        output.write_bytes(opened.xml)
        out.print(f"  XML written to {escape(str(output))}")
    else:
        sys.stdout.buffer.write(opened.xml)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="An empty or missing folder for the local set-up.")],
    party: Annotated[str, typer.Option(help="The own party: a development PI code or municipality code.")] = "PI-VUGHT",
    smtp: Annotated[str, typer.Option(help="The SMTP relay as HOST:PORT (STARTTLS is always required).")] = "127.0.0.1:587",
    imap: Annotated[str, typer.Option(help="The IMAP server of the own mailbox as HOST:PORT (implicit TLS).")] = "127.0.0.1:993",
    relay_ca: Annotated[Optional[Path], typer.Option(help="PEM of the CA that signed the relay's and IMAP server's certificates.")] = None,
) -> None:
    """Write a complete local set-up (folders, development PKI, configuration, routes) that `run` accepts as is."""
    from gateway.config import ConfigError
    from gateway.setup_local import init_local

    try:
        config = init_local(folder, party=party, smtp=_host_port(smtp, "--smtp"), imap=_host_port(imap, "--imap"),
                            relay_ca=relay_ca)
    except (ConfigError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    typer.echo(f"local set-up written to {folder}\n  configuration: {config}\n"
               f"  start it with: nazorg-gateway run -c {config}")


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(f"{option} must be HOST:PORT, not {value!r}")
    return host, int(port)


@app.command()
def run(
    config: Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")],
) -> None:
    """Run the gateway: pick up, validate, seal, send, and match receipts, until SIGTERM or SIGINT."""
    from gateway import logs
    from gateway.config import ConfigError, load_config
    from gateway.pipeline.daemon import run as run_daemon

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    logs.configure(cfg.log_level)
    try:
        code = run_daemon(cfg)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(code)


messages_app = typer.Typer(no_args_is_help=True, help="Messages in the store: list, show, release held ones.")
app.add_typer(messages_app, name="messages")
ConfigOption = Annotated[Path, typer.Option("-c", "--config", help="The gateway's TOML configuration.")]


def _config_or_exit(config: Path):
    from gateway import logs
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE)
    logs.configure("warning")  # the store's own log lines go to stderr, not into the output
    return cfg


async def _open_store(cfg):
    from gateway.store import Store

    return await Store.open(cfg.check_secrets().store_url.render_as_string(hide_password=False))


# messages list: gateway/ops/cli_operator.py (with --type --party --since --until)


@messages_app.command("release")
def messages_release(
    config: ConfigOption,
    message_ids: Annotated[list[str], typer.Argument(help="Held messages to route and seal again.")],
) -> None:
    """Route and seal held messages again after the cause was fixed (a route added, a certificate renewed).

    The recipient is still the one the message names; what is still wrong keeps it held, with the reason."""
    import asyncio
    import getpass

    from cryptography import x509

    from gateway.pipeline.sealer import Sealer
    from gateway.store import State

    cfg = _config_or_exit(config)

    async def release() -> int:
        secrets = cfg.check_secrets()
        store = await _open_store(cfg)
        try:
            certificates = {c: x509.load_pem_x509_certificate(r.certificate.read_bytes()) for c, r in cfg.routes.items()}
            sealer = Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=cfg.parties(),
                            routes=cfg.routes, certificates=certificates, queued=lambda: None)
            worst = EXIT_OK
            for mid in message_ids:
                record = await store.get(mid)
                if record is None or record.state is not State.HELD:
                    typer.echo(f"{mid}: not held ({record.state.value if record else 'unknown id'})", err=True)
                    worst = EXIT_INVALID
                    continue
                state = await sealer.route_and_seal(mid, actor=f"operator:{getpass.getuser()}")
                after = await store.get(mid)
                typer.echo(f"{mid}: {after.state.value}" + (f" ({after.reason})" if state is not State.QUEUED else ""))
                if state is not State.QUEUED:
                    worst = EXIT_INVALID
            return worst
        finally:
            await store.close()

    raise typer.Exit(asyncio.run(release()))


from gateway.ops.cli_web import app as _dashboard_app  # noqa: E402  (engineer C: web dashboard)

app.add_typer(_dashboard_app, name="dashboard")


from gateway.ops.cli_operator import register as _register_operator  # noqa: E402  (engineer B: operator)

_register_operator(app, messages_app)


from gateway.ops.cli_audit import register as _register_audit  # noqa: E402  (engineer A: audit, retention)

_register_audit(app)


from gateway.ops.cli_subjects import register as _register_subjects  # noqa: E402  (engineer R: subject rights)

_register_subjects(app)


def main() -> None:
    app()
