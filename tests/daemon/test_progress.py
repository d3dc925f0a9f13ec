"""Progress on the wire (issue 22, ADR 0029) on v1 and v2, against the mock backend.

A request with `progress: true` hears `queued {position}` while it waits for a permit
(again whenever its place changes), `prefill {done, total}` while its prompt is read,
and `context` once before its first token; a request without it sees exactly what it
saw before. Every order here is made by the test: the holder's generation stops at a
gate (`watch_mock`) until the test opens it.
"""

from __future__ import annotations

import asyncio

from daemon_harness import dial, line, read_json, read_until_terminal, req, roundtrip, wait_until, watch_mock

TAPE = ["alpha ", "beta"]
PROMPT = {"tokens": TAPE, "prompt_tokens": 100, "cached_tokens": 10, "prefill_chunk": 40, "n_ctx": 512}


def progress(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "progress"]


async def test_no_flag_no_progress_frames(daemon_factory):
    d = await daemon_factory(mock=PROMPT)
    frames = await roundtrip(d.infer, req("plain"))
    assert [f["type"] for f in frames] == ["token", "token", "done"]
    frames = await roundtrip(d.infer, req("off", progress=False))
    assert [f["type"] for f in frames] == ["token", "token", "done"]


async def test_prefill_then_context_then_tokens_v1(daemon_factory):
    d = await daemon_factory(mock=PROMPT)
    frames = await roundtrip(d.infer, req("p", progress=True))
    assert frames[:5] == [
        {"type": "progress", "id": "p", "stage": "prefill", "done": 10, "total": 100},
        {"type": "progress", "id": "p", "stage": "prefill", "done": 50, "total": 100},
        {"type": "progress", "id": "p", "stage": "prefill", "done": 90, "total": 100},
        {"type": "progress", "id": "p", "stage": "prefill", "done": 100, "total": 100},
        {"type": "progress", "id": "p", "stage": "context", "context": {"used": 100, "max": 512}},
    ]
    assert [f["type"] for f in frames[5:]] == ["token", "token", "done"]
    assert frames[-1]["content"] == "alpha beta"


async def test_progress_frames_also_when_not_streaming(daemon_factory):
    d = await daemon_factory(mock=PROMPT)
    frames = await roundtrip(d.infer, req("ns", progress=True, stream=False))
    assert [f["type"] for f in frames] == ["progress"] * 5 + ["done"]


async def test_v2_gets_the_same_progress_frames(daemon_factory):
    d = await daemon_factory(mock=PROMPT, v2=True)
    request = {"id": "v2p", "progress": True,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    frames = await roundtrip(d.v2, request)
    assert [(f["type"], f.get("stage")) for f in frames] == [
        ("progress", "prefill")] * 4 + [("progress", "context"), ("frame", None), ("frame", None), ("done", None)]
    assert [f["done"] for f in progress(frames)[:4]] == [10, 50, 90, 100]
    plain = await roundtrip(d.v2, {**request, "id": "v2-plain", "progress": None})
    assert not progress(plain)


async def test_queued_positions_then_tokens(daemon_factory, monkeypatch):
    """Parallel 1: one request holds the permit; two more wait and hear their places,
    then the second-in-line hears it moved up when the first waiter got the permit."""
    d = await daemon_factory(mock={"tokens": TAPE})
    gate = d.server.router.entries[0].admission
    watch = watch_mock(d, monkeypatch, hold_at=1)
    holder = await dial(d.infer)
    holder[1].write(line(req("holder")))
    assert (await read_json(holder[0]))["type"] == "token"  # it holds the permit, stopped at the gate
    a_reader, a_writer = await dial(d.infer)
    a_writer.write(line(req("a", progress=True)))
    assert await read_json(a_reader) == {"type": "progress", "id": "a", "stage": "queued", "position": 1}
    b_reader, b_writer = await dial(d.infer)
    b_writer.write(line(req("b", progress=True)))
    assert await read_json(b_reader) == {"type": "progress", "id": "b", "stage": "queued", "position": 2}
    c_reader, c_writer = await dial(d.infer)
    c_writer.write(line(req("c")))  # no flag: waits silently
    await wait_until(lambda: gate.waiting == 3, what="three waiting")
    assert gate.running == 1 and gate.outstanding - gate.running == 3  # the gauges' arithmetic

    watch.gate.set()  # the holder finishes (its waiting stream was woken)...
    watch.gate.clear()  # ...while "a", which gets the permit, stops at the gate in turn
    assert (await read_until_terminal(holder[0]))[-1]["type"] == "done"
    assert (await read_json(a_reader))["type"] == "token"
    assert await read_json(b_reader) == {"type": "progress", "id": "b", "stage": "queued", "position": 1}
    watch.gate.set()
    a_frames = await read_until_terminal(a_reader)
    assert [f["type"] for f in a_frames] == ["token", "done"]
    b_frames = await read_until_terminal(b_reader)
    assert [f["type"] for f in b_frames] == ["token", "token", "done"]
    c_frames = await read_until_terminal(c_reader)
    assert [f["type"] for f in c_frames] == ["token", "token", "done"]
    assert watch.started == ["holder", "a", "b", "c"]
    for w in (holder[1], a_writer, b_writer, c_writer):
        w.close()
    await wait_until(lambda: gate.outstanding == 0, what="all released")
