"""Models by name on real llama.cpp runner processes (issue 20): the embedded Gemma 3
270M and the tiny random GGUF (tests/tiny_gguf.py) under several names. Each loaded
model is one runner process; the tests count them.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx

from daemon_harness import dial, read_json, req, roundtrip, wait_until
from inferd.daemon.models.budget import estimate
from inferd.engine.llamacpp.settings import LlamaCppOptions
from inferd.models.gguf import read_gguf

SMALL = {"n_ctx": 512, "parallel": 1, "n_threads": 1, "runner": True}


def runner_pids() -> set[int]:
    """Runner processes this test process started (the daemon runs in it)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"inferd.engine.llamacpp.runner" in cmd and not stat.rsplit(")", 1)[1].split()[0] == "Z":
            found.add(int(entry.name))
    return found


def pid_of(d, name: str) -> int | None:
    model = d.server.ctx.models.catalog.find(name)
    return None if model.loaded is None else model.loaded.backend.pid


def llama(name: str, path: str, **extra) -> dict:
    return {"kind": "llamacpp", "name": name, "model_path": path, **SMALL, **extra}


def write(sockdir, **cfg) -> str:
    path = sockdir / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


async def test_two_apps_two_models_at_once_and_the_default_as_before(daemon_factory, sockdir, model_path, tiny_gguf):
    d = await daemon_factory(config=write(sockdir, backends=[
        llama("gemma", model_path), llama("tiny", tiny_gguf, on_demand=True, aliases=["tiny:4l"])]))
    assert len(runner_pids()) == 1  # the default only: tiny waits to be asked for
    # A v1 client that names no model: the default, exactly as before names existed.
    plain = await roundtrip(d.infer, req("plain", max_tokens=4, temperature=0), timeout=60)
    assert plain[-1]["type"] == "done" and plain[-1]["backend"] == "gemma"
    # Two apps, two models, at once: the tiny one loads while gemma keeps serving.
    a, b = await asyncio.gather(
        roundtrip(d.infer, req("a", model="gemma", max_tokens=8, temperature=0), timeout=60),
        roundtrip(d.infer, req("b", model="tiny:4l", max_tokens=8, temperature=0), timeout=60))
    assert (a[-1]["type"], a[-1]["backend"]) == ("done", "gemma")
    assert (b[-1]["type"], b[-1]["backend"]) == ("done", "tiny")
    assert a[-1]["usage"]["completion_tokens"] > 0 and b[-1]["usage"]["completion_tokens"] > 0
    assert runner_pids() == {pid_of(d, "gemma"), pid_of(d, "tiny")}


async def test_keep_alive_zero_and_expiry_end_the_runner_and_the_next_request_reloads(daemon_factory, sockdir,
                                                                                       model_path, tiny_gguf):
    d = await daemon_factory(config=write(sockdir, keep_alive="200ms", backends=[
        llama("gemma", model_path), llama("tiny", tiny_gguf, on_demand=True)]))
    gemma = pid_of(d, "gemma")
    done = await roundtrip(d.infer, req("a", model="tiny", max_tokens=4, keep_alive=0), timeout=60)
    assert done[-1]["backend"] == "tiny"
    await wait_until(lambda: runner_pids() == {gemma}, timeout=20, what="keep_alive 0 ends the tiny runner")
    first = await roundtrip(d.infer, req("b", model="tiny", max_tokens=4), timeout=60)
    tiny = pid_of(d, "tiny")
    assert first[-1]["backend"] == "tiny" and runner_pids() == {gemma, tiny}
    # 200 ms of idleness later (the config's keep_alive) it is unloaded, process and all...
    await wait_until(lambda: runner_pids() == {gemma}, timeout=20, what="expiry ends the tiny runner")
    assert pid_of(d, "tiny") is None
    # ...and the next request loads it again, in a new runner.
    again = await roundtrip(d.infer, req("c", model="tiny", max_tokens=4, keep_alive="1h"), timeout=60)
    assert again[-1]["backend"] == "tiny" and pid_of(d, "tiny") not in (None, tiny)
    assert runner_pids() == {gemma, pid_of(d, "tiny")}


