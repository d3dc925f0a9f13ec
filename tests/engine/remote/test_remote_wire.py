"""The remote backend's pure parts: settings, the SSE reader, request bodies, chunk folding."""

from __future__ import annotations

import json

import pytest

from inferd.engine.events import Done, FinishReason, TextDelta, ThinkingDelta, ToolCall
from inferd.engine.backend import AttachmentUnsupported, BackendInvalidRequest, ToolCallMalformed
from inferd.engine.remote import OpenAISettings
from inferd.engine.remote.sse import SSEDecoder, SSEError, SSEEvent
from inferd.engine.remote.wire import StreamState, chat_body, completion_body, message_dict
from inferd.engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec, ToolSpec

pytestmark = pytest.mark.timeout(30)


# ---- settings -------------------------------------------------------------------------

@pytest.mark.parametrize("given, root", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
    ("https://gw.example.com/v1beta/openai/", "https://gw.example.com/v1beta/openai"),
    (" http://[::1]:9000 ", "http://[::1]:9000/v1"),
])
def test_base_url_with_or_without_v1(given, root):
    assert OpenAISettings(base_url=given).base_url == root


@pytest.mark.parametrize("bad, words", [
    ("ftp://host/v1", "http"),
    ("127.0.0.1:8000", "http"),
    ("http:///v1", "no host"),
    ("http://user:secret@host/v1", "credentials"),
    ("http://host/v1?key=abc", "query"),
    ("http://host:99999/v1", "port"),
])
def test_bad_base_urls_are_refused_with_a_reason(bad, words):
    with pytest.raises(ValueError, match=words):
        OpenAISettings(base_url=bad)


def test_settings_defaults_and_validation():
    s = OpenAISettings(base_url="http://h:1")
    assert (s.connect_timeout, s.first_token_timeout, s.idle_timeout, s.max_concurrency) == (5.0, 60.0, 30.0, 4)
    assert s.model is None and s.api_key_env is None and s.ca_file is None and s.embed is True
    for kwargs in ({"idle_timeout": 0}, {"connect_timeout": -1}, {"max_concurrency": 0},
                   {"api_key_env": "NOT A NAME"}, {"api_key_env": "sk-live-abc=1"}, {"model": " "}):
        with pytest.raises(ValueError):
            OpenAISettings(base_url="http://h:1", **kwargs)
    assert "api_key" not in OpenAISettings.__dataclass_fields__, "settings must never hold a key"


# ---- SSE ------------------------------------------------------------------------------

def test_sse_events_split_anywhere_decode_the_same():
    stream = (b"\xef\xbb\xbf: ping\r\n\r\ndata: {\"a\": 1}\r\n\r\nevent: x\ndata: l1\ndata:l2\n\n"
              b"id: 7\nretry: 5\ndata: [DONE]\r\r")
    want = [SSEEvent('{"a": 1}'), SSEEvent("l1\nl2", "x"), SSEEvent("[DONE]")]
    whole = SSEDecoder()
    assert whole.feed(stream) + whole.close() == want
    for cut in range(1, len(stream)):
        d = SSEDecoder()
        assert d.feed(stream[:cut]) + d.feed(stream[cut:]) + d.close() == want, cut
    bytewise = SSEDecoder()
    got = [e for i in range(len(stream)) for e in bytewise.feed(stream[i:i + 1])] + bytewise.close()
    assert got == want


def test_sse_llama_server_error_line_and_unterminated_tail():
    d = SSEDecoder()
    assert d.feed(b'error: {"code": 500, "message": "boom"}\n\ndata: tail-without-blank-line\n') == [
        SSEEvent('{"code": 500, "message": "boom"}', "error")]
    assert d.close() == []  # an event not closed by a blank line is dropped


def test_sse_bounds_and_garbage():
    with pytest.raises(SSEError, match="line longer"):
        SSEDecoder(max_event_bytes=64).feed(b"data: " + b"x" * 100)
    d = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError, match="event larger"):
        for _ in range(10):
            d.feed(b"data: " + b"x" * 20 + b"\n")
    with pytest.raises(SSEError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\xfe\n\n")


# ---- request bodies -------------------------------------------------------------------

def _request(**kw) -> GenerationRequest:
    kw.setdefault("messages", [ChatMessage("user", "hi")])
    return GenerationRequest(id="r1", **kw)


def test_chat_body_plain():
    body = chat_body(_request(temperature=0.0, top_p=0.5, max_tokens=7), "m")
    assert body == {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                    "max_tokens": 7, "temperature": 0.0, "top_p": 0.5,
                    "messages": [{"role": "user", "content": "hi"}]}
    assert "grammar" not in body and "tools" not in body and "top_k" not in body


def test_chat_body_every_option():
    tools = [ToolSpec("get_weather", "Weather now", {"type": "object", "properties": {"city": {"type": "string"}}})]
    msgs = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "weather in Oslo?"),
        ChatMessage("assistant", "", tool_calls=[ToolCallSpec("call_1", "get_weather", {"city": "Oslo"})]),
        ChatMessage("tool", "12 C", tool_call_id="call_1", name="get_weather"),
    ]
    req = _request(messages=msgs, tools=tools, tool_choice="required", seed=42, stop=["\n\n"],
                   response_format=ResponseFormat("json_schema", {"type": "object"}), grammar='root ::= "x"',
                   thinking=False, top_k=20)
    body = chat_body(req, "m", extensions=True)
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "content": "12 C", "tool_call_id": "call_1"},
    ]
    assert json.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert body["tools"] == [t.as_openai() for t in tools]
    assert body["tool_choice"] == "required"
    assert body["seed"] == 42 and body["stop"] == ["\n\n"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "response",
                                                                            "schema": {"type": "object"}}}
    assert body["grammar"] == 'root ::= "x"'
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"enable_thinking": False}


