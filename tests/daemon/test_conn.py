"""The bounded write (F-17), defined once in daemon/net/conn.py for every surface."""

from __future__ import annotations

import asyncio
import socket

import pytest

from inferd.daemon.net.conn import FLUSH_AT_BYTES, PeerConnection, WriteTimeout, bounded, ensure_open, write_may_wait


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


# ---- frames of one event-loop turn leave in one write (ADR 0035, addendum 5) ----------------


async def _peer_pair(write_timeout: float | None = None) -> tuple[PeerConnection, socket.socket, list[bytes]]:
    """A PeerConnection on a real socket pair, with every write to its transport recorded."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    writes: list[bytes] = []
    write = writer.write

    def recording(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    writer.write = recording  # type: ignore[method-assign]
    conn = PeerConnection(reader, writer, surface="v1", transport_kind="uds", write_timeout=write_timeout)
    return conn, theirs, writes


async def _read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    got = b""
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(got)), 5.0)
        assert chunk, "the peer saw EOF early"
        got += chunk
    return got


async def test_frames_sent_in_one_turn_leave_in_one_write_when_the_turn_ends() -> None:
    conn, theirs, writes = await _peer_pair()
    try:
        frames = [b'{"type":"token","n":%d}\n' % i for i in range(3)]
        for frame in frames:
            await conn.send(frame)
        assert writes == []  # nothing written yet: the turn goes on
        await asyncio.sleep(0)  # the turn ends
        assert writes == [b"".join(frames)]
        assert await _read_exactly(theirs, len(writes[0])) == b"".join(frames)
        await conn.send(b"next\n")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert writes[1:] == [b"next\n"]
        assert await _read_exactly(theirs, 5) == b"next\n"
    finally:
        theirs.close()
        conn.abort()


async def test_a_turn_that_sends_more_than_the_cap_writes_at_once() -> None:
    conn, theirs, writes = await _peer_pair()
    try:
        big = b"z" * (FLUSH_AT_BYTES // 2) + b"\n"
        await conn.send(big)
        assert writes == []
        await conn.send(big)  # past the cap: written now, not at the turn's end
        assert writes == [big + big]
        theirs.setblocking(False)
        assert await _read_exactly(theirs, 2 * len(big)) == big + big
    finally:
        theirs.close()
        conn.abort()


async def test_close_writes_the_frames_still_waiting_for_the_turn() -> None:
    conn, theirs, writes = await _peer_pair()
    try:
        last = b'{"type":"error","code":"frame_too_large"}\n'
        await conn.send(last)
        closing = asyncio.ensure_future(conn.close(linger=0.2))
        assert await _read_exactly(theirs, len(last)) == last
        theirs.shutdown(socket.SHUT_WR)
        await closing
        assert len(writes) == 1
    finally:
        theirs.close()


async def test_a_stalled_peer_still_times_out_with_frames_coalesced() -> None:
    """F-17 with the coalesced write: a peer that stops reading costs its connection."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader, writer = await asyncio.open_connection(sock=ours)
    conn = PeerConnection(reader, writer, surface="v1", transport_kind="uds", write_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(WriteTimeout):
            for _ in range(10_000):
                await conn.send(b"t" * 999 + b"\n")
                await asyncio.sleep(0)  # one frame per turn, as tokens come
        assert loop.time() - started < 5.0
        assert writer.transport.is_closing()
        with pytest.raises(ConnectionResetError):
            await conn.send(b"late\n")
    finally:
        theirs.close()
        writer.transport.abort()
