"""Typed turn events built from a v1 or v2 frame stream, in the shape of koda's EngineEvent.

    client = await ClientV2.dial_uds(default_v2_addr())
    async for event in engine_events(client.generate(request, progress=True)):
        match event:
            case SpinnerStart(message=message):
                print(f"[{message}]")
            case TextDelta(text=text):
                print(text, end="", flush=True)
            case Footer(rate=rate):
                print(f"\\n{rate:.1f} tok/s")

Every event is a frozen pydantic model with a `kind` string that tells them apart
(`EngineEvent` is the discriminated union, so `TypeAdapter(EngineEvent)` reads the
JSON of `event.model_dump()` back). `EventSession` keeps what one conversation's
turns share (the backend that served the last turn, to notice a fallback);
`engine_events` is one turn of a fresh session.

The sequence of one turn:

1. `TurnStart` first, before anything is read.
2. Only for a request sent with `progress: true`, before the first token:
   `SpinnerStart{message}` for each `queued` position and each `prefill` step (a
   new message each time it changes), and for the `context` frame `ContextUsage`
   then `StatusUpdate` (the context the request will use: a harness can compact
   its history before the model answers). `SpinnerStop` comes once, before the
   first text, thinking or tool call, or before the end of a turn that has none.
3. `ResponseStart` once, before the first text.
4. Text arrives as `TextDelta`s; a run of text ends with `TextDone` when anything
   else follows (thinking, a tool call, the end of the turn, an error).
5. Each run of thinking is `ThinkingStart`, `ThinkingDelta`s, `ThinkingDone`.
6. `ToolCallStart` for each `tool_use` block (v2).
7. From the `done` frame: `ContextUsage` (only when the daemon reports the
   context), `StatusUpdate`, then the notes: `Warn` when `tool_choice` "required"
   produced no call (`tool_choice_unsatisfied`), `Warn` when a different backend
   served this turn than the session's last one (a fallback), `Info` when the
   reply stopped at `max_tokens`; then `Footer`, and `TurnEnd{reason}` last.
8. From an `error` frame: `Error{code, message}`, then `TurnEnd{reason=error}`.

`TurnEnd.reason` is a `TurnEndReason`, mapped from either wire's stop reason by one
table (`turn_end_reason`): v1 `end` and v2 `end_turn` / `stop_sequence` are
`complete`; v1 `length` and v2 `max_tokens` are `max_tokens`; v2 `tool_use` is
`tool_use`; `cancelled` and `error` are themselves.

`StatusUpdate`: `model` is the model the request named (`model` field), else the
session's `model`, else "" (the daemon's default); `provider` is the backend that
serves it (`done.backend`; before the done frame, the backend of the session's last
turn, or ""); `context_pct` is used/max in percent, one decimal (0.0 when unknown);
`active_tools` is the number of tools the request offered; `approval_mode` is ""
(a daemon runs no tools, so it approves nothing).

Empty deltas produce no events. A v1 answer requested with `stream: false` has no
token frames; its text comes from `done.content`, as ResponseStart, one TextDelta
and TextDone before the footer.

Failures of the stream itself become events too, so that a turn always ends with
TurnEnd: the stream ending before a terminal frame, or the connection failing
(ClientIOError), is `Error{code="backend_unavailable"}` (protocol §7.2); a client
timeout is `Error{code="timeout"}`; an unreadable frame `Error{code="decode_error"}`;
any other ClientError `Error{code="client_error"}`. Other exceptions propagate.
`Error.code` is optional (koda's Error has none); this adapter always sets it.

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
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .errors import ClientDecodeError, ClientError, ClientTimeout, UnexpectedEof

# Error codes for failures seen by the client rather than sent by the daemon.
TIMEOUT = "timeout"
DECODE_ERROR = "decode_error"
CLIENT_ERROR = "client_error"
BACKEND_UNAVAILABLE = "backend_unavailable"


class TurnEndReason(StrEnum):
    """Why a turn ended, the same for both wires (see `turn_end_reason`)."""

    COMPLETE = "complete"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    CANCELLED = "cancelled"
    ERROR = "error"


# The one mapping from v1's and v2's stop reasons (their names do not overlap in
# meaning: v1 `end` = v2 `end_turn`, v1 `length` = v2 `max_tokens`).
_STOP_REASONS: dict[str, TurnEndReason] = {
    "end": TurnEndReason.COMPLETE,  # v1
    "length": TurnEndReason.MAX_TOKENS,  # v1
    "end_turn": TurnEndReason.COMPLETE,  # v2
    "stop_sequence": TurnEndReason.COMPLETE,  # v2 (reserved: a stop string is a normal end)
    "max_tokens": TurnEndReason.MAX_TOKENS,  # v2
    "tool_use": TurnEndReason.TOOL_USE,  # v2
    "cancelled": TurnEndReason.CANCELLED,  # both
    "error": TurnEndReason.ERROR,  # both
}


def turn_end_reason(stop_reason: Any) -> TurnEndReason:
    """A v1 or v2 stop reason (enum member or string) as a TurnEndReason. A done frame
    with a reason this client does not know (a newer daemon's) still ended well:
    COMPLETE."""
    return _STOP_REASONS.get(_wire(stop_reason), TurnEndReason.COMPLETE)


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
    """Tokens of the context window in use, out of `max`: before generation (the
    prompt) and after the turn (prompt and reply)."""

    kind: Literal["context_usage"] = "context_usage"
    used: int
    max: int


class StatusUpdate(_Event):
    """For a status bar: which model, served by which backend, how full the context is."""

    kind: Literal["status_update"] = "status_update"
    model: str = ""
    provider: str = ""
    context_pct: float = 0.0
    approval_mode: str = ""
    active_tools: int = 0


class SpinnerStart(_Event):
    """Waiting before the first token: `message` says on what (queue, prompt reading).
    A new SpinnerStart while one is shown replaces its message."""

    kind: Literal["spinner_start"] = "spinner_start"
    message: str


class SpinnerStop(_Event):
    kind: Literal["spinner_stop"] = "spinner_stop"


class Info(_Event):
    """A note from the client or the daemon, not from the model."""

    kind: Literal["info"] = "info"
    message: str


class Warn(_Event):
    """Something the app should know went other than asked."""

    kind: Literal["warn"] = "warn"
    message: str


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
    """Always the last event of a turn."""

    kind: Literal["turn_end"] = "turn_end"
    turn_id: str = ""
    reason: TurnEndReason


class Error(_Event):
    """The turn failed: an `error` frame's code and message, or a client-side failure."""

    kind: Literal["error"] = "error"
    message: str
    code: str | None = None


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
        StatusUpdate,
        SpinnerStart,
        SpinnerStop,
        Info,
        Warn,
        Footer,
        TurnStart,
        TurnEnd,
        Error,
    ],
    Field(discriminator="kind"),
]


