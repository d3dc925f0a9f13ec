"""The v2 inference surface (ADR 0015/0016): typed content blocks on `infer.v2.sock`.

The loop and the error mapping are v1's (upstream-protocol §3.4): an oversize or
undecodable line gets one error frame with id "" and the connection closes; a
request that fails validation, a full queue or a backend refusing before its stream
gets an error frame with the request id and the connection stays open. Admission is
the daemon-wide gate, so v1, v2 and embed requests compete for the same slots.

One v2-specific rule: the dispatched backend must advertise `v2`, otherwise the
request is answered with `internal` (connection stays open), as upstream.
"""

from __future__ import annotations

import logging
import time

from ..engine.events_v2 import DoneV2, TextDelta, ThinkingDelta, ToolUse
from ..proto.framing import encode_frame
from ..proto.v2 import (
    DoneFrameV2,
    ErrorCodeV2,
    FrameV2,
    ResolvedV2,
    TextDeltaBlock,
    ThinkingDeltaBlock,
    ToolUseBlock,
    UsageV2,
    error_frame,
    parse_request,
)
from .conn import Connection
from .context import DaemonContext
from .surface import call_backend, not_started, serve_requests

log = logging.getLogger("inferd.inference_v2")

MID_STREAM_DROP = "backend ended stream without terminal frame"


def _error(id: str, code: str, message: str) -> bytes:
    return encode_frame(error_frame(id, code, message))


async def serve_inference_v2(conn: Connection, ctx: DaemonContext) -> None:
    async def run(req: ResolvedV2) -> None:
        await _generate(conn, ctx, req)

    await serve_requests(conn, ctx, parse_request, run, _error)


def _block_for(event: object) -> TextDeltaBlock | ThinkingDeltaBlock | ToolUseBlock | None:
    kind = type(event)
    if kind is TextDelta:
        return TextDeltaBlock(delta=event.text)  # type: ignore[attr-defined]
    if kind is ThinkingDelta:
        return ThinkingDeltaBlock(delta=event.text)  # type: ignore[attr-defined]
    if kind is ToolUse:
        return ToolUseBlock(tool_call_id=event.tool_call_id, name=event.name, input=event.input)  # type: ignore[attr-defined]
    return None


async def _generate(conn: Connection, ctx: DaemonContext, req: ResolvedV2) -> None:
    rid = req.id
    slot = ctx.router.dispatch()
    if slot is None:
        await conn.send(_error(rid, ErrorCodeV2.BACKEND_UNAVAILABLE, "no backend available"))
        return
    if not slot.caps.v2:
        await conn.send(_error(rid, ErrorCodeV2.INTERNAL, f'backend "{slot.label}" does not advertise v2 capability'))
        return
    started = time.perf_counter()
    stream = await call_backend(conn, rid, slot.label, _error, lambda: slot.backend.generate_v2(req))
    if not_started(stream):
        return

    # The NDJSON-era daemon always streams, whatever `stream` says: `done` carries
    # no content in v2, so withholding the deltas would lose the answer.
    counts = {"text": 0, "thinking": 0, "tool_use": 0}
    done: DoneV2 | None = None
    send = conn.send
    try:
        async for event in stream:
            if type(event) is DoneV2:
                done = event
                break
            block = _block_for(event)
            if block is None:
                log.warning("backend %s yielded %s on a v2 stream; treating it as a fault",
                            slot.label, type(event).__name__)
                break
            counts[block.type] += 1
            await send(encode_frame(FrameV2(id=rid, block=block)))
    except (ConnectionError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - mid-stream backend fault
        log.warning("backend %s failed mid-stream (v2): %s", slot.label, exc)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # cancels the generation if we stopped early

    # Ids and counts only: prompts, deltas and tool inputs never reach the log.
    shape = {
        "req_id": rid,
        "backend": slot.backend.name,
        "messages": len(req.messages),
        "attachments": len(req.attachments),
        "tools": len(req.tools),
        "text_frames": counts["text"],
        "thinking_frames": counts["thinking"],
        "tool_use_frames": counts["tool_use"],
        "peer": conn.peer_label,
    }
    if done is None:
        await send(_error(rid, ErrorCodeV2.BACKEND_UNAVAILABLE, MID_STREAM_DROP))
        ctx.activity.record("warn", "v2", "v2_request_error_mid_stream", **shape)
        return
    await send(
        encode_frame(
            DoneFrameV2(
                id=rid,
                usage=UsageV2(input_tokens=done.input_tokens, output_tokens=done.output_tokens),
                stop_reason=done.stop_reason,
                backend=slot.backend.name,
            )
        )
    )
    ctx.activity.record(
        "info", "v2", "v2_request_done",
        stop_reason=str(done.stop_reason), input_tokens=done.input_tokens, output_tokens=done.output_tokens,
        ms=round((time.perf_counter() - started) * 1000, 1), **shape,
    )

