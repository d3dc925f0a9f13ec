"""The one vocabulary between an engine and the daemon: what a generation yields.

Every backend's `generate()` stream yields any mix of TextDelta, ThinkingDelta,
ToolCallDelta and ToolCall, then exactly one Done, always last. A request that set
`progress` also gets PromptProgress events before its first output (ADR 0029); no
other request ever sees one. Ending (or raising) before Done is a
mid-stream failure, which every surface reports as `backend_unavailable` after the
partial output. Closing the stream (`aclose()`) cancels the generation.

The surfaces translate these events at their edge: v1 sends TextDelta as token
frames and drops thinking and calls; v2 sends delta blocks, `tool_use_delta` blocks
(when the request asked for them) and whole tool_use blocks; the OpenAI HTTP surface
sends `content`, `reasoning_content` and `tool_calls` deltas (argument pieces).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..proto.v1 import Timings  # one definition: the wire's `done.timings`


class FinishReason(StrEnum):
    """Why a generation ended, before any wire names it (v1, v2 and HTTP map it)."""

    END = "end"  # end of generation or a stop string
    LENGTH = "length"  # max_tokens or the context ran out
    TOOL_USE = "tool_use"  # the model emitted at least one tool call


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call's arguments, as the model writes them.

    The pieces of one call (same `id`) concatenate to the text the whole call's input
    is sent as (`json.dumps(input, ensure_ascii=False)`; a key the model writes twice
    is the exception, chat/toolcalls/streaming.py), and the call's `ToolCall` follows
    them: it is still the authority, checked whole. A backend may send a call
    with no pieces before it (it then arrives in one piece); a call whose text turns
    out malformed ends the stream with ToolCallMalformed after its pieces.
    """

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class PromptProgress:
    """How much of the prompt is read: `done` of `total` tokens, of which `cached` came
    from the KV cache. Only for a request with `progress` set: once as reading starts
    (done == cached), then after each chunk; the last has done == total."""

    done: int
    total: int
    cached: int = 0


@dataclass(slots=True)
class ToolCall:
    """One complete, parsed tool call, after any ToolCallDelta pieces of it."""

    id: str
    name: str
    input: Any = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens that came from the KV prefix cache (not evaluated again).
    cached_tokens: int = 0
    #: Completion tokens that were reasoning (inside the thinking markers).
    thinking_tokens: int = 0


@dataclass(slots=True)
class ContextUsage:
    """Tokens held in the context after this turn, and the context's size."""

    used: int
    max: int


@dataclass(slots=True)
class Done:
    reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    timings: Timings | None = None
    context: ContextUsage | None = None
    #: True only when tool_choice was "required" and no call was produced.
    tool_choice_unsatisfied: bool = False
    #: The stop string that ended an END generation (None: end of generation, or a
    #: backend that cannot tell). Only Anthropic's wire names it (`stop_sequence`).
    stop_sequence: str | None = None


__all__ = ["FinishReason", "TextDelta", "ThinkingDelta", "ToolCallDelta", "ToolCall", "PromptProgress", "Timings",
           "Usage", "ContextUsage", "Done", "Event", "EventStream"]

Event = TextDelta | ThinkingDelta | ToolCallDelta | ToolCall | PromptProgress | Done
EventStream = AsyncIterator[Event]
