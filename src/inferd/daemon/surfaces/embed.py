"""The embed surface (upstream ADR 0017): one request line, one response line, connection reusable."""

from __future__ import annotations

from ...engine.backend import Fault
from ...proto.embed import EmbeddingsFrame, EmbedRequest, EmbedUsage, parse_embed_request
from ...proto.errors import ErrorCode, InvalidRequest, encode_error
from ...proto.framing import encode_frame
from ..context import DaemonContext
from ..net.conn import PeerConnection
from ..pipeline import policy, run
from .faults import EMBED_CODES
from .ndjson import serve_requests


async def serve_embed(conn: PeerConnection, ctx: DaemonContext) -> None:
    async def handle(request: EmbedRequest) -> bool:
        try:
            resolved = request.resolve()
            keep_alive = policy.model_needs(resolved.model, resolved.keep_alive).keep_alive
        except InvalidRequest as exc:
            await conn.send(encode_error(request.id, ErrorCode.INVALID_REQUEST, exc.message))
            return True
        try:
            backend, result = await run.embed(ctx, resolved, peer=conn.peer_label, keep_alive=keep_alive)
        except run.Refused as exc:
            await conn.send(encode_error(resolved.id, EMBED_CODES[exc.kind], exc.message))
            return exc.kind is not Fault.CLOSED
        await conn.send(encode_frame(EmbeddingsFrame(
            id=resolved.id,
            embeddings=result.embeddings,
            dimensions=result.dimensions,
            model=result.model,
            usage=EmbedUsage(input_tokens=result.input_tokens),
            backend=backend,
        )))
        return True

    await serve_requests(conn, parse_embed_request, handle)
