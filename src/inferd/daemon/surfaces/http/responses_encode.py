"""Engine events -> the Responses API's response object and its semantic SSE events.

One builder for both: the output items (reasoning, message, function_call) are built
as the engine's events arrive; streamed, each step is also an event, numbered by
`sequence_number`. A TextDelta opens a message item (output_item.added,
content_part.added) and is an output_text.delta; a ThinkingDelta likewise a reasoning
item and reasoning_text.delta; a ToolCallDelta opens a function_call item and is a
function_call_arguments.delta; the ToolCall closes it (its arguments are the
authority). A change of kind closes the open item (*.done, content_part.done,
output_item.done). Done ends with response.completed, or response.incomplete when
max_output_tokens cut it (finish.py's `responses` column). A failure after the first
event is an `error` event and response.failed; before it, a real HTTP status.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ....engine.backend import Fault
from ....engine.events import Done, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ..finish import FINISH
from .encode import SSE_HEADERS, Meta, dumps
from .errors import HttpError
from .io import Responder


def usage(done: Done) -> dict[str, Any]:
    u = done.usage
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": u.thinking_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


#: The empty parts content_part.added opens a message or a reasoning item with, encoded.
_TEXT_PART = dumps({"type": "output_text", "text": "", "annotations": []})
_REASONING_PART = dumps({"type": "reasoning_text", "text": ""})


class Output:
    """The response being built; `emit` False (a whole answer) skips the events."""

    def __init__(self, meta: Meta, echo: dict[str, Any], emit: bool) -> None:
        self.meta = meta
        self.echo = echo
        self.emit = emit
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.parts: list[str] = []
        self.seq = 0
        self.pending: list[bytes] = []
        self._delta_head = b""

    # ---- the response object ------------------------------------------------------------

    def response(self, status: str, done: Done | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": self.meta.id, "object": "response", "created_at": self.meta.created, "status": status,
                "error": error,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "model": self.meta.model, "output": list(self.items), "previous_response_id": None, "store": False,
                "usage": usage(done) if done is not None else None, **self.echo}

    # ---- events -------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        if self.emit:
            self._raw(kind, dumps(fields)[1:-1])

    def _raw(self, kind: str, fields: bytes) -> None:
        """One event whose fields (between `type` and `sequence_number`) are JSON already:
        `dumps({"type": kind, **fields, "sequence_number": n})`, byte for byte."""
        k = kind.encode()
        self.pending.append(b"event: " + k + b'\ndata: {"type":"' + k + (b'",' + fields + b"," if fields else b'",')
                            + b'"sequence_number":' + str(self.seq).encode() + b"}\n\n")
        self.seq += 1

    def _delta(self, text: str) -> None:
        if self.emit:
            self.pending.append(self._delta_head + json.dumps(text, ensure_ascii=False).encode()
                                + b',"sequence_number":' + str(self.seq).encode() + b"}\n\n")
            self.seq += 1

    def start(self) -> None:
        if self.emit:  # the two opening events carry the same response: encoded once
            created = b'"response":' + dumps(self.response("in_progress"))
            self._raw("response.created", created)
            self._raw("response.in_progress", created)

    def _begin(self, item: dict[str, Any], delta_kind: str, part: bytes | None) -> None:
        self.open = item
        self.parts = []
        if not self.emit:
            return
        index = str(len(self.items)).encode()
        where = b'"item_id":"' + item["id"].encode() + b'","output_index":' + index
        self._raw("response.output_item.added", b'"output_index":' + index + b',"item":' + dumps(item))
        if part is not None:
            self._raw("response.content_part.added", where + b',"content_index":0,"part":' + part)
        extra = b',"content_index":0' if part is not None else b""
        self._delta_head = (b"event: " + delta_kind.encode() + b'\ndata: {"type":"' + delta_kind.encode()
                            + b'",' + where + extra + b',"delta":')

    def text(self, piece: str) -> None:
        if self.open is None or self.open["type"] != "message":
            self.close()
            self._begin({"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": "in_progress",
                         "role": "assistant", "content": []}, "response.output_text.delta", _TEXT_PART)
        self.parts.append(piece)
        self._delta(piece)

    def thinking(self, piece: str) -> None:
        if self.open is None or self.open["type"] != "reasoning":
            self.close()
            self._begin({"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "status": "in_progress",
                         "summary": [], "content": []}, "response.reasoning_text.delta", _REASONING_PART)
        self.parts.append(piece)
        self._delta(piece)

    def call_piece(self, call_id: str, name: str, piece: str) -> None:
        if self.open is None or self.open.get("call_id") != call_id:
            self.close()
            self._begin({"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "in_progress",
                         "call_id": call_id, "name": name, "arguments": ""},
                        "response.function_call_arguments.delta", None)
        self.parts.append(piece)
        self._delta(piece)

    def call(self, call: ToolCall) -> None:
        arguments = json.dumps(call.input, ensure_ascii=False)
        if self.open is None or self.open.get("call_id") != call.id:
            self.call_piece(call.id, call.name, arguments)
        self.parts = [arguments]  # the whole call is the authority over its pieces
        self.close()

    def close(self, status: str = "completed") -> None:
        item = self.open
        if item is None:
            return
        self.open = None
        index = len(self.items)
        text = "".join(self.parts)
        item = {**item, "status": status}
        if item["type"] == "function_call":
            item["arguments"] = text
            self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=text)
        else:
            reasoning = item["type"] == "reasoning"
            part = ({"type": "reasoning_text", "text": text} if reasoning
                    else {"type": "output_text", "text": text, "annotations": []})
            self._event("response.reasoning_text.done" if reasoning else "response.output_text.done",
                        item_id=item["id"], output_index=index, content_index=0, text=text,
                        **({} if reasoning else {"logprobs": []}))
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=part)
            item["content"] = [part]
        self.items.append(item)
        self._event("response.output_item.done", output_index=index, item=item)

    def finish(self, done: Done) -> dict[str, Any]:
        status = FINISH[done.reason].responses
        self.close(status)
        final = self.response(status, done)
        self._event(f"response.{status}", response=final)
        return final

    def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        kind = type(event)
        if kind is TextDelta:
            self.text(event.text)  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            self.thinking(event.text)  # type: ignore[union-attr]
        elif kind is ToolCallDelta:
            self.call_piece(event.id, event.name, event.arguments)  # type: ignore[union-attr]
        else:
            self.call(event)  # type: ignore[arg-type]


class ResponsesCollect:
    """A whole response, written once by the route."""

    def __init__(self, meta: Meta, echo: dict[str, Any]) -> None:
        self.output = Output(meta, echo, emit=False)
        self.final: dict[str, Any] | None = None
        self.error: HttpError | None = None

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        self.output.event(event)

    async def done(self, done: Done, backend: str) -> None:
        self.final = self.output.finish(done)

    async def fail(self, kind: Fault, message: str) -> None:
        self.error = HttpError.from_fault(kind, message)

    def body(self, meta: Meta) -> dict[str, Any]:
        assert self.final is not None
        return self.final


class ResponsesStream:
    """Semantic SSE events as the engine's events arrive (no `[DONE]`: the terminal
    response.* event ends the stream, as OpenAI's does)."""

    def __init__(self, out: Responder, meta: Meta, echo: dict[str, Any]) -> None:
        self.out = out
        self.output = Output(meta, echo, emit=True)
        self.started = False
        self.error: HttpError | None = None

    async def _begin(self) -> None:
        if not self.started:
            self.started = True
            self.output.start()
            await self.out.start(200, SSE_HEADERS)

    async def _flush(self, more: bool = True) -> None:
        data = b"".join(self.output.pending)
        self.output.pending.clear()
        await self.out.body(data, more=more)

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        await self._begin()
        self.output.event(event)
        await self._flush()

    async def done(self, done: Done, backend: str) -> None:
        await self._begin()
        self.output.finish(done)
        await self._flush(more=False)

    async def fail(self, kind: Fault, message: str) -> None:
        error = HttpError.from_fault(kind, message)
        if not self.started:
            self.error = error  # the route answers with the status
            return
        out = self.output
        out.close("incomplete")
        out._event("error", code=error.code, message=message, param=None)
        out._event("response.failed", response=out.response("failed", error={"code": error.code, "message": message}))
        await self._flush(more=False)
