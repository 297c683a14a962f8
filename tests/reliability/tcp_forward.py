"""Forwarding one accepted loopback connection to a server: the common part of the tests' TCP
stand-ins in front of real servers (test_reliability_outages.Link, RelayGate below: the breaker tests')."""

from __future__ import annotations

import asyncio


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target_port: int,
                  open_writers: set[asyncio.StreamWriter]) -> None:
    """Pipe the client to 127.0.0.1:target_port and back until either side closes; a refused upstream
    resets the client. Both writers sit in `open_writers` while open (for the caller to abort)."""
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        writer.transport.abort()
        return
    open_writers |= {writer, up_writer}
    await asyncio.gather(_pipe(reader, up_writer, open_writers), _pipe(up_reader, writer, open_writers))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                open_writers: set[asyncio.StreamWriter]) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        open_writers.discard(writer)
        writer.transport.abort()


class RelayGate:
    """Loopback TCP in front of the relay: while down, every connection is counted and answered 421."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.down = True
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def close(self) -> None:
        self.server.close()
        for writer in list(self.open):
            writer.transport.abort()
        await self.server.wait_closed()

    def cut(self) -> None:
        """Down from now on, and the connections through it dropped (a sender's kept SMTP session too)."""
        self.down = True
        for writer in list(self.open):
            writer.transport.abort()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.down:
            writer.write(b"421 4.3.2 relay out of service, try again later\r\n")
            try:
                await writer.drain()
            finally:
                writer.close()
            return
        await forward(reader, writer, self.target_port, self.open)
