"""The NDJSON connection loop that the v1, v2 and embed sockets share.

Requests on a connection are sequential. An oversize or undecodable line is answered
with one error frame (id "") and the connection closes (upstream-protocol §3.4). Two
limits of proto/limits.py are answered here, on id "" with the connection left open:
a line with too many JSON values (refused by the parser before it builds anything)
and an id over 256 bytes (never echoed). A request that decodes goes to the surface's
`handle`, which answers it through the request pipeline and says whether the
connection stays open: every refusal on that path (validation, queue full) leaves it
open, except a closed admission (shutdown), which ends it. A reply the frame cap
cannot carry ends its request with `frame_too_large` (THREAT_MODEL F-1). A line past the
stream limit is read within the read timeout and from the daemon's byte budget (F-22):
past either it is answered `invalid_request` (too slow) or `queue_full` (no room) on id
"" and the connection closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ...proto.errors import (BufferBudgetFull, DecodeError, ErrorCode, FrameTooLarge, InvalidRequest, ReadTimedOut,
                             encode_error)
from ...proto.framing import MAX_FRAME_BYTES, FrameReader
from ...proto.limits import check_id
from ..net.conn import PeerConnection

R = TypeVar("R")

#: The activity record of each refusal of a frame (logged through the one throttle).
_REFUSALS = {FrameTooLarge: "frame_too_large", BufferBudgetFull: "buffer_budget_full", ReadTimedOut: "read_timeout"}

REPLY_TOO_LARGE = f"reply exceeds the {MAX_FRAME_BYTES} byte frame cap; ask for less"


async def serve_requests(conn: PeerConnection, parse: Callable[[bytes], R],
                         handle: Callable[[R], Awaitable[bool]]) -> None:
    """Read and `handle` requests until EOF, a closing error, or `handle` returns False."""
    frames = FrameReader(conn.reader, budget=conn.budget, deadline=conn.read_timeout)
    try:
        while True:
            try:
                line = await frames.read_frame()
            except (FrameTooLarge, BufferBudgetFull, ReadTimedOut) as exc:
                # F-1/F-22: too long, no room left in the daemon's buffer budget, or too
                # slow: one error frame (id ""), then the connection closes; the refusal
                # is logged through the daemon's one throttle.
                conn.refused(_REFUSALS[type(exc)], exc.message)
                await conn.send(encode_error("", exc.code, exc.message))
                return
            if line is None:
                return
            try:
                request = parse(line)
            except DecodeError as exc:
                await conn.send(encode_error("", ErrorCode.INVALID_REQUEST, exc.message))
                return
            except InvalidRequest as exc:
                # A limit checked before parsing (proto/limits.py, MAX_JSON_VALUES): the
                # line was read whole, so the connection can go on; the id is unknown.
                await conn.send(encode_error("", ErrorCode.INVALID_REQUEST, exc.message))
                continue
            rid = getattr(request, "id", "")
            try:
                check_id(rid)
            except InvalidRequest as exc:
                # Issue 8 item 1: an over-long id is never echoed (nor logged).
                await conn.send(encode_error("", ErrorCode.INVALID_REQUEST, exc.message))
                continue
            try:
                keep_open = await handle(request)
            except FrameTooLarge:
                # Issue 8 item 6: a reply the cap cannot carry ends the request with an
                # error frame, never with a silent EOF and a traceback.
                await conn.send(encode_error(rid, ErrorCode.FRAME_TOO_LARGE, REPLY_TOO_LARGE))
                continue
            if not keep_open:
                return
    except (ConnectionError, OSError):
        pass  # the peer went away or stalled (F-17); the pipeline already released its slot
    finally:
        await conn.close()
