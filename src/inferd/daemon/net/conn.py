"""One accepted client connection: its streams, its identity, and the bounded write.

THREAT_MODEL F-17: every response write is bounded by the write timeout. A client
that stops reading fills the socket buffer, our wait for it to drain times out, the
transport is aborted and the request's admission slot is released by the handler's
`finally`. A stalled peer therefore costs one connection, never a slot. The bound is
defined once here (`ensure_open`, `write_may_wait`, `bounded`) and used by the NDJSON
surfaces (`PeerConnection.send`) and by HTTP (`surfaces/http/io.py`'s `Responder`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

from .buffers import ByteBudget
from .peercred import PeerCred

log = logging.getLogger("inferd.conn")

_ids = itertools.count(1)

#: The most a connection's frames of one event-loop turn wait for the turn's end.
FLUSH_AT_BYTES = 64 * 1024


class WriteTimeout(ConnectionError):
    """The peer did not read a response frame within the write timeout."""


def ensure_open(transport: asyncio.WriteTransport) -> None:
    """Raise ConnectionResetError once the peer is gone (or we aborted it)."""
    if transport.is_closing():
        raise ConnectionResetError("peer went away")


def write_may_wait(transport: asyncio.WriteTransport) -> bool:
    """Whether a write now could wait for the peer to read.

    A transport pauses its writer past the high-water mark and resumes it only once the
    buffer is back at the low-water mark, so at or below that mark nothing waits: no
    timer is armed for the common case, one small frame per token.
    """
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]


async def bounded(waiting: Awaitable[None], transport: asyncio.WriteTransport, timeout: float | None) -> None:
    """Await `waiting` (a drain, or a send that drains first) for at most `timeout` seconds.

    Past it the connection is aborted and WriteTimeout raised; None waits as long as
    the peer takes (a daemon configured without a write timeout).
    """
    if timeout is None:
        await waiting
        return
    try:
        async with asyncio.timeout(timeout):
            await waiting
    except TimeoutError:
        transport.abort()
        raise WriteTimeout(f"peer did not read for {timeout:g}s") from None


class PeerConnection:
    __slots__ = ("reader", "writer", "surface", "transport_kind", "peer", "write_timeout", "read_timeout", "budget",
                 "on_refusal", "conn_id", "_pending", "_pending_bytes")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        surface: str,
        transport_kind: str,
        peer: PeerCred | None = None,
        write_timeout: float | None = None,
        read_timeout: float | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.surface = surface
        self.transport_kind = transport_kind
        self.peer = peer
        self.write_timeout = write_timeout if write_timeout else None
        # F-22: how long the rest of a long frame may take, and the daemon's byte budget.
        self.read_timeout = read_timeout if read_timeout else None
        self.budget = budget
        #: Told of a refusal on this connection (its name, a sentence): the listener
        #: logs it through the daemon's one throttle.
        self.on_refusal: Callable[[str, str], None] | None = None
        self.conn_id = next(_ids)
        #: Frames sent in this turn of the event loop, written together when it ends.
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0

    @property
    def peer_label(self) -> str:
        if self.peer is not None:
            return self.peer.label
        return self.transport_kind

    async def send(self, data: bytes) -> None:
        """Send one frame; raise ConnectionError if the peer is gone or stalled.

        Frames sent in one turn of the event loop leave in one write when the turn
        ends (ADR 0035, addendum 5): a runner frame carries several tokens, and one
        write per token would wake the client once per token, each time on the core
        the decode runs on. A frame is never held past the turn, and backpressure is
        as before: while the transport holds data the peer has not read, or once a
        turn's frames reach FLUSH_AT_BYTES, they are written at once and the send waits
        for the peer as it always did.
        """
        writer = self.writer
        transport = writer.transport
        ensure_open(transport)
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._pending_bytes = len(data)
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_AT_BYTES or write_may_wait(transport):
            self.flush()
            # A stream writer buffers first and waits after (drain), so the check follows the write.
            if write_may_wait(transport):
                await bounded(writer.drain(), transport, self.write_timeout)

    def flush(self) -> None:
        """Write the frames sent so far in this turn (at most once: later calls find none)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_bytes = 0
        if self.writer.transport.is_closing():
            return  # the peer is gone: what it did not read is lost, as with any write
        self.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def refused(self, name: str, message: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(name, message)

    def abort(self) -> None:
        self._pending = None
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
        self.flush()
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