async def test_a_third_model_evicts_the_idle_one_not_the_busy_one(daemon_factory, sockdir, tiny_gguf):
    need = estimate(read_gguf(tiny_gguf), LlamaCppOptions(**SMALL)).total
    d = await daemon_factory(config=write(sockdir, memory_budget=int(need * 2.5), default_model="one", backends=[
        llama("one", tiny_gguf, on_demand=True), llama("two", tiny_gguf, on_demand=True),
        llama("three", tiny_gguf, on_demand=True)]))
    assert runner_pids() == set()  # nothing at boot: the default loads when first asked for
    # "one" is busy: a request in flight whose reader does not read on (its tokens wait).
    r, w = await dial(d.infer)
    w.write(json.dumps(req("busy", model="one", max_tokens=2000, temperature=0)).encode() + b"\n")
    assert (await read_json(r, timeout=60))["type"] == "token"
    one = pid_of(d, "one")
    assert (await roundtrip(d.infer, req("idle", model="two", max_tokens=2), timeout=60))[-1]["backend"] == "two"
    two = pid_of(d, "two")
    assert runner_pids() == {one, two}
    busy = d.server.ctx.models.catalog.find("one")
    assert busy.busy, "the first request must still be in flight for this test to mean anything"
    third = await roundtrip(d.infer, req("third", model="three", max_tokens=2), timeout=60)
    assert third[-1]["backend"] == "three"
    assert pid_of(d, "one") == one and pid_of(d, "two") is None  # the idle one went, not the busy one
    await wait_until(lambda: runner_pids() == {one, pid_of(d, "three")}, timeout=20, what="two's runner ends")
    w.close()


async def test_a_model_that_cannot_fit_is_refused_naming_needed_and_free(daemon_factory, sockdir, tiny_gguf):
    need = estimate(read_gguf(tiny_gguf), LlamaCppOptions(**SMALL)).total
    budget = need // 2
    d = await daemon_factory(config=write(sockdir, memory_budget=budget, default_model="tiny", backends=[
        llama("tiny", tiny_gguf, on_demand=True)]))
    (err,) = await roundtrip(d.infer, req("a", model="tiny"), timeout=60)
    assert err["code"] == "backend_unavailable"
    assert f"({need} bytes)" in err["message"] and f"({budget} bytes)" in err["message"]
    assert runner_pids() == set()


async def test_an_embedding_model_serves_by_name_beside_the_chat_model(daemon_factory, sockdir, model_path, tiny_gguf):
    d = await daemon_factory(config=write(sockdir, backends=[
        llama("chat", tiny_gguf),
        llama("embedder", model_path, on_demand=True, embed=True, embed_pooling=1, aliases=["gemma-embed"])]),
        http="127.0.0.1:0")
    # Unnamed: the chat model cannot embed, so the embedding model serves (loaded for it).
    unnamed = await roundtrip(d.embed, {"id": "e1", "input": ["a cat"]}, timeout=60)
    assert unnamed[-1]["type"] == "embeddings" and unnamed[-1]["backend"] == "embedder"
    named = await roundtrip(d.embed, {"id": "e2", "input": ["a cat"], "model": "gemma-embed"}, timeout=60)
    assert named[-1]["embeddings"] == unnamed[-1]["embeddings"]
    base = f"http://{d.server._surfaces[-1].address}/v1"
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        r = await c.post("/embeddings", json={"model": "embedder", "input": "a cat"})
        assert r.status_code == 200
        vec = r.json()["data"][0]["embedding"]
        assert len(vec) == unnamed[-1]["dimensions"]
        assert max(abs(x - y) for x, y in zip(vec, unnamed[-1]["embeddings"][0])) < 1e-5
        chat = await c.post("/chat/completions", json={"model": "chat", "max_tokens": 2,
                                                       "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200
    assert runner_pids() == {pid_of(d, "chat"), pid_of(d, "embedder")}


async def test_a_shutdown_during_a_load_leaves_no_runner_behind(daemon_factory, sockdir, tiny_gguf):
    d = await daemon_factory(config=write(sockdir, default_model="tiny", backends=[
        llama("tiny", tiny_gguf, on_demand=True)]))
    tiny = d.server.ctx.models.catalog.find("tiny")
    pending = asyncio.ensure_future(roundtrip(d.infer, req("a", model="tiny"), timeout=60))
    await wait_until(lambda: tiny.task is not None and runner_pids(), timeout=20, what="the runner starts")
    assert await d.stop(60) == 0
    await wait_until(lambda: not runner_pids(), timeout=30, what="the half-loaded runner ends")
    pending.cancel()
