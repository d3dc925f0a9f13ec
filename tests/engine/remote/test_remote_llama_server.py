"""OpenAIBackend against a real OpenAI-compatible server (llama-cpp-python's).

What the remote says directly (non-streamed, over plain httpx) is the reference the
backend's streamed relay must reproduce.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest

from remote_servers import ALIAS, KEY_ENV, LlamaServer, direct, unrelated_turn
from inferd.engine.backend import Unavailable
from inferd.engine.events import Done, FinishReason, TextDelta
from inferd.engine.remote import OpenAIBackend, OpenAISettings
from inferd.engine.request import ChatMessage, GenerationRequest
from inferd.proto.embed import EmbedResolved

pytestmark = [pytest.mark.model, pytest.mark.timeout(180)]

_FINISH = {"stop": FinishReason.END, "length": FinishReason.LENGTH}


@pytest.fixture
async def backend(llama_server: LlamaServer):
    b = OpenAIBackend(OpenAISettings(base_url=llama_server.url, api_key_env=KEY_ENV,
                                     first_token_timeout=60, idle_timeout=20))
    await b.probe()
    yield b
    await b.stop(5.0)


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_probe_against_a_real_server(backend):
    assert backend.ready() and backend.concurrency == 4
    caps = backend.capabilities()
    assert caps.model == ALIAS and caps.accelerator == "remote" and caps.v2 and caps.tools
    assert caps.n_ctx is None  # llama-cpp-python's server reports no context size


async def test_streamed_chat_equals_the_servers_own_answer(backend, llama_server):
    messages = [ChatMessage("user", "Name three colours.")]
    req = GenerationRequest(id="c", messages=messages, temperature=0.0, seed=7, max_tokens=24)
    await unrelated_turn(llama_server)
    events = [e async for e in await backend.generate(req)]
    await unrelated_turn(llama_server)
    ref = await direct(llama_server, "chat/completions", {
        "model": ALIAS, "messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0.0, "top_p": req.top_p, "seed": 7, "max_tokens": 24})
    assert text_of(events) == ref["choices"][0]["message"]["content"]
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1, "relayed as it arrived, not in one piece"
    done = events[-1]
    assert isinstance(done, Done) and sum(isinstance(e, Done) for e in events) == 1
    assert done.reason is _FINISH[ref["choices"][0]["finish_reason"]]
    assert done.usage.completion_tokens > 0
    assert done.timings is not None and done.timings.generate_ms > 0 and done.timings.tokens_per_second > 0


async def test_raw_prompt_uses_completions(backend, llama_server):
    req = GenerationRequest(id="p", prompt="The capital of France is", temperature=0.0, seed=1, max_tokens=8)
    events = [e async for e in await backend.generate(req)]
    ref = await direct(llama_server, "completions", {"model": ALIAS, "prompt": "The capital of France is",
                                                     "temperature": 0.0, "seed": 1, "max_tokens": 8})
    assert text_of(events) == ref["choices"][0]["text"] != ""
    assert events[-1].reason is _FINISH[ref["choices"][0]["finish_reason"]]


async def test_wrong_key_is_unavailable_naming_the_variable(llama_server, monkeypatch):
    monkeypatch.setenv("INFERD_TEST_WRONG_KEY", "not-the-key")
    b = OpenAIBackend(OpenAISettings(base_url=llama_server.url, api_key_env="INFERD_TEST_WRONG_KEY"))
    try:
        with pytest.raises(Unavailable) as info:
            await b.probe()
        assert "INFERD_TEST_WRONG_KEY" in info.value.message and "refused" in info.value.message
        assert "not-the-key" not in info.value.message
        assert not b.ready()
    finally:
        await b.stop(1.0)


async def test_aclose_mid_stream_leaves_the_server_serving(backend):
    long = GenerationRequest(id="l", messages=[ChatMessage("user", "Write a long story about a dragon.")],
                             temperature=0.0, max_tokens=400)
    stream = await backend.generate(long)
    first = [await anext(stream) for _ in range(2)]
    assert all(isinstance(e, TextDelta) for e in first)
    await stream.aclose()
    again = [e async for e in await backend.generate(
        GenerationRequest(id="a", messages=[ChatMessage("user", "Say hi.")], temperature=0.0, max_tokens=8))]
    assert isinstance(again[-1], Done)


async def test_killed_server_mid_stream_raises_after_partial_output(doomed_llama_server):
    b = OpenAIBackend(OpenAISettings(base_url=doomed_llama_server.url, idle_timeout=5.0))
    await b.probe()
    try:
        req = GenerationRequest(id="k", messages=[ChatMessage("user", "Write a long story about a dragon.")],
                                temperature=0.0, max_tokens=1500)
        stream = await b.generate(req)
        got = [await anext(stream) for _ in range(2)]
        doomed_llama_server.kill()
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            async for e in stream:
                got.append(e)
        assert time.monotonic() - t0 < 6.0
        assert len(got) >= 2 and all(isinstance(e, TextDelta) for e in got)
        # Gone now: pre-stream refusal, quickly.
        with pytest.raises(Unavailable, match="connection refused"):
            await asyncio.wait_for(b.generate(req), 5.0)
    finally:
        await b.stop(1.0)


async def test_embeddings_from_a_real_server(llama_embed_server):
    b = OpenAIBackend(OpenAISettings(base_url=llama_embed_server.url))
    await b.probe()
    try:
        out = await b.embed(EmbedResolved(id="e", input=["hello world", "the cat sat on the mat"]))
        assert len(out.embeddings) == 2 and out.dimensions == 640 and out.model == ALIAS
        assert all(len(v) == 640 and math.isclose(math.hypot(*v), 1.0, rel_tol=1e-6) for v in out.embeddings)
        assert out.embeddings[0] != out.embeddings[1]
        again = await b.embed(EmbedResolved(id="e", input=["hello world"]))
        assert again.embeddings[0] == pytest.approx(out.embeddings[0], abs=1e-5)
        cut = await b.embed(EmbedResolved(id="e", input=["hello world"], dimensions=64))
        assert cut.dimensions == 64 and math.isclose(math.hypot(*cut.embeddings[0]), 1.0, rel_tol=1e-6)
    finally:
        await b.stop(1.0)
