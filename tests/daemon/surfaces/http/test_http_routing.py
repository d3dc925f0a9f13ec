"""The HTTP surface answers for the backend that served, not the one it would have
guessed: the pipeline routes once and tells the route which backend serves before
its first event (ADR 0020)."""

from __future__ import annotations

import json
import httpx

from http_helpers import base_url, chunks_of, sse_events

from inferd.daemon.pipeline.breaker import CircuitState

TOKENS = [f"t{i} " for i in range(12)]
CHAT = { "messages": [{"role": "user", "content": "hi"}]}


async def test_an_unavailable_first_backend_is_not_the_one_named_nor_sized(http_daemon, sockdir):
    cfg = sockdir / "two.json"
    cfg.write_text(json.dumps({
        "backends": [{"kind": "mock", "name": "near", "pre_stream_error": "Unavailable", "n_ctx": 3, "tokens": TOKENS},
                     {"kind": "mock", "name": "far", "n_ctx": 5, "tokens": TOKENS}],
        "breaker": {"failures": 1, "cooldown_secs": 60}}))
    d = await http_daemon(config=str(cfg))
    near, far = d.server.router.entries
    near.caps = near.caps.model_copy(update={"model": "near-model"})
    far.caps = far.caps.model_copy(update={"model": "far-model"})
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        # The first backend refuses before its stream: the pipeline serves on the second.
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        body = r.json()
        assert body["model"] == "far-model"
        # No max_tokens: the answer may fill the serving backend's context (5), not near's (3).
        assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (5, "length")
        assert near.breaker.state is CircuitState.OPEN

        # Its circuit open, the first backend is skipped: streamed, the same holds.
        r = await c.post("/v1/chat/completions",
                         json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        assert r.status_code == 200
        chunks = chunks_of(sse_events(r.content))
        assert {chunk["model"] for chunk in chunks} == {"far-model"}
        assert chunks[-1]["usage"]["completion_tokens"] == 5

        # A completion's default stays OpenAI's 16, not the context: all 12 tokens.
        r = await c.post("/v1/completions", json={"prompt": "p"})
        assert r.json()["model"] == "far-model" and r.json()["usage"]["completion_tokens"] == 12

