"""Typed turn events built from a v1 or v2 frame stream, in the shape of koda's EngineEvent.

    client = await ClientV2.dial_uds(default_v2_addr())
    async for event in engine_events(client.generate(request)):
        match event:
            case TextDelta(text=text):
                print(text, end="", flush=True)
            case Footer(rate=rate):
                print(f"\\n{rate:.1f} tok/s")

Every event is a frozen pydantic model with a `kind` string that tells them apart
(`EngineEvent` is the discriminated union, so `TypeAdapter(EngineEvent)` reads the
JSON of `event.model_dump()` back).

The sequence of one turn:

1. `TurnStart` first, before anything is read.
2. `ResponseStart` once, before the first text.
3. Text arrives as `TextDelta`s; a run of text ends with `TextDone` when anything
   else follows (thinking, a tool call, the end of the turn, an error).
4. Each run of thinking is `ThinkingStart`, `ThinkingDelta`s, `ThinkingDone`.
5. `ToolCallStart` for each `tool_use` block (v2).
6. From the `done` frame: `ContextUsage` (only when the daemon reports the
   context), `Footer`, then `TurnEnd{reason=<the stop reason>}` last.
7. From an `error` frame: `Error{code, message}`, then `TurnEnd{reason="error"}`.

Empty deltas produce no events. A v1 answer requested with `stream: false` has no
token frames; its text comes from `done.content`, as ResponseStart, one TextDelta
and TextDone before the footer.

Failures of the stream itself become events too, so that a turn always ends with
TurnEnd: the stream ending before a terminal frame, or the connection failing,
is `Error{code="backend_unavailable"}` (protocol §7.2); a client timeout is
`Error{code="timeout"}`; an unreadable frame `Error{code="decode_error"}`; any
other ClientError `Error{code="client_error"}`. Other exceptions propagate.

If the consumer stops before the end of the turn, the frame stream is closed
(`aclose()`), which drops the connection and cancels the request in the daemon.

Footer fields: token counts from `done.usage` (`cached_tokens` and
`thinking_tokens` are 0 when the daemon does not report them); `total_chars` is
the number of characters of answer text (thinking not included); `elapsed_ms` is
measured by this adapter from TurnStart to the done frame; `rate` is the daemon's
`timings.tokens_per_second` when it sends timings, else completion tokens per
second of the elapsed time; `context` is "<used>/<max> (<pct>%)" when the done frame
carries `context`, else "".
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .errors import ClientDecodeError, ClientError, ClientTimeout, UnexpectedEof

# Error codes for failures seen by the client rather than sent by the daemon.
TIMEOUT = "timeout"
DECODE_ERROR = "decode_error"
CLIENT_ERROR = "client_error"
BACKEND_UNAVAILABLE = "backend_unavailable"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class TextDelta(_Event):
    """A piece of answer text."""

    kind: Literal["text_delta"] = "text_delta"
    text: str


class TextDone(_Event):
    """A run of text ended: flush anything buffered."""

    kind: Literal["text_done"] = "text_done"


class ThinkingStart(_Event):
    kind: Literal["thinking_start"] = "thinking_start"


class ThinkingDelta(_Event):
    kind: Literal["thinking_delta"] = "thinking_delta"
    text: str


class ThinkingDone(_Event):
    kind: Literal["thinking_done"] = "thinking_done"


class ResponseStart(_Event):
    """The answer is starting (after any thinking); once per turn."""

    kind: Literal["response_start"] = "response_start"


class ToolCallStart(_Event):
    """The model called a tool: `id` is the tool_call_id to answer with a tool_result."""

    kind: Literal["tool_call_start"] = "tool_call_start"
    id: str
    name: str
    args: JsonValue = None
    # koda marks calls of its own sub-agents; a daemon's calls never are.
    is_sub_agent: bool = False


class ContextUsage(_Event):
    """Tokens of the context window in use after this turn, out of `max`."""

    kind: Literal["context_usage"] = "context_usage"
    used: int
    max: int


class Footer(_Event):
    """Token counts and timing of the turn (see the module docstring for each field)."""

    kind: Literal["footer"] = "footer"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    thinking_tokens: int = 0
    total_chars: int = 0
    elapsed_ms: int = 0
    rate: float = 0.0
    context: str = ""


class TurnStart(_Event):
    kind: Literal["turn_start"] = "turn_start"
    turn_id: str = ""


class TurnEnd(_Event):
    """Always the last event; `reason` is the stop reason, or "error"."""

    kind: Literal["turn_end"] = "turn_end"
    turn_id: str = ""
    reason: str


class Error(_Event):
    """The turn failed: an `error` frame's code and message, or a client-side failure."""

    kind: Literal["error"] = "error"
    code: str
    message: str


EngineEvent = Annotated[
    Union[
        TextDelta,
        TextDone,
        ThinkingStart,
        ThinkingDelta,
        ThinkingDone,
        ResponseStart,
        ToolCallStart,
        ContextUsage,
        Footer,
        TurnStart,
        TurnEnd,
        Error,
    ],
    Field(discriminator="kind"),
]


