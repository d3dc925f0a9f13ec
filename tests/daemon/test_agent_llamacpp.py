"""Agent features on the real model, through the daemon's real sockets: tool calls,
thinking, structured output, context accounting and token counting.

The embedded Gemma 3 270M is a base model, so where a chat model would choose, a
grammar forces the behaviour: `tool_choice: required` builds one from the declared
tools, and a request's own `grammar` makes the model "think" or "call" on demand.
What is under test is everything around the sampling: prompts with tools, the
parsers that turn text into thinking and tool_use blocks, the accounting.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import pytest_asyncio

from daemon_harness import cleanup, roundtrip, short_tmpdir, start_daemon

# Generous bounds: these wait on a 2-core box that may be busy with other model tests.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Current time in a time zone.",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}}, "required": ["tz"]},
}
SCHEMAS = {t["name"]: t["input_schema"] for t in (WEATHER, TIME)}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def v2(id: str, messages: list[dict], **extra) -> dict:
    body = {"id": id, "messages": messages, "temperature": 0, "max_tokens": 64}
    body.update(extra)
    return body


def user(t: str) -> dict:
    return {"role": "user", "content": [text(t)]}


def blocks(frames: list[dict], kind: str) -> list[dict]:
    return [f["block"] for f in frames if f["type"] == "frame" and f["block"]["type"] == kind]


def joined(frames: list[dict], kind: str) -> str:
    return "".join(b["delta"] for b in blocks(frames, kind))


async def start(d, model_path):
    return await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=2048, n_threads=2,
                              v2=True, v2_addr=str(d / "v2.sock"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(model_path):
    d = short_tmpdir()
    daemon = await start(d, model_path)
    daemon.v2 = str(d / "v2.sock")
    yield daemon
    assert await daemon.stop(60) == 0
    cleanup(d)


async def test_capabilities_offer_tools_on_a_base_model(daemon):
    caps = daemon.server.router.entries[0].caps
    assert caps.tools is True and caps.thinking is False and caps.v2 is True


async def test_required_tool_choice_calls_a_declared_tool_with_valid_input(daemon):
    req = v2("req-tool", [user("Do not use any tools. Just say hi.")], tools=[WEATHER, TIME], tool_choice="required")
    frames = await roundtrip(daemon.v2, req, timeout=280)
    done = frames[-1]
    assert done["type"] == "done", done
    calls = blocks(frames, "tool_use")
    assert len(calls) == 1
    call = calls[0]
    assert call["name"] in SCHEMAS
    jsonschema.validate(call["input"], SCHEMAS[call["name"]])
    assert call["tool_call_id"].startswith("call_")
    assert done["stop_reason"] == "tool_use"
    assert "tool_choice_unsatisfied" not in done
    # The call's own text never reaches the client as text.
    assert "<tool_call>" not in joined(frames, "text")
    # Upstream clients know whole tool_use blocks only: pieces are sent to those who ask.
    assert blocks(frames, "tool_use_delta") == []


async def test_a_call_streams_its_input_in_pieces_when_asked(daemon):
    req = v2("req-pieces", [user("What is the weather in Oslo?")], tools=[WEATHER, TIME], tool_choice="required",
             stream_tool_input=True)
    frames = await roundtrip(daemon.v2, req, timeout=280)
    assert frames[-1]["type"] == "done" and frames[-1]["stop_reason"] == "tool_use", frames[-1]
    (call,) = blocks(frames, "tool_use")
    pieces = blocks(frames, "tool_use_delta")
    assert len(pieces) > 1
    assert {(p["tool_call_id"], p["name"]) for p in pieces} == {(call["tool_call_id"], call["name"])}
    whole = "".join(p["delta"] for p in pieces)
    assert whole == json.dumps(call["input"], ensure_ascii=False)
    jsonschema.validate(json.loads(whole), SCHEMAS[call["name"]])
    kinds = [f["block"]["type"] for f in frames if f["type"] == "frame"]
    assert kinds.index("tool_use") > max(i for i, k in enumerate(kinds) if k == "tool_use_delta")


async def test_pieces_of_a_call_that_ends_malformed_are_followed_by_the_error(daemon):
    # The model's own layout, rewritten in the pieces; then the call never closes properly.
    forced = 'root ::= "<tool_call>{\\"name\\":\\"get_time\\",\\"arguments\\":{\\"tz\\":\\"UTC\\"} oops</tool_call>"'
    frames = await roundtrip(daemon.v2, v2("req-bad-pieces", [user("x")], tools=[TIME], grammar=forced,
                                           stream_tool_input=True), timeout=280)
    assert "".join(p["delta"] for p in blocks(frames, "tool_use_delta")) == '{"tz": "UTC"}'
    assert blocks(frames, "tool_use") == []
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "tool_call_malformed", frames[-1]


async def test_a_tool_result_turn_completes_with_end_turn(daemon):
    messages = [
        user("What is the weather in Paris?"),
        {"role": "assistant", "content": [{"type": "tool_use", "tool_call_id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_call_id": "call_1",
                                      "content": [text('{"temp": 21, "sky": "sunny"}')]}]},
    ]
    # A base model would ramble: a grammar gives it the answer a chat model would write.
    frames = await roundtrip(daemon.v2, v2("req-result", messages, tools=[WEATHER, TIME],
                                           grammar='root ::= "It is sunny in Paris."'), timeout=280)
    done = frames[-1]
    assert done["type"] == "done" and done["stop_reason"] == "end_turn", done
    assert joined(frames, "text") == "It is sunny in Paris."
    assert blocks(frames, "tool_use") == []


async def test_an_unpaired_tool_result_is_invalid(daemon):
    messages = [{"role": "user", "content": [{"type": "tool_result", "tool_call_id": "nope", "content": [text("1")]}]}]
    (err,) = await roundtrip(daemon.v2, v2("req-unpaired", messages, tools=[WEATHER]))
    assert err["code"] == "invalid_request" and "matches no tool_use" in err["message"]


async def test_auto_parses_a_call_the_model_writes(daemon):
    forced = 'root ::= "Let me check. <tool_call>{\\"name\\": \\"get_time\\", \\"arguments\\": {\\"tz\\": \\"UTC\\"}}</tool_call>"'
    frames = await roundtrip(daemon.v2, v2("req-auto", [user("time?")], tools=[WEATHER, TIME], grammar=forced),
                             timeout=280)
    assert joined(frames, "text").strip() == "Let me check."
    (call,) = blocks(frames, "tool_use")
    assert (call["name"], call["input"]) == ("get_time", {"tz": "UTC"})
    assert frames[-1]["stop_reason"] == "tool_use"


async def test_tool_choice_none_never_yields_a_call(daemon):
    forced = 'root ::= "Sure. <tool_call>{\\"name\\": \\"get_time\\", \\"arguments\\": {\\"tz\\": \\"UTC\\"}}</tool_call>"'
    frames = await roundtrip(daemon.v2, v2("req-none", [user("time?")], tools=[WEATHER, TIME], tool_choice="none",
                                           grammar=forced), timeout=280)
    assert blocks(frames, "tool_use") == []
    assert joined(frames, "text").strip() == "Sure."
    assert frames[-1]["stop_reason"] == "end_turn"


async def test_an_unparseable_call_ends_with_tool_call_malformed(daemon):
    forced = 'root ::= "Calling. <tool_call>{not json}</tool_call>"'
    frames = await roundtrip(daemon.v2, v2("req-bad", [user("x")], tools=[TIME], grammar=forced), timeout=280)
    err = frames[-1]
    assert err["type"] == "error" and err["code"] == "tool_call_malformed", err
    assert joined(frames, "text").strip() == "Calling."  # what was sent stays sent


async def test_thinking_streams_as_thinking_blocks_and_never_as_text(daemon):
    forced = 'root ::= "<think>two plus two is four</think>The answer is 4."'
    frames = await roundtrip(daemon.v2, v2("req-think", [user("2+2?")], thinking=True, grammar=forced), timeout=280)
    done = frames[-1]
    assert done["type"] == "done", done
    assert joined(frames, "thinking") == "two plus two is four"
    visible = joined(frames, "text")
    assert visible == "The answer is 4."
    assert "<think>" not in visible and "</think>" not in visible
    assert 0 < done["usage"]["thinking_tokens"] < done["usage"]["output_tokens"]


@pytest.mark.parametrize("wire", ["v1", "v2"])
async def test_response_format_output_validates_against_its_schema(daemon, wire):
    schema = {"type": "object",
              "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"]}
    rf = {"type": "json_schema", "schema": schema}
    if wire == "v1":
        frames = await roundtrip(daemon.infer, {"id": "rf1", "messages": [{"role": "user", "content": "A person:"}],
                                                "temperature": 0, "max_tokens": 80, "response_format": rf}, timeout=280)
        out = frames[-1]["content"]
    else:
        frames = await roundtrip(daemon.v2, v2("rf2", [user("A person:")], max_tokens=80, response_format=rf),
                                 timeout=280)
        out = joined(frames, "text")
    assert frames[-1]["type"] == "done", frames[-1]
    jsonschema.validate(json.loads(out), schema)


async def test_json_object_output_is_an_object(daemon):
    # Greedy, the base model echoes this object and closes it by itself.
    frames = await roundtrip(daemon.v2, v2("rf3", [user('{"ok": true}')], max_tokens=200,
                                           response_format={"type": "json_object"}), timeout=280)
    assert frames[-1]["stop_reason"] == "end_turn"
    assert isinstance(json.loads(joined(frames, "text")), dict)


async def test_refusals_name_their_reason(daemon):
    (err,) = await roundtrip(daemon.v2, v2("bad-1", [user("x")], tools=[TIME], tool_choice="required",
                                           response_format={"type": "json_object"}))
    assert err["code"] == "invalid_request" and "mutually exclusive" in err["message"]
    (err,) = await roundtrip(daemon.v2, v2("bad-2", [user("x")], tools=[TIME], tool_choice="sometimes"))
    assert err["code"] == "invalid_request" and "tool_choice" in err["message"]
    (err,) = await roundtrip(daemon.v2, v2("bad-3", [user("x")], tool_choice="required"))
    assert err["code"] == "invalid_request" and 'tool_choice "required" needs tools' in err["message"]
    unsupported = {"type": "json_schema", "schema": {"type": "object", "not": {"required": ["a"]}}}
    (err,) = await roundtrip(daemon.v2, v2("bad-4", [user("x")], response_format=unsupported))
    assert err["code"] == "invalid_request" and "not" in err["message"]


async def test_v2_has_stop_and_seed_like_v1(daemon):
    sampled = v2("seed-a", [user("Tell me a story.")], temperature=1.0, seed=1234, max_tokens=20)
    first = joined(await roundtrip(daemon.v2, sampled, timeout=280), "text")
    again = joined(await roundtrip(daemon.v2, dict(sampled, id="seed-b"), timeout=280), "text")
    assert first == again and first
    cut = v2("stop-1", [user("x")], grammar='root ::= "alpha beta STOP gamma"', stop=["STOP"])
    frames = await roundtrip(daemon.v2, cut, timeout=280)
    assert joined(frames, "text") == "alpha beta " and frames[-1]["stop_reason"] == "end_turn"
    assert frames[-1]["timings"]["tokens_per_second"] > 0  # v2 done carries timings too


async def test_count_only_matches_the_prompt_a_generation_evaluates(daemon):
    messages = [user("Count me, please.")]
    (count,) = await roundtrip(daemon.v2, v2("cnt-1", messages, tools=[WEATHER], count_only=True))
    assert count["type"] == "count" and count["context"]["max"] == 2048
    frames = await roundtrip(daemon.v2, v2("cnt-2", messages, tools=[WEATHER], max_tokens=1), timeout=280)
    assert count["prompt_tokens"] == frames[-1]["usage"]["input_tokens"] > 20  # tools declared in the prompt
    (count1,) = await roundtrip(daemon.infer, {"id": "cnt-3", "messages": [{"role": "user", "content": "hi"}],
                                               "count_only": True})
    assert count1["type"] == "count" and 0 < count1["prompt_tokens"] < count["prompt_tokens"]


async def test_second_turn_reports_cached_prompt_tokens_and_context(model_path):
    d = short_tmpdir()
    fresh = await start(d, model_path)  # a context nothing has used: the first turn has no cache
    try:
        turn1 = [{"role": "user", "content": "Name a colour."}]
        first = (await roundtrip(fresh.infer, {"id": "c1", "messages": turn1, "temperature": 0,
                                               "max_tokens": 8}, timeout=280))[-1]
        assert first["usage"]["cached_tokens"] == 0
        used = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
        assert first["context"] == {"used": used, "max": 2048}
        turn2 = turn1 + [{"role": "assistant", "content": first["content"]},
                         {"role": "user", "content": "Another one."}]
        second = (await roundtrip(fresh.infer, {"id": "c2", "messages": turn2, "temperature": 0,
                                                "max_tokens": 8}, timeout=280))[-1]
        assert second["usage"]["cached_tokens"] > first["usage"]["prompt_tokens"] // 2
        assert second["context"]["used"] == second["usage"]["prompt_tokens"] + second["usage"]["completion_tokens"]
    finally:
        assert await fresh.stop(60) == 0
        cleanup(d)
