"""The OpenAI wire on the way out and back, with no I/O.

`chat_body` / `completion_body` turn a GenerationRequest into the JSON the remote
takes; `StreamState` folds the remote's chunks into engine events. Kept apart from
the HTTP code so the mapping is testable byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..backend import AttachmentUnsupported, BackendInvalidRequest, ToolCallMalformed
from ..events import (
    ContextUsage,
    Done,
    Event,
    FinishReason,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCall,
    Usage,
)
from ..request import ChatMessage, GenerationRequest, openai_tool_call


#: One tool call's arguments, as the remote streams them (F-23): a call larger than an
#: SSE event would be is not a call a model made, and its JSON is parsed on the loop.
MAX_TOOL_ARGUMENT_CHARS = 8 * 1024 * 1024


class RemoteProtocolError(Exception):
    """A chunk that is not the shape an OpenAI-compatible server sends."""


_FINISH = {
    "stop": FinishReason.END,
    "eos": FinishReason.END,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
}


# ---- request bodies -----------------------------------------------------------------

def message_dict(m: ChatMessage) -> dict[str, Any]:
    if m.media:
        raise AttachmentUnsupported("the openai backend does not forward attachments")
    out: dict[str, Any] = {"role": m.role}
    if m.role == "assistant" and m.tool_calls:
        # OpenAI: content may be null beside tool calls; arguments travel as a JSON string.
        out["content"] = m.content or None
        out["tool_calls"] = [
            openai_tool_call(c.id, c.name, c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments))
            for c in m.tool_calls
        ]
    else:
        out["content"] = m.content
    if m.role == "tool":
        if m.tool_call_id is None:
            raise BackendInvalidRequest("a tool message needs the tool_call_id it answers")
        out["tool_call_id"] = m.tool_call_id
    return out


def _common(req: GenerationRequest, model: str, extensions: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
    }
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = list(req.stop)
    if req.response_format is not None:
        rf = req.response_format
        if rf.type == "json_schema" and rf.schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": rf.schema}}
        else:
            body["response_format"] = {"type": "json_object"}
    if req.grammar:
        body["grammar"] = req.grammar  # llama.cpp servers' extension
    if extensions:
        body["top_k"] = req.top_k
    return body


def chat_body(req: GenerationRequest, model: str, extensions: bool = False) -> dict[str, Any]:
    if not req.messages:
        raise BackendInvalidRequest("messages must not be empty")
    body = _common(req, model, extensions)
    body["messages"] = [message_dict(m) for m in req.messages]
    if req.tools:
        body["tools"] = [t.as_openai() for t in req.tools]
        if req.tool_name is not None:
            body["tool_choice"] = {"type": "function", "function": {"name": req.tool_name}}
        else:
            body["tool_choice"] = req.tool_choice
    elif req.tool_name is not None or req.tool_choice == "required":
        raise BackendInvalidRequest("tool_choice requires a tool but the request lists none")
    if extensions and req.thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": req.thinking}
    return body


def completion_body(req: GenerationRequest, model: str, extensions: bool = False) -> dict[str, Any]:
    if req.tools or req.tool_name is not None:
        raise BackendInvalidRequest("tools need chat messages, not a raw prompt")
    body = _common(req, model, extensions)
    body["prompt"] = req.prompt
    return body


def remote_error_message(payload: Any) -> str | None:
    """The human message inside an error body, across the servers' shapes."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, str):
            return err
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                value = err.get(key)
                if isinstance(value, str) and value:
                    return value
                if isinstance(value, list) and value:  # FastAPI's 422 detail list
                    return "; ".join(_detail_item(v) for v in value[:5])
    return None


