"""The NDJSON connection loop that the v1, v2 and embed sockets share.

Requests on a connection are sequential. An oversize or undecodable line is answered
with one error frame (id "") and the connection closes (upstream-protocol §3.4). A
request that decodes goes to the surface's `handle`, which answers it through the
request pipeline and says whether the connection stays open: every refusal on that
path (validation, queue full) leaves it open, except a closed admission (shutdown),
which ends it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ...proto.errors import DecodeError, ErrorCode, FrameTooLarge, encode_error
from ...proto.framing import FrameReader
from ..net.conn import PeerConnection

R = TypeVar("R")


async def serve_requests(conn: PeerConnection, parse: Callable[[bytes], R],
                         handle: Callable[[R], Awaitable[bool]]) -> None:
    """Read and `handle` requests until EOF, a closing error, or `handle` returns False."""
    frames = FrameReader(conn.reader)
    try:
        while True:
            try:
                line = await frames.read_frame()
            except FrameTooLarge as exc:
                await conn.send(encode_error("", ErrorCode.FRAME_TOO_LARGE, exc.message))
                return
            if line is None:
                return
            try:
                request = parse(line)
            except DecodeError as exc:
                await conn.send(encode_error("", ErrorCode.INVALID_REQUEST, exc.message))
                return
            if not await handle(request):
                return
    except (ConnectionError, OSError):
        pass  # the peer went away or stalled (F-17); the pipeline already released its slot
    finally:
        await conn.close()
