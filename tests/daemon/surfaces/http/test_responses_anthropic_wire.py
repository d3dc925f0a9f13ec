"""/v1/responses and /v1/messages on the mock backend: the response objects, the
stream events in order with their sequence numbers, and every error shape against the
documented one (OpenAI's for the Responses API, Anthropic's for Messages)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from http_helpers import base_url, host_port, raw_request, read_head

SCRIPT = [{"thinking": "let me see"}, {"text": "Hel"}, {"text": "lo"},
          {"tool_call": {"name": "get_weather", "input": {"city": "Oslo"}}}]
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}}}
ATOOL = {"name": "get_weather", "input_schema": TOOL["parameters"]}
MSG = {"model": "mock", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_responses_whole_object(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT, "prompt_tokens": 7, "cached_tokens": 3})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/responses", json={"model": "mock", "input": "hi", "tools": [TOOL], "store": True})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "response" and body["status"] == "completed"
    assert body["id"].startswith("resp_") and body["model"] == "mock" and body["store"] is False
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "let me see"}]
    assert body["output"][1]["content"][0]["text"] == "Hello"
    call = body["output"][2]
    assert call["call_id"] == "mock-call-1" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
    assert body["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 3,
                             "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 10}


async def test_responses_stream_events_in_order(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/responses", json={"model": "mock", "input": "hi", "tools": [TOOL], "stream": True})
    events = sse(r.text)
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.completed"
    assert names.count("response.output_item.added") == names.count("response.output_item.done") == 3
    assert "".join(e["delta"] for n, e in events if n == "response.output_text.delta") == "Hello"
    (args,) = [e for n, e in events if n == "response.function_call_arguments.done"]
    assert json.loads(args["arguments"]) == {"city": "Oslo"}
    assert events[-1][1]["response"]["output"][1]["content"][0]["text"] == "Hello"


async def test_responses_length_is_incomplete(http_daemon):
    d = await http_daemon(mock={"script": [{"text": "a"}, {"text": "b"}, {"text": "c"}]})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/responses", json={"input": "hi", "max_output_tokens": 2})
    body = r.json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("body, param, code", [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "previous_response_not_found"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0.type", "item_reference_unsupported"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type", "tool_unsupported"),
    ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_request"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0",
     "attachment_unsupported"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{no"}]}, "input.0.arguments",
     "invalid_request"),
])
async def test_responses_errors_are_openai_shaped(http_daemon, body, param, code):
    d = await http_daemon(mock={"script": SCRIPT})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/responses", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert (err["param"], err["code"]) == (param, code)


async def test_messages_whole_object(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT, "prompt_tokens": 7, "cached_tokens": 3})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/messages", json={**MSG, "tools": [ATOOL], "thinking": {"type": "enabled",
                                                                                      "budget_tokens": 1024}})
    body = r.json()
    assert r.status_code == 200 and body["type"] == "message" and body["id"].startswith("msg_")
    assert body["content"] == [{"type": "thinking", "thinking": "let me see", "signature": ""},
                               {"type": "text", "text": "Hello"},
                               {"type": "tool_use", "id": "mock-call-1", "name": "get_weather",
                                "input": {"city": "Oslo"}}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("tool_use", None)
    assert body["usage"] == {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
                             "output_tokens": 3}


async def test_messages_stop_sequence_is_named(http_daemon):
    d = await http_daemon(mock={"script": [{"text": "one "}, {"text": "two "}, {"text": "three"}]})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/messages", json={**MSG, "stop_sequences": ["two"]})
        s = await c.post("/v1/messages", json={**MSG, "stop_sequences": ["two"], "stream": True})
    body = r.json()
    assert body["content"] == [{"type": "text", "text": "one "}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "two")
    events = sse(s.text)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names[2:-2] == ["content_block_start", "content_block_delta", "content_block_stop"]
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "two"}


async def test_messages_stream_tool_use(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/messages", json={**MSG, "tools": [ATOOL], "stream": True})
    events = sse(r.text)
    starts = [e["content_block"]["type"] for n, e in events if n == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    deltas = [e["delta"] for n, e in events if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"thinking_delta", "text_delta", "input_json_delta"}
    partial = "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Oslo"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def _anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    return body["error"]["message"]


async def test_messages_errors_are_anthropic_shaped(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT}, api_key="k")
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        no_key = await c.post("/v1/messages", json=MSG)
        missing = await c.post("/v1/messages", json={"model": "mock", "messages": MSG["messages"]},
                               headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
        bad_json = await c.post("/v1/messages", content=b"{", headers={"x-api-key": "k"})
        ok = await c.post("/v1/messages", json=MSG, headers={"x-api-key": "k"})
        bearer = await c.post("/v1/messages", json=MSG, headers={"authorization": "Bearer k"})
        image = await c.post("/v1/messages", headers={"x-api-key": "k"}, json={**MSG, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": ""}}]}]})
    _anthropic_error(no_key, 401, "authentication_error")
    assert "max_tokens" in _anthropic_error(missing, 400, "invalid_request_error")
    _anthropic_error(bad_json, 400, "invalid_request_error")
    _anthropic_error(image, 400, "invalid_request_error")
    assert ok.status_code == bearer.status_code == 200


async def test_messages_queue_full_is_overloaded(http_daemon):
    """One admission for every route: while a stream holds the only slot, /v1/messages
    says 529 overloaded_error (Anthropic's SDK retries it) and /v1/responses OpenAI's 429."""
    d = await http_daemon(mock={"tokens": ["x"] * 400, "token_delay_ms": 5}, active_permits=1, queue_depth=0)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/v1/messages", json.dumps({**MSG, "max_tokens": 400, "stream": True}).encode()))
    assert (await read_head(reader))[0] == 200  # it holds the only slot now
    try:
        async with httpx.AsyncClient(base_url=base_url(d)) as c:
            second = await c.post("/v1/messages", json=MSG)
            third = await c.post("/v1/responses", json={"input": "hi", "stream": True})
    finally:
        writer.close()
    _anthropic_error(second, 529, "overloaded_error")
    assert second.headers["retry-after"] == "1"
    assert third.status_code == 429 and third.json()["error"]["code"] == "queue_full"


async def test_a_fault_mid_stream_ends_each_stream_in_its_wire(http_daemon):
    """After the first event the status is sent: Responses ends with `error` and
    response.failed, Anthropic with an `error` event in its shape."""
    d = await http_daemon(mock={"script": [{"text": "a"}, {"text": "b"}, {"text": "c"}], "drop_after": 2})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/responses", json={"input": "hi", "stream": True})
        m = await c.post("/v1/messages", json={**MSG, "stream": True})
    names = [n for n, _ in sse(r.text)]
    assert r.status_code == 200 and names[-2:] == ["error", "response.failed"]
    failed = sse(r.text)[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "backend_unavailable"
    assert failed["output"][0]["content"][0]["text"] == "ab"
    last = sse(m.text)[-1]
    assert m.status_code == 200 and last[0] == "error"
    assert last[1] == {"type": "error", "error": {"type": "overloaded_error", "message": last[1]["error"]["message"]}}
