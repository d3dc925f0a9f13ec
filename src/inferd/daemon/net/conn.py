"""One accepted client connection: its streams, its identity, and a bounded writer.

THREAT_MODEL F-17: every response write is bounded by the write timeout. A client
that stops reading fills the socket buffer, our drain() blocks, the timeout fires,
the transport is aborted and the request's admission slot is released by the
handler's `finally`. A stalled peer therefore costs one connection, never a slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from .peercred import PeerCred

log = logging.getLogger("inferd.conn")

_ids = itertools.count(1)


class WriteTimeout(ConnectionError):
    """The peer did not read a response frame within the write timeout."""


class PeerConnection:
    __slots__ = ("reader", "writer", "surface", "transport_kind", "peer", "write_timeout", "conn_id")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        surface: str,
        transport_kind: str,
        peer: PeerCred | None = None,
        write_timeout: float | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.surface = surface
        self.transport_kind = transport_kind
        self.peer = peer
        self.write_timeout = write_timeout if write_timeout else None
        self.conn_id = next(_ids)

    @property
    def peer_label(self) -> str:
        if self.peer is not None:
            return self.peer.label
        return self.transport_kind

    async def send(self, data: bytes) -> None:
        """Write one frame; raise ConnectionError if the peer is gone or stalled."""
        writer = self.writer
        transport = writer.transport
        if transport.is_closing():
            raise ConnectionResetError("peer went away")
        writer.write(data)
        # Fast path: below the high-water mark drain() would not wait, so neither do
        # we (and we skip arming a timer for every token frame).
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return
        if self.write_timeout is None:
            await writer.drain()
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError:
            self.abort()
            raise WriteTimeout(f"peer did not read for {self.write_timeout:g}s") from None

    def abort(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass

    async def close(self, linger: float = 1.0) -> None:
        """Close so that the peer reads our last frame.

        Closing a socket with unread input makes the kernel reset the connection,
        and the peer may lose the error frame we just wrote (e.g. `frame_too_large`
        while it is still sending). So: half-close, discard input until EOF or
        `linger` seconds, then close.
        """
        writer = self.writer
        try:
            if not writer.transport.is_closing():
                if writer.can_write_eof():
                    writer.write_eof()
                try:
                    async with asyncio.timeout(linger):
                        while await self.reader.read(1 << 16):
                            pass
                except (TimeoutError, ConnectionError, OSError):
                    pass  # the peer keeps sending or reset: close anyway
            writer.close()
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except asyncio.CancelledError:
            self.abort()  # cancelled while closing: drop the socket, and stay cancelled
            raise
        except Exception:  # noqa: BLE001 - TimeoutError, a reset: closing anyway
            self.abort()
