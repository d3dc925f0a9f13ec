"""The bounded write (F-17), defined once in daemon/net/conn.py for every surface."""

from __future__ import annotations

import asyncio
import socket

import pytest

from inferd.daemon.net.conn import WriteTimeout, bounded, ensure_open, write_may_wait


async def _stalled_pair() -> tuple[asyncio.StreamWriter, socket.socket]:
    """A writer whose peer never reads (a real socket pair, small buffers)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _, writer = await asyncio.open_connection(sock=ours)
    return writer, theirs


async def test_a_peer_that_does_not_read_is_cut_after_the_timeout() -> None:
    writer, theirs = await _stalled_pair()
    try:
        transport = writer.transport
        assert not write_may_wait(transport)  # nothing buffered: the fast path
        writer.write(b"x" * (1 << 20))  # far past what the socket takes and the high-water mark
        assert write_may_wait(transport)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WriteTimeout):
            await bounded(writer.drain(), transport, 0.2)
        assert loop.time() - started >= 0.2
        assert transport.is_closing()  # aborted: the connection goes, and the caller's slot with it
        with pytest.raises(ConnectionResetError):
            ensure_open(transport)
    finally:
        theirs.close()
        writer.transport.abort()


async def test_a_peer_that_reads_is_waited_for() -> None:
    writer, theirs = await _stalled_pair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    payload = b"y" * (1 << 20)
    try:
        writer.write(payload)
        assert write_may_wait(writer.transport)

        async def read_all() -> int:
            got = 0
            while got < len(payload):
                got += len(await loop.sock_recv(theirs, 1 << 16))
            return got

        reader = asyncio.ensure_future(read_all())
        await bounded(writer.drain(), writer.transport, 10.0)
        assert not writer.transport.is_closing()
        assert await reader == len(payload)
    finally:
        theirs.close()
        writer.transport.abort()
