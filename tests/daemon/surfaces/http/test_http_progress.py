"""Progress on the HTTP surface (issue 22, ADR 0029): llama-server's `return_progress`
and its `prompt_progress` chunks, and our `queue_progress` chunk, on the mock backend."""

from __future__ import annotations

import json

import httpx

from daemon_harness import dial, line, read_json, req, wait_until, watch_mock

from http_helpers import base_url, chunks_of, sse_events

PROMPT = {"tokens": ["alpha ", "beta"], "prompt_tokens": 100, "cached_tokens": 10, "prefill_chunk": 40,
          "n_ctx": 512}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def progress_of(chunks: list[dict]) -> list[dict]:
    return [c["prompt_progress"] for c in chunks if "prompt_progress" in c]


async def test_chat_prompt_progress_chunks_as_llama_server_sends_them(http_daemon):
    d = await http_daemon(mock=PROMPT)
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "return_progress": True})
    assert r.status_code == 200
    chunks = chunks_of(sse_events(r.content))
    marks = progress_of(chunks)
    assert [(p["total"], p["cache"], p["processed"]) for p in marks] == [
        (100, 10, 10), (100, 10, 50), (100, 10, 90), (100, 10, 100)]
    assert all(isinstance(p["time_ms"], float) and p["time_ms"] >= 0 for p in marks)
    first = chunks[0]
    assert first["object"] == "chat.completion.chunk" and first["model"] == "mock"
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": None}, "logprobs": None,
                                 "finish_reason": None}]
    rest = chunks[len(marks):]
    assert not any("prompt_progress" in c or "queue_progress" in c for c in rest)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in rest) == "alpha beta"
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"


async def test_completions_prompt_progress_and_none_unasked(http_daemon):
    d = await http_daemon(mock=PROMPT)
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        asked = await c.post("/v1/completions", json={"prompt": "hi", "stream": True, "return_progress": True})
        plain = await c.post("/v1/completions", json={"prompt": "hi", "stream": True})
        whole = await c.post("/v1/chat/completions", json={**CHAT, "stream": False, "return_progress": True})
        chat_plain = await c.post("/v1/chat/completions", json=CHAT)
    chunks = chunks_of(sse_events(asked.content))
    assert [p["processed"] for p in progress_of(chunks)] == [10, 50, 90, 100]
    assert chunks[0]["choices"][0]["text"] == "" and chunks[0]["object"] == "text_completion"
    for body in (plain.content, chat_plain.content):
        assert not any("progress" in json.dumps(c) for c in chunks_of(sse_events(body)))
    # A whole answer has no chunks to carry progress: the same body as without the flag.
    assert whole.status_code == 200 and "prompt_progress" not in whole.json()
    assert whole.json()["choices"][0]["message"]["content"] == "alpha beta"


async def test_queued_chunk_while_another_holds_the_slot(http_daemon, monkeypatch):
    d = await http_daemon(mock={"tokens": ["alpha ", "beta"]})
    gate = d.server.router.entries[0].admission
    watch = watch_mock(d, monkeypatch, hold_at=1)
    holder_reader, holder_writer = await dial(d.infer)
    holder_writer.write(line(req("holder")))
    assert (await read_json(holder_reader))["type"] == "token"  # holds the one slot, stopped at the gate
    async with httpx.AsyncClient(base_url=base_url(d), timeout=10) as c:
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "return_progress": True}) as r:
            assert r.status_code == 200  # the stream began with the queued chunk
            lines = r.aiter_lines()
            first = json.loads((await anext(lines)).removeprefix("data: "))
            assert first["queue_progress"] == {"position": 1}
            assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}
            assert gate.waiting == 1
            watch.gate.set()
            rest = [ln async for ln in lines if ln]
    chunks = chunks_of([ln.removeprefix("data: ").encode() for ln in rest])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "alpha beta"
    assert rest[-1] == "data: [DONE]"
    holder_writer.close()
    await wait_until(lambda: gate.outstanding == 0, what="all released")


async def test_a_refusal_after_the_queued_chunk_is_an_error_event(http_daemon, monkeypatch):
    """The queued chunk began the stream (200): a backend refusing the request once it
    gets its slot can no longer be a status, so it is an SSE error event."""
    d = await http_daemon(mock={"tokens": ["alpha ", "beta"]})
    backend = d.server.router.entries[0].backend
    watch = watch_mock(d, monkeypatch, hold_at=1)
    holder_reader, holder_writer = await dial(d.infer)
    holder_writer.write(line(req("holder")))
    assert (await read_json(holder_reader))["type"] == "token"
    async with httpx.AsyncClient(base_url=base_url(d), timeout=10) as c:
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "return_progress": True}) as r:
            lines = r.aiter_lines()
            assert "queue_progress" in json.loads((await anext(lines)).removeprefix("data: "))
            backend.set_ready(False)  # the backend will refuse it when its turn comes
            watch.gate.set()
            rest = [ln async for ln in lines if ln]
    assert r.status_code == 200
    (event,) = rest
    error = json.loads(event.removeprefix("data: "))["error"]
    assert error["code"] == "backend_unavailable"
    holder_writer.close()
    backend.set_ready(True)