async def engine_events(
    frames: AsyncIterable[Any],
    *,
    turn_id: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[EngineEvent]:
    """The events of one turn, from the frames answering one request (v1 or v2).

    `frames` is what `Client.generate` or `ClientV2.generate` returns, or any async
    iterable of frame objects of either protocol. `turn_id` defaults to the
    stream's `request_id` ("" for a plain iterable). `clock` (seconds) measures
    `Footer.elapsed_ms`.
    """
    tid = turn_id if turn_id is not None else str(getattr(frames, "request_id", "") or "")
    turn = _Turn(tid, clock)
    iterator = aiter(frames)
    yield TurnStart(turn_id=tid)
    try:
        while not turn.ended:
            try:
                frame = await anext(iterator)
            except StopAsyncIteration:
                events = turn.fail(BACKEND_UNAVAILABLE, "the frame stream ended before a terminal frame")
            except (ClientError, OSError) as exc:
                events = turn.fail(_code_for(exc), str(exc) or type(exc).__name__)
            else:
                events = turn.feed(frame)
            for event in events:
                yield event
    finally:
        if not turn.ended:
            # Abandoned mid-turn: closing the stream drops the connection, which is
            # how the daemon learns to stop generating.
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()


def _code_for(exc: BaseException) -> str:
    if isinstance(exc, ClientTimeout):
        return TIMEOUT
    if isinstance(exc, ClientDecodeError):
        return DECODE_ERROR
    if isinstance(exc, (UnexpectedEof, OSError)):
        return BACKEND_UNAVAILABLE
    return CLIENT_ERROR


def _get(obj: Any, name: str) -> Any:
    """A member of a frame part that may be a model, a dict, or absent (older daemons)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, *names: str) -> int:
    for name in names:
        value = _get(obj, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return 0


def _wire(value: Any) -> str:
    """An enum member or a string as its wire string."""
    return str(getattr(value, "value", value))


class _Turn:
    """The state of one turn: which runs are open, what has been counted."""

    __slots__ = ("turn_id", "clock", "started", "in_text", "in_thinking", "responded", "saw_text", "chars", "ended")

    def __init__(self, turn_id: str, clock: Callable[[], float]) -> None:
        self.turn_id = turn_id
        self.clock = clock
        self.started = clock()
        self.in_text = False
        self.in_thinking = False
        self.responded = False
        self.saw_text = False
        self.chars = 0
        self.ended = False

    def feed(self, frame: Any) -> list[EngineEvent]:
        kind = getattr(frame, "type", None)
        if kind == "token":  # v1
            return self._text(frame.content)
        if kind == "frame":  # v2
            block = frame.block
            btype = getattr(block, "type", None)
            if btype == "text":
                return self._text(block.delta)
            if btype == "thinking":
                return self._thinking(block.delta)
            if btype == "tool_use":
                return self._tool_use(block)
            return []  # a block type newer than this client
        if kind == "done":
            return self._done(frame)
        if kind == "error":
            return self.fail(_wire(frame.code), frame.message)
        return []  # v1 `status` (reserved) or a frame type newer than this client

    def _close_runs(self) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        if self.in_thinking:
            out.append(ThinkingDone())
            self.in_thinking = False
        if self.in_text:
            out.append(TextDone())
            self.in_text = False
        return out

    def _text(self, text: str) -> list[EngineEvent]:
        if not text:
            return []
        out = self._close_runs() if self.in_thinking else []
        if not self.responded:
            out.append(ResponseStart())
            self.responded = True
        self.in_text = True
        self.saw_text = True
        self.chars += len(text)
        out.append(TextDelta(text=text))
        return out

    def _thinking(self, text: str) -> list[EngineEvent]:
        if not text:
            return []
        out = self._close_runs() if self.in_text else []
        if not self.in_thinking:
            out.append(ThinkingStart())
            self.in_thinking = True
        out.append(ThinkingDelta(text=text))
        return out

    def _tool_use(self, block: Any) -> list[EngineEvent]:
        out = self._close_runs()
        out.append(ToolCallStart(id=block.tool_call_id, name=block.name, args=block.input))
        return out

    def _done(self, done: Any) -> list[EngineEvent]:
        out = self._close_runs()
        content = _get(done, "content")
        if content and not self.saw_text:
            # v1 with stream: false sends the whole answer in `done` only.
            out += self._text(content)
            out += self._close_runs()
        elapsed = max(0.0, self.clock() - self.started)
        usage = _get(done, "usage")
        completion = _count(usage, "completion_tokens", "output_tokens")
        context = _get(done, "context")
        used, limit = _count(context, "used"), _count(context, "max")
        label = ""
        if context is not None:
            out.append(ContextUsage(used=used, max=limit))
            label = f"{used}/{limit} ({round(used * 100 / limit)}%)" if limit > 0 else f"{used}/?"
        tokens_per_second = _get(_get(done, "timings"), "tokens_per_second")
        if isinstance(tokens_per_second, (int, float)) and not isinstance(tokens_per_second, bool):
            rate = float(tokens_per_second)
        else:
            rate = completion / elapsed if elapsed > 0 else 0.0
        out.append(
            Footer(
                prompt_tokens=_count(usage, "prompt_tokens", "input_tokens"),
                completion_tokens=completion,
                cache_read_tokens=_count(usage, "cached_tokens"),
                thinking_tokens=_count(usage, "thinking_tokens"),
                total_chars=self.chars,
                elapsed_ms=round(elapsed * 1000),
                rate=rate,
                context=label,
            )
        )
        out.append(TurnEnd(turn_id=self.turn_id, reason=_wire(_get(done, "stop_reason") or "")))
        self.ended = True
        return out

    def fail(self, code: str, message: str) -> list[EngineEvent]:
        out = self._close_runs()
        out.append(Error(code=code, message=message))
        out.append(TurnEnd(turn_id=self.turn_id, reason="error"))
        self.ended = True
        return out
