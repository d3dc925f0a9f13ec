"""The embed surface (ADR 0017): one request line, one response line, connection reusable."""

from __future__ import annotations

from ..proto.embed import EmbeddingsFrame, EmbedResolved, EmbedUsage, embed_error, parse_embed_request
from ..proto.errors import EmbedErrorCode
from ..proto.framing import encode_frame
from .conn import Connection
from .context import DaemonContext
from .surface import call_backend, not_started, serve_requests


def _error(id: str, code: str, message: str) -> bytes:
    return encode_frame(embed_error(id, code, message))


async def serve_embed(conn: Connection, ctx: DaemonContext) -> None:
    async def run(req: EmbedResolved) -> None:
        await _embed(conn, ctx, req)

    await serve_requests(conn, ctx, parse_embed_request, run, _error)


async def _embed(conn: Connection, ctx: DaemonContext, resolved: EmbedResolved) -> None:
    rid = resolved.id
    slot = ctx.router.dispatch_embed()
    if slot is None:
        await conn.send(_error(rid, EmbedErrorCode.BACKEND_UNAVAILABLE, "no embed-capable backend available"))
        return
    result = await call_backend(conn, rid, slot.label, _error, lambda: slot.backend.embed(resolved), embed=True)
    if not_started(result):
        return
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