class EventSession:
    """The turns of one conversation, as events.

    `model` is the name StatusUpdate reports when a request names none; `backend`
    the backend expected to serve (else the first turn's becomes the expected one).
    After each turn `backend` is the one that served it; `queue_position` is the
    first queue position the current (or last) turn was given, 0 if it never
    waited in the queue.
    """

    def __init__(self, *, model: str | None = None, backend: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.backend = backend
        self.clock = clock
        self.queue_position = 0

    async def events(self, frames: AsyncIterable[Any], *, turn_id: str | None = None) -> AsyncIterator[EngineEvent]:
        """The events of one turn, from the frames answering one request (v1 or v2).

        `frames` is what `Client.generate` or `ClientV2.generate` returns, or any
        async iterable of frame objects of either protocol. `turn_id` defaults to
        the stream's `request_id` ("" for a plain iterable).
        """
        tid = turn_id if turn_id is not None else str(getattr(frames, "request_id", "") or "")
        self.queue_position = 0
        turn = _Turn(self, tid, getattr(frames, "request", None))
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


def engine_events(
    frames: AsyncIterable[Any],
    *,
    turn_id: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    model: str | None = None,
    backend: str | None = None,
) -> AsyncIterator[EngineEvent]:
    """The events of one turn (a fresh EventSession's; see there for the arguments).
    `clock` (seconds) measures `Footer.elapsed_ms`. Closing the iterator early closes
    `frames`, as EventSession.events does."""
    return EventSession(model=model, backend=backend, clock=clock).events(frames, turn_id=turn_id)


def _code_for(exc: BaseException) -> str:
    if isinstance(exc, ClientTimeout):
        return TIMEOUT
    if isinstance(exc, ClientDecodeError):
        return DECODE_ERROR
    if isinstance(exc, (UnexpectedEof, OSError)):  # ClientIOError is an OSError
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


def _percent(used: int, limit: int) -> float:
    return round(used * 100 / limit, 1) if limit > 0 else 0.0


def _progress_message(frame: Any) -> str | None:
    """What a `queued` or `prefill` progress frame says, for a spinner."""
    stage = _get(frame, "stage")
    if stage == "queued":
        return f"queued (position {_count(frame, 'position')})"
    if stage == "prefill":
        return f"reading the prompt ({_count(frame, 'done')}/{_count(frame, 'total')} tokens)"
    return None


class _Turn:
    """The state of one turn: which runs are open, what has been counted."""

    __slots__ = ("session", "turn_id", "request", "started", "in_text", "in_thinking", "responded", "saw_text",
                 "chars", "ended", "spinner")

    def __init__(self, session: EventSession, turn_id: str, request: Any) -> None:
        self.session = session
        self.turn_id = turn_id
        self.request = request
        self.started = session.clock()
        self.in_text = False
        self.in_thinking = False
        self.responded = False
        self.saw_text = False
        self.chars = 0
        self.ended = False
        self.spinner: str | None = None  # the message shown, while a spinner is

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
            return []  # a block type newer than this client (or tool_use_delta pieces)
        if kind == "progress":
            return self._progress(frame)
        if kind == "done":
            return self._done(frame)
        if kind == "error":
            return self.fail(_wire(frame.code), frame.message)
        return []  # v1 `status` (reserved) or a frame type newer than this client

    # ---- before the first token ---------------------------------------------------------

    def _progress(self, frame: Any) -> list[EngineEvent]:
        if _get(frame, "stage") == "queued" and not self.session.queue_position:
            self.session.queue_position = _count(frame, "position")
        if _get(frame, "stage") == "context":
            context = _get(frame, "context")
            if context is None:
                return []
            used, limit = _count(context, "used"), _count(context, "max")
            return [ContextUsage(used=used, max=limit), self._status(self.session.backend, _percent(used, limit))]
        message = _progress_message(frame)
        if message is None or message == self.spinner:
            return []  # a stage newer than this client, or nothing new to show
        self.spinner = message
        return [SpinnerStart(message=message)]

    def _stop_spinner(self) -> list[EngineEvent]:
        if self.spinner is None:
            return []
        self.spinner = None
        return [SpinnerStop()]

    def _status(self, provider: str | None, context_pct: float) -> StatusUpdate:
        request = self.request
        tools = _get(request, "tools")
        return StatusUpdate(
            model=_get(request, "model") or self.session.model or "",
            provider=provider or "",
            context_pct=context_pct,
            active_tools=len(tools) if isinstance(tools, list) else 0,
        )

    # ---- the answer ---------------------------------------------------------------------

    def _close_runs(self) -> list[EngineEvent]:
        out = self._stop_spinner()
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
        out = self._close_runs() if self.in_thinking or self.spinner is not None else []
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
        out = self._close_runs() if self.in_text or self.spinner is not None else []
        if not self.in_thinking:
            out.append(ThinkingStart())
            self.in_thinking = True
        out.append(ThinkingDelta(text=text))
        return out

    def _tool_use(self, block: Any) -> list[EngineEvent]:
        out = self._close_runs()
        out.append(ToolCallStart(id=block.tool_call_id, name=block.name, args=block.input))
        return out

    # ---- the end --------------------------------------------------------------------------

    def _done(self, done: Any) -> list[EngineEvent]:
        out = self._close_runs()
        content = _get(done, "content")
        if content and not self.saw_text:
            # v1 with stream: false sends the whole answer in `done` only.
            out += self._text(content)
            out += self._close_runs()
        elapsed = max(0.0, self.session.clock() - self.started)
        usage = _get(done, "usage")
        completion = _count(usage, "completion_tokens", "output_tokens")
        context = _get(done, "context")
        used, limit = _count(context, "used"), _count(context, "max")
        label = ""
        if context is not None:
            out.append(ContextUsage(used=used, max=limit))
            label = f"{used}/{limit} ({round(used * 100 / limit)}%)" if limit > 0 else f"{used}/?"
        backend = str(_get(done, "backend") or "")
        out.append(self._status(backend, _percent(used, limit)))
        out += self._notes(done, backend)
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
        out.append(TurnEnd(turn_id=self.turn_id, reason=turn_end_reason(_get(done, "stop_reason") or "")))
        self.ended = True
        return out

    def _notes(self, done: Any, backend: str) -> list[EngineEvent]:
        """Warn and Info from a done frame: what went other than the request asked."""
        out: list[EngineEvent] = []
        if _get(done, "tool_choice_unsatisfied"):
            out.append(Warn(message='tool_choice "required" produced no tool call: the model answered in text'))
        expected = self.session.backend
        if backend:
            if expected and backend != expected:
                out.append(Warn(message=f"this turn was served by backend {backend!r}, not {expected!r} "
                                        "(a fallback, or a reload changed the backends)"))
            self.session.backend = backend
        if turn_end_reason(_get(done, "stop_reason") or "") is TurnEndReason.MAX_TOKENS:
            limit = _get(self.request, "max_tokens")
            where = f"max_tokens ({limit})" if isinstance(limit, int) else "max_tokens"
            out.append(Info(message=f"the reply was cut off at {where}"))
        return out

    def fail(self, code: str, message: str) -> list[EngineEvent]:
        out = self._close_runs()
        out.append(Error(code=code, message=message))
        out.append(TurnEnd(turn_id=self.turn_id, reason=TurnEndReason.ERROR))
        self.ended = True
        return out
