"""OpenAIBackend against a misbehaving peer: every failure is bounded and mapped.

The peer (fake_openai.py) writes raw HTTP on asyncio streams, so each test can send
exactly the 500, garbage, stall or drop it is about, and see the connection close.
Tests of timeouts run on a driven clock (loop_clock.py): exact times, no real waiting.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket

import pytest

from fake_openai import MODEL, Exchange, FakeRemote, chunk
from loop_clock import on_virtual_time
from inferd.engine.backend import BackendInvalidRequest, NotReady, ToolCallMalformed, Unavailable, Unsupported
from inferd.engine.events import Done, FinishReason, TextDelta, ThinkingDelta, ToolCall
from inferd.engine.remote import OpenAIBackend, OpenAISettings
from inferd.engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolSpec
from inferd.proto.embed import EmbedResolved

pytestmark = pytest.mark.timeout(30)

KEY_ENV = "INFERD_TEST_FAKE_REMOTE_KEY"


def request(**kw) -> GenerationRequest:
    kw.setdefault("messages", [ChatMessage("user", "hi")])
    return GenerationRequest(id="r1", **kw)


_made: list[OpenAIBackend] = []


async def _stop_made() -> None:
    while _made:
        await _made.pop().stop(1.0)


@pytest.fixture(autouse=True)
async def _stop_backends():
    yield
    await _stop_made()


def on_driven_clock(test):
    """The test on a driven clock (loop_clock.py); the backends it made are stopped on
    its loop, before that loop closes."""

    @functools.wraps(test)
    async def then_stop(*args, **kwargs):
        try:
            await test(*args, **kwargs)
        finally:
            await _stop_made()

    return on_virtual_time(then_stop)


async def backend_for(fake: FakeRemote, **kw) -> OpenAIBackend:
    kw.setdefault("idle_timeout", 0.5)
    kw.setdefault("first_token_timeout", 2.0)
    kw.setdefault("connect_timeout", 1.0)
    b = OpenAIBackend(OpenAISettings(base_url=fake.url, **kw))
    _made.append(b)
    await b.probe()
    return b


async def collect(stream) -> list:
    return [e async for e in stream]


def sse(*chunks, done: bool = True):
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        for c in chunks:
            await ex.send(c)
        if done:
            await ex.send("[DONE]")
    return handler


# ---- probe and capabilities -------------------------------------------------------------

async def test_probe_resolves_model_and_context():
    async with FakeRemote() as fake:
        b = OpenAIBackend(OpenAISettings(base_url=f"http://127.0.0.1:{fake.port}", max_concurrency=3))
        assert not b.ready()
        with pytest.raises(NotReady):
            await b.generate(request())
        await b.probe()
        assert b.ready() and b.concurrency == 3
        caps = b.capabilities()
        assert (caps.model, caps.n_ctx, caps.accelerator, caps.v2, caps.tools, caps.thinking, caps.embed) == (
            MODEL, 4096, "remote", True, True, False, True)
        assert fake.seen[0].path == "/v1/models"
        await b.stop(1.0)
        assert not b.ready()
        with pytest.raises(NotReady):
            await b.generate(request())


async def test_probe_reads_llama_server_meta_and_names_missing_models():
    async with FakeRemote(models={"data": [{"id": "a", "meta": {"n_ctx_train": 32768}}, {"id": "b"}]}) as fake:
        b = await backend_for(fake)
        assert (b.model, b.n_ctx) == ("a", 32768)
        with pytest.raises(Unavailable, match=r"has no model 'zzz' \(it serves: a, b\)"):
            await backend_for(fake, model="zzz")
        assert (await backend_for(fake, model="b")).capabilities().n_ctx is None
    async with FakeRemote(models={"data": []}) as fake:
        with pytest.raises(Unavailable, match="lists no model"):
            await backend_for(fake)


async def test_refused_key_names_the_variable_never_the_key(monkeypatch):
    async with FakeRemote(api_key="right-key") as fake:
        monkeypatch.setenv(KEY_ENV, "sk-wrong-secret")
        with pytest.raises(Unavailable) as info:
            await backend_for(fake, api_key_env=KEY_ENV)
        assert KEY_ENV in info.value.message and "refused" in info.value.message
        assert "sk-wrong-secret" not in info.value.message
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(Unavailable, match=f"{KEY_ENV} .*is not set"):
            await backend_for(fake, api_key_env=KEY_ENV)
        with pytest.raises(Unavailable, match="wants an API key"):
            await backend_for(fake)
        monkeypatch.setenv(KEY_ENV, "right-key")
        b = await backend_for(fake, api_key_env=KEY_ENV)
        assert fake.seen[-1].headers["authorization"] == "Bearer right-key"
        monkeypatch.setenv(KEY_ENV, "rotated-away")  # read per request: a wrong key now fails the request
        with pytest.raises(Unavailable, match=KEY_ENV):
            await b.generate(request())


@on_driven_clock
async def test_unreachable_remote_is_unavailable_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    loop = asyncio.get_running_loop()
    b = OpenAIBackend(OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=1.0))
    t0 = loop.time()
    with pytest.raises(Unavailable, match=rf"remote http://127.0.0.1:{port}/v1: connection refused"):
        await b.probe()
    assert loop.time() - t0 == pytest.approx(0.0)  # refused: no retry, no waiting
    dns = OpenAIBackend(OpenAISettings(base_url="http://no-such-host.invalid", connect_timeout=1.0))
    t0 = loop.time()
    with pytest.raises(Unavailable, match="no-such-host.invalid"):
        await dns.probe()
    # The lookup runs in a thread on real time; the clock moves only if it outlasts
    # the connect timeout, which then ends the probe.
    assert loop.time() - t0 <= 1.0


async def test_tls_to_a_plain_http_peer_fails_as_unavailable(tmp_path):
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        b = OpenAIBackend(OpenAISettings(base_url=f"https://127.0.0.1:{port}/v1", connect_timeout=1.0))
        with pytest.raises(Unavailable, match="TLS failed"):
            await b.probe()
    finally:
        server.close()
    with pytest.raises(ValueError, match="ca_file"):
        OpenAIBackend(OpenAISettings(base_url="https://h/v1", ca_file=tmp_path / "missing.pem"))


# ---- the happy stream ---------------------------------------------------------------------

async def test_stream_relays_text_thinking_tools_and_usage():
    tool_frags = [
        chunk(tool_calls=[{"index": 0, "id": "call_7", "type": "function",
                           "function": {"name": "get_weather", "arguments": "{\"ci"}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": "ty\": \"Oslo\"}"}}]),
    ]
    usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 8,
                                                   "prompt_tokens_details": {"cached_tokens": 16}}}
    handler = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                  chunk(reasoning="think"), chunk("Let me "), chunk("check."), *tool_frags,
                  chunk(finish="tool_calls"), usage)
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake)
        tools = [ToolSpec("get_weather", "now", {"type": "object"})]
        req = request(tools=tools, tool_name="get_weather", temperature=0.0, seed=3, max_tokens=50,
                      stop=["END"], response_format=ResponseFormat("json_object"))
        events = await collect(await b.generate(req))
        assert events[:4] == [ThinkingDelta("think"), TextDelta("Let me "), TextDelta("check."),
                              ToolCall("call_7", "get_weather", {"city": "Oslo"})]
        done = events[-1]
        assert len(events) == 5 and isinstance(done, Done)
        assert done.reason is FinishReason.TOOL_USE
        assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens) == (21, 8, 16)
        assert (done.context.used, done.context.max) == (29, 4096)
        assert done.timings is not None and done.timings.prompt_ms >= 0 and done.timings.generate_ms >= 0
        sent = fake.posts()[0]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["accept"] == "text/event-stream" and "authorization" not in sent.headers
        body = sent.body
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["model"] == MODEL and body["seed"] == 3 and body["temperature"] == 0.0
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert body["response_format"] == {"type": "json_object"} and body["stop"] == ["END"]
        assert "grammar" not in body


async def test_raw_prompt_goes_to_completions():
    handler = sse({"choices": [{"index": 0, "text": " upon", "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": " a time", "finish_reason": "length"}]})
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake)
        events = await collect(await b.generate(GenerationRequest(id="p", prompt="Once", grammar="root ::= x")))
        assert events[:2] == [TextDelta(" upon"), TextDelta(" a time")]
        assert events[2].reason is FinishReason.LENGTH and events[2].usage.completion_tokens == 2
        assert fake.posts()[0].path == "/v1/completions"
        assert fake.posts()[0].body["prompt"] == "Once" and fake.posts()[0].body["grammar"] == "root ::= x"


async def test_a_whole_json_answer_is_relayed_too():
    async def handler(ex: Exchange) -> None:
        await ex.respond(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "all at once"}}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    async with FakeRemote(handler) as fake:
        events = await collect(await (await backend_for(fake)).generate(request()))
        assert events[0] == TextDelta("all at once")
        assert events[1].reason is FinishReason.END and events[1].usage.completion_tokens == 4


async def test_finished_stream_that_drops_before_done_still_completes():
    async with FakeRemote(sse(chunk("ok"), chunk(finish="stop"), done=False)) as fake:
        events = await collect(await (await backend_for(fake)).generate(request()))
        assert events[0] == TextDelta("ok") and events[1].reason is FinishReason.END


async def test_malformed_tool_arguments_raise_tool_call_malformed():
    handler = sse(chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}]),
                  chunk(finish="tool_calls"))
    async with FakeRemote(handler) as fake:
        stream = await (await backend_for(fake)).generate(request(tools=[ToolSpec("f")]))
        with pytest.raises(ToolCallMalformed) as info:
            await collect(stream)
        assert info.value.kind == "tool_call_malformed"


# ---- pre-stream failures --------------------------------------------------------------------

@pytest.mark.parametrize("status, body, error, words", [
    (500, {"error": {"message": "CUDA out of memory"}}, Unavailable, "HTTP 500.*CUDA out of memory"),
    (503, b"<html>Service Unavailable</html>", Unavailable, "HTTP 503.*Service Unavailable"),
    (429, {"error": {"message": "rate limited", "type": "rate_limit"}}, Unavailable, "HTTP 429.*rate limited"),
    (404, {"error": {"message": "The model `x` does not exist."}}, Unavailable, "HTTP 404.*does not exist"),
    (400, {"error": {"message": "max_tokens is too large", "code": 400}}, BackendInvalidRequest,
     "max_tokens is too large"),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, BackendInvalidRequest,
     "messages: field required"),
])
async def test_http_errors_map(status, body, error, words):
    async def handler(ex: Exchange) -> None:
        await ex.respond(status, body, "text/html" if isinstance(body, bytes) else "application/json")
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake)
        with pytest.raises(error, match=words) as info:
            await b.generate(request())
        assert type(info.value) is error or issubclass(type(info.value), error)


async def test_in_band_errors_before_output():
    async def llama_server_error(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.raw(b'error: {"code": 400, "message": "the request exceeds the context size"}\n\n')
    async with FakeRemote(llama_server_error) as fake:
        with pytest.raises(BackendInvalidRequest, match="exceeds the context size"):
            await (await backend_for(fake)).generate(request())
    async with FakeRemote(sse({"error": {"message": "engine dead", "code": 500}})) as fake:
        with pytest.raises(Unavailable, match="engine dead"):
            await (await backend_for(fake)).generate(request())


async def test_garbage_before_output_is_unavailable():
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.raw(b"data: this is not json\n\n")
    async with FakeRemote(handler) as fake:
        with pytest.raises(Unavailable, match="not JSON"):
            await (await backend_for(fake)).generate(request())


@on_driven_clock
async def test_no_first_token_within_first_token_timeout():
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        await ex.wait_closed_by_peer()
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake, first_token_timeout=0.6)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Unavailable, match="stalled"):
            await b.generate(request())
        assert loop.time() - t0 == pytest.approx(0.6)


@on_driven_clock
async def test_silent_peer_before_headers_is_bounded():
    async def handler(ex: Exchange) -> None:
        await ex.wait_closed_by_peer()
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake, first_token_timeout=0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Unavailable, match=r"no answer to /chat/completions within 0.5 s"):
            await b.generate(request())
        assert loop.time() - t0 == pytest.approx(0.5)


# ---- mid-stream failures --------------------------------------------------------------------

@on_driven_clock
async def test_stall_after_two_chunks_raises_within_idle_timeout():
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk("one "))
        await ex.send(chunk("two"))
        await ex.wait_closed_by_peer()
    async with FakeRemote(handler) as fake:
        stream = await (await backend_for(fake, idle_timeout=0.5)).generate(request())
        got = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Unavailable, match="stalled"):
            async for e in stream:
                got.append(e)
        assert got == [TextDelta("one "), TextDelta("two")]
        assert loop.time() - t0 == pytest.approx(0.5)  # the chunks came at once, then 0.5 s of nothing


@pytest.mark.parametrize("tail, words", [
    (b"data: {broken\n\n", "not JSON"),
    (b'data: {"choices": "nope"}\n\n', "choices is not a list"),
    (b"data: " + b"x" * (9 * 1024 * 1024), "line longer"),
    (b"", "connection closed"),
])
async def test_garbage_or_drop_after_output_raises(tail, words):
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk("partial"))
        await ex.raw(tail)
    async with FakeRemote(handler) as fake:
        stream = await (await backend_for(fake)).generate(request())
        got = []
        with pytest.raises(Unavailable, match=words):
            async for e in stream:
                got.append(e)
        assert got == [TextDelta("partial")]


@pytest.mark.parametrize("read_first", [3, 0])
@on_driven_clock
async def test_aclose_mid_stream_closes_the_upstream_connection(read_first):
    closed = asyncio.Event()

    async def endless(ex: Exchange) -> None:
        await ex.start_sse()
        watcher = asyncio.create_task(ex.wait_closed_by_peer())
        try:
            while not watcher.done():
                await ex.send(chunk("tick "))
                await asyncio.sleep(0.02)  # the peer's pace (driven clock): what it is sending when closed
        except ConnectionError:
            await watcher
        if watcher.result():
            closed.set()
    async with FakeRemote(endless) as fake:
        stream = await (await backend_for(fake)).generate(request())
        got = [await anext(stream) for _ in range(read_first)]
        assert got == [TextDelta("tick ")] * read_first
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 3.0)
        # The peer saw the close by its next tick, not after a 2 s close timeout.
        assert loop.time() - t0 <= 0.02 + 1e-9


@on_driven_clock
async def test_concurrent_streams_up_to_concurrency():
    async def slow(ex: Exchange) -> None:
        await ex.start_sse()
        for i in range(3):
            await ex.send(chunk(f"{i}"))
            await asyncio.sleep(0.25)  # a slow peer (driven clock): its pace is the point
        await ex.send(chunk(finish="stop"))
        await ex.send("[DONE]")
    async with FakeRemote(slow) as fake:
        b = await backend_for(fake, max_concurrency=4)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async def one() -> list:
            return await collect(await b.generate(request()))
        results = await asyncio.gather(*(one() for _ in range(4)))
        assert all("".join(e.text for e in r if isinstance(e, TextDelta)) == "012" for r in results)
        assert loop.time() - t0 == pytest.approx(0.75)  # in parallel (one after another takes 3 s)


# ---- embeddings -----------------------------------------------------------------------------

async def test_embed_maps_orders_and_truncates():
    async def handler(ex: Exchange) -> None:
        assert ex.request.path == "/v1/embeddings"
        await ex.respond(200, {"object": "list", "model": MODEL, "usage": {"prompt_tokens": 5, "total_tokens": 5},
                               "data": [{"index": 1, "embedding": [0.0, 3.0, 4.0, 9.0]},
                                        {"index": 0, "embedding": [1.0, 0.0, 0.0, 0.0]}]})
    async with FakeRemote(handler) as fake:
        b = await backend_for(fake)
        out = await b.embed(EmbedResolved(id="e", input=["a", "b"]))
        assert out.embeddings == [[1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 4.0, 9.0]]
        assert (out.dimensions, out.model, out.input_tokens) == (4, MODEL, 5)
        assert fake.posts()[0].body == {"model": MODEL, "input": ["a", "b"], "encoding_format": "float"}
        cut = await b.embed(EmbedResolved(id="e", input=["a", "b"], dimensions=3))
        assert fake.posts()[1].body["dimensions"] == 3
        assert cut.dimensions == 3 and cut.embeddings[1] == pytest.approx([0.0, 0.6, 0.8])
        with pytest.raises(BackendInvalidRequest, match="exceeds"):
            await b.embed(EmbedResolved(id="e", input=["a", "b"], dimensions=8))


async def test_embed_errors_and_switch():
    async def handler(ex: Exchange) -> None:
        await ex.respond(404, {"error": {"message": "no embeddings here"}})
    async with FakeRemote(handler) as fake:
        with pytest.raises(Unavailable, match="HTTP 404.*no embeddings here"):
            await (await backend_for(fake)).embed(EmbedResolved(id="e", input=["a"]))
        off = await backend_for(fake, embed=False)
        assert not off.capabilities().embed
        with pytest.raises(Unsupported):
            await off.embed(EmbedResolved(id="e", input=["a"]))
    async def short(ex: Exchange) -> None:
        await ex.respond(200, {"data": [{"index": 0, "embedding": [1.0]}]})
    async with FakeRemote(short) as fake:
        with pytest.raises(Unavailable, match="expected 2 embeddings"):
            await (await backend_for(fake)).embed(EmbedResolved(id="e", input=["a", "b"]))


async def test_request_body_is_json_with_unicode():
    async with FakeRemote(sse(chunk("ø"), chunk(finish="stop"))) as fake:
        b = await backend_for(fake)
        await collect(await b.generate(request(messages=[ChatMessage("user", "blåbær ✓")])))
        assert fake.posts()[0].body["messages"][0]["content"] == "blåbær ✓"
        assert json.loads(json.dumps(fake.posts()[0].body))  # round-trips
