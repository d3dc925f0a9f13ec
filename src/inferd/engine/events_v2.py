"""The events a backend's v2 stream yields (upstream-engine §1.3).

A `generate_v2()` stream yields any mix of TextDelta, ThinkingDelta and ToolUse,
then exactly one DoneV2, always last. Ending (or raising) before DoneV2 is a
mid-stream failure that the daemon reports as `backend_unavailable`; closing the
iterator cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..proto.v2 import StopReasonV2


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ToolUse:
    """One complete, parsed tool call; a backend never streams a partial one."""

    tool_call_id: str
    name: str
    input: Any = field(default_factory=dict)


@dataclass(slots=True)
class DoneV2:
    stop_reason: StopReasonV2
    input_tokens: int
    output_tokens: int


EventV2 = TextDelta | ThinkingDelta | ToolUse | DoneV2
TokenStreamV2 = AsyncIterator[EventV2]
