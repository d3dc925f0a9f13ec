"""Every wire's name for why a generation ended: the one table (issue 17).

A backend ends a stream with END, LENGTH or TOOL_USE; a generation that is cancelled
or fails has no Done, so the wires' `cancelled` / `error` stop reasons are never said
for one (they stay in proto, where upstream defines them).
"""

from __future__ import annotations

from typing import NamedTuple

from ...engine.events import FinishReason
from ...proto.v1 import StopReason
from ...proto.v2 import StopReasonV2


class FinishOnWire(NamedTuple):
    v1: StopReason
    v2: StopReasonV2
    #: OpenAI's `finish_reason` on /v1/chat/completions.
    chat: str
    #: ... on /v1/completions, which has no tool calls to finish with.
    completion: str
    #: Ollama's `done_reason` (a turn that called tools simply stopped).
    ollama: str


FINISH: dict[FinishReason, FinishOnWire] = {
    FinishReason.END: FinishOnWire(StopReason.END, StopReasonV2.END_TURN, "stop", "stop", "stop"),
    FinishReason.LENGTH: FinishOnWire(StopReason.LENGTH, StopReasonV2.MAX_TOKENS, "length", "length", "length"),
    # v1 carries no tool calls: a turn that made some simply ended.
    FinishReason.TOOL_USE: FinishOnWire(StopReason.END, StopReasonV2.TOOL_USE, "tool_calls", "stop", "stop"),
}
