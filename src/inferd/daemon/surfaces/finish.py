"""Every wire's name for why a generation ended: the one table (issue 17).

A backend ends a stream with END, LENGTH or TOOL_USE; a generation that is cancelled
or fails has no Done, so the wires' `cancelled` / `error` stop reasons are never said
for one (they stay in proto, where upstream defines them).

Anthropic's `stop_sequence` is END with `Done.stop_sequence` set (`anthropic_stop`).
The Responses API has no finish reason: LENGTH makes the response `incomplete` (with
`incomplete_details.reason` "max_output_tokens"), the others `completed`.
"""

from __future__ import annotations

from typing import NamedTuple

from ...engine.events import Done, FinishReason
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
    #: Anthropic's `stop_reason` on /v1/messages.
    anthropic: str
    #: The Responses API's `status` of the response (and of its last output item).
    responses: str


FINISH: dict[FinishReason, FinishOnWire] = {
    FinishReason.END: FinishOnWire(StopReason.END, StopReasonV2.END_TURN, "stop", "stop", "stop", "end_turn",
                                   "completed"),
    FinishReason.LENGTH: FinishOnWire(StopReason.LENGTH, StopReasonV2.MAX_TOKENS, "length", "length", "length",
                                      "max_tokens", "incomplete"),
    # v1 carries no tool calls: a turn that made some simply ended.
    FinishReason.TOOL_USE: FinishOnWire(StopReason.END, StopReasonV2.TOOL_USE, "tool_calls", "stop", "stop",
                                        "tool_use", "completed"),
}


def anthropic_stop(done: Done) -> tuple[str, str | None]:
    """Anthropic's (`stop_reason`, `stop_sequence`) for a finished generation."""
    if done.reason is FinishReason.END and done.stop_sequence is not None:
        return "stop_sequence", done.stop_sequence
    return FINISH[done.reason].anthropic, None
