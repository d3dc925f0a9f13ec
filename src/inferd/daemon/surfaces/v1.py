"""The v1 inference surface: the NDJSON generation wire (upstream-protocol §3).

Decode: a v1 request becomes a GenerationRequest. Encode: text deltas become token
frames (thinking is not part of v1 and is dropped; v1 requests carry no tools), then
exactly one `done` (with the whole text as `content`) or `error`; before them, for a
request with `progress: true`, `progress` frames (`WireProgress`, v2's too). Everything
between is the shared request pipeline.
"""

from __future__ import annotations

from ...engine.backend import Fault
from ...engine.events import Done, PromptProgress, TextDelta, ThinkingDelta, ToolCall
from ...engine.request import ChatMessage, GenerationRequest, ResponseFormat
from ...proto.errors import ErrorCode, InvalidRequest, encode_error
from ...proto.framing import encode_frame
from ...proto.v1 import (ContextInfo, CountFrame, ProgressFrame, Request, Resolved, TokenLines, encode_done,
                         parse_request)
from ..context import DaemonContext
from ..net.conn import PeerConnection
from ..pipeline import policy, run
from ..pipeline.router import Needs
from .faults import V1_CODES
from .finish import FINISH
from .ndjson import serve_requests

def generation_request(req: Resolved) -> GenerationRequest:
    """Raises InvalidRequest for fields that may not go together (the request policy)."""
    rf = req.response_format
    return policy.generation_request(
        req.id,
        messages=[ChatMessage(role=m.role.value, content=m.content) for m in req.messages],  # type: ignore[arg-type]
        prompt=req.prompt,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        max_tokens=req.max_tokens,
        seed=req.seed,
        stop=req.stop,
        grammar=req.grammar,
        response_format=None if rf is None else ResponseFormat(rf.type, rf.schema_),
    )


def context_info(done: Done) -> ContextInfo | None:
    return None if done.context is None else ContextInfo(used=done.context.used, max=done.context.max)


class _Sink:
    __slots__ = ("conn", "rid", "stream", "parts", "token_line")

    def __init__(self, conn: PeerConnection, rid: str, stream: bool) -> None:
        self.conn = conn
        self.rid = rid
        self.stream = stream
        self.parts: list[str] = []
        self.token_line = TokenLines(rid)

    async def event(self, event: TextDelta | ThinkingDelta | ToolCall) -> None:
        if type(event) is TextDelta:
            self.parts.append(event.text)
            if self.stream:
                await self.conn.send(self.token_line(event.text))

    async def done(self, done: Done, backend: str) -> None:
        u = done.usage
        await self.conn.send(encode_done(self.rid, "".join(self.parts), u, FINISH[done.reason].v1, backend,
                                         done.timings, context_info(done)))

    async def fail(self, kind: Fault, message: str) -> None:
        await self.conn.send(encode_error(self.rid, V1_CODES[kind], message))


class WireProgress:
    """The `progress` frames of one request (issue 22, ADR 0029), on v1 and v2 alike:
    sent whether or not the request streams its tokens, since it asked for them."""

    __slots__ = ("conn", "rid")

    def __init__(self, conn: PeerConnection, rid: str) -> None:
        self.conn = conn
        self.rid = rid

    async def queued(self, position: int) -> None:
        await self.conn.send(encode_frame(ProgressFrame(id=self.rid, stage="queued", position=position)))

    async def prompt(self, event: PromptProgress) -> None:
        await self.conn.send(encode_frame(ProgressFrame(id=self.rid, stage="prefill", done=event.done,
                                                        total=event.total)))

    async def context(self, used: int, max: int) -> None:
        await self.conn.send(encode_frame(ProgressFrame(id=self.rid, stage="context",
                                                        context=ContextInfo(used=used, max=max))))


async def answer_refusal(sink: run.Sink, refused: run.Refused | None) -> bool:
    """Say a refusal on the wire; False when the daemon is closing (the loop ends)."""
    if refused is None:
        return True
    await sink.fail(refused.kind, refused.message)
    return refused.kind is not Fault.CLOSED


async def answer_count(conn: PeerConnection, ctx: DaemonContext, req: GenerationRequest, codes: dict[Fault, str],
                       needs: Needs = Needs()) -> None:
    """A `count_only` request: one `count` frame with the prompt's tokens, or one error."""
    try:
        n, n_ctx = await run.count(ctx, req, needs=needs)
    except run.Refused as exc:
        await conn.send(encode_error(req.id, codes[exc.kind], exc.message))
        return
    context = None if n_ctx is None else ContextInfo(used=n, max=n_ctx)
    await conn.send(encode_frame(CountFrame(id=req.id, prompt_tokens=n, context=context)))


async def serve_inference(conn: PeerConnection, ctx: DaemonContext) -> None:
    async def handle(request: Request) -> bool:
        try:
            resolved = request.resolve()
            request_ = generation_request(resolved)
            needs = policy.model_needs(resolved.model, resolved.keep_alive)
        except InvalidRequest as exc:
            await conn.send(encode_error(request.id, ErrorCode.INVALID_REQUEST, exc.message))
            return True
        if resolved.count_only:
            await answer_count(conn, ctx, request_, V1_CODES, needs)
            return True
        sink = _Sink(conn, resolved.id, resolved.stream)
        progress = WireProgress(conn, resolved.id) if resolved.progress else None
        return await answer_refusal(sink, await run.generate(ctx, request_, sink, surface="inference",
                                                             needs=needs, peer=conn.peer_label, progress=progress))

    await serve_requests(conn, parse_request, handle)