def _detail_item(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
        msg = str(item.get("msg", item))
        return f"{loc}: {msg}" if loc else msg
    return str(item)


def error_status(payload: Any) -> int | None:
    """The HTTP-like status an in-stream error object carries, when it says."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            for key in ("code", "status"):
                value = err.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


# ---- the stream back ----------------------------------------------------------------

@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    size: int = 0  # characters in `arguments` so far

    def add(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_TOOL_ARGUMENT_CHARS:
            raise RemoteProtocolError(f"tool call {self.name or '?'!r} has arguments past "
                                      f"{MAX_TOOL_ARGUMENT_CHARS} characters (MAX_TOOL_ARGUMENT_CHARS)")
        self.arguments.append(text)


class StreamState:
    """Folds chat or completion chunks into events; `finish()` yields the tail."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.llama_timings: dict[str, Any] | None = None
        #: Chunks that carried output; the completion count when the remote reports none.
        self.output_chunks = 0
        self.produced = False
        self._calls: dict[int, _PartialCall] = {}

    def feed(self, chunk: Any) -> list[Event]:
        if not isinstance(chunk, dict):
            raise RemoteProtocolError("chunk is not a JSON object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            self.llama_timings = timings
        choices = chunk.get("choices")
        if choices is None:
            if usage is None and timings is None:
                raise RemoteProtocolError("chunk has no choices")
            return []
        if not isinstance(choices, list):
            raise RemoteProtocolError("choices is not a list")
        events: list[Event] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise RemoteProtocolError("a choice is not an object")
            if choice.get("index", 0) != 0:
                continue  # we never ask for n > 1
            before = len(events)
            delta = choice.get("delta")
            if delta is None:
                delta = choice.get("message")  # a whole (non-streamed) response
            if isinstance(delta, dict):
                self._delta(delta, events)
            elif delta is not None:
                raise RemoteProtocolError("delta is not an object")
            text = choice.get("text")  # /completions
            if isinstance(text, str) and text:
                events.append(TextDelta(text))
            if len(events) > before:
                self.output_chunks += 1
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        if events:
            self.produced = True
        return events

    def _delta(self, delta: dict[str, Any], events: list[Event]) -> None:
        # Some servers send the same text as both names; one is enough.
        thinking = delta.get("reasoning_content")
        if not isinstance(thinking, str) or not thinking:
            thinking = delta.get("reasoning")
        if isinstance(thinking, str) and thinking:
            events.append(ThinkingDelta(thinking))
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        calls = delta.get("tool_calls")
        if calls is None:
            return
        if not isinstance(calls, list):
            raise RemoteProtocolError("tool_calls is not a list")
        for position, frag in enumerate(calls):
            if not isinstance(frag, dict):
                raise RemoteProtocolError("a tool call fragment is not an object")
            index = frag.get("index", position)
            if not isinstance(index, int) or isinstance(index, bool):
                raise RemoteProtocolError("tool call index is not an integer")
            call = self._calls.setdefault(index, _PartialCall())
            if isinstance(frag.get("id"), str) and frag["id"] and not call.id:
                call.id = frag["id"]
            fn = frag.get("function")
            if isinstance(fn, dict):
                if isinstance(fn.get("name"), str) and fn["name"] and not call.name:
                    call.name = fn["name"]
                args = fn.get("arguments")
                if isinstance(args, str):
                    call.add(args)
                elif args is not None:  # a server that sends the object itself
                    call.add(json.dumps(args))
        self.produced = True

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def tool_calls(self) -> list[ToolCall]:
        out = []
        for n, index in enumerate(sorted(self._calls), start=1):
            call = self._calls[index]
            if not call.name:
                raise ToolCallMalformed(f"tool call {index} has no function name")
            text = "".join(call.arguments).strip()
            try:
                value = json.loads(text) if text else {}
            except ValueError as exc:
                raise ToolCallMalformed(
                    f"arguments of tool call {call.name!r} are not JSON: {exc.msg} at {exc.pos}"
                ) from None
            out.append(ToolCall(id=call.id or f"call_{n}", name=call.name, input=value))
        return out

    def done(self, calls: list[ToolCall], timings: Timings | None, n_ctx: int | None,
             tool_required: bool) -> Done:
        if calls:
            reason = FinishReason.TOOL_USE
        else:
            reason = _FINISH.get(self.finish_reason or "", FinishReason.END)
        usage = self.usage_numbers()
        context = None
        if n_ctx is not None:
            context = ContextUsage(used=min(n_ctx, usage.prompt_tokens + usage.completion_tokens), max=n_ctx)
        return Done(reason=reason, usage=usage, timings=timings, context=context,
                    tool_choice_unsatisfied=tool_required and not calls)

    def usage_numbers(self) -> Usage:
        u = self.usage or {}
        prompt = _int(u.get("prompt_tokens"))
        completion = _int(u.get("completion_tokens"))
        if self.usage is None:
            # No usage in the stream (llama-cpp-python's server ignores include_usage):
            # llama.cpp servers send one token per chunk, so count the chunks.
            completion = self.output_chunks
        cached = _int(_sub(u, "prompt_tokens_details").get("cached_tokens"))
        if not cached and self.llama_timings is not None:
            cached = _int(self.llama_timings.get("cache_n"))  # llama-server's own field
        thinking = _int(_sub(u, "completion_tokens_details").get("reasoning_tokens"))
        return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                     thinking_tokens=thinking)


def _sub(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0
