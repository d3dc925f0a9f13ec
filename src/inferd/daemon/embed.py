"""The embed surface (ADR 0017): one request line, one response line, connection reusable."""

from __future__ import annotations

import logging

from ..engine.backend import BackendError
from ..proto.embed import EmbeddingsFrame, EmbedUsage, embed_error, parse_embed_request
from ..proto.errors import DecodeError, EmbedErrorCode, FrameTooLarge, InvalidRequest
from ..proto.framing import FrameReader, encode_frame
from .admission import AdmissionClosed, QueueFull
from .conn import Connection
from .context import DaemonContext

log = logging.getLogger("inferd.embed")


def _error(id: str, code: str, message: str) -> bytes:
    return encode_frame(embed_error(id, code, message))


async def serve_embed(conn: Connection, ctx: DaemonContext) -> None:
    frames = FrameReader(conn.reader)
    try:
        while True:
            try:
                line = await frames.read_frame()
            except FrameTooLarge as exc:
                await conn.send(_error("", EmbedErrorCode.FRAME_TOO_LARGE, exc.message))
                return
            if line is None:
                return
            try:
                request = parse_embed_request(line)
            except DecodeError as exc:
                await conn.send(_error("", EmbedErrorCode.INVALID_REQUEST, exc.message))
                return
            if not await _serve_one(conn, ctx, request):
                return
    except (ConnectionError, OSError):
        pass
    finally:
        await conn.close()


async def _serve_one(conn: Connection, ctx: DaemonContext, request) -> bool:
    rid = request.id
    try:
        resolved = request.resolve()
    except InvalidRequest as exc:
        await conn.send(_error(rid, EmbedErrorCode.INVALID_REQUEST, exc.message))
        return True
    try:
        ticket = ctx.admission.try_admit()
    except QueueFull:
        await conn.send(_error(rid, EmbedErrorCode.QUEUE_FULL, "queue full"))
        return True
    except AdmissionClosed:
        await conn.send(_error(rid, EmbedErrorCode.BACKEND_UNAVAILABLE, "admission closed"))
        return False
    async with ticket:
        slot = ctx.router.dispatch_embed()
        if slot is None:
            await conn.send(_error(rid, EmbedErrorCode.BACKEND_UNAVAILABLE, "no embed-capable backend available"))
            return True
        try:
            result = await slot.backend.embed(resolved)
        except BackendError as exc:
            await conn.send(_error(rid, exc.embed_code, exc.message))
            return True
        except Exception as exc:  # noqa: BLE001 - a backend bug must not take the daemon down
            log.exception("backend %s failed to embed", slot.label)
            await conn.send(_error(rid, EmbedErrorCode.INTERNAL, f"backend failed: {type(exc).__name__}"))
            return True
        frame = EmbeddingsFrame(
            id=rid,
            embeddings=result.embeddings,
            dimensions=result.dimensions,
            model=result.model,
            usage=EmbedUsage(input_tokens=result.input_tokens),
            backend=slot.backend.name,
        )
        await conn.send(encode_frame(frame))
        ctx.activity.record(
            "info", "embed", "embed_request_done",
            req_id=rid, backend=slot.backend.name, n_inputs=len(resolved.input),
            input_tokens=result.input_tokens, dimensions=result.dimensions, peer=conn.peer_label,
        )
    return True
