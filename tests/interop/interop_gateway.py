"""The real daemon (`gateway.pipeline.daemon.Gateway`) for interop tests, in this event loop, with nothing
that needs another server: no [imap] table; the SMTP relay is configured (e-mail routes need one) but
never used, as nothing that goes by e-mail is dropped in the outbox.

- receiving: `write_template` + `receiving_config`: a party with its AS2 server and a platform route
  from the peer's party (so the peer may send, named by its code as AS2-From);
- sending: `sending_config`: a party whose route to the peer goes over the platform to the peer's
  URL, with the encryption the peer can read (key transport and content cipher given in the route).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.pipeline.daemon import Gateway
from gateway.setup_local import init_local


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_template(folder: Path, *, party: str, partner: str) -> Path:
    """`init` for `party` with an AS2 server and a platform route to `partner` (so `partner` may send here
    over AS2, named by its code as AS2-From). Returns the folder; `receiving_config` makes it runnable."""
    init_local(folder, party=party, as2_listen=("127.0.0.1", 1), platform={partner: "https://127.0.0.1:1/as2"})
    return folder


def receiving_config(template: Path, folder: Path, port: int) -> GatewayConfig:
    """A copy of the template listening on `port`, without the [imap] table (no mailbox to watch)."""
    shutil.copytree(template, folder, symlinks=True)
    path = folder / "gateway.toml"
    text = path.read_text()
    text, n = re.subn(r'\nlisten = "127\.0\.0\.1:1"\n', f'\nlisten = "127.0.0.1:{port}"\n', text)
    assert n == 1, "the [as2] listen line of init changed"
    path.write_text(_without_imap(text))
    cfg = load_config(path)
    assert cfg.imap is None and cfg.as2 is not None and cfg.as2.listen == ("127.0.0.1", port)
    return cfg


def _without_imap(text: str) -> str:
    text, n = re.subn(r"\n\[imap\]\n[^\[]*", "\n", text)
    assert n == 1, "the [imap] table of init changed"
    return text


def sending_config(keys: Path, folder: Path, *, party: str, partner: str, url: str, key_transport: str,
                   content_cipher: str) -> GatewayConfig:
    """`init` for `party` on the PKI in `keys`, its route to `partner` over the platform at `url` with
    the given encryption; quick pick-up."""
    init_local(folder, party=party, pki=keys, platform={partner: url})
    path = folder / "gateway.toml"
    text = _without_imap(path.read_text())
    route = f'as2_id = "{partner}"\ncertificate = "keys/parties/{partner}/cert.pem"\nprofile = "strong"\n'
    assert text.count(route) == 1, "the platform route of init changed"
    text = text.replace(route, route.replace('profile = "strong"\n', f'key_transport = "{key_transport}"\n'
                                                                     f'content_cipher = "{content_cipher}"\n'))
    text = text.replace("[limits]\nworkers = 4", "[limits]\nworkers = 4\nstable_after = 0.05\nrescan_interval = 0.5", 1)
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.imap is None and cfg.routes[partner].transport == "platform" and cfg.limits.stable_after == 0.05
    return cfg


@asynccontextmanager
async def running(config: GatewayConfig):
    """The daemon as a task of this loop, yielded once it runs (and its AS2 server listens, if it has
    one); stopped gracefully."""
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    serves = config.as2 is not None and config.as2.listen is not None
    try:
        while (gateway.dispatcher is None or (serves and gateway.as2_server is None)) and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield gateway
    finally:
        gateway.stop.set()
        await asyncio.wait_for(task, 30)
