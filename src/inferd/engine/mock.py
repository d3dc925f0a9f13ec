"""The mock backend: a product feature for protocol tests and for users without a model.

It replays a fixed token tape and can be told to misbehave (upstream-engine §2): fail
before streaming, drop the stream after N tokens without a Done, or delay each token.
Embeddings are deterministic: element k of the vector for input s is (k+1)/(len(s)+1),
with len the UTF-8 byte length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from ..proto.embed import EmbedResolved
from ..proto.v1 import Resolved, StopReason
from ..proto.v2 import ResolvedV2, StopReasonV2
from .backend import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendInvalidRequest,
    Done,
    EmbedResult,
    Event,
    NotReady,
    Token,
    Unavailable,
)
from .events_v2 import DoneV2, EventV2, TextDelta, ToolUse

MAX_MOCK_DIMENSIONS = 4096

PreStreamError = Literal["NotReady", "InvalidRequest", "Unavailable"]


@dataclass
class MockConfig:
    tokens: list[str] = field(default_factory=lambda: ["mock-response"])
    token_delay_ms: int = 0
    drop_after: int | None = None
    pre_stream_error: PreStreamError | None = None
    ready_delay_ms: int = 0
    embed: bool = True
    # Raise from inside the stream after N tokens (a backend fault, not a clean drop).
    raise_after: int | None = None
    # v2 only: after the tape, one ToolUse with this name (input {}), stop reason
    # tool_use - a way to exercise tool frames without a model that calls tools.
    emit_tool_use: str | None = None


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
        return BackendCapabilities(v2=True, thinking=True, embed=self.config.embed, model="mock")

    def _check(self) -> None:
        # The error knob is checked before readiness, as upstream.
        if self.config.pre_stream_error is not None:
            raise _pre_stream(self.config.pre_stream_error)
        if not self.ready():
            raise NotReady()

    async def _tape(self) -> AsyncIterator[str]:
        """The configured tokens, with the fault knobs applied; one tape drives both wires."""
        cfg = self.config
        delay = cfg.token_delay_ms / 1000
        for sent, tok in enumerate(cfg.tokens):
            if cfg.drop_after is not None and sent >= cfg.drop_after:
                return
            if cfg.raise_after is not None and sent >= cfg.raise_after:
                raise RuntimeError("mock backend fault")
            if delay:
                await asyncio.sleep(delay)
            yield tok

    async def generate(self, request: Resolved) -> AsyncIterator[Event]:
        self._check()
        return self._stream()

    async def _stream(self) -> AsyncIterator[Event]:
        sent = 0
        async for tok in self._tape():
            yield Token(tok)
            sent += 1
        if self.config.drop_after is None or sent < self.config.drop_after:
            yield Done(StopReason.END, prompt_tokens=0, completion_tokens=sent)

    async def generate_v2(self, request: ResolvedV2) -> AsyncIterator[EventV2]:
        self._check()
        return self._stream_v2()

    async def _stream_v2(self) -> AsyncIterator[EventV2]:
        sent = 0
        async for tok in self._tape():
            yield TextDelta(tok)
            sent += 1
        if self.config.drop_after is not None and sent >= self.config.drop_after:
            return
        stop = StopReasonV2.END_TURN
        if self.config.emit_tool_use is not None:
            yield ToolUse(tool_call_id="mock-call-1", name=self.config.emit_tool_use, input={})
            stop = StopReasonV2.TOOL_USE
        yield DoneV2(stop, input_tokens=0, output_tokens=sent)

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
