"""What every request surface (v1, v2, embed) shares: the NDJSON connection loop.

Requests on a connection are sequential. An oversize or undecodable line is answered
with one error frame (id "") and the connection closes (upstream-protocol §3.4); a
request that decodes is resolved, admitted and run, and every refusal on that path
(validation, queue full) leaves the connection open - except a closed admission
(shutdown or reload), which ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..engine.backend import BackendError
from ..proto.errors import DecodeError, ErrorCode, FrameTooLarge, InvalidRequest
from ..proto.framing import FrameReader
from .admission import AdmissionClosed, QueueFull
from .conn import Connection
from .context import DaemonContext

log = logging.getLogger("inferd.surface")

ErrorLine = Callable[[str, str, str], bytes]  # (id, code, message) -> one encoded error frame


class _Resolvable(Protocol):
    id: str

    def resolve(self) -> Any: ...


R = TypeVar("R", bound=_Resolvable)


class _Close(Exception):
    """The request was answered and the connection must end."""


async def serve_requests(
    conn: Connection,
    ctx: DaemonContext,
    parse: Callable[[bytes], R],
    run: Callable[[Any], Awaitable[None]],
    error: ErrorLine,
) -> None:
    """Read, resolve, admit and `run` requests until EOF or a closing error."""
    frames = FrameReader(conn.reader)
    try:
        while True:
            try:
                line = await frames.read_frame()
            except FrameTooLarge as exc:
                await conn.send(error("", ErrorCode.FRAME_TOO_LARGE, exc.message))
                return
            if line is None:
                return
            try:
                request = parse(line)
            except DecodeError as exc:
                await conn.send(error("", ErrorCode.INVALID_REQUEST, exc.message))
                return
            await _admit_and_run(conn, ctx, request, run, error)
    except _Close:
        pass
    except (ConnectionError, OSError):
        pass  # the peer went away or stalled (F-17); its slot is already released
    finally:
        await conn.close()


async def _admit_and_run(conn: Connection, ctx: DaemonContext, request: R,
                         run: Callable[[Any], Awaitable[None]], error: ErrorLine) -> None:
    rid = request.id
    try:
        resolved = request.resolve()
    except InvalidRequest as exc:
        await conn.send(error(rid, ErrorCode.INVALID_REQUEST, exc.message))
        return
    try:
        ticket = ctx.admission.try_admit()
    except QueueFull:
        await conn.send(error(rid, ErrorCode.QUEUE_FULL, "queue full"))
        return
    except AdmissionClosed:
        await conn.send(error(rid, ErrorCode.BACKEND_UNAVAILABLE, "admission closed"))
        raise _Close() from None
    async with ticket:  # waits FIFO for an active permit; released after the terminal frame
        await run(resolved)


_NOT_STARTED = object()


async def call_backend(conn: Connection, rid: str, label: str, error: ErrorLine,
                       call: Callable[[], Awaitable[Any]], *, embed: bool = False) -> Any:
    """Run a backend call that may refuse before anything streams.

    A refusal (BackendError) becomes one error frame with its code; any other
    exception is a backend bug, reported as `internal` - it never takes the daemon
    down. Returns the call's result, or `_NOT_STARTED` after an error frame.
    """
    try:
        return await call()
    except BackendError as exc:
        await conn.send(error(rid, exc.embed_code if embed else exc.code, exc.message))
    except Exception as exc:  # noqa: BLE001
        log.exception("backend %s failed before streaming", label)
        await conn.send(error(rid, ErrorCode.INTERNAL, f"backend failed: {type(exc).__name__}"))
    return _NOT_STARTED


def not_started(result: Any) -> bool:
    return result is _NOT_STARTED
