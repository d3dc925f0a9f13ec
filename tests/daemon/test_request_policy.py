"""The one request policy (daemon/pipeline/policy.py, ADR 0020): defaults, the rules
between fields, and the same engine request whichever wire said it."""

from __future__ import annotations

import json

import pytest

from inferd.daemon.pipeline.policy import InvalidCombination, generation_request
from inferd.daemon.surfaces import v1 as v1_surface
from inferd.daemon.surfaces import v2 as v2_surface
from inferd.daemon.surfaces.http import decode
from inferd.daemon.surfaces.http.errors import HttpError
from inferd.engine.request import ChatMessage, ResponseFormat, ToolSpec
from inferd.proto import v1, v2
from inferd.proto.errors import InvalidRequest

HI = [ChatMessage(role="user", content="hi")]
TOOL = ToolSpec("get_time", "the time", {"type": "object", "properties": {}})
JSON = ResponseFormat("json_object")


def test_what_is_left_out_gets_upstreams_v1_defaults():
    g = generation_request("r", messages=HI)
    assert (g.temperature, g.top_p, g.top_k, g.max_tokens) == (1.0, 0.95, 64, 1000)
    assert (g.tool_choice, g.tool_name, g.seed, g.stop, g.grammar, g.response_format) == \
        ("auto", None, None, [], "", None)


def test_what_is_said_is_kept_and_a_wire_chooses_only_its_max_tokens_default():
    g = generation_request("r", messages=HI, temperature=0, top_p=1, top_k=0, max_tokens=0, seed=7, stop=("x",))
    assert (g.temperature, g.top_p, g.top_k, g.max_tokens, g.seed, g.stop) == (0.0, 1.0, 0, 0, 7, ["x"])
    assert isinstance(g.temperature, float)
    assert generation_request("r", messages=HI, default_max_tokens=16).max_tokens == 16
    assert generation_request("r", messages=HI, max_tokens=3, default_max_tokens=16).max_tokens == 3


def refusal(**said) -> InvalidCombination:
    with pytest.raises(InvalidCombination) as info:
        generation_request("r", messages=HI, **said)
    assert isinstance(info.value, InvalidRequest)  # the NDJSON wires answer invalid_request
    return info.value


def test_a_forced_call_needs_tools():
    err = refusal(tool_choice="required")
    assert (err.detail, err.param) == ('tool_choice "required" needs tools', "tool_choice")
    assert refusal(tool_name="get_time").param == "tool_choice"
    # Nothing is forced: with no tools there is nothing to choose, and nothing to refuse.
    assert generation_request("r", messages=HI, tool_choice="auto").tool_choice == "auto"
    assert generation_request("r", messages=HI, tool_choice="none").tool_choice == "none"


def test_one_grammar_per_generation():
    err = refusal(response_format=JSON, grammar='root ::= "a"')
    assert (err.detail, err.param) == ("response_format and grammar are mutually exclusive", "response_format")


@pytest.mark.parametrize("forced", [{"tool_choice": "required"}, {"tool_name": "get_time"}])
def test_a_forced_call_excludes_a_schema_and_a_grammar(forced):
    err = refusal(tools=[TOOL], response_format=JSON, **forced)
    assert err.param == "tool_choice" and "mutually exclusive" in err.detail and "response_format" in err.detail
    err = refusal(tools=[TOOL], grammar='root ::= "a"', **forced)
    assert err.param == "tool_choice" and "mutually exclusive" in err.detail and "grammar" in err.detail


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_a_free_choice_goes_with_a_schema(choice):
    g = generation_request("r", messages=HI, tools=[TOOL], tool_choice=choice, response_format=JSON)
    assert (g.tool_choice, g.response_format, g.tools) == (choice or "auto", JSON, [TOOL])


def test_a_named_tool_is_a_required_call():
    g = generation_request("r", messages=HI, tools=[TOOL], tool_name="get_time")
    assert (g.tool_choice, g.tool_name) == ("required", "get_time")


# ---- the same answer whatever the wire -----------------------------------------------

def from_v1(**fields):
    line = json.dumps({"id": "r", "messages": [{"role": "user", "content": "hi"}], **fields})
    return v1_surface.generation_request(v1.parse_request(line).resolve())


def from_v2(**fields):
    line = json.dumps({"id": "r", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                       **fields})
    return v2_surface.generation_request(v2.parse_request(line).resolve())


def from_http(**fields):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()
    return decode.chat_request(decode.parse(decode.ChatRequest, body), "r")


@pytest.mark.parametrize("fields", [{}, {"temperature": 0.2, "top_p": 0.5, "top_k": 3, "max_tokens": 9, "seed": 4,
                                        "stop": ["x"]}, {"grammar": 'root ::= "a"'}])
def test_every_wire_builds_the_same_request(fields):
    built = [from_v1(**fields), from_v2(**fields), from_http(**fields)]
    assert built[0] == built[1] == built[2]


def test_every_wire_refuses_a_schema_with_a_grammar():
    both = {"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}
    for build in (from_v1, from_v2):
        with pytest.raises(InvalidRequest, match="response_format and grammar are mutually exclusive"):
            build(**both)
    with pytest.raises(HttpError) as info:
        from_http(**both)
    assert info.value.param == "response_format" and "mutually exclusive" in info.value.message


V2_TOOL = {"name": "get_time", "description": "", "input_schema": {"type": "object"}}
HTTP_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def test_v2_and_http_agree_on_tool_choice_with_a_schema():
    schema = {"type": "object"}
    auto_v2 = from_v2(tools=[V2_TOOL], tool_choice="auto", response_format={"type": "json_schema", "schema": schema})
    auto_http = from_http(tools=[HTTP_TOOL], tool_choice="auto",
                          response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert (auto_v2.tool_choice, auto_v2.response_format) == (auto_http.tool_choice, auto_http.response_format) \
        == ("auto", ResponseFormat("json_schema", schema))
    with pytest.raises(InvalidRequest, match="forced tool call and response_format are mutually exclusive"):
        from_v2(tools=[V2_TOOL], tool_choice="required", response_format={"type": "json_object"})
    with pytest.raises(HttpError, match="forced tool call and response_format are mutually exclusive"):
        from_http(tools=[HTTP_TOOL], tool_choice="required", response_format={"type": "json_object"})
