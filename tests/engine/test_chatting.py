"""ChatStyle: how the llama.cpp backend prompts a model with tools and reads its output,
on real chat templates of the model families (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.engine.backend import BackendInvalidRequest
from inferd.engine.events import TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from inferd.engine.llamacpp.chatting import ChatStyle
from inferd.engine.llamacpp.templates import GemmaRenderer, JinjaRenderer
from inferd.engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec, ToolSpec

TEMPLATES = Path(__file__).parent / "chat" / "templates"
WEATHER = ToolSpec("get_weather", "Weather for a city.",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def jinja(name: str) -> JinjaRenderer:
    return JinjaRenderer((TEMPLATES / name).read_text(), bos_token="<s>", eos_token="</s>")


def conversation() -> list[ChatMessage]:
    return [
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", "", tool_calls=[ToolCallSpec("call_7", "get_weather", {"city": "Oslo"})]),
        ChatMessage("tool", '{"temp": -3}', tool_call_id="call_7", name="get_weather"),
    ]


def drain(parser, pieces: list[str]) -> list:
    out = []
    for p in pieces:
        out += parser.push(p)
    return out + parser.finish()


def test_a_template_that_takes_tools_renders_them_itself():
    style = ChatStyle(jinja("Qwen-Qwen2.5-7B-Instruct.jinja"))
    assert style.tools_native and style.tool_format.name == "hermes"
    plan = style.plan(GenerationRequest(id="r", messages=conversation(), tools=[WEATHER]))
    assert '"name": "get_weather"' in plan.prompt  # the declaration, in Qwen's own words
    assert "<tool_call>" in plan.prompt and "Oslo" in plan.prompt  # the earlier call
    assert "<tool_response>" in plan.prompt and '{"temp": -3}' in plan.prompt  # its result
    assert plan.grammar == ""  # auto: no constraint


def test_a_template_without_tools_gets_them_spelled_out_in_our_format():
    style = ChatStyle(GemmaRenderer())
    assert not style.tools_native and style.tool_format.name == "builtin"
    plan = style.plan(GenerationRequest(id="r", messages=conversation(), tools=[WEATHER]))
    assert "get_weather" in plan.prompt.split("<start_of_turn>model")[0]  # declared in the first turn
    assert plan.prompt.count("<start_of_turn>model\n") == 2  # the call turn, then the reply's
    assert '{"temp": -3}' in plan.prompt


def test_required_installs_a_call_grammar_and_none_hides_the_tools():
    style = ChatStyle(GemmaRenderer())
    base = dict(id="r", messages=[ChatMessage("user", "hi")], tools=[WEATHER])
    required = style.plan(GenerationRequest(**base, tool_choice="required"))
    assert "get_weather" in required.grammar and "root" in required.grammar
    named = style.plan(GenerationRequest(**base, tool_name="get_weather"))
    assert named.grammar
    with pytest.raises(BackendInvalidRequest, match="tool_choice"):
        style.plan(GenerationRequest(**base, tool_name="no_such_tool"))
    none = style.plan(GenerationRequest(**base, tool_choice="none"))
    assert "get_weather" not in none.prompt and none.grammar == ""
    # A call the model writes anyway is parsed away, never shown and never yielded.
    events = drain(none.new_parser(), ['Sure <tool_call>{"name": "get_weather", ', '"arguments": {"city": "X"}}</tool_call>'])
    assert [e for e in events if isinstance(e, (ToolCall, ToolCallDelta))] == []
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == "Sure"


def test_response_format_compiles_or_is_refused_by_name():
    style = ChatStyle(GemmaRenderer())
    ok = style.plan(GenerationRequest(id="r", messages=[ChatMessage("user", "x")],
                                      response_format=ResponseFormat("json_schema", {"type": "object"})))
    assert "root" in ok.grammar
    with pytest.raises(BackendInvalidRequest, match="response_format.*not"):
        style.plan(GenerationRequest(id="r", messages=[ChatMessage("user", "x")],
                                     response_format=ResponseFormat("json_schema", {"not": {"type": "null"}})))


def test_thinking_templates_are_detected_and_their_markers_split_off():
    qwen3 = ChatStyle(jinja("Qwen-Qwen3-0.6B.jinja"))
    assert qwen3.thinks
    plan = qwen3.plan(GenerationRequest(id="r", messages=[ChatMessage("user", "2+2?")], thinking=True))
    events = drain(plan.new_parser(), ["<thi", "nk>add them", "</th", "ink>\n\n4"])
    assert events == [ThinkingDelta("add them"), TextDelta("4")]
    off = qwen3.plan(GenerationRequest(id="r", messages=[ChatMessage("user", "2+2?")], thinking=False))
    assert off.prompt != plan.prompt  # enable_thinking reached the template
    assert not ChatStyle(GemmaRenderer()).thinks
