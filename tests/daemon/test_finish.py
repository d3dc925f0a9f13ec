"""The one finish-reason table (daemon/surfaces/finish.py)."""

from __future__ import annotations

from inferd.daemon.surfaces.finish import FINISH, anthropic_stop
from inferd.engine.events import Done, FinishReason


def test_every_reason_a_backend_gives_has_a_row() -> None:
    assert set(FINISH) == set(FinishReason)


def test_each_wire_names_a_turn_that_called_tools_its_own_way() -> None:
    row = FINISH[FinishReason.TOOL_USE]
    assert (row.v1, row.v2, row.chat, row.completion, row.ollama) == ("end", "tool_use", "tool_calls", "stop", "stop")
    assert tuple(FINISH[FinishReason.LENGTH]) == ("length", "max_tokens", "length", "length", "length", "max_tokens",
                                                  "incomplete")
    assert (row.anthropic, row.responses) == ("tool_use", "completed")


def test_anthropic_names_the_stop_sequence_that_ended_the_turn() -> None:
    assert anthropic_stop(Done(FinishReason.END, stop_sequence="###")) == ("stop_sequence", "###")
    assert anthropic_stop(Done(FinishReason.END)) == ("end_turn", None)
    assert anthropic_stop(Done(FinishReason.LENGTH)) == ("max_tokens", None)