def test_tool_choice_forms():
    tools = [ToolSpec("f")]
    assert chat_body(_request(tools=tools), "m")["tool_choice"] == "auto"
    assert chat_body(_request(tools=tools, tool_choice="none"), "m")["tool_choice"] == "none"
    assert chat_body(_request(tools=tools, tool_name="f"), "m")["tool_choice"] == {
        "type": "function", "function": {"name": "f"}}
    with pytest.raises(BackendInvalidRequest):
        chat_body(_request(tool_choice="required"), "m")


def test_json_object_and_completion_body():
    body = chat_body(_request(response_format=ResponseFormat("json_object")), "m")
    assert body["response_format"] == {"type": "json_object"}
    body = completion_body(GenerationRequest(id="r", prompt="Once upon", max_tokens=3), "m")
    assert body["prompt"] == "Once upon" and "messages" not in body and body["stream"] is True
    with pytest.raises(BackendInvalidRequest):
        completion_body(GenerationRequest(id="r", prompt="x", tools=[ToolSpec("f")]), "m")


def test_messages_the_remote_cannot_take():
    with pytest.raises(AttachmentUnsupported, match="attachments"):
        message_dict(ChatMessage("user", "look", media=["img-1"]))
    with pytest.raises(BackendInvalidRequest, match="tool_call_id"):
        message_dict(ChatMessage("tool", "result"))
    # Arguments already a JSON string travel unchanged.
    m = message_dict(ChatMessage("assistant", "ok", tool_calls=[ToolCallSpec("c", "f", '{"a":1}')]))
    assert m["content"] == "ok" and m["tool_calls"][0]["function"]["arguments"] == '{"a":1}'


# ---- folding chunks -------------------------------------------------------------------

def _delta(**delta) -> dict:
    finish = delta.pop("finish", None)
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_text_thinking_tool_calls_and_usage():
    st = StreamState()
    assert st.feed(_delta(role="assistant")) == []
    assert not st.produced
    assert st.feed(_delta(reasoning_content="hmm")) == [ThinkingDelta("hmm")]
    assert st.feed(_delta(reasoning="again", reasoning_content="")) == [ThinkingDelta("again")]
    assert st.feed(_delta(content="Hel")) + st.feed(_delta(content="lo")) == [TextDelta("Hel"), TextDelta("lo")]
    st.feed(_delta(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}]))
    st.feed(_delta(tool_calls=[{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "f", "arguments": '{"x"'}}]))
    st.feed(_delta(tool_calls=[{"index": 0, "function": {"arguments": ': [1, 2]}'}}]))
    st.feed(_delta(finish="tool_calls"))
    st.feed({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9,
                                      "prompt_tokens_details": {"cached_tokens": 4},
                                      "completion_tokens_details": {"reasoning_tokens": 2}}})
    calls = st.tool_calls()
    assert calls == [ToolCall("call_a", "f", {"x": [1, 2]}), ToolCall("call_b", "g", {})]
    done = st.done(calls, None, 100, tool_required=True)
    assert done.reason is FinishReason.TOOL_USE and not done.tool_choice_unsatisfied
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens,
            done.usage.thinking_tokens) == (11, 9, 4, 2)
    assert (done.context.used, done.context.max) == (20, 100)


@pytest.mark.parametrize("reason, want", [("stop", FinishReason.END), ("length", FinishReason.LENGTH),
                                          ("tool_calls", FinishReason.TOOL_USE), ("content_filter", FinishReason.END),
                                          (None, FinishReason.END)])
def test_finish_reasons(reason, want):
    st = StreamState()
    st.feed(_delta(content="x", finish=reason))
    done = st.done([], None, None, tool_required=False)
    assert isinstance(done, Done) and done.reason is want and done.context is None


def test_no_usage_counts_output_chunks_and_flags_unsatisfied_tool_choice():
    st = StreamState()
    for piece in ("a", "b", "c"):
        st.feed(_delta(content=piece))
    st.feed(_delta(finish="stop"))
    done = st.done([], None, None, tool_required=True)
    assert done.usage.completion_tokens == 3 and done.usage.prompt_tokens == 0
    assert done.tool_choice_unsatisfied


def test_completion_text_and_whole_message():
    st = StreamState()
    assert st.feed({"choices": [{"index": 0, "text": " upon", "finish_reason": None}]}) == [TextDelta(" upon")]
    whole = StreamState()
    events = whole.feed({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "sure", "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{\"k\": true}"}}]}}]})
    assert events == [TextDelta("sure")] and whole.tool_calls() == [ToolCall("c9", "f", {"k": True})]


def test_malformed_tool_call_arguments_raise():
    st = StreamState()
    st.feed(_delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"x": '}}]))
    with pytest.raises(ToolCallMalformed) as info:
        st.tool_calls()
    assert info.value.kind == "tool_call_malformed" and "'f'" in info.value.message
    nameless = StreamState()
    nameless.feed(_delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    with pytest.raises(ToolCallMalformed, match="no function name"):
        nameless.tool_calls()
