"""Engine events -> Ollama's answers: NDJSON lines (streamed) or one JSON object.

Chat lines carry `message` (`content`, `thinking`, `tool_calls`), generate lines carry
`response` and `thinking`; every line has `model`, `created_at` and `done`. The last
line (or the whole answer) adds `done_reason` (surfaces/finish.py's Ollama column) and
Ollama's counters, durations in nanoseconds:

- `total_duration`: from the request's arrival to its last token;
- `load_duration`: from its arrival until a backend took it (admission, a reload);
- `prompt_eval_count` / `prompt_eval_duration`, `eval_count` / `eval_duration`: the
  engine's usage and timings.

A tool call is `{"id", "function": {"index", "name", "arguments": {...}}}` with the
arguments as an object, in one line of its own (Ollama streams whole calls, so the
argument pieces are not sent). A failure before the first line is a real status with
`{"error": "..."}`; after it, one `{"error": "..."}` line ends the stream.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from ....engine.backend import Fault
from ....engine.events import Done, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ..faults import FAULTS
from ..finish import FINISH
from .encode import _Collect, _js, dumps
from .errors import HttpError
from .io import Responder

NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache"),
                  (b"x-accel-buffering", b"no")]
#: Ollama's status for a fault where it differs from OpenAI's, by OpenAI's code (faults.py).
_STATUS_BY_CODE = {w.http_code: w.ollama_status for w in FAULTS.values() if w.ollama_status is not None}


class OllamaError(HttpError):
    """An HttpError in Ollama's shape: `{"error": "message"}`."""

    @classmethod
    def of(cls, err: HttpError) -> "OllamaError":
        if isinstance(err, OllamaError):
            return err
        return cls(_STATUS_BY_CODE.get(err.code, err.status), err.message, err.type, err.code, err.param, err.headers)

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class OllamaMeta:
    """What every line of one answer repeats, and the clock its durations are read from."""

    __slots__ = ("model", "created_at", "chat", "arrived", "taken")

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.created_at = now_rfc3339()
        self.arrived = time.perf_counter_ns()
        self.taken = self.arrived  # set again when a backend takes the request

    def head(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": self.created_at}

    def final(self, done: Done | None, reason: str) -> dict[str, Any]:
        """The last line's own fields (no text): done, done_reason and the counters."""
        out: dict[str, Any] = {**self.head(), "done": True, "done_reason": reason}
        out["message" if self.chat else "response"] = {"role": "assistant", "content": ""} if self.chat else ""
        if done is None:
            return out
        u, t = done.usage, done.timings
        out.update(total_duration=time.perf_counter_ns() - self.arrived, load_duration=self.taken - self.arrived,
                   prompt_eval_count=u.prompt_tokens,
                   prompt_eval_duration=int(t.prompt_ms * 1e6) if t is not None else 0,
                   eval_count=u.completion_tokens, eval_duration=int(t.generate_ms * 1e6) if t is not None else 0)
        return out


def tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": call.input}}


class OllamaCollect(_Collect):
    """`stream: false`: the whole answer as one object."""

    def __init__(self, meta: OllamaMeta) -> None:
        super().__init__()
        self.meta = meta

    def body(self, _meta: object = None) -> dict[str, Any]:
        done = self.result
        assert done is not None
        out = self.meta.final(done, FINISH[done.reason].ollama)
        text, thinking = "".join(self.text), "".join(self.thinking)
        if self.meta.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if self.calls:
                message["tool_calls"] = [tool_call(c, i) for i, c in enumerate(self.calls)]
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        return out

    async def fail(self, kind: Fault, message: str) -> None:
        self.error = OllamaError.of(HttpError.from_fault(kind, message))


class OllamaStream:
    """Streamed: one NDJSON line per event. Nothing is sent before the first event, so
    a refusal before it is still a real status."""

    def __init__(self, out: Responder, meta: OllamaMeta) -> None:
        self.out = out
        self.meta = meta
        self.started = False
        self.calls = 0
        self.error: HttpError | None = None
        self._head = b""
        # A text line is built from pre-encoded pieces: one JSON string encoding per
        # token (the hot path, as in encode.py's SSE chunks).
        self._text_head = b""
        self._text_tail = b'},"done":false}\n' if meta.chat else b',"done":false}\n'

    async def _begin(self) -> None:
        self.started = True
        self._head = dumps(self.meta.head())[:-1] + b","
        self._text_head = self._head + (b'"message":{"role":"assistant","content":' if self.meta.chat
                                        else b'"response":')
        await self.out.start(200, NDJSON_HEADERS)

    def _line(self, fields: dict[str, Any]) -> bytes:
        if self.meta.chat:
            fields = {"message": {"role": "assistant", "content": "", **fields}}
        else:
            fields = {"response": "", **fields}
        return self._head + dumps({**fields, "done": False})[1:] + b"\n"

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None:
        kind = type(event)
        if kind is ToolCallDelta:
            return  # Ollama sends each call whole
        if not self.started:
            await self._begin()
        if kind is TextDelta:
            line = self._text_head + _js(event.text) + self._text_tail  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            line = self._line({"thinking": event.text})  # type: ignore[union-attr]
        else:
            call = tool_call(event, self.calls)  # type: ignore[arg-type]
            self.calls += 1
            if not self.meta.chat:
                return  # generate has no tool calls to show
            line = self._line({"tool_calls": [call]})
        await self.out.body(line)

    async def done(self, done: Done, backend: str) -> None:
        if not self.started:
            await self._begin()
        await self.out.body(dumps(self.meta.final(done, FINISH[done.reason].ollama)) + b"\n", more=False)

    async def fail(self, kind: Fault, message: str) -> None:
        error = OllamaError.of(HttpError.from_fault(kind, message))
        if not self.started:
            self.error = error  # the route answers with the status
            return
        await self.out.body(error.encode() + b"\n", more=False)


def loaded(meta: OllamaMeta, reason: str = "load") -> bytes:
    """Ollama's answer to a request with nothing to generate (an empty prompt or no
    messages): the model is (or stays) loaded, and nothing is generated."""
    return json.dumps(meta.final(None, reason), separators=(",", ":")).encode()
