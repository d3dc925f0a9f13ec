"""The v1 inference surface: the NDJSON request loop of one connection.

Requests on a connection are sequential: read one, stream its frames to exactly one
terminal frame, read the next. Error semantics follow upstream-protocol §3.4: an
oversize or undecodable line is answered with one error frame (id "") and the
connection is closed; a request that decodes but fails validation, a full queue or
a backend that refuses before streaming get an error frame with the request id and
the connection stays open.
"""

from __future__ import annotations

import logging
import time

from ..engine.backend import BackendError, Done, Token
from ..proto.errors import DecodeError, ErrorCode, FrameTooLarge, InvalidRequest
from ..proto.framing import FrameReader, encode_frame
from ..proto.v1 import DoneFrame, ErrorFrame, Resolved, TokenLines, Usage, parse_request
from .admission import AdmissionClosed, QueueFull
from .conn import Connection
from .context import DaemonContext

log = logging.getLogger("inferd.inference")

MID_STREAM_DROP = "backend ended stream without terminal frame"


def _error(id: str, code: str, message: str) -> bytes:
    return encode_frame(ErrorFrame(id=id, code=code, message=message))


async def serve_inference(conn: Connection, ctx: DaemonContext) -> None:
    frames = FrameReader(conn.reader)
    try:
        while True:
            try:
                line = await frames.read_frame()
            except FrameTooLarge as exc:
                await conn.send(_error("", ErrorCode.FRAME_TOO_LARGE, exc.message))
                return
            if line is None:
                return
            try:
                request = parse_request(line)
            except DecodeError as exc:
                await conn.send(_error("", ErrorCode.INVALID_REQUEST, exc.message))
                return
            keep_open = await _serve_one(conn, ctx, request)
            if not keep_open:
                return
    except (ConnectionError, OSError):
        pass  # the peer went away or stalled (F-17); its slot is already released
    finally:
        await conn.close()


async def _serve_one(conn: Connection, ctx: DaemonContext, request) -> bool:
    rid = request.id
    try:
        resolved = request.resolve()
    except InvalidRequest as exc:
        await conn.send(_error(rid, ErrorCode.INVALID_REQUEST, exc.message))
        return True
    try:
        ticket = ctx.admission.try_admit()
    except QueueFull:
        await conn.send(_error(rid, ErrorCode.QUEUE_FULL, "queue full"))
        return True
    except AdmissionClosed:
        await conn.send(_error(rid, ErrorCode.BACKEND_UNAVAILABLE, "admission closed"))
        return False
    async with ticket:
        return await _generate(conn, ctx, resolved)


async def _generate(conn: Connection, ctx: DaemonContext, req: Resolved) -> bool:
    rid = req.id
    slot = ctx.router.dispatch()
    if slot is None:
        await conn.send(_error(rid, ErrorCode.BACKEND_UNAVAILABLE, "no backend available"))
        return True
    started = time.perf_counter()
    try:
        stream = await slot.backend.generate(req)
    except BackendError as exc:
        await conn.send(_error(rid, exc.code, exc.message))
        return True
    except Exception as exc:  # a backend bug must not take the daemon down
        log.exception("backend %s failed before streaming", slot.label)
        await conn.send(_error(rid, ErrorCode.INTERNAL, f"backend failed: {type(exc).__name__}"))
        return True

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
        return True
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
    return True
