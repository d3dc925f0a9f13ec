"""Engine events -> OpenAI responses: whole JSON bodies and SSE chunks.

Each sink is the encoding end of the shared pipeline (pipeline/run.py `Sink`):
TextDelta becomes `content` (`text` on /v1/completions), ThinkingDelta becomes
`reasoning_content` (llama-server's and DeepSeek's name), a ToolCall becomes one
entry of `tool_calls`. Streamed, a call's ToolCallDelta pieces become `tool_calls`
deltas as OpenAI sends them: the first with the call's index, id, type, name and first
arguments piece, the next ones with the index and an arguments piece only; the
ToolCall that follows them adds nothing (a call that came with no pieces is one delta
with everything). Done becomes `finish_reason` and `usage` with
`prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`.

A streaming sink sends nothing until the first event, so a request refused before
its first token (a full queue, an invalid request) still gets a real HTTP status; a
failure after that is one `data: {"error": ...}` event, and no `[DONE]`.

Progress (issue 22, ADR 0029), only for a streamed request with llama-server's
`return_progress: true`: chunks with an empty assistant turn and no text, carrying
llama-server's `prompt_progress {total, cache, processed, time_ms}` while the prompt is
read, or ours, `queue_progress {position}`, while the request waits for a slot. The
first of them starts the stream, so a refusal after it is an error event too.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ....engine.backend import Fault
from ....engine.events import Done, PromptProgress, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ....engine.request import openai_tool_call
from ..finish import FINISH
from .errors import HttpError
from .io import Responder

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
SSE_DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _js(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def usage(done: Done) -> dict[str, Any]:
    u = done.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.thinking_tokens},
    }


def timings(done: Done) -> dict[str, Any] | None:
    """inferd extension (llama-server has a `timings` object too)."""
    return None if done.timings is None else done.timings.model_dump()


def tool_call(call: ToolCall) -> dict[str, Any]:
    return openai_tool_call(call.id, call.name, json.dumps(call.input, ensure_ascii=False))


class Meta:
    """What every response of one request repeats."""

    __slots__ = ("id", "created", "model", "include_usage")

    def __init__(self, id: str, created: int, model: str, include_usage: bool = False) -> None:
        self.id = id
        self.created = created
        self.model = model
        self.include_usage = include_usage


class _Collect:
    """Non-streaming: gather the whole answer; the route writes it once."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCall] = []
        self.result: Done | None = None
        self.error: HttpError | None = None

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        kind = type(event)
        if kind is TextDelta:
            self.text.append(event.text)  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            self.thinking.append(event.text)  # type: ignore[union-attr]
        elif kind is ToolCall:
            self.calls.append(event)  # type: ignore[arg-type]
        # A whole answer carries each call whole: its pieces say nothing more.

    async def done(self, done: Done, backend: str) -> None:
        self.result = done

    async def fail(self, kind: Fault, message: str) -> None:
        self.error = HttpError.from_fault(kind, message)


class ChatCollect(_Collect):
    def body(self, meta: Meta) -> dict[str, Any]:
        done = self.result
        assert done is not None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) if self.text or not self.calls
                                   else None}
        if self.thinking:
            message["reasoning_content"] = "".join(self.thinking)
        if self.calls:
            message["tool_calls"] = [tool_call(c) for c in self.calls]
        out: dict[str, Any] = {
            "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[done.reason].chat}],
            "usage": usage(done),
        }
        if done.timings is not None:
            out["timings"] = timings(done)
        return out


class CompletionCollect(_Collect):
    def __init__(self, echo: str = "") -> None:
        super().__init__()
        if echo:
            self.text.append(echo)

    def body(self, meta: Meta) -> dict[str, Any]:
        done = self.result
        assert done is not None
        out: dict[str, Any] = {
            "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "text": "".join(self.text), "logprobs": None,
                         "finish_reason": FINISH[done.reason].completion}],
            "usage": usage(done),
        }
        if done.timings is not None:
            out["timings"] = timings(done)
        return out


