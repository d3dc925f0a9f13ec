"""Engine events -> Anthropic's message object and its stream events.

Content blocks in the order the model wrote them: a TextDelta is (part of) a `text`
block, a ThinkingDelta a `thinking` block, a tool call a `tool_use` block. Streamed:
message_start and a ping at the first event, then per block content_block_start,
content_block_delta (text_delta / thinking_delta / input_json_delta) and
content_block_stop; Done is message_delta (stop_reason, stop_sequence, usage) and
message_stop. Input tokens are known only at Done: message_start says 0 and
message_delta the real count (the SDK takes both). Usage follows Anthropic's split:
`input_tokens` are those evaluated, `cache_read_input_tokens` those the KV cache held.
A failure after the first event is an `error` event; before it, a real HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

from ....engine.backend import Fault
from ....engine.events import Done, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ..faults import FAULTS
from ..finish import anthropic_stop
from .anthropic import error_body
from .encode import SSE_HEADERS, Meta, _js, dumps
from .errors import HttpError
from .io import Responder


def usage(done: Done) -> dict[str, Any]:
    u = done.usage
    return {"input_tokens": u.prompt_tokens - u.cached_tokens, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": u.cached_tokens, "output_tokens": u.completion_tokens}


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"


_PING = _sse("ping", {})
#: A text or thinking delta is these around the block's index and the JSON string of
#: its piece (one string encoding per token, as in encode.py's SSE chunks).
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_DELTA_TEXT = b',"delta":{"type":"text_delta","text":'
_DELTA_THINKING = b',"delta":{"type":"thinking_delta","thinking":'
_DELTA_TAIL = b"}}\n\n"


class _Blocks:
    """The content blocks, built as events arrive; `emit` False skips the stream events."""

    def __init__(self, emit: bool) -> None:
        self.emit = emit
        self.blocks: list[dict[str, Any]] = []
        self.kind: str | None = None  # the open block's type
        self.call_id: str | None = None
        self.parts: list[str] = []
        self.pending: list[bytes] = []

    def _open(self, block: dict[str, Any]) -> None:
        self.close()
        self.kind = block["type"]
        self.call_id = block.get("id")
        self.parts = []
        self.blocks.append(block)
        if self.emit:
            self.pending.append(_sse("content_block_start", {"index": len(self.blocks) - 1, "content_block": block}))

    def _delta(self, delta: dict[str, Any]) -> None:
        if self.emit:
            self.pending.append(_sse("content_block_delta", {"index": len(self.blocks) - 1, "delta": delta}))

    def _piece(self, kind: bytes, text: str) -> None:
        if self.emit:
            self.pending.append(_DELTA_HEAD + str(len(self.blocks) - 1).encode() + kind + _js(text) + _DELTA_TAIL)

    def close(self) -> None:
        if self.kind is None:
            return
        block = self.blocks[-1] = dict(self.blocks[-1])
        text = "".join(self.parts)
        if self.kind == "text":
            block["text"] = text
        elif self.kind == "thinking":
            block["thinking"] = text
        self.kind = self.call_id = None
        if self.emit:
            self.pending.append(_sse("content_block_stop", {"index": len(self.blocks) - 1}))

    def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        kind = type(event)
        if kind is TextDelta:
            if self.kind != "text":
                self._open({"type": "text", "text": ""})
            self.parts.append(event.text)  # type: ignore[union-attr]
            self._piece(_DELTA_TEXT, event.text)  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            if self.kind != "thinking":
                self._open({"type": "thinking", "thinking": "", "signature": ""})
            self.parts.append(event.text)  # type: ignore[union-attr]
            self._piece(_DELTA_THINKING, event.text)  # type: ignore[union-attr]
        elif kind is ToolCallDelta:
            if self.call_id != event.id:  # type: ignore[union-attr]
                self._open({"type": "tool_use", "id": event.id, "name": event.name, "input": {}})  # type: ignore[union-attr]
            self._delta({"type": "input_json_delta", "partial_json": event.arguments})  # type: ignore[union-attr]
        else:
            call: ToolCall = event  # type: ignore[assignment]
            if self.call_id != call.id:
                self._open({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
                self._delta({"type": "input_json_delta", "partial_json": json.dumps(call.input, ensure_ascii=False)})
            self.blocks[-1] = {**self.blocks[-1], "input": call.input}  # the whole call is the authority
            self.close()


def message(meta: Meta, content: list[dict[str, Any]], done: Done | None) -> dict[str, Any]:
    reason, sequence = anthropic_stop(done) if done is not None else (None, None)
    return {"id": meta.id, "type": "message", "role": "assistant", "model": meta.model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage(done) if done is not None else {"input_tokens": 0, "output_tokens": 0}}


class MessagesCollect:
    def __init__(self) -> None:
        self.blocks = _Blocks(emit=False)
        self.result: Done | None = None
        self.error: HttpError | None = None

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        self.blocks.event(event)

    async def done(self, done: Done, backend: str) -> None:
        self.blocks.close()
        self.result = done

    async def fail(self, kind: Fault, message: str) -> None:
        self.error = HttpError.from_fault(kind, message)

    def body(self, meta: Meta) -> dict[str, Any]:
        return message(meta, self.blocks.blocks, self.result)


class MessagesStream:
    def __init__(self, out: Responder, meta: Meta) -> None:
        self.out = out
        self.meta = meta
        self.blocks = _Blocks(emit=True)
        self.started = False
        self.error: HttpError | None = None

    async def _begin(self) -> None:
        if not self.started:
            self.started = True
            await self.out.start(200, SSE_HEADERS)
            self.blocks.pending[:0] = [_sse("message_start", {"message": message(self.meta, [], None)}), _PING]

    async def _flush(self, more: bool = True) -> None:
        data = b"".join(self.blocks.pending)
        self.blocks.pending.clear()
        await self.out.body(data, more=more)

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        await self._begin()
        self.blocks.event(event)
        await self._flush()

    async def done(self, done: Done, backend: str) -> None:
        await self._begin()
        self.blocks.close()
        reason, sequence = anthropic_stop(done)
        self.blocks.pending += [_sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                       "usage": usage(done)}),
                                _sse("message_stop", {})]
        await self._flush(more=False)

    async def fail(self, kind: Fault, message: str) -> None:
        if not self.started:
            self.error = HttpError.from_fault(kind, message)  # the route answers with the status
            return
        self.blocks.pending.append(b"event: error\ndata: " + error_body(FAULTS[kind].anthropic_type, message) + b"\n\n")
        await self._flush(more=False)
