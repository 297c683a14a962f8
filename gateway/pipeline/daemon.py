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
from cryptography import x509

from adapters.imap import MailboxSettings, watch_mailbox
from adapters.smtp import RelaySettings
from gateway.config import ConfigError, GatewayConfig
from gateway.pipeline.dispatcher import Dispatcher
from gateway.pipeline.overdue import OverdueWatch
from gateway.pipeline.pickup import Pickup
from gateway.pipeline.receipt_matcher import ReceiptMatcher
from gateway.pipeline.sealer import Sealer
from gateway.pipeline.transports import EmailTransport, Transport
from gateway.pipeline.validation import ValidationPool
from gateway.store import Store

log = structlog.get_logger(__name__)


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

    async def run(self) -> None:
        cfg = self.config
        secrets = cfg.check_secrets()
        certificates = _route_certificates(cfg)
        cfg.folders.create()
        if cfg.store.sqlite_path is not None:
            cfg.store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        parties = cfg.parties()
        self.store = store = await Store.open(secrets.store_url.render_as_string(hide_password=False))
        validation = ValidationPool(institutions=cfg.registries.institutions,
                                    municipalities=cfg.registries.municipalities,
                                    max_bytes=cfg.limits.max_message_bytes, workers=cfg.limits.validation_workers)
        transports: dict[str, Transport] = {}
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
                            rescan_interval=cfg.limits.rescan_interval, accepted=self.sealer.submit)
            services = [pickup.run(self.stop), self.sealer.run(self.stop), self.dispatcher.run(self.stop),
                        OverdueWatch(store, cfg.limits.receipt_overdue, clock=self.clock).run(self.stop)]
            if cfg.imap is not None:
                matcher = ReceiptMatcher(store=store, trust=secrets.trust, processed_folder=cfg.imap.processed_folder,
                                         unrecognised_folder=cfg.imap.unrecognised_folder, clock=self.clock)
                mailbox = MailboxSettings(host=cfg.imap.host, port=cfg.imap.port, username=cfg.imap.username,
                                          password=secrets.imap_password, ssl_context=_context(cfg.imap.ca_file),
                                          mailbox=cfg.imap.mailbox, poll_interval=cfg.imap.poll_interval)
                services.append(watch_mailbox(mailbox, matcher.handle, self.stop))
            log.info("started", party=str(cfg.party.party), routes=len(cfg.routes), transports=sorted(transports),
                     receipts="imap" if cfg.imap else "none")
            tasks = [asyncio.create_task(s) for s in services]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None and not self.stop.is_set():
                        log.error("service-crashed", error=type(t.exception()).__name__, why=str(t.exception()))
                        self.stop.set()
                        raise t.exception()
            finally:
                self.stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in transports.values():
                await t.close()
            validation.close()
            await store.close()
            log.info("stopped")

def run(config: GatewayConfig) -> int:
    async def main() -> None:
        gateway = Gateway(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopping(gateway, sig))
        await gateway.run()

    asyncio.run(main())
    return 0


def _stopping(gateway: Gateway, sig: signal.Signals):
    def handler() -> None:
        log.info("stopping", signal=sig.name)
        gateway.stop.set()
    return handler