class _Stream:
    """Streaming: SSE chunks as events arrive. Chunk text is built from pre-encoded
    pieces, so a token costs one JSON string encoding (the hot path)."""

    object_name = ""
    #: The choice of a chunk that carries progress and no output (issue 22).
    progress_choice: dict[str, Any] = {}

    def __init__(self, out: Responder, meta: Meta) -> None:
        self.out = out
        self.meta = meta
        self.started = False
        self.opened = False  # the 200 and its headers are sent (by the first chunk of any kind)
        self.error: HttpError | None = None  # a failure before the first chunk
        self._reading: float | None = None  # when the prompt's reading began (prompt_progress.time_ms)
        self._head = b""  # built at the first chunk: the pipeline names the model just before
        tail_usage = b',"usage":null' if meta.include_usage else b""
        self._tail = b',"logprobs":null,"finish_reason":null}]' + tail_usage + b"}\n\n"

    def _chunk(self, choice: bytes, finish: str | None = None) -> bytes:
        if finish is None:
            return self._head + choice + self._tail
        tail = self._tail.replace(b'"finish_reason":null', b'"finish_reason":' + _js(finish), 1)
        return self._head + choice + tail

    async def _begin(self) -> None:
        self.started = True
        meta = self.meta
        self._head = (b'data: {"id":' + _js(meta.id) + b',"object":"' + self.object_name.encode()
                      + b'","created":' + str(meta.created).encode() + b',"model":' + _js(meta.model)
                      + b',"choices":[{"index":0,')
        await self._open()

    async def _open(self) -> None:
        if not self.opened:
            self.opened = True
            await self.out.start(200, SSE_HEADERS)

    # ---- progress (issue 22): the pipeline's run.Progress ------------------------------------

    async def _progress(self, key: str, value: dict[str, Any]) -> None:
        await self._open()
        meta = self.meta
        await self.out.body(b"data: " + dumps({
            "id": meta.id, "object": self.object_name, "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, **self.progress_choice, "logprobs": None, "finish_reason": None}],
            key: value}) + b"\n\n")

    async def queued(self, position: int) -> None:
        await self._progress("queue_progress", {"position": position})

    async def prompt(self, event: PromptProgress) -> None:
        now = time.monotonic()
        if self._reading is None:
            self._reading = now
        await self._progress("prompt_progress", {"total": event.total, "cache": event.cached,
                                                 "processed": event.done,
                                                 "time_ms": round((now - self._reading) * 1000, 1)})

    async def context(self, used: int, max: int) -> None:
        pass  # llama-server's stream has no such chunk: prompt_progress.total is `used`, /v1/models has n_ctx

    def _final(self, done: Done) -> bytes:
        raise NotImplementedError

    async def done(self, done: Done, backend: str) -> None:
        if not self.started:
            await self._begin()
        data = self._final(done)
        if self.meta.include_usage:
            extra: dict[str, Any] = {"usage": usage(done)}
            if done.timings is not None:
                extra["timings"] = timings(done)
            data += b"data: " + dumps({"id": self.meta.id, "object": self.object_name, "created": self.meta.created,
                                       "model": self.meta.model, "choices": [], **extra}) + b"\n\n"
        await self.out.body(data + SSE_DONE, more=False)

    async def fail(self, kind: Fault, message: str) -> None:
        error = HttpError.from_fault(kind, message)
        if not self.opened:
            self.error = error  # the route answers with the status
            return
        await self.out.body(b"data: " + error.encode() + b"\n\n", more=False)


class ChatStream(_Stream):
    object_name = "chat.completion.chunk"
    progress_choice = {"delta": {"role": "assistant", "content": None}}

    def __init__(self, out: Responder, meta: Meta) -> None:
        super().__init__(out, meta)
        self.calls = 0
        #: The id of the call whose argument pieces are being sent.
        self.piecing: str | None = None

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        if not self.started:
            await self._begin()
            first = self._chunk(b'"delta":{"role":"assistant","content":""}')
        else:
            first = b""
        kind = type(event)
        if kind is TextDelta:
            choice = b'"delta":{"content":' + _js(event.text) + b"}"  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            choice = b'"delta":{"reasoning_content":' + _js(event.text) + b"}"  # type: ignore[union-attr]
        elif kind is ToolCallDelta:
            choice = b'"delta":{"tool_calls":[' + self._piece(event) + b"]}"  # type: ignore[arg-type]
        elif event.id == self.piecing:  # type: ignore[union-attr]
            self.piecing = None  # its pieces were the call (and the stream has begun)
            self.calls += 1
            return
        else:
            call = {"index": self.calls, **tool_call(event)}  # type: ignore[arg-type]
            self.calls += 1
            choice = b'"delta":{"tool_calls":[' + dumps(call) + b"]}"
        await self.out.body(first + self._chunk(choice))

    def _piece(self, piece: ToolCallDelta) -> bytes:
        if piece.id == self.piecing:
            return (b'{"index":' + str(self.calls).encode() + b',"function":{"arguments":'
                    + _js(piece.arguments) + b"}}")
        self.piecing = piece.id
        return dumps({"index": self.calls, **openai_tool_call(piece.id, piece.name, piece.arguments)})

    def _final(self, done: Done) -> bytes:
        return self._chunk(b'"delta":{}', FINISH[done.reason].chat)


class CompletionStream(_Stream):
    object_name = "text_completion"
    progress_choice = {"text": ""}

    def __init__(self, out: Responder, meta: Meta, echo: str = "") -> None:
        super().__init__(out, meta)
        self.echo = echo  # a completion chunk has no delta: its text sits in the choice

    async def event(self, event: TextDelta | ThinkingDelta | ToolCall) -> None:
        if type(event) is not TextDelta:
            return  # a raw completion has no thinking or tool calls to show
        first = b""
        if not self.started:
            await self._begin()
            if self.echo:
                first = self._chunk(b'"text":' + _js(self.echo))
        await self.out.body(first + self._chunk(b'"text":' + _js(event.text)))  # type: ignore[union-attr]

    def _final(self, done: Done) -> bytes:
        return self._chunk(b'"text":""', FINISH[done.reason].completion)
