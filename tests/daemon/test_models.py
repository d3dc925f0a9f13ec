"""Models by name (issue 20) on the mock backend: names, aliases and groups; the
unknown-name error on every wire; loading on demand, keep_alive and expiry; the
memory budget's eviction and refusal; a remote down at boot joining later.

The mock stands in for the model here because these are routing and lifecycle
rules; test_models_llamacpp.py runs the same rules on real runner processes.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from daemon_harness import dial, read_json, req, roundtrip, wait_until
from inferd.daemon.config import ConfigError, parse_config
from inferd.daemon.models.catalog import Catalog
from inferd.engine.backend import Fault
from inferd.daemon.surfaces.faults import FAULTS


def write(sockdir, **cfg):
    path = sockdir / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def mock(name, **extra):
    return {"kind": "mock", "name": name, "tokens": [f"from-{name}"], **extra}


def loaded(d) -> set[str]:
    return {m.name for m in d.server.ctx.models.catalog.models if m.loaded is not None}


# ---- the catalog -------------------------------------------------------------------------

def test_names_aliases_file_names_and_groups():
    cfg = parse_config({"backends": [
        {"kind": "openai", "name": "cluster", "base_url": "http://127.0.0.1:9/v1", "aliases": ["qwen"]},
        {"kind": "llamacpp", "name": "local-qwen", "model_path": "/m/qwen2.5-0.5b-q4.gguf", "aliases": ["qwen"]},
        mock("coder", aliases=["qwen2.5-coder:1.5b"], on_demand=True),
    ]})
    cat = Catalog.from_config(cfg)
    assert [m.name for m in cat.group("qwen")] == ["cluster", "local-qwen"]  # config order: remote first
    assert [m.name for m in cat.group("qwen2.5-0.5b-q4.gguf")] == ["local-qwen"]  # the file name
    assert [m.name for m in cat.group("qwen2.5-0.5b-q4")] == ["local-qwen"]  # without .gguf
    assert [m.name for m in cat.group("Qwen2.5-Coder:1.5B")] == ["coder"]  # case folded
    assert [m.name for m in cat.group("coder:latest")] == ["coder"]
    assert [m.name for m in cat.group(None)] == ["cluster", "local-qwen"]  # the boot entries
    with pytest.raises(LookupError, match=r"model 'llama3' not found; available: cluster, local-qwen, coder"):
        cat.group("llama3")


def test_config_refuses_an_alias_that_is_another_entrys_name_and_bad_keep_alive():
    with pytest.raises(ConfigError, match="alias 'b' of backend 'a' is another backend's name"):
        parse_config({"backends": [mock("a", aliases=["b"]), mock("b")]})
    with pytest.raises(ConfigError, match="keep_alive"):
        parse_config({"backends": [mock("a")], "keep_alive": "soon"})
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_config({"backends": [mock("a")], "memory_budget": "lots"})
    with pytest.raises(ConfigError, match="default_model 'x' names no backend"):
        parse_config({"backends": [mock("a")], "default_model": "x"})


# ---- routing by name on every wire -------------------------------------------------------

async def test_each_wire_routes_by_name_and_absent_means_the_default(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat"), mock("other", aliases=["o:1b"])]),
                             v2=True, http="127.0.0.1:0")
    # v1 without a model: the default (the first boot entry), exactly as before names.
    frames = await roundtrip(d.infer, req("a"))
    assert (frames[-1]["content"], frames[-1]["backend"]) == ("from-chat", "chat")
    frames = await roundtrip(d.infer, req("b", model="o:1b"))
    assert (frames[-1]["content"], frames[-1]["backend"]) == ("from-other", "other")
    v2 = {"id": "c", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "model": "other"}
    assert (await roundtrip(d.v2, v2))[-1]["backend"] == "other"
    assert (await roundtrip(d.embed, {"id": "e", "input": ["x"], "model": "other"}))[-1]["backend"] == "other"
    base = f"http://{d.server._surfaces[-1].address}/v1"
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/chat/completions", json={"model": "other", "messages": [{"role": "user", "content": "x"}]})
        assert r.json()["choices"][0]["message"]["content"] == "from-other"
        cards = (await c.get("/models")).json()["data"]
        assert [(m["id"], m["loaded"]) for m in cards] == [("chat", True), ("other", True)]
        assert cards[1]["aliases"] == ["o:1b"]


async def test_an_unknown_name_is_model_not_found_listing_what_is_there(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat"), mock("coder", on_demand=True)]),
                             v2=True, http="127.0.0.1:0")
    listing = "model 'gpt-4o' not found; available: chat, coder"
    (err,) = await roundtrip(d.infer, req("a", model="gpt-4o"))
    assert (err["type"], err["code"], err["message"]) == ("error", "model_not_found", listing)
    v2 = {"id": "c", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "model": "gpt-4o"}
    assert (await roundtrip(d.v2, v2))[-1]["code"] == "model_not_found"
    assert (await roundtrip(d.embed, {"id": "e", "input": ["x"], "model": "gpt-4o"}))[-1]["code"] == "model_not_found"
    base = f"http://{d.server._surfaces[-1].address}/v1"
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": listing, "type": "invalid_request_error", "param": None,
                                      "code": "model_not_found"}}
        r = await c.post("/embeddings", json={"model": "gpt-4o", "input": "x"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    # The connection stays usable, and nothing was loaded for the bad name.
    assert loaded(d) == {"chat"}


def test_the_fault_table_has_model_not_found_and_insufficient_memory():
    assert FAULTS[Fault.MODEL_NOT_FOUND][:4] == ("model_not_found", "model_not_found", "model_not_found", 404)
    assert FAULTS[Fault.INSUFFICIENT_MEMORY].http_status == 503
    assert FAULTS[Fault.INSUFFICIENT_MEMORY].v2 == "insufficient_memory"


async def test_unknown_model_default_serves_hard_coded_cloud_names(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat")], unknown_model="default"))
    assert (await roundtrip(d.infer, req("a", model="gpt-4o")))[-1]["backend"] == "chat"


async def test_a_bad_keep_alive_is_invalid_request_and_the_connection_lives(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat")]))
    r, w = await dial(d.infer)
    w.write(json.dumps(req("a", keep_alive="soon")).encode() + b"\n")
    err = await read_json(r)
    assert err["code"] == "invalid_request" and "keep_alive" in err["message"]
    w.write(json.dumps(req("b")).encode() + b"\n")
    frames = [await read_json(r)]
    while frames[-1]["type"] not in ("done", "error"):
        frames.append(await read_json(r))
    assert frames[-1]["type"] == "done"
    w.close()


# ---- on demand, keep_alive, expiry ---------------------------------------------------------

async def test_on_demand_load_keep_alive_zero_and_expiry(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat"), mock("coder", on_demand=True)],
                                          keep_alive="50ms"))
    assert loaded(d) == {"chat"}  # an on-demand model waits to be asked for
    sub = d.server.broadcaster.subscribe()
    frames = await roundtrip(d.infer, req("a", model="coder", keep_alive=0))
    assert frames[-1]["backend"] == "coder"
    await wait_until(lambda: loaded(d) == {"chat"}, what="keep_alive 0 unloads after the request")
    events = []
    while (frame := sub._queue.popleft() if sub._queue else None) is not None:
        events.append(json.loads(frame))
    states = [(e["model"], e["state"]) for e in events if e["status"] == "model"]
    assert states == [("coder", "loading"), ("coder", "loading"), ("coder", "loaded"), ("coder", "unloaded")]
    assert next(e for e in events if e.get("state") == "unloaded")["reason"].startswith("keep_alive 0")
    # The config's keep_alive (50 ms here) unloads it once idle; the next request loads it again.
    assert (await roundtrip(d.infer, req("b", model="coder")))[-1]["backend"] == "coder"
    await wait_until(lambda: loaded(d) == {"chat"}, what="expiry")
    assert (await roundtrip(d.infer, req("c", model="coder", keep_alive=-1)))[-1]["backend"] == "coder"
    coder = d.server.ctx.models.catalog.find("coder")
    assert coder.loaded is not None and coder.expires_at is None  # negative: for ever
    # The boot model is pinned: still there, never counted down.
    assert d.server.ctx.models.catalog.find("chat").expires_at is None
    d.server.broadcaster.unsubscribe(sub)


async def test_a_model_serving_is_not_expired_under_its_request(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[
        mock("chat"), mock("slow", on_demand=True, token_delay_ms=5, tokens=["t"] * 40)], keep_alive="1ms"))
    first = await roundtrip(d.infer, req("a", model="slow"))
    assert first[-1]["type"] == "done" and len(first) == 41  # 40 tokens while its keep_alive (1 ms) ran out


# ---- the memory budget ---------------------------------------------------------------------

async def test_the_budget_evicts_the_idle_model_not_the_busy_one_and_refuses_with_numbers(daemon_factory, sockdir):
    mib = 1 << 20
    d = await daemon_factory(config=write(sockdir, memory_budget=200 * mib, backends=[
        mock("chat"),
        mock("a", on_demand=True, memory_bytes=90 * mib, token_delay_ms=20, tokens=["a"] * 200),
        mock("b", on_demand=True, memory_bytes=90 * mib),
        mock("c", on_demand=True, memory_bytes=90 * mib),
        mock("huge", on_demand=True, memory_bytes=300 * mib)]))
    # a is busy streaming; b was served and is idle; c must evict b, not a.
    r, w = await dial(d.infer)
    w.write(json.dumps(req("long", model="a")).encode() + b"\n")
    assert (await read_json(r))["type"] == "token"
    assert (await roundtrip(d.infer, req("b1", model="b")))[-1]["backend"] == "b"
    assert loaded(d) == {"chat", "a", "b"}
    assert (await roundtrip(d.infer, req("c1", model="c")))[-1]["backend"] == "c"
    assert loaded(d) == {"chat", "a", "c"}
    # A model larger than the whole budget is refused at once, naming both sizes,
    # and nothing is evicted for it.
    (err,) = await roundtrip(d.infer, req("h", model="huge"))
    assert err["code"] == "backend_unavailable"
    assert f"needs about 300 MiB ({300 * mib} bytes)" in err["message"]
    assert f"memory budget is 200 MiB ({200 * mib} bytes)" in err["message"]
    assert loaded(d) == {"chat", "a", "c"}
    w.close()


async def test_when_every_loaded_model_is_busy_the_refusal_names_needed_and_free(daemon_factory, sockdir):
    mib = 1 << 20
    d = await daemon_factory(config=write(sockdir, memory_budget=150 * mib, backends=[
        mock("chat"),
        mock("a", on_demand=True, memory_bytes=100 * mib, token_delay_ms=20, tokens=["a"] * 200),
        mock("b", on_demand=True, memory_bytes=100 * mib)]))
    r, w = await dial(d.infer)
    w.write(json.dumps(req("long", model="a")).encode() + b"\n")
    assert (await read_json(r))["type"] == "token"
    (err,) = await roundtrip(d.infer, req("b1", model="b"))
    assert err["code"] == "backend_unavailable"
    assert (f"needs about 100 MiB ({100 * mib} bytes) but only 50 MiB ({50 * mib} bytes) of the 150 MiB "
            "memory budget is free") in err["message"]
    assert loaded(d) == {"chat", "a"}
    w.close()


async def test_a_load_whose_client_left_still_counts_down(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, keep_alive="50ms", backends=[
        mock("chat"), mock("slow", on_demand=True, ready_delay_ms=300)]))
    r, w = await dial(d.infer)
    w.write(json.dumps(req("gone", model="slow")).encode() + b"\n")
    slow = d.server.ctx.models.catalog.find("slow")
    await wait_until(lambda: slow.task is not None, what="the load starts")
    w.close()  # the only client leaves while its model loads
    await wait_until(lambda: slow.loaded is not None, what="the load goes on for others")
    await wait_until(lambda: slow.loaded is None, what="its keep_alive unloads it all the same")


async def test_a_reload_forgets_on_demand_models_and_they_load_again(daemon_factory, sockdir):
    path = write(sockdir, backends=[mock("chat"), mock("coder", on_demand=True)])
    d = await daemon_factory(config=path)
    assert (await roundtrip(d.infer, req("a", model="coder")))[-1]["backend"] == "coder"
    sub = d.server.broadcaster.subscribe()
    while json.loads(await sub.next())["status"] != "ready":
        pass  # the replay
    d.server.request_reload()
    while json.loads(await sub.next())["status"] != "restarting":
        pass
    while json.loads(await sub.next())["status"] != "ready":
        pass
    assert [e.label for e in d.server.router.entries] == ["chat"] and loaded(d) == {"chat"}
    assert (await roundtrip(d.infer, req("b", model="coder")))[-1]["backend"] == "coder"
    d.server.broadcaster.unsubscribe(sub)


async def test_a_group_falls_back_to_its_on_demand_member_when_the_first_refuses(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[
        mock("near", aliases=["qwen"], pre_stream_error="Unavailable"),
        mock("far", aliases=["qwen"], on_demand=True),
        mock("other", aliases=["solo"], pre_stream_error="InvalidRequest")]))
    frames = await roundtrip(d.infer, req("a", model="qwen"))
    assert frames[-1]["backend"] == "far"  # near refused before its stream; far was loaded for it
    assert loaded(d) == {"near", "far", "other"}
    (err,) = await roundtrip(d.infer, req("b", model="solo"))  # the request at fault: no fallback
    assert err["code"] == "invalid_request"


async def test_a_load_that_a_reload_overtakes_is_not_installed(daemon_factory, sockdir):
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat"), mock("slow", on_demand=True,
                                                                                ready_delay_ms=2000)]))
    slow = d.server.ctx.models.catalog.find("slow")
    pending = asyncio.ensure_future(roundtrip(d.infer, req("a", model="slow")))
    await wait_until(lambda: slow.task is not None, what="the load starts")
    d.server.request_reload()
    (err,) = await pending
    assert err["code"] == "backend_unavailable" and "reloaded while it loaded" in err["message"]
    assert [e.label for e in d.server.router.entries] == ["chat"]
    assert (await roundtrip(d.infer, req("b", model="slow")))[-1]["backend"] == "slow"  # loads afresh


async def test_ollama_listings_show_configured_models_and_what_is_loaded(daemon_factory, sockdir):
    # /api/tags lists every configured model (Ollama lists what it can run); /api/ps
    # only what is loaded, with expires_at while an idle model counts down.
    d = await daemon_factory(config=write(sockdir, backends=[mock("chat"), mock("coder", on_demand=True)],
                                          keep_alive="1h"), http="127.0.0.1:0")
    async with httpx.AsyncClient(base_url=f"http://{d.server._surfaces[-1].address}") as c:
        assert [m["name"] for m in (await c.get("/api/tags")).json()["models"]] == ["chat", "coder"]
        assert [m["name"] for m in (await c.get("/api/ps")).json()["models"]] == ["chat"]
        r = await c.post("/api/generate", json={"model": "coder", "prompt": "x", "stream": False})
        assert r.status_code == 200 and r.json()["response"] == "from-coder"
        ps = {m["name"]: m for m in (await c.get("/api/ps")).json()["models"]}
        assert set(ps) == {"chat", "coder"} and "expires_at" in ps["coder"]
        show = (await c.post("/api/show", json={"model": "coder:latest"})).json()
        assert show["model_info"]["general.name"] == "coder"
