"""The v2 inference surface: typed content blocks on `infer.v2.sock` (upstream-protocol §5).

Decode: a v2 request's blocks become HF-convention chat messages (assistant
tool_use blocks become `tool_calls`, tool_result blocks become `tool` messages
naming the call they answer). Encode: text, thinking and tool-call events become
`frame` lines with text/thinking delta blocks and whole tool_use blocks (each after
its `tool_use_delta` argument pieces, when the request set `stream_tool_input`), then
one `done` or `error`. The loop is the NDJSON one every socket shares; admission,
dispatch and accounting are the shared pipeline.

The NDJSON-era daemon always streams, whatever `stream` says: `done` carries no
content in v2, so withholding the deltas would lose the answer.
"""

from __future__ import annotations

from ...engine.backend import Fault
from ...engine.events import Done, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ...engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec, ToolSpec
from ...proto.errors import ErrorCode, InvalidRequest, encode_error
from ...proto.framing import encode_frame
from ...proto.v2 import (
    DoneFrameV2,
    FrameV2,
    RequestV2,
    ResolvedV2,
    TextBlock,
    TextDeltaBlock,
    ThinkingDeltaBlock,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseDeltaBlock,
    UsageV2,
    parse_request,
)
from ..context import DaemonContext
from ..net.conn import PeerConnection
from ..pipeline import policy, run
from ..pipeline.router import Needs
from .faults import V2_CODES
from .finish import FINISH
from .ndjson import serve_requests
from .v1 import WireProgress, answer_count, answer_refusal, context_info

def _text(blocks: list[object]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


def chat_messages(req: ResolvedV2) -> list[ChatMessage]:
    """The conversation in the HF convention; media blocks are kept as attachment ids."""
    names = {b.tool_call_id: b.name for m in req.messages for b in m.content if isinstance(b, ToolUseBlock)}
    out: list[ChatMessage] = []
    for msg in req.messages:
        text: list[str] = []
        media: list[str] = []
        calls: list[ToolCallSpec] = []
        results: list[ChatMessage] = []
        for block in msg.content:
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolUseBlock):
                calls.append(ToolCallSpec(id=block.tool_call_id, name=block.name, arguments=block.input))
            elif isinstance(block, ToolResultBlock):
                results.append(ChatMessage(role="tool", content=_text(block.content),
                                           tool_call_id=block.tool_call_id, name=names.get(block.tool_call_id)))
            else:
                media.append(block.attachment_id)  # type: ignore[attr-defined]
        role = msg.role.value
        if text or media or calls or not results:
            out.append(ChatMessage(role=role, content="".join(text), tool_calls=calls, media=media))  # type: ignore[arg-type]
        out.extend(results)
    return out


def generation_request(req: ResolvedV2) -> GenerationRequest:
    """Raises InvalidRequest for fields that may not go together (the request policy)."""
    rf = req.response_format
    return policy.generation_request(
        req.id,
        messages=chat_messages(req),
        tools=[ToolSpec(name=t.name, description=t.description, parameters=t.input_schema) for t in req.tools],  # type: ignore[arg-type]
        tool_choice=req.tool_choice,
        thinking=req.thinking,
        response_format=None if rf is None else ResponseFormat(rf.type, rf.schema_),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        max_tokens=req.max_tokens,
        seed=req.seed,
        stop=req.stop,
        grammar=req.grammar,
        attachments={a.id: a for a in req.attachments},  # type: ignore[attr-defined]
    )


class _Sink:
    __slots__ = ("conn", "rid", "tool_deltas")

    def __init__(self, conn: PeerConnection, rid: str, tool_deltas: bool) -> None:
        self.conn = conn
        self.rid = rid
        self.tool_deltas = tool_deltas

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        kind = type(event)
        if kind is TextDelta:
            block: object = TextDeltaBlock(delta=event.text)  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            block = ThinkingDeltaBlock(delta=event.text)  # type: ignore[union-attr]
        elif kind is ToolCallDelta:
            if not self.tool_deltas:
                return
            block = ToolUseDeltaBlock(tool_call_id=event.id, name=event.name,  # type: ignore[union-attr]
                                      delta=event.arguments)  # type: ignore[union-attr]
        else:
            block = ToolUseBlock(tool_call_id=event.id, name=event.name, input=event.input)  # type: ignore[union-attr]
        await self.conn.send(encode_frame(FrameV2(id=self.rid, block=block)))  # type: ignore[arg-type]

    async def done(self, done: Done, backend: str) -> None:
        u = done.usage
        await self.conn.send(encode_frame(DoneFrameV2(
            id=self.rid,
            usage=UsageV2(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                          cached_tokens=u.cached_tokens, thinking_tokens=u.thinking_tokens),
            stop_reason=FINISH[done.reason].v2,
            backend=backend,
            tool_choice_unsatisfied=True if done.tool_choice_unsatisfied else None,
            timings=done.timings,
            context=context_info(done),
        )))

    async def fail(self, kind: Fault, message: str) -> None:
        await self.conn.send(encode_error(self.rid, V2_CODES[kind], message))


async def serve_inference_v2(conn: PeerConnection, ctx: DaemonContext) -> None:
    async def handle(request: RequestV2) -> bool:
        try:
            resolved = request.resolve()
            request_ = generation_request(resolved)
            needs = policy.model_needs(resolved.model, resolved.keep_alive, v2=True, tools=bool(resolved.tools),
                                       media=bool(resolved.attachments))
        except InvalidRequest as exc:
            await conn.send(encode_error(request.id, ErrorCode.INVALID_REQUEST, exc.message))
            return True
        if resolved.count_only:
            await answer_count(conn, ctx, request_, V2_CODES, needs)
            return True
        sink = _Sink(conn, resolved.id, resolved.stream_tool_input)
        progress = WireProgress(conn, resolved.id) if resolved.progress else None
        return await answer_refusal(sink, await run.generate(ctx, request_, sink, surface="v2", needs=needs,
                                                             peer=conn.peer_label, progress=progress))

    await serve_requests(conn, parse_request, handle)
