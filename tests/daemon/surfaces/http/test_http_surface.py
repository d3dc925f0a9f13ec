"""The OpenAI-compatible HTTP surface on the mock backend: shapes, SSE framing, errors,
auth, the body cap, cancellation on disconnect, the shared admission and connection
cap, F-13 gating and F-20 (loopback Host/Origin). The real model through the openai
SDK is in test_http_openai_sdk.py."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from typing import Any

import httpx
import pytest

from http_helpers import (
    GenerationSpy,
    base_url,
    chunks_of,
    host_port,
    raw_request,
    read_chunked,
    read_head,
    sse_events,
)
from daemon_harness import RecordingActivityLog, roundtrip, wait_until

SCRIPT = [{"thinking": "let me see"}, {"text": "Hel"}, {"text": "lo"},
          {"tool_call": {"name": "get_weather", "input": {"city": "Oslo"}}}]
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


# ---- shapes ---------------------------------------------------------------------------

async def test_chat_whole_answer_shape(http_daemon):
    d = await http_daemon(mock={"script": SCRIPT, "prompt_tokens": 7, "cached_tokens": 3})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "mock"  # the loaded model, whatever the request said
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant", "content": "Hello", "reasoning_content": "let me see",
        "tool_calls": [{"id": "mock-call-1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                             "prompt_tokens_details": {"cached_tokens": 3},
                             "completion_tokens_details": {"reasoning_tokens": 1}}


async def test_chat_sse_framing_with_usage(http_daemon):
    """Raw bytes: every event is `data: <one JSON line>\\n\\n`, the role comes first,
    thinking is reasoning_content, a tool call is one delta with index/id/name/arguments,
    usage is null on each chunk and whole on a last chunk with no choices, then [DONE]."""
    d = await http_daemon(mock={"script": SCRIPT, "prompt_tokens": 7, "cached_tokens": 3})
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode()
    writer.write(raw_request("POST", "/v1/chat/completions", body))
    status, headers = await read_head(reader)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked"
    data = b"".join([c async for c in read_chunked(reader)])
    writer.close()
    events = sse_events(data)
    assert events[-1] == b"[DONE]"
    chunks = chunks_of(events)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and all(c["object"] == "chat.completion.chunk" and c["model"] == "mock" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "let me see"},
        {"content": "Hel"},
        {"content": "lo"},
        {"tool_calls": [{"index": 0, "id": "mock-call-1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 5 + ["tool_calls"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 10
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


async def test_chat_stream_without_usage_has_no_usage_key(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b"]})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    chunks = chunks_of(sse_events(r.content))
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_completions_raw_prompt_echo_and_stream(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b", "c"]})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/completions", json={"model": "mock", "prompt": "The sea is", "echo": True})
        body = r.json()
        assert body["object"] == "text_completion" and body["choices"][0]["text"] == "The sea isabc"
        assert body["choices"][0]["finish_reason"] == "stop"
        # OpenAI's default max_tokens for completions is 16; max_tokens=2 stops at 2.
        r = await c.post("/v1/completions", json={"model": "mock", "prompt": ["x"], "max_tokens": 2, "stream": True})
        chunks = chunks_of(sse_events(r.content))
        assert [ch["choices"][0]["text"] for ch in chunks] == ["a", "b", ""]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        for bad, param in (({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"),
                           ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "best_of": 2}, "best_of"),
                           ({"prompt": "x", "logprobs": 3}, "logprobs")):
            r = await c.post("/v1/completions", json={"model": "mock", **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, bad


async def test_embeddings_float_base64_dimensions_and_refusals(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/embeddings", json={"model": "mock", "input": ["ab", "abcd"], "dimensions": 3})
        body = r.json()
        assert body["object"] == "list" and body["model"] == "mock"
        assert [e["index"] for e in body["data"]] == [0, 1]
        assert body["data"][0]["embedding"] == [1 / 3, 2 / 3, 1.0]  # the mock's (k+1)/(len+1)
        assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
        r = await c.post("/v1/embeddings", json={"input": "abcd", "encoding_format": "base64", "dimensions": 4})
        vec = struct.unpack("<4f", base64.b64decode(r.json()["data"][0]["embedding"]))
        assert vec == pytest.approx([0.2, 0.4, 0.6, 0.8])
        r = await c.post("/v1/embeddings", json={"input": [[1, 2, 3]]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_input"
        r = await c.post("/v1/embeddings", json={"input": []})
        assert r.status_code == 400 and "must not be empty" in r.json()["error"]["message"]
        r = await c.post("/v1/embeddings", json={"input": "x", "dimensions": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


async def test_embeddings_without_an_embed_backend_is_501(http_daemon):
    d = await http_daemon(mock={"embed": False})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 501 and r.json()["error"]["code"] == "embed_unsupported"
    assert "--llamacpp-embed" in r.json()["error"]["message"]


async def test_models_and_health(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.get("/v1/models")
        (card,) = r.json()["data"]
        assert card["id"] == "mock" and card["object"] == "model" and card["owned_by"] == "inferd"
        assert (await c.get("/v1/models/mock")).json()["id"] == "mock"
        r = await c.get("/v1/models/other")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert (await c.get("/models")).status_code == 200  # llama-server answers without /v1 too
        r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok", "state": "ready"}


# ---- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,code,param", [
    (b"{not json", 400, "invalid_json", None),
    (b"[" * 100_000, 400, "invalid_json", None),
    (json.dumps({"model": "mock"}).encode(), 400, "invalid_request", "messages"),
    (json.dumps({**CHAT, "n": 2}).encode(), 400, "invalid_request", "n"),
    (json.dumps({**CHAT, "logprobs": True}).encode(), 400, "invalid_request", "logprobs"),
    (json.dumps({**CHAT, "temperature": "hot"}).encode(), 400, "invalid_request", "temperature"),
    (json.dumps({**CHAT, "messages": []}).encode(), 400, "invalid_request", "messages"),
    (json.dumps({**CHAT, "stop": ["", "x"]}).encode(), 400, "invalid_request", "stop"),
    # The NDJSON wire's limits (proto/limits.py) hold here too.
    (json.dumps({**CHAT, "stop": [str(i) for i in range(17)]}).encode(), 400, "invalid_request", "stop"),
    (json.dumps({**CHAT, "padding": [0] * 200_000}).encode(), 400, "invalid_request", None),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}).encode(), 400, "attachment_unsupported",
     "messages.0.content.0"),
    (json.dumps({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
                 "tool_choice": {"type": "function", "function": {"name": "g"}}}).encode(),
     400, "invalid_request", "tool_choice"),
    # A bad keep_alive (issue 20) is the client's error, not a 500.
    (json.dumps({**CHAT, "keep_alive": "soon"}).encode(), 400, "invalid_request", "keep_alive"),
])
async def test_bad_bodies_are_400_in_openai_shape(http_daemon, body, status, code, param):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")
        # The connection and the daemon are fine afterwards.
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_unknown_path_404_and_wrong_method_405(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize("pre_stream_error,status,code", [
    ("InvalidRequest", 400, "invalid_request"),
    ("Unavailable", 503, "backend_unavailable"),
    ("NotReady", 503, "backend_unavailable"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_backend_refusals_map_to_statuses(http_daemon, pre_stream_error, status, code, stream):
    """Refused before the first token: a real status even when streaming was asked for."""
    d = await http_daemon(mock={"pre_stream_error": pre_stream_error})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert r.status_code == status and r.json()["error"]["code"] == code


async def test_mid_stream_failure_is_an_sse_error_event_without_done(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b", "c"], "drop_after": 2})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 200
        events = sse_events(r.content)
        assert events[-1] != b"[DONE]"
        last = json.loads(events[-1])
        assert last["error"]["code"] == "backend_unavailable"
        assert [ch["choices"][0]["delta"].get("content") for ch in chunks_of(events[:-1])] == ["", "a", "b"]
        r = await c.post("/v1/chat/completions", json=CHAT)  # not streamed: an error status
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"


async def test_body_over_the_cap_is_413(http_daemon):
    """F-1: a declared length over 64 MiB is refused before the body is read; an
    undeclared (chunked) one is cut at the cap; the daemon serves on."""
    d = await http_daemon()
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/v1/chat/completions", None,
                             {"content-length": str((64 << 20) + 1), "expect": "100-continue"}))
    status, headers = await read_head(reader)
    assert status == 413 and headers["connection"] == "close"
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    assert json.loads(body)["error"]["code"] == "request_too_large"
    writer.close()

    async def chunked_body() -> Any:
        block = b" " * (1 << 20)
        for _ in range(65):
            yield block

    async with httpx.AsyncClient(base_url=base_url(d), timeout=30) as c:
        r = await c.post("/v1/chat/completions", content=chunked_body(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


# ---- auth and who may ask (F-20) ---------------------------------------------------

async def test_api_key_is_required_as_bearer(http_daemon):
    rec = RecordingActivityLog()
    d = await http_daemon(api_key="s3cret", activity=rec)
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"},
                        {"authorization": "Basic s3cret"}):
            r = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/v1/nowhere")).status_code == 401  # no probing of routes without the key
        assert (await c.get("/health")).status_code == 200  # public, like llama-server's
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
    # Issue 19 item 3: six refusals, one record (the one throttle); the other five are
    # counted and reported by the next record of the kind.
    assert [r["msg"] for r in rec.records].count("auth_refused") == 1
    assert d.server._security.refusals.held_back("auth_refused:http") == 5
    assert "s3cret" not in json.dumps(rec.records)


async def test_foreign_host_and_origin_are_refused(http_daemon):
    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"host": "evil.example:47324"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
        r = await c.get("/metrics", headers={"host": "attacker.test"})
        assert r.status_code == 403
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "null"})
        assert r.status_code == 403
        # A web UI served from this machine may call it (CORS for loopback origins).
        r = await c.options("/v1/chat/completions", headers={
            "origin": "http://localhost:3000", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "http://127.0.0.1:8080"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"host": "localhost:1"})
        assert r.status_code == 200


async def test_non_loopback_bind_is_refused_at_boot(daemon_factory):
    with pytest.raises(RuntimeError, match="exited during boot with 1"):
        await daemon_factory(http="0.0.0.0:0")


async def test_http_from_the_config_file(daemon_factory, sockdir):
    cfg = sockdir / "http.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock"}], "http": "127.0.0.1:0"}))
    d = await daemon_factory(config=str(cfg))
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.get("/health")).status_code == 200


# ---- the shared pipeline: admission, cancellation, the connection cap ----------------

async def test_full_queue_is_429_with_retry_after(http_daemon):
    d = await http_daemon(mock={"tokens": ["x"] * 400, "token_delay_ms": 5}, active_permits=1, queue_depth=0)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()))
    assert (await read_head(reader))[0] == 200  # it holds the only slot now
    try:
        async with httpx.AsyncClient(base_url=base_url(d)) as c:
            for stream in (False, True):
                r = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"] == {"message": "queue full", "type": "rate_limit_error", "param": None,
                                             "code": "queue_full"}
            # One admission for every surface: the v1 socket is full too.
            frames = await roundtrip(d.infer, {"id": "v1", "messages": [{"role": "user", "content": "x"}]})
            assert frames[-1]["code"] == "queue_full"
    finally:
        writer.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_mid_generation_cancels_it(http_daemon, stream):
    """The client leaves after the first token: the generation stops (its stream is
    closed after a handful of the 2,000 scripted tokens) and its slot is free again."""
    d = await http_daemon(mock={"tokens": ["x"] * 2000, "token_delay_ms": 2}, active_permits=1, queue_depth=0)
    spy = GenerationSpy(d.server.router.entries[0].backend)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/v1/chat/completions",
                             json.dumps({**CHAT, "stream": stream, "max_tokens": 2000}).encode()))
    await asyncio.wait_for(spy.first.wait(), 10)
    writer.close()
    await wait_until(lambda: spy.closed == 1, 10, "the engine stream to be closed")
    assert spy.events < 1000, spy.events
    await wait_until(lambda: d.server.router.outstanding == 0, 5, "the slot to be released")
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        families = await metrics(c)
    assert sample(families, "inferd_requests_total", surface="http", kind="generate", outcome="cancelled") == 1


async def test_disconnect_while_queued_frees_the_queue_slot(http_daemon):
    d = await http_daemon(mock={"tokens": ["x"] * 2000, "token_delay_ms": 2}, active_permits=1, queue_depth=1)
    spy = GenerationSpy(d.server.router.entries[0].backend)
    host, port = host_port(d)
    holder = await asyncio.open_connection(host, port)
    holder[1].write(raw_request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()))
    await asyncio.wait_for(spy.first.wait(), 10)
    queued = await asyncio.open_connection(host, port)
    queued[1].write(raw_request("POST", "/v1/chat/completions", json.dumps(CHAT).encode()))
    await wait_until(lambda: d.server.router.outstanding == 2, 10, "the second request to queue")
    queued[1].close()
    await wait_until(lambda: d.server.router.outstanding == 1, 10, "the queued request to leave")
    holder[1].close()
    await wait_until(lambda: d.server.router.outstanding == 0, 10, "all slots released")
    assert spy.closed == 1  # the queued one never reached the backend


async def test_stalled_reader_loses_its_connection_not_the_slot(http_daemon):
    """F-17: an SSE client that stops reading is cut off after the write timeout and
    its slot is released. (16 MiB of tokens: loopback TCP buffers take a few MiB.)"""
    d = await http_daemon(mock={"tokens": ["x" * 65536] * 256}, active_permits=1, queue_depth=0,
                          write_timeout_secs=0.6)
    host, port = host_port(d)
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, port))
    try:
        stuck.sendall(raw_request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()))
        await wait_until(lambda: d.server.router.outstanding == 1, 10, "the stalled request to be admitted")
        await wait_until(lambda: d.server.router.outstanding == 0, 15, "the stalled request's slot to be freed")
        async with httpx.AsyncClient(base_url=base_url(d)) as c:
            r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
            assert r.status_code == 200
    finally:
        stuck.close()


async def test_http_has_a_connection_budget_of_its_own(http_daemon):
    """Issue 19 item 2 (F-17): --max-connections is per surface and transport, HTTP
    included. Unix connections that fill their pool leave HTTP alone; HTTP connections
    that fill `http:tcp` make the next one refused, with a record. Old code: the HTTP
    cap counted every surface's connections, so the two held Unix connections made
    the HTTP request a reset."""
    rec = RecordingActivityLog()
    d = await http_daemon(max_connections=2, activity=rec)
    held = [await asyncio.open_unix_connection(d.infer) for _ in range(2)]
    await wait_until(lambda: d.server.tracker.in_pool("inference:local") == 2, 5, "two socket connections")
    host, port = host_port(d)
    idle = []
    for _ in range(2):  # answered despite the full Unix pool, then kept open (keep-alive)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw_request("GET", "/health"))
        assert (await read_head(reader))[0] == 200
        idle.append((reader, writer))
    assert d.server.tracker.in_pool("http:tcp") == 2
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("GET", "/health"))
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # aborted: no answer
    except ConnectionResetError:
        pass
    refusals = [r for r in rec.records if r["msg"] == "connection_refused_limit"]
    assert refusals and refusals[0]["surface"] == "http" and refusals[0]["pool"] == "http:tcp"
    for _, w in held + idle:
        w.close()
    await wait_until(lambda: d.server.tracker.count() == 0, 5, "the connections to close")
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.get("/health")).status_code == 200


# ---- F-13: bound once ready, gone after drain --------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_port_absent_before_ready_and_after_drain(daemon_factory):
    port = free_port()
    d = await daemon_factory(http=f"127.0.0.1:{port}", wait_ready=False, mock={"ready_delay_ms": 1000})
    refusals = 0
    while not d.server.is_ready.is_set():
        if refused(port):
            refusals += 1
        else:  # bound after `ready` was published, while is_ready waits for the last bind
            assert d.server.broadcaster.snapshot.status == "ready", "the HTTP port accepted before ready"
        await asyncio.sleep(0.05)
    assert refusals >= 5
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        assert (await c.get("/health")).status_code == 200
    assert await d.stop() == 0
    assert refused(port)


async def test_keep_alive_connection_is_closed_on_drain(http_daemon):
    d = await http_daemon()
    (listener,) = [s for s in d.server._surfaces if s.surface == "http"]
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.get("/health")).status_code == 200  # one idle keep-alive connection
        assert await d.stop() == 0
        with pytest.raises(httpx.TransportError):
            await c.get("/health")
    assert d.server.tracker.count() == 0
    # uvicorn's own task ends too: nothing of the listener outlives the daemon.
    await asyncio.wait_for(listener.uvicorn_task, 5)
    assert listener.uvicorn_task.exception() is None


# ---- metrics ----------------------------------------------------------------------

async def metrics(c: httpx.AsyncClient) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
                      if name not in families else name]
    found = [s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


async def test_metrics_count_every_surface_after_known_traffic(http_daemon):
    d = await http_daemon(mock={"tokens": ["a", "b", "c"], "prompt_tokens": 5, "cached_tokens": 2},
                          active_permits=1, queue_depth=0)
    # v1 socket: one generation; embed socket: one request.
    assert (await roundtrip(d.infer, {"id": "a", "messages": [{"role": "user", "content": "x"}]}))[-1]["type"] == "done"
    assert (await roundtrip(d.embed, {"id": "e", "input": ["abc"]}))[-1]["type"] == "embeddings"
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await c.post("/v1/chat/completions", json={**CHAT, "stream": True})).status_code == 200
        assert (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status_code == 200
        assert (await c.post("/v1/embeddings", json={"input": ["ab", "cd"]})).status_code == 200
        assert (await c.post("/v1/chat/completions", content=b"{")).status_code == 400
        assert (await c.get("/nowhere")).status_code == 404
        f = await metrics(c)
    s = lambda name, **kw: sample(f, name, **kw)  # noqa: E731
    assert s("inferd_requests_total", surface="inference", kind="generate", outcome="ok") == 1
    assert s("inferd_requests_total", surface="http", kind="generate", outcome="ok") == 3
    assert s("inferd_requests_total", surface="embed", kind="embed", outcome="ok") == 1
    assert s("inferd_requests_total", surface="http", kind="embed", outcome="ok") == 1
    assert s("inferd_prompt_tokens_total", surface="http") == 15
    assert s("inferd_prompt_cached_tokens_total", surface="http") == 6
    assert s("inferd_completion_tokens_total", surface="http") == 3 + 3 + 2
    assert s("inferd_completion_tokens_total", surface="inference") == 3
    assert s("inferd_embed_input_tokens_total", surface="http") == 4
    assert s("inferd_time_to_first_token_seconds_count", surface="http") == 3
    assert s("inferd_queue_wait_seconds_count", surface="inference") == 1
    assert s("inferd_decode_tokens_per_second_count", surface="http") == 3
    assert s("inferd_queue_depth", backend="mock") == 0 and s("inferd_requests_running", backend="mock") == 0
    assert s("inferd_connections", surface="http") == 1  # this scrape's own connection
    assert s("inferd_backend_ready", backend="mock", model="mock") == 1
    assert s("inferd_model_load_seconds") > 0
    assert s("inferd_http_responses_total", route="chat", status="200") == 2
    assert s("inferd_http_responses_total", route="chat", status="400") == 1
    assert s("inferd_http_responses_total", route="not_found", status="404") == 1


async def test_metrics_count_refusals_and_reloads(http_daemon):
    d = await http_daemon(mock={"tokens": ["x"] * 400, "token_delay_ms": 5}, active_permits=1, queue_depth=0)
    host, port = host_port(d)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw_request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()))
    assert (await read_head(reader))[0] == 200
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 429
        frames = await roundtrip(d.infer, {"id": "v", "messages": [{"role": "user", "content": "x"}]})
        assert frames[-1]["code"] == "queue_full"
        f = await metrics(c)
        assert sample(f, "inferd_requests_total", surface="http", outcome="queue_full") == 1
        assert sample(f, "inferd_requests_total", surface="inference", outcome="queue_full") == 1
        assert sample(f, "inferd_requests_running", backend="mock") == 1
        writer.close()
        await wait_until(lambda: d.server.router.outstanding == 0, 10, "the streaming request to end")
        d.server.request_reload()
        await wait_until(lambda: d.server.ctx.metrics.reloads.labels("ok")._value.get() == 1, 10, "the reload")
        f = await metrics(c)
    assert sample(f, "inferd_reloads_total", outcome="ok") == 1


async def test_v1_prompt_extension(http_daemon):
    """v1's additive `prompt` (what `inferd run --raw` sends): exactly one of prompt and
    messages; neither is still a decode error, as upstream's missing messages."""
    d = await http_daemon(mock={"tokens": ["a", "b"]})
    frames = await roundtrip(d.infer, {"id": "p", "prompt": "The sea is"})
    assert frames[-1]["type"] == "done" and frames[-1]["content"] == "ab"
    both = await roundtrip(d.infer, {"id": "b", "prompt": "x", "messages": [{"role": "user", "content": "y"}]})
    assert both == [{"type": "error", "id": "b", "code": "invalid_request",
                     "message": "invalid request: give messages or prompt, not both"}]
    (neither,) = await roundtrip(d.infer, {"id": "n"})
    assert neither["code"] == "invalid_request" and neither["message"].startswith("decode: ")
