"""The v1 inference surface: one admitted request streamed to its terminal frame.

Token frames in generation order, then exactly one `done` or `error`. A backend that
refuses before streaming gets an error frame with the request id (connection stays
open); a stream that ends or fails before its Done gets `backend_unavailable` after
the partial frames. The connection loop itself is shared (surface.py).
"""

from __future__ import annotations

import logging
import time

from ..engine.backend import Done, Token
from ..proto.errors import ErrorCode
from ..proto.framing import encode_frame
from ..proto.v1 import DoneFrame, ErrorFrame, Resolved, TokenLines, Usage, parse_request
from .conn import Connection
from .context import DaemonContext
from .surface import call_backend, not_started, serve_requests

log = logging.getLogger("inferd.inference")

MID_STREAM_DROP = "backend ended stream without terminal frame"


def _error(id: str, code: str, message: str) -> bytes:
    return encode_frame(ErrorFrame(id=id, code=code, message=message))


async def serve_inference(conn: Connection, ctx: DaemonContext) -> None:
    async def run(req: Resolved) -> None:
        await _generate(conn, ctx, req)

    await serve_requests(conn, ctx, parse_request, run, _error)


async def _generate(conn: Connection, ctx: DaemonContext, req: Resolved) -> None:
    rid = req.id
    slot = ctx.router.dispatch()
    if slot is None:
        await conn.send(_error(rid, ErrorCode.BACKEND_UNAVAILABLE, "no backend available"))
        return
    started = time.perf_counter()
    stream = await call_backend(conn, rid, slot.label, _error, lambda: slot.backend.generate(req))
    if not_started(stream):
        return

    parts: list[str] = []
    done: Done | None = None
    send = conn.send
    stream_tokens = req.stream
    token_line = TokenLines(rid)
    try:
        async for event in stream:
            if type(event) is Token:
                parts.append(event.text)
                if stream_tokens:
                    await send(token_line(event.text))
            else:
                done = event
                break
    except (ConnectionError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - mid-stream backend fault
        log.warning("backend %s failed mid-stream: %s", slot.label, exc)
    finally:
        await stream.aclose()  # cancels the generation if we stopped early

    content = "".join(parts)
    if done is None:
        await send(_error(rid, ErrorCode.BACKEND_UNAVAILABLE, MID_STREAM_DROP))
        ctx.activity.record(
            "warn", "inference", "request_error_mid_stream",
            req_id=rid, backend=slot.backend.name, tokens_sent=len(parts), peer=conn.peer_label,
        )
        return
    await send(
        encode_frame(
            DoneFrame(
                id=rid,
                content=content,
                usage=Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens),
                stop_reason=done.stop_reason,
                backend=slot.backend.name,
                timings=done.timings,
            )
        )
    )
    ctx.activity.record(
        "info", "inference", "request_done",
        req_id=rid, backend=slot.backend.name, stop_reason=str(done.stop_reason),
        prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
        ms=round((time.perf_counter() - started) * 1000, 1), peer=conn.peer_label,
    )
