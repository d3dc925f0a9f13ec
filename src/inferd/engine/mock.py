"""The mock backend: a product feature for protocol tests and for apps under development.

It replays a fixed script - text, thinking and tool calls - and can be told to
misbehave (upstream-engine §2): fail before streaming, drop the stream after N
events without a Done, raise mid-stream, or delay each event. An app can thereby
test its whole agent loop (thinking, a tool call, the answer, the footer) against a
real daemon without a model. It honours `max_tokens` and `stop` like a model would:
each text step counts as one token.

Embeddings are deterministic: element k of the vector for input s is (k+1)/(len(s)+1),
with len the UTF-8 byte length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..proto.embed import EmbedResolved
from .backend import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendInvalidRequest,
    EmbedResult,
    NotReady,
    Unavailable,
)
from .events import ContextUsage, Done, Event, FinishReason, PromptProgress, TextDelta, ThinkingDelta, ToolCall, Usage
from .request import GenerationRequest
from .text import StopScanner

MAX_MOCK_DIMENSIONS = 4096

PreStreamError = Literal["NotReady", "InvalidRequest", "Unavailable"]


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """One scripted output: exactly one of text, thinking or a tool call."""

    text: str | None = None
    thinking: str | None = None
    tool_name: str | None = None
    tool_input: Any = None


@dataclass
class MockConfig:
    tokens: list[str] = field(default_factory=lambda: ["mock-response"])
    #: When set, replaces `tokens`: text, thinking and tool calls in order.
    script: list[ScriptStep] | None = None
    #: The reply once tool results came back (the last message is a `tool` one), so an
    #: app's agent loop can run to its end against the mock. None: `script` again.
    script_after_tools: list[ScriptStep] | None = None
    token_delay_ms: int = 0
    drop_after: int | None = None
    pre_stream_error: PreStreamError | None = None
    ready_delay_ms: int = 0
    embed: bool = True
    # Raise from inside the stream after N events (a backend fault, not a clean drop).
    raise_after: int | None = None
    # After the script, one tool call with this name (input {}) - upstream's knob.
    emit_tool_use: str | None = None
    #: Reported in `done.usage` as is (prompt_tokens, cached_tokens).
    prompt_tokens: int = 0
    cached_tokens: int = 0
    #: Reported as `done.context.max`; `used` is prompt + completion tokens.
    n_ctx: int | None = None
    #: Prompt tokens "read" per chunk for a request that asked for progress (issue 22):
    #: PromptProgress as reading starts and after each chunk. 0: the whole prompt at once.
    prefill_chunk: int = 0

    #: Built steps by what they were built from: a long tape is not rebuilt per request.
    _built: dict[tuple[Any, ...], list[ScriptStep]] = field(default_factory=dict, repr=False, compare=False)

    def steps(self, answering_tools: bool = False) -> list[ScriptStep]:
        key = (answering_tools, id(self.tokens), len(self.tokens), id(self.script), id(self.script_after_tools),
               self.emit_tool_use)
        built = self._built.get(key)
        if built is None:
            self._built.clear()
            built = self._built[key] = self._build(answering_tools)
        return built

    def _build(self, answering_tools: bool) -> list[ScriptStep]:
        if answering_tools and self.script_after_tools is not None:
            return list(self.script_after_tools)
        steps = list(self.script) if self.script is not None else [ScriptStep(text=t) for t in self.tokens]
        if self.emit_tool_use is not None:
            steps.append(ScriptStep(tool_name=self.emit_tool_use, tool_input={}))
        return steps


def _prefill(cfg: MockConfig) -> list[PromptProgress]:
    """What llama.cpp's scheduler reports while it reads a prompt, for the mock's one."""
    total, cached = cfg.prompt_tokens, min(cfg.cached_tokens, cfg.prompt_tokens)
    chunk = cfg.prefill_chunk or total
    marks = [cached, *range(cached + chunk, total, chunk)]
    if marks[-1] != total:
        marks.append(total)
    return [PromptProgress(done=d, total=total, cached=cached) for d in marks]


def _pre_stream(kind: PreStreamError) -> BackendError:
    if kind == "NotReady":
        return NotReady()
    if kind == "InvalidRequest":
        return BackendInvalidRequest("mock")
    return Unavailable("mock")


class MockBackend(Backend):
    name = "mock"

    def __init__(self, config: MockConfig | None = None) -> None:
        self.config = config or MockConfig()
        self._ready_at = time.monotonic() + self.config.ready_delay_ms / 1000
        self._forced_ready: bool | None = None

    def set_ready(self, ready: bool) -> None:
        self._forced_ready = ready

    def ready(self) -> bool:
        if self._forced_ready is not None:
            return self._forced_ready
        return time.monotonic() >= self._ready_at

    def capabilities(self) -> BackendCapabilities:
        # Say what the script actually emits, nothing more.
        steps = self.config.steps() + self.config.steps(answering_tools=True)
        return BackendCapabilities(
            v2=True,
            tools=any(s.tool_name is not None for s in steps),
            thinking=any(s.thinking is not None for s in steps),
            embed=self.config.embed,
            model="mock",
            n_ctx=self.config.n_ctx,
        )

    def _check(self) -> None:
        # The error knob is checked before readiness, as upstream.
        if self.config.pre_stream_error is not None:
            raise _pre_stream(self.config.pre_stream_error)
        if not self.ready():
            raise NotReady()

    async def count_tokens(self, request: GenerationRequest) -> int:
        self._check()
        return self.config.prompt_tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._check()
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        cfg = self.config
        delay = cfg.token_delay_ms / 1000
        completion = thinking = calls = 0
        reason = FinishReason.END
        # The scanner llama.cpp's scheduler uses: a held tail that could begin a stop
        # string is sent once the next step shows it does not.
        stops = StopScanner(request.stop) if request.stop else None
        answering = bool(request.messages) and request.messages[-1].role == "tool"
        if request.progress and cfg.prompt_tokens:
            for event in _prefill(cfg):
                yield event
        for sent, step in enumerate(cfg.steps(answering)):
            if cfg.drop_after is not None and sent >= cfg.drop_after:
                return
            if cfg.raise_after is not None and sent >= cfg.raise_after:
                raise RuntimeError("mock backend fault")
            if completion >= request.max_tokens:
                reason = FinishReason.LENGTH
                break
            if delay:
                await asyncio.sleep(delay)
            if step.text is None and stops is not None and (held := stops.flush()):
                yield TextDelta(held)  # a call or thinking ends the text before it: no stop spans it
            if step.tool_name is not None:
                if request.tool_choice == "none":
                    continue
                calls += 1
                yield ToolCall(id=f"mock-call-{calls}", name=step.tool_name,
                               input=step.tool_input if step.tool_input is not None else {})
                continue
            completion += 1
            if step.thinking is not None:
                thinking += 1
                yield ThinkingDelta(step.thinking)
                continue
            text = step.text or ""
            if stops is None:
                yield TextDelta(text)
                continue
            text, stopped = stops.push(text)
            if text:
                yield TextDelta(text)
            if stopped:
                break
        if stops is not None and (held := stops.flush()):  # empty after a stop: the scanner dropped it
            yield TextDelta(held)
        if calls and reason is FinishReason.END:
            reason = FinishReason.TOOL_USE
        matched = stops.matched if stops is not None and reason is FinishReason.END else None
        usage = Usage(prompt_tokens=cfg.prompt_tokens, completion_tokens=completion,
                      cached_tokens=cfg.cached_tokens, thinking_tokens=thinking)
        context = None
        if cfg.n_ctx is not None:
            context = ContextUsage(used=cfg.prompt_tokens + completion, max=cfg.n_ctx)
        yield Done(reason, usage=usage, context=context, stop_sequence=matched)

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        self._check()
        dims = request.dimensions if request.dimensions is not None else 8
        if not 1 <= dims <= MAX_MOCK_DIMENSIONS:
            # u32 allows 4e9 floats per input: refuse before building them on the loop.
            raise BackendInvalidRequest(f"dimensions must be between 1 and {MAX_MOCK_DIMENSIONS}")
        vectors = []
        total = 0
        for text in request.input:
            n = len(text.encode())
            total += n
            vectors.append([(k + 1) / (n + 1) for k in range(dims)])
        return EmbedResult(embeddings=vectors, dimensions=dims, model="mock", input_tokens=total)

