"""Forwarding one accepted loopback connection to a server: the common part of the tests' TCP
stand-ins in front of real servers (test_reliability_outages.Link, test_reliability_breaker_relay.RelayGate)."""

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
