"""A call's arguments stream as pieces while the model writes them (toolcalls/streaming.py):
the pieces come before the call is whole, under the call's id, and add up to exactly
the text the whole call's input is sent as, whatever layout the model wrote.

(Every split of every call in test_chat_toolcalls.py is checked for the sum too:
chat_testlib.normalize.)"""

from __future__ import annotations

import json

import pytest

from chat_testlib import counter_ids

from inferd.engine.chat.toolcalls import GEMMA4, HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, ToolCallMalformed
from inferd.engine.events import TextDelta, ToolCall, ToolCallDelta


def by_char(fmt, text: str, **kw) -> list[object]:
    """Events for `text` fed one character at a time (a token is often a character of JSON)."""
    parser = fmt.parser(id_factory=counter_ids(), **kw)
    events: list[object] = []
    for ch in text:
        events += parser.push(ch)
    return events + parser.finish()


def pieces_of(events: list[object], call: ToolCall) -> list[ToolCallDelta]:
    return [e for e in events if isinstance(e, ToolCallDelta) and e.id == call.id]


def sent_as(call: ToolCall) -> str:
    return json.dumps(call.input, ensure_ascii=False)


@pytest.mark.parametrize("fmt, text", [
    (HERMES, '<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Oslo", "days": [1, 2]}}</tool_call>'),
    (LLAMA3, '{"name": "get_time", "parameters": {"tz": "Europe/Oslo", "days": [1, 2]}}'),
    (LLAMA3, '<|python_tag|>{"name": "get_time", "parameters": {"tz": "Europe/Oslo", "days": [1, 2]}}'),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "Europe/Oslo", "days": [1, 2]}}]'),
    (MISTRAL_ARGS, '[TOOL_CALLS]get_time[ARGS]{"tz": "Europe/Oslo", "days": [1, 2]}'),
])
def test_arguments_stream_in_pieces_before_the_call_is_whole(fmt, text):
    events = by_char(fmt, text)
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    pieces = pieces_of(events, call)
    assert len(pieces) > 1
    assert all(p.name == "get_time" for p in pieces)
    assert "".join(p.arguments for p in pieces) == sent_as(call) == '{"tz": "Europe/Oslo", "days": [1, 2]}'
    assert events.index(pieces[-1]) < events.index(call)
    # The first piece went out while the call's text was far from whole.
    parser = fmt.parser(id_factory=counter_ids())
    early = parser.push(text[:text.index('"Europe')])
    assert [type(e) for e in early if not isinstance(e, TextDelta)] == [ToolCallDelta]


def test_the_models_own_layout_is_rewritten_as_the_call_is_sent():
    raw = ('<tool_call>{"name":"get_weather","arguments":{ "city" :"Z\\u00fcrich\\/\\"old\\"\\ud83d\\ude00",'
           '"days":2E1,"ratio":-0.50,"opts":{"a":[ ],"b":{},"c":null,"d":true}}}</tool_call>')
    events = by_char(HERMES, raw)
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    joined = "".join(p.arguments for p in pieces_of(events, call))
    assert joined == sent_as(call)
    assert joined == '{"city": "Zürich/\\"old\\"😀", "days": 20.0, "ratio": -0.5, "opts": {"a": [], "b": {}, "c": null, "d": true}}'


def test_pieces_wait_for_a_name_written_after_the_arguments():
    events = by_char(HERMES, '<tool_call>{"arguments": {"tz": "UTC"}, "name": "get_time"}</tool_call>')
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    pieces = pieces_of(events, call)
    assert pieces and "".join(p.arguments for p in pieces) == '{"tz": "UTC"}'


def test_several_calls_each_stream_under_their_own_id():
    text = ('[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}, '
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    events = by_char(MISTRAL, text)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    for call in calls:
        assert "".join(p.arguments for p in pieces_of(events, call)) == sent_as(call)
    # The first call's pieces all come before the second call's first piece.
    first, second = (pieces_of(events, c) for c in calls)
    assert events.index(first[-1]) < events.index(second[0])


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>',  # arguments as a string
    '<tool_call>{"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}</tool_call>',
])
def test_calls_not_written_as_an_object_of_arguments_arrive_whole(text):
    events = by_char(HERMES, text)
    assert [e for e in events if not isinstance(e, TextDelta)] == [ToolCall("id0", "get_time", {"tz": "UTC"})]


def test_gemma_values_arrive_whole():
    events = by_char(GEMMA4, '<|tool_call>call:get_time{tz:<|"|>UTC<|"|>}<tool_call|>')
    assert [e for e in events if not isinstance(e, TextDelta)] == [ToolCall("id0", "get_time", {"tz": "UTC"})]


def test_a_call_that_turns_out_malformed_ends_after_its_pieces():
    parser = HERMES.parser(id_factory=counter_ids())
    events = parser.push('<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}')
    assert [type(e) for e in events] == [ToolCallDelta] and events[0].arguments == '{"tz": "UTC"}'
    with pytest.raises(ToolCallMalformed):
        parser.push(" oops</tool_call>")


def test_a_call_to_an_undeclared_tool_shows_no_pieces():
    parser = HERMES.parser(id_factory=counter_ids(), known_names={"get_weather"})
    assert parser.push('<tool_call>{"name": "rm_rf", "arguments": {"path": "/"') == []
    with pytest.raises(ToolCallMalformed, match="not a declared tool"):
        parser.push("}}</tool_call>")
