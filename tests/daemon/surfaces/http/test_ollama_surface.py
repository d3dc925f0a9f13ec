"""Ollama's API on the mock backend: NDJSON framing, the final line's counters, tool
calls and thinking in Ollama's shape, `{"error": ...}` bodies with Ollama's statuses,
auth and F-20 on /api routes, cancellation on disconnect, the listings, and the
extra listener on Ollama's address (F-24). The real model through the ollama client is
in test_ollama_client.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx
import pytest

from daemon_harness import wait_until
from http_helpers import GenerationSpy, base_url, host_port, raw_request, read_chunked, read_head

SCRIPT = [{"thinking": "let me see"}, {"text": "Hel"}, {"text": "lo"},
          {"tool_call": {"name": "get_weather", "input": {"city": "Oslo"}}}]
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def lines(body: bytes) -> list[dict]:
    assert body.endswith(b"\n"), body[-40:]
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


async def test_chat_stream_is_ndjson_with_ollamas_final_line(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT, "prompt_tokens": 7})
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/api/chat", json.dumps(CHAT).encode()))  # stream by default
    status, headers = await read_head(reader)
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    data = b"".join([c async for c in read_chunked(reader)])
    writer.close()
    out = lines(data)
    assert all(o["model"] == "mock" and o["created_at"].endswith("Z") for o in out)
    assert [o["done"] for o in out] == [False] * 4 + [True]
    assert [o["message"] for o in out[:4]] == [
        {"role": "assistant", "content": "", "thinking": "let me see"},
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "mock-call-1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    ]
    final = out[-1]
    assert final["done_reason"] == "stop" and final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 7 and final["eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0, key
    assert final["total_duration"] >= final["load_duration"]


async def test_chat_and_generate_whole_answers(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/chat", json={**CHAT, "stream": False})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["done"] is True and body["done_reason"] == "stop"
        assert body["message"] == {"role": "assistant", "content": "Hello", "thinking": "let me see", "tool_calls": [
            {"id": "mock-call-1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]}
        r = await c.post("/api/generate", json={"model": "mock", "prompt": "hi", "stream": False, "think": "high"})
        body = r.json()
        assert body["response"] == "Hello" and body["thinking"] == "let me see" and body["done"] is True
        r = await c.post("/api/generate", json={"model": "mock", "prompt": "hi", "raw": True})
        out = lines(r.content)  # generate shows no tool calls: thinking, two texts, the end
        assert [(o["response"], o.get("thinking")) for o in out] == [
            ("", "let me see"), ("Hel", None), ("lo", None), ("", None)]


async def test_options_reach_the_engine_and_num_predict_is_a_length_finish(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b", "c", "d"]})
    seen = []
    backend = d.server.router.entries[0].backend
    original = backend.generate

    async def spy(request):
        seen.append(request)
        return await original(request)

    backend.generate = spy
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/generate", json={
            "model": "mock", "prompt": "x", "stream": False, "format": {"type": "object"}, "keep_alive": "10m",
            "options": {"temperature": 0.5, "top_p": 0.9, "top_k": 7, "seed": 42, "num_predict": 2,
                        "stop": ["zz"], "num_ctx": 4096, "repeat_penalty": 1.1}})
        assert r.json()["done_reason"] == "length" and r.json()["response"] == "ab"
        r = await c.post("/api/chat", json={**CHAT, "stream": False, "format": "json",
                                            "options": {"num_predict": -1}})
        assert r.json()["done_reason"] == "stop"
    first, second = seen
    assert (first.temperature, first.top_p, first.top_k, first.seed, first.max_tokens, first.stop) == (
        0.5, 0.9, 7, 42, 2, ["zz"])
    assert first.response_format.type == "json_schema" and first.response_format.schema == {"type": "object"}
    assert [m.role for m in first.messages] == ["user"]  # generate goes through the chat template
    assert second.response_format.type == "json_object"
    assert second.max_tokens == d.server.router.entries[0].caps.n_ctx or second.max_tokens > 2


async def test_tool_round_trip_messages_are_translated(http_daemon):
    d = await http_daemon(mock={"tokens": ["ok"]})
    seen = []
    backend = d.server.router.entries[0].backend
    original = backend.generate

    async def spy(request):
        seen.append(request)
        return await original(request)

    backend.generate = spy
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "content": "12C", "tool_name": "get_weather"}]
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/chat", json={"model": "mock", "messages": messages, "tools": [tool], "stream": False})
    assert r.status_code == 200, r.text
    (req,) = seen
    call = req.messages[1].tool_calls[0]
    assert (call.name, call.arguments) == ("get_weather", {"city": "Oslo"})
    assert req.messages[2].tool_call_id == call.id and req.messages[2].name == "get_weather"
    assert [t.name for t in req.tools] == ["get_weather"]


async def test_error_shapes_and_statuses_are_ollamas(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        cases = [
            ("POST", "/api/chat", b"{not json", 400, "not valid JSON"),
            ("POST", "/api/chat", json.dumps({"messages": []}).encode(), 400, "model is required"),
            ("POST", "/api/generate", json.dumps({"prompt": "x"}).encode(), 400, "model is required"),
            ("POST", "/api/generate", json.dumps({"model": "mock", "prompt": "x", "keep_alive": "soon"}).encode(),
             400, "keep_alive"),
            ("POST", "/api/chat", json.dumps({**CHAT, "keep_alive": True}).encode(), 400, "keep_alive"),
            ("POST", "/api/chat", json.dumps({**CHAT, "format": "yaml"}).encode(), 400, "format"),
            ("POST", "/api/chat", json.dumps({**CHAT, "think": "very"}).encode(), 400, "think"),
            ("POST", "/api/chat", json.dumps({"model": "mock", "messages": [
                {"role": "user", "content": "what is this?", "images": ["aGk="]}]}).encode(), 400, "images"),
            ("POST", "/api/generate", json.dumps({"model": "mock", "prompt": "x", "suffix": "y"}).encode(), 400, "suffix"),
            ("POST", "/api/generate", json.dumps({"model": "mock", "prompt": "x", "context": [1, 2]}).encode(),
             400, "context"),
            ("POST", "/api/show", json.dumps({"model": "nope"}).encode(), 404, "model 'nope' not found"),
            ("POST", "/api/pull", json.dumps({"model": "x"}).encode(), 404, "no route"),
            ("GET", "/api/chat", None, 405, "takes POST"),
        ]
        for method, path, body, status, words in cases:
            r = await c.request(method, path, content=body)
            assert r.status_code == status, (path, body, r.text)
            assert list(r.json()) == ["error"] and words in r.json()["error"], (path, body, r.text)
        # The OpenAI routes keep OpenAI's shape.
        r = await c.post("/v1/chat/completions", content=b"{not json")
        assert r.json()["error"]["code"] == "invalid_json"


async def test_empty_requests_load_and_generate_nothing(http_daemon):
    d = await http_daemon(mock={"tokens": ["a"]})
    spy = GenerationSpy(d.server.router.entries[0].backend)
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/generate", json={"model": "mock"})
        (line,) = lines(r.content)
        assert line["done"] is True and line["done_reason"] == "load" and line["response"] == ""
        r = await c.post("/api/chat", json={"model": "mock", "messages": [], "stream": False})
        assert r.json()["done_reason"] == "load" and r.json()["message"]["content"] == ""
        r = await c.post("/api/generate", json={"model": "mock", "keep_alive": 0, "stream": False})
        assert r.json()["done_reason"] == "unload"
    assert spy.events == 0


async def test_full_queue_is_503(http_daemon):
    d = await http_daemon(mock={"tokens": ["x"] * 400, "token_delay_ms": 5}, active_permits=1, queue_depth=0)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/api/chat", json.dumps(CHAT).encode()))
    assert (await read_head(reader))[0] == 200  # it holds the only slot
    try:
        async with httpx.AsyncClient(base_url=base_url(d)) as c:
            for stream in (False, True):
                r = await c.post("/api/chat", json={**CHAT, "stream": stream})
                assert r.status_code == 503 and r.json() == {"error": "queue full"}
    finally:
        writer.close()


async def test_mid_stream_failure_is_an_error_line(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b"], "drop_after": 1})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/chat", json=CHAT)
    out = lines(r.content)
    assert out[0]["message"]["content"] == "a" and list(out[-1]) == ["error"]


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_generation(http_daemon, stream):
    d = await http_daemon(mock={"tokens": ["x"] * 2000, "token_delay_ms": 2}, active_permits=1, queue_depth=0)
    spy = GenerationSpy(d.server.router.entries[0].backend)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/api/generate",
                             json.dumps({"model": "mock", "prompt": "x", "stream": stream}).encode()))
    await asyncio.wait_for(spy.first.wait(), 10)
    writer.close()
    await wait_until(lambda: spy.closed == 1, 10, "the engine stream to be closed")
    assert spy.events < 1000, spy.events
    await wait_until(lambda: d.server.router.outstanding == 0, 5, "the slot to be released")


async def test_auth_and_f20_apply_to_ollama_routes(http_daemon):
    d = await http_daemon(api_key="s3cret")
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.get("/api/tags")
        assert r.status_code == 401 and list(r.json()) == ["error"]
        r = await c.get("/api/tags", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
        r = await c.get("/")  # says "running" and nothing else: public like /health
        assert r.status_code == 200 and r.text == "Ollama is running"
        r = await c.head("/")
        assert r.status_code == 200 and r.content == b""
        r = await c.get("/api/tags", headers={"authorization": "Bearer s3cret", "host": "evil.example"})
        assert r.status_code == 403 and "Host" in r.json()["error"]
        r = await c.post("/api/chat", json=CHAT, headers={"authorization": "Bearer s3cret",
                                                          "origin": "https://evil.example"})
        assert r.status_code == 403 and list(r.json()) == ["error"]


async def test_listings_version_embed(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        tags = (await c.get("/api/tags")).json()["models"]
        assert [m["name"] for m in tags] == ["mock"] and len(tags[0]["digest"]) == 64
        ps = (await c.get("/api/ps")).json()["models"]
        assert [m["name"] for m in ps] == ["mock"]
        show = (await c.post("/api/show", json={"model": "mock:latest"})).json()
        assert "completion" in show["capabilities"] and "embedding" in show["capabilities"]
        assert (await c.post("/api/show", json={"name": "mock"})).status_code == 200  # the older field
        version = (await c.get("/api/version")).json()
        assert version["version"].count(".") == 2 and "inferd" in version
        r = await c.post("/api/embed", json={"model": "mock", "input": ["ab", "abcd"], "dimensions": 3})
        body = r.json()
        assert body["model"] == "mock" and body["embeddings"][0] == [1 / 3, 2 / 3, 1.0]
        assert body["prompt_eval_count"] == 6 and isinstance(body["total_duration"], int)
        r = await c.post("/api/embeddings", json={"model": "mock", "prompt": "abcd"})
        assert r.json()["embedding"][:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
        r = await c.post("/api/embed", json={"model": "mock", "input": "x", "keep_alive": "later"})
        assert r.status_code == 400 and "keep_alive" in r.json()["error"]


async def test_an_unknown_model_is_ollamas_404_and_a_known_one_serves(http_daemon):
    d = await http_daemon(mock={"tokens": ["a"]})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/api/chat", json={**CHAT, "model": "gemma3:270m", "keep_alive": "-1", "stream": False})
        assert r.status_code == 404 and list(r.json()) == ["error"] and "gemma3:270m" in r.json()["error"]
        r = await c.post("/api/embed", json={"model": "emb", "input": "x", "keep_alive": 0})
        assert r.status_code == 404 and "emb" in r.json()["error"]
        r = await c.post("/api/chat", json={**CHAT, "model": "mock:latest", "keep_alive": "-1", "stream": False})
        assert r.status_code == 200 and r.json()["message"]["content"] == "a"


async def test_ollama_port_listens_when_free(http_daemon):
    """F-24: the extra listener is loopback only and runs the same app (same checks)."""
    d = await http_daemon(ollama_port=0, api_key="k")
    https = [s for s in d.server._surfaces if s.surface == "http"]
    assert len(https) == 2 and all(s.address.startswith("127.0.0.1:") for s in https)
    async with httpx.AsyncClient(base_url=f"http://{https[1].address}") as c:
        assert (await c.get("/")).text == "Ollama is running"
        assert (await c.get("/api/tags")).status_code == 401
        assert (await c.get("/api/tags", headers={"host": "evil.example"})).status_code == 403


async def test_ollama_port_taken_is_logged_and_skipped(http_daemon, caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with caplog.at_level(logging.WARNING):
            d2 = await http_daemon(ollama_port=taken.getsockname()[1])
        assert len([s for s in d2.server._surfaces if s.surface == "http"]) == 1
        assert "not serving Ollama's address" in caplog.text
    finally:
        taken.close()


async def test_hostile_bodies_are_400_and_the_daemon_serves_on(http_daemon):
    d = await http_daemon(mock={"tokens": ["a"]})
    bad = [
        ("/api/chat", {"model": "mock", "messages": "hi"}),
        ("/api/chat", {"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}),
        ("/api/chat", {"model": "mock", "messages": [{"role": "user", "content": 5}]}),
        ("/api/chat", {**CHAT, "options": "hot"}),
        ("/api/chat", {**CHAT, "options": {"temperature": "hot"}}),
        ("/api/chat", {**CHAT, "options": {"top_p": 3}}),
        ("/api/chat", {**CHAT, "tools": [{"type": "function"}]}),
        ("/api/chat", {**CHAT, "stream": "yes"}),
        ("/api/chat", {"model": "mock", "messages": [{"role": "assistant", "content": "",
                                                   "tool_calls": [{"function": {"arguments": {}}}]}]}),
        ("/api/generate", {"model": 7, "prompt": "x"}),
        ("/api/generate", {"model": "mock", "prompt": ["x"]}),
        ("/api/generate", {"model": "mock", "prompt": "x", "keep_alive": [1]}),
        ("/api/embed", {"model": "mock", "input": [1, 2]}),
        ("/api/embed", {"model": "mock", "input": "x", "dimensions": 0}),
        ("/api/show", {"model": ["m"]}),
        ("/api/chat", []),
    ]
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        for path, body in bad:
            r = await c.post(path, json=body)
            assert r.status_code == 400 and list(r.json()) == ["error"], (path, body, r.status_code, r.text)
        r = await c.post("/api/chat", json={**CHAT, "stream": False})
        assert r.status_code == 200 and r.json()["message"]["content"] == "a"
