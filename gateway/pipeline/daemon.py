"""`nazorg-gateway run`: every service of the gateway in one asyncio process.

Start-up checks everything that can be checked before a file is touched
(configuration, keys, secrets, trust, route certificates, store schema,
validator workers), then runs pick-up, sealer, dispatcher, receipt matcher and
the overdue-receipt watch side by side. SIGTERM/SIGINT: stop taking work,
let deliveries in flight finish (or release them to the queue), exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable
from datetime import datetime, timezone

import structlog
from sqlalchemy.exc import DBAPIError
from cryptography import x509

from adapters.as2 import As2Reply, As2Request, As2Settings, AsyncMdnSettings, make_app, serve
from adapters.imap import MailboxSettings, watch_mailbox
from adapters.inbox_fs import InboxWriter
from adapters.smtp import RelaySettings, SmtpSender
from gateway.config import ConfigError, GatewayConfig
from gateway.ops.audit import checkpoint_service
from gateway.ops.metrics import deadline_watch
from gateway.ops.retention import purge_service
from gateway.ops.web import serve_dashboard
from gateway.pipeline.dispatcher import Dispatcher
from gateway.pipeline.intake import Arrival, Intake, party_of_route, partners_from_routes
from gateway.pipeline.mail_intake import MailIntake
from gateway.pipeline.memory import give_back, limit_arenas
from gateway.pipeline.overdue import OverdueWatch
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.receipt_matcher import ReceiptMatcher
from gateway.pipeline.sealer import Sealer
from gateway.pipeline.transports import EmailTransport, PlatformTransport, Transport
from gateway.pipeline.validation import ValidationPool
from gateway.store import SchemaError, Store

log = structlog.get_logger(__name__)
#: where refused mails go in the own mailbox (kept, never deleted)
QUARANTINE_FOLDER = "nazorg/quarantaine"


def _context(ca_file) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _route_certificates(config: GatewayConfig) -> dict[str, x509.Certificate]:
    out = {}
    for code, route in config.routes.items():
        try:
            out[code] = x509.load_pem_x509_certificate(route.certificate.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError([f"routes.{code}.certificate: cannot be read ({type(e).__name__})"], config.path)
    return out


class Gateway:
    """The wired services; `run` until `stop` is set."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.config = config
        self.clock = clock
        self.stop = asyncio.Event()
        self.store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.sealer: Sealer | None = None
        self.intake: Intake | None = None
        self.as2_server = None
        #: set once every service is listening and running (what tests and demos wait for)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        cfg = self.config
        # before the store's threads and the executor's: they share few malloc arenas (each thread's own
        # arena grew to its own peak and kept it: the soak's creeping RSS; gateway/pipeline/memory.py)
        limit_arenas()
        secrets = cfg.check_secrets()
        certificates = _route_certificates(cfg)
        cfg.folders.create()
        if cfg.store.sqlite_path is not None:
            cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        parties = cfg.parties()
        _refuse_a_lost_store(cfg)
        try:
            self.store = store = await Store.open(secrets.store_url.render_as_string(hide_password=False),
                                                  clock=self.clock)
        except (SchemaError, DBAPIError) as e:
            raise ConfigError([f"store.url: the store cannot be opened: {_db_reason(e)}; nothing was started. "
                               "Restore the store from its backup (the spool, inbox and quarantine folders "
                               "belong with it)"], cfg.path) from None
        validation = ValidationPool(institutions=cfg.registries.institutions,
                                    municipalities=cfg.registries.municipalities,
                                    max_bytes=cfg.limits.max_message_bytes, workers=cfg.limits.validation_workers,
                                    subject_key=secrets.subject_key)
        transports: dict[str, Transport] = {}
        closing: list = []  #: other connections to close at the end
        try:
            await validation.warm_up()
            if cfg.smtp is not None:
                relay = RelaySettings(host=cfg.smtp.host, port=cfg.smtp.port, ssl_context=_context(cfg.smtp.ca_file),
                                      tls=cfg.smtp.tls, username=cfg.smtp.username, password=secrets.smtp_password,
                                      timeout=cfg.smtp.timeout, helo=cfg.smtp.helo,
                                      max_messages_per_connection=cfg.smtp.max_messages_per_connection)
                transports["email"] = EmailTransport(relay, from_address=cfg.party.email, receipt_to=cfg.party.email,
                                                     id_domain=cfg.party.email.rsplit("@", 1)[1],
                                                     connections=cfg.limits.workers)
            if cfg.as2 is not None:
                transports["platform"] = self._platform_transport(secrets)
            self.dispatcher = Dispatcher(store=store, transports=transports, retry=cfg.retry,
                                         workers=cfg.limits.workers,
                                         per_destination={c: r.max_concurrency for c, r in cfg.routes.items()},
                                         default_per_destination=2, lease=cfg.limits.lease, clock=self.clock)
            self.sealer = Sealer(store=store, identity=secrets.identity, trust=secrets.trust, parties=parties,
                                 routes=cfg.routes, certificates=certificates, queued=self.dispatcher.wake,
                                 clock=self.clock)
            pickup = Pickup(store=store, validation=validation, outbox=cfg.folders.outbox, spool=cfg.folders.spool,
                            rejected=cfg.folders.rejected, own_party=str(cfg.party.party),
                            max_bytes=cfg.limits.max_message_bytes, stable_after=cfg.limits.stable_after,
                            rescan_interval=cfg.limits.rescan_interval, accepted=self.sealer.submit,
                            name_key=secrets.subject_key)
            # finish what a crash left between committing a pick-up and moving its file BEFORE the sealer
            # looks for the spooled copies of `received` messages (else it would hold them as missing)
            await pickup.reconcile()
            services = [pickup.run(self.stop), self.sealer.run(self.stop), self.dispatcher.run(self.stop),
                        OverdueWatch(store, cfg.limits.receipt_overdue, clock=self.clock).run(self.stop)]
            matcher = ReceiptMatcher(store=store, trust=secrets.trust,
                                     processed_folder=cfg.imap.processed_folder if cfg.imap else "processed",
                                     unrecognised_folder=cfg.imap.unrecognised_folder if cfg.imap else "unrecognised",
                                     clock=self.clock)
            self.intake = Intake(store=store, identity=secrets.identity, trust=secrets.trust, validation=validation,
                                 own_party=str(cfg.party.party), partners=partners_from_routes(cfg.routes),
                                 inbox=InboxWriter(cfg.folders.inbox), quarantine=cfg.folders.quarantine,
                                 own_names={"email": cfg.party.email,
                                            **({"as2": cfg.as2.as2_id} if cfg.as2 else {})},
                                 clock=self.clock)
            await self.intake.reconcile()
            if cfg.imap is not None:
                receipts_sender = SmtpSender(relay) if cfg.smtp is not None else None
                closing.append(receipts_sender)
                mail = MailIntake(intake=self.intake, matcher=matcher, smtp_sender=receipts_sender,
                                  own_email=cfg.party.email, processed_folder=cfg.imap.processed_folder,
                                  quarantine_folder=QUARANTINE_FOLDER, unrecognised_folder=cfg.imap.unrecognised_folder,
                                  clock=self.clock)
                mailbox = MailboxSettings(host=cfg.imap.host, port=cfg.imap.port, username=cfg.imap.username,
                                          password=secrets.imap_password, ssl_context=_context(cfg.imap.ca_file),
                                          mailbox=cfg.imap.mailbox, poll_interval=cfg.imap.poll_interval,
                                          idle=cfg.imap.idle, max_mail_bytes=largest_mail(cfg.limits.max_message_bytes),
                                          oversized_folder=QUARANTINE_FOLDER)
                services.append(watch_mailbox(mailbox, mail.handle_many, self.stop, batched=True))
            if cfg.as2 is not None and cfg.as2.listen is not None:
                self.as2_server = await self._as2_server(matcher)
            # services that run until cancelled: the audit checkpoints, the retention purge, the dashboard
            forever = [checkpoint_service(store, secrets.identity, cfg.retention.checkpoint_every),
                       purge_service(store, every=cfg.retention.purge_every,
                                     plaintext_after=cfg.retention.plaintext_after,
                                     keep_years=cfg.retention.keep_years),
                       deadline_watch(store, clock=self.clock, after_round=give_back)]
            accounts = cfg.dashboard.accounts_file or cfg.path.parent / "secrets" / "dashboard-accounts"
            if accounts.is_file():
                services.append(serve_dashboard(cfg, store, secrets, stop=self.stop, queued=self.dispatcher.wake))
            else:
                log.info("dashboard-off", why="no dashboard accounts yet: `nazorg-gateway dashboard add-account`")
            log.info("started", party=str(cfg.party.party), routes=len(cfg.routes), transports=sorted(transports),
                     receipts="imap" if cfg.imap else "none",
                     as2_server=f"{cfg.as2.listen[0]}:{self.as2_server.port}" if self.as2_server else None)
            tasks = [asyncio.create_task(s) for s in services]
            background = [asyncio.create_task(s) for s in forever]
            self.ready.set()
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None and not self.stop.is_set():
                        log.error("service-crashed", error=type(t.exception()).__name__, why=str(t.exception()))
                        self.stop.set()
                        raise t.exception()
            finally:
                self.stop.set()
                for t in background:
                    t.cancel()
                await asyncio.gather(*tasks, *background, return_exceptions=True)
        finally:
            if self.as2_server is not None:
                await self.as2_server.close()
            for t in [*transports.values(), *(c for c in closing if c is not None)]:
                await t.close()
            validation.close()
            await store.close()
            log.info("stopped")

    def _platform_transport(self, secrets) -> PlatformTransport:
        cfg = self.config
        chain_pem, key_pem = cfg.as2.tls_cert.read_bytes(), cfg.as2.tls_key.read_bytes()
        partners = partners_from_routes(cfg.routes)
        platform = {r.address: (r.as2_id, partners[party_of_route(code)].binding)
                    for code, r in cfg.routes.items() if r.transport == "platform"}
        settings = As2Settings(as2_from=cfg.as2.as2_id, client_cert_chain_pem=chain_pem, client_key_pem=key_pem,
                               receipt_to=cfg.party.email, async_mdn_url=cfg.as2.receipt_url, timeout=cfg.as2.timeout)
        return PlatformTransport(settings, partners=platform, trust=secrets.trust,
                                 trust_pem=cfg.trust.bundle.read_bytes())

    async def _as2_server(self, matcher: ReceiptMatcher):
        """The AS2 endpoint: messages through the intake, asynchronous receipts to the matcher."""
        cfg = self.config
        intake = self.intake

        async def on_message(request: As2Request) -> As2Reply:
            outcome = await intake.receive(Arrival(entity=request.body, transport="as2",
                                                   transport_message_id=request.headers.get("Message-ID", ""),
                                                   claimed_sender=request.as2_from,
                                                   reply_to=request.headers.get("Disposition-Notification-To")))
            return As2Reply(mdn_entity=outcome.mdn.entity if outcome.mdn and request.wants_mdn else None)

        async def on_receipt(request: As2Request) -> None:
            await matcher.handle_mdn(request.body, origin="as2")

        chain_pem, key_pem = cfg.as2.tls_cert.read_bytes(), cfg.as2.tls_key.read_bytes()
        app = make_app(on_message, max_body=cfg.as2.max_body, path=cfg.as2.path, mdn_handler=on_receipt,
                       async_mdn=AsyncMdnSettings(client_cert_chain_pem=chain_pem, client_key_pem=key_pem,
                                                  trust_pem=cfg.trust.bundle.read_bytes()),
                       own_names=[cfg.as2.as2_id])
        host, port = cfg.as2.listen
        return await serve(app, host=host, port=port, server_cert_chain_pem=chain_pem, server_key_pem=key_pem,
                           client_ca_pem=cfg.trust.bundle.read_bytes())


