"""OpenAI request bodies -> GenerationRequest / EmbedResolved (surfaces/http/decode.py):
every mapping of docs/http.md's request tables, field by field."""

from __future__ import annotations

import json

import pytest

from inferd.daemon.surfaces.http import decode
from inferd.daemon.surfaces.http.errors import HttpError
from inferd.engine.request import ChatMessage, ResponseFormat, ToolCallSpec, ToolSpec

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "d",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def chat(**body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    req = decode.parse(decode.ChatRequest, json.dumps(body).encode())
    return decode.chat_request(req, "rid")


def refused(fn, **body) -> HttpError:
    with pytest.raises(HttpError) as info:
        fn(**body)
    assert info.value.status == 400
    return info.value


def test_messages_follow_the_hf_convention():
    g = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "wea"}, {"type": "text", "text": "ther?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], tools=[WEATHER])
    assert g.messages == [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="weather?"),
        ChatMessage(role="assistant", content="", tool_calls=[ToolCallSpec("call_1", "get_weather", {"city": "Oslo"})]),
        ChatMessage(role="tool", content="sunny", tool_call_id="call_1", name="get_weather"),
    ]
    assert g.tools == [ToolSpec("get_weather", "d", WEATHER["function"]["parameters"])]
    assert g.id == "rid" and g.prompt is None


def test_sampling_fields():
    g = chat(max_tokens=10, max_completion_tokens=20, temperature=0, top_p=0.5, top_k=3, seed=2**40 + 7,
             stop="END", grammar='root ::= "x"')
    assert (g.max_tokens, g.temperature, g.top_p, g.top_k, g.seed, g.stop, g.grammar) == \
        (20, 0.0, 0.5, 3, 7, ["END"], 'root ::= "x"')
    g = chat(seed=-1, stop=["a", "b"])
    # No max: the policy's default, until the route sizes it by the serving backend's context.
    assert g.seed is None and g.stop == ["a", "b"] and g.max_tokens == 1000
    assert g.temperature == 1.0 and g.top_p == 0.95 and g.top_k == 64
    assert chat(max_tokens=5).max_tokens == 5
    assert decode.max_tokens_asked(decode.parse(decode.ChatRequest, json.dumps(
        {"messages": [], "max_tokens": 10, "max_completion_tokens": 20}).encode())) == 20


def test_tool_choice_forms():
    assert (chat(tools=[WEATHER]).tool_choice, chat(tools=[WEATHER]).tool_name) == ("auto", None)
    assert chat(tools=[WEATHER], tool_choice="none").tool_choice == "none"
    g = chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert (g.tool_choice, g.tool_name) == ("required", "get_weather")
    assert refused(chat, tool_choice="required").param == "tool_choice"
    assert refused(chat, tools=[WEATHER, WEATHER]).param == "tools"
    assert refused(chat, tools=[WEATHER], tool_choice="required",
                   response_format={"type": "json_object"}).param == "tool_choice"
    # "auto" leaves the model free to call or to answer in the schema, as OpenAI's does.
    g = chat(tools=[WEATHER], tool_choice="auto", response_format={"type": "json_object"})
    assert (g.tool_choice, g.response_format) == ("auto", ResponseFormat("json_object"))


def test_response_format_forms():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat(response_format={"type": "text"}).response_format is None
    assert chat(response_format={"type": "json_object"}).response_format == ResponseFormat("json_object")
    g = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert g.response_format == ResponseFormat("json_schema", schema)
    assert chat(response_format={"type": "json_object", "schema": schema}).response_format == \
        ResponseFormat("json_schema", schema)  # llama-server's shorthand
    assert refused(chat, response_format={"type": "json_schema"}).param == "response_format.json_schema"
    assert refused(chat, response_format={"type": "json_object"}, grammar="root ::= x").param == "response_format"


def test_thinking_switches():
    assert chat().thinking is None
    assert chat(thinking=False).thinking is False
    assert chat(chat_template_kwargs={"enable_thinking": True}).thinking is True
    assert chat(reasoning_effort="none").thinking is False
    assert chat(reasoning_effort="high").thinking is True
    assert chat(thinking=True, reasoning_effort="none").thinking is True


def test_refusals_name_their_field():
    assert refused(chat, n=3).param == "n"
    assert refused(chat, top_p=1.5).param == "top_p"
    assert refused(chat, temperature=-1).param == "temperature"
    assert refused(chat, messages=[{"role": "tool", "content": "x"}]).param == "messages.0.tool_call_id"
    assert refused(chat, messages=[{"role": "user", "content": "x", "tool_calls": [
        {"id": "a", "function": {"name": "f"}}]}]).param == "messages.0.tool_calls"
    assert refused(chat, messages=[{"role": "assistant", "tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{oops"}}]}]).param == \
        "messages.0.tool_calls.0.function.arguments"
    err = refused(chat, messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert err.code == "attachment_unsupported"
    assert refused(chat, messages=[{"role": "function", "content": "x"}]).param == "messages.0.role"


def completion(**body):
    req = decode.parse(decode.CompletionRequest, json.dumps(body).encode())
    return decode.completion_request(req, "rid")


def test_completions_take_a_raw_prompt():
    g = completion(prompt="The sea is", stop=["\n"])
    assert g.prompt == "The sea is" and g.messages == [] and g.max_tokens == 16 and g.stop == ["\n"]
    assert completion(prompt=["only one"]).prompt == "only one"
    assert refused(completion, prompt=[[1, 2]]).param == "prompt"


def embeddings(**body):
    req = decode.parse(decode.EmbeddingsRequest, json.dumps(body).encode())
    return decode.embed_request(req, "rid")


def test_embeddings_inputs():
    e = embeddings(input="a", dimensions=8, task="retrieval_query")
    assert (e.input, e.dimensions, e.task) == (["a"], 8, "retrieval_query")
    assert embeddings(input=["a", "b"]).input == ["a", "b"]
    assert refused(embeddings, input=[1, 2]).code == "unsupported_input"
    assert refused(embeddings, input=[""]).param == "input"
    assert "task" in refused(embeddings, input="a", task="astrology").message