def largest_mail(max_message_bytes: int) -> int:
    """The largest mail that can carry a message this gateway accepts: base64 makes the sealed entity 4/3 of its
    CMS, which holds the signed message (the XML, the signature and its certificates), plus headers; twice the
    message and 256 KiB leaves room for every profile. Larger mails are not read (watch_mailbox)."""
    return 2 * max_message_bytes + 256 * 1024


def _refuse_a_lost_store(cfg: GatewayConfig) -> None:
    """A missing SQLite file beside a spool that holds messages is a lost store, not a first start: starting
    would begin an empty queue and forget those messages (and their receipts) for good."""
    path = cfg.store.sqlite_path
    if path is None or path.exists():
        return
    left = [f for folder in (cfg.folders.spool, cfg.folders.quarantine) if folder.is_dir()
            for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    if left:
        raise ConfigError([f"store.url: the store file {path} is missing, but {len(left)} file(s) in the spool "
                           "and quarantine belong to it: restore the store from its backup; to really start "
                           "empty, move those folders' files aside first"], cfg.path)


def _db_reason(e: Exception) -> str:
    """The database's own words (no SQL, no parameters): "file is not a database", "malformed", ..."""
    if isinstance(e, DBAPIError) and e.orig is not None:
        return str(e.orig).splitlines()[0][:200]
    return str(e).splitlines()[0][:200]


def run(config: GatewayConfig) -> int:
    async def main() -> None:
        gateway = Gateway(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopping(gateway, sig))
        # pick-up's lease probe (adapters/outbox_fs.open_for_writing) may earn a SIGIO; it means nothing here
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        await gateway.run()

    asyncio.run(main())
    return 0


def _stopping(gateway: Gateway, sig: signal.Signals):
    def handler() -> None:
        log.info("stopping", signal=sig.name)
        gateway.stop.set()
    return handler
