"""A daemon in front of a remote OpenAI-compatible server, with a local backend behind it.

The remote is llama-cpp-python's own server (`python -m llama_cpp.server`, not our
code) on the embedded Gemma 3 270M, started here on a loopback port; what it
answers when asked directly is the reference for what the daemon relays. The
misbehaviours a real server will not produce on demand (HTTP 500, garbage SSE,
stalls) come from fake_openai.py. The local fallback is a mock, so an answer says by
its text which backend served it. Issue 11; THREAT_MODEL F-10; ADR 0016.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon_harness import (
    RecordingActivityLog,
    assert_same_fds,
    dial,
    open_fds,
    line,
    read_json,
    read_until_terminal,
    req,
    reserved_port,
    roundtrip,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "remote"))
from fake_openai import Exchange, FakeRemote, chunk  # noqa: E402
from remote_servers import ALIAS, LlamaServer, direct, start_llama_server, unrelated_turn  # noqa: E402

from inferd.cli import admin_cmds, doctor  # noqa: E402
from inferd.daemon import loader  # noqa: E402
from inferd.daemon.pipeline.breaker import CircuitState  # noqa: E402

pytestmark = pytest.mark.timeout(240)

#: Our own variable: the engine tests' session server uses another, with another key.
KEY_ENV = "INFERD_TEST_FAILOVER_KEY"
LOCAL = {"kind": "mock", "name": "local", "tokens": ["from-", "local"]}
STORY = "Write a long story about a dragon."


@pytest.fixture(scope="module")
def chat_server(model_path, tmp_path_factory) -> Iterator[LlamaServer]:
    key = secrets.token_urlsafe(16)
    server = start_llama_server(model_path, tmp_path_factory.mktemp("remote") / "chat.log",
                                "--chat_format", "gemma", key=key)
    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key
    yield server
    if previous is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = previous
    server.kill()


@pytest.fixture
def fast_probe(monkeypatch):
    """The loader's probe backoff, shortened so a boot test sees several attempts quickly."""
    monkeypatch.setattr(loader, "PROBE_FIRST_DELAY", 0.05)
    monkeypatch.setattr(loader, "PROBE_MAX_DELAY", 0.2)


def remote(url: str, name: str = "cluster", **kw) -> dict:
    return {"kind": "openai", "name": name, "base_url": url, **kw}


def config(sockdir: Path, *backends: dict, breaker: dict | None = None, name: str = "config.json") -> str:
    body: dict = {"backends": list(backends)}
    if breaker is not None:
        body["breaker"] = breaker
    path = sockdir / name
    path.write_text(json.dumps(body))
    return str(path)


async def admin_events(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[dict]]:
    """A subscription with its connect-time replay read (capabilities..., snapshot)."""
    reader, writer = await dial(path)
    replay = []
    while True:
        frame = await read_json(reader)
        replay.append(frame)
        if frame["status"] != "capabilities":
            return reader, writer, replay


async def next_status(reader: asyncio.StreamReader, status: str, timeout: float = 30.0) -> dict:
    while True:
        frame = await read_json(reader, timeout)
        assert frame is not None, "admin stream ended"
        if frame["status"] == status:
            return frame


def text(frames: list[dict]) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "token")


# ---- serving through the remote -------------------------------------------------------

async def test_streamed_relay_equals_the_remote_answered_directly(daemon_factory, sockdir, chat_server):
    d = await daemon_factory(config=config(sockdir, remote(chat_server.url, api_key_env=KEY_ENV), LOCAL),
                             v2=True, v2_addr=str(sockdir / "v2.sock"))
    r, w, replay = await admin_events(d.admin)
    w.close()
    cluster = next(f for f in replay if f.get("backend") == "cluster")
    assert (cluster["accelerator"], cluster["model"], cluster["v2"], cluster["tools"]) == ("remote", ALIAS, True, True)
    assert replay[-1]["status"] == "ready"

    sampling = {"temperature": 0, "seed": 7, "max_tokens": 24}
    # Each compared answer starts from the same (unrelated) cache state on the server.
    await unrelated_turn(chat_server)
    ref = await direct(chat_server, "chat/completions", {
        "messages": [{"role": "user", "content": "Name three colours."}], "top_p": 0.95, **sampling})
    expected = ref["choices"][0]["message"]["content"]
    await unrelated_turn(chat_server)
    frames = await roundtrip(d.infer, req("v1", "Name three colours.", **sampling), timeout=120)
    done = frames[-1]
    assert done["type"] == "done", frames
    assert sum(f["type"] == "token" for f in frames) > 1, "relayed as it arrived, not in one piece"
    assert text(frames) == done["content"] == expected
    assert done["backend"] == "cluster"
    assert done["stop_reason"] == {"stop": "end", "length": "length"}[ref["choices"][0]["finish_reason"]]
    assert done["usage"]["completion_tokens"] == ref["usage"]["completion_tokens"]
    # llama-cpp-python's server sends no usage in a stream (it ignores include_usage):
    # the engine counts its one-token chunks and cannot know the prompt's size.
    assert done["usage"]["prompt_tokens"] == 0

    v2 = {"id": "v2", "messages": [{"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}],
          **sampling}
    await unrelated_turn(chat_server)
    frames = await roundtrip(str(sockdir / "v2.sock"), v2, timeout=120)
    assert "".join(f["block"]["delta"] for f in frames if f["type"] == "frame") == expected
    assert frames[-1]["type"] == "done" and frames[-1]["backend"] == "cluster"


async def test_tool_choice_required_is_passed_on_and_its_outcome_reported(daemon_factory, sockdir, chat_server):
    """llama-cpp-python's server forces a call only for a *named* tool_choice; given
    "required" (the only forcing choice the v2 wire has) its gemma format answers in
    text. The daemon relays that text and says so: `tool_choice_unsatisfied: true`."""
    d = await daemon_factory(config=config(sockdir, remote(chat_server.url, api_key_env=KEY_ENV), LOCAL),
                             v2=True, v2_addr=str(sockdir / "v2.sock"))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ask = "What is the weather in Paris?"
    sampling = {"temperature": 0, "seed": 1, "max_tokens": 24}
    ref = await direct(chat_server, "chat/completions", {
        "messages": [{"role": "user", "content": ask}], "top_p": 0.95, "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                     "parameters": schema}}], **sampling})
    message = ref["choices"][0]["message"]
    assert not message.get("tool_calls"), "the remote now honours `required`: assert the relayed call instead"
    body = {"id": "t", "messages": [{"role": "user", "content": [{"type": "text", "text": ask}]}],
            "tools": [{"name": "get_weather", "description": "Weather of a city", "input_schema": schema}],
            "tool_choice": "required", **sampling}
    frames = await roundtrip(str(sockdir / "v2.sock"), body, timeout=120)
    done = frames[-1]
    assert done["type"] == "done" and done["backend"] == "cluster", frames
    assert not any(f["block"]["type"] == "tool_use" for f in frames if f["type"] == "frame")
    assert "".join(f["block"]["delta"] for f in frames if f["type"] == "frame") == message["content"]
    assert done["tool_choice_unsatisfied"] is True


async def test_embeddings_through_the_daemon_equal_the_remotes(daemon_factory, sockdir, model_path, tmp_path):
    server = await asyncio.to_thread(start_llama_server, model_path, tmp_path / "embed.log",
                                     "--embedding", "true", n_ctx=256)
    try:
        d = await daemon_factory(config=config(sockdir, remote(server.url, embed=True), LOCAL))
        inputs = ["hello world", "the cat sat on the mat"]
        frames = await roundtrip(d.embed, {"id": "e", "input": inputs}, timeout=60)
        out = frames[-1]
        assert out["type"] == "embeddings" and out["backend"] == "cluster", out
        assert out["dimensions"] == 640 and out["model"] == ALIAS
        ref = await direct(server, "embeddings", {"input": inputs})
        for got, item in zip(out["embeddings"], sorted(ref["data"], key=lambda x: x["index"])):
            raw = item["embedding"]
            if raw and isinstance(raw[0], list):  # one vector per token: mean-pool, as documented
                raw = [sum(col) / len(raw) for col in zip(*raw)]
            norm = math.sqrt(sum(x * x for x in raw))
            assert got == pytest.approx([x / norm for x in raw], abs=1e-5)
    finally:
        await asyncio.to_thread(server.kill)


async def test_a_remote_runs_its_own_max_concurrency_in_parallel(daemon_factory, sockdir):
    """Three requests in flight at the remote at once: not serialised behind one permit."""
    arrived: list[Exchange] = []
    all_in = asyncio.Event()

    async def handler(ex: Exchange) -> None:
        arrived.append(ex)
        if len(arrived) == 3:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 20)
        await ex.start_sse()
        await ex.send(chunk("parallel", finish="stop"))
        await ex.send("[DONE]")

    async with FakeRemote(handler) as fake:
        d = await daemon_factory(config=config(sockdir, remote(fake.url, max_concurrency=3), LOCAL))
        results = await asyncio.gather(*(roundtrip(d.infer, req(f"p{i}"), timeout=30) for i in range(3)))
        assert [r[-1]["content"] for r in results] == ["parallel"] * 3
        assert d.server.router.entries[0].admission.active_permits == 3


async def test_a_client_that_hangs_up_closes_the_upstream_stream(daemon_factory, sockdir):
    closed = asyncio.Event()

    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        try:
            for i in range(10_000):
                await ex.send(chunk(f"t{i} "))
                await asyncio.sleep(0.02)  # a peer that streams at its own pace: the behaviour under test
        except ConnectionError:
            closed.set()  # the daemon closed its upstream connection

    before = open_fds()
    async with FakeRemote(handler) as fake:
        d = await daemon_factory(config=config(sockdir, remote(fake.url), LOCAL))
        reader, writer = await dial(d.infer)
        writer.write(line(req("gone", max_tokens=100_000)))
        await writer.drain()
        assert (await read_json(reader))["type"] == "token"
        writer.close()
        await asyncio.wait_for(closed.wait(), 15)
        cluster = d.server.router.entries[0]
        await wait_until(lambda: cluster.admission.outstanding == 0, what="the slot to be released")
        assert cluster.breaker.state is CircuitState.CLOSED and cluster.breaker.failures == 0
        assert await d.stop() == 0
    # The daemon's HTTP client, its connections and every socket are gone with it.
    assert_same_fds(before, "after a hang-up and a shutdown")


# ---- the remote dies, the local backend serves, the remote comes back -------------------

async def test_remote_killed_mid_stream_fails_over_opens_and_closes_again(daemon_factory, sockdir, model_path,
                                                                          tmp_path):
    with reserved_port() as port:
        server = await asyncio.to_thread(start_llama_server, model_path, tmp_path / "doomed.log",
                                         "--chat_format", "gemma", port=port)
        try:
            cfg = config(sockdir, remote(server.url, idle_timeout_secs=60, first_token_timeout_secs=60), LOCAL,
                         breaker={"failures": 2, "cooldown_secs": 0.5, "max_cooldown_secs": 1})
            d = await daemon_factory(config=cfg)
            admin_r, admin_w, _ = await admin_events(d.admin)
            cluster = d.server.router.entries[0]

            # In flight when the remote dies: its tokens so far, then backend_unavailable at
            # once (the connection drops; the generous idle timeout plays no part).
            reader, writer = await dial(d.infer)
            writer.write(line(req("inflight", STORY, temperature=0, max_tokens=1500)))
            await writer.drain()
            got = [await read_json(reader, 60) for _ in range(2)]
            assert [f["type"] for f in got] == ["token", "token"], got
            await asyncio.to_thread(server.kill)
            t0 = time.monotonic()
            rest = await read_until_terminal(reader, 30)
            writer.close()
            assert rest[-1]["type"] == "error" and rest[-1]["code"] == "backend_unavailable", rest
            assert all(f["type"] == "token" for f in rest[:-1])
            assert time.monotonic() - t0 < 10
            assert not any(f.get("content") == "from-local" for f in rest), "a started answer is never retried"

            # The next request fails over before its first token; the circuit opens.
            frames = await roundtrip(d.infer, req("after"))
            assert frames[-1]["content"] == "from-local" and frames[-1]["backend"] == "local"
            opened = await next_status(admin_r, "backend_state")
            assert opened["backend"] == "cluster" and opened["state"] == "open" and opened["failures"] == 2
            assert "connection refused" in opened["reason"] and opened["retry_in_ms"] == 500

            # `inferd status` and `inferd doctor` show it.
            # (doctor's admin half; its local half imports daemon.doctor, which a CLI test stubs)
            admin_line, caps = await doctor.read_admin(d.admin)
            assert admin_line[0] is True
            lines = {c.backend: doctor.backend_line(c) for c in caps}
            assert lines["cluster"][0] is False and "circuit=open" in lines["cluster"][2]
            assert "connection refused" in lines["cluster"][2]
            assert lines["local"][0] is True

            # Back on the same port: a trial request finds it and the circuit closes.
            server = await asyncio.to_thread(start_llama_server, model_path, tmp_path / "again.log",
                                             "--chat_format", "gemma", port=port)
            served_by: list[str] = []
            deadline = time.monotonic() + 60
            while not served_by or served_by[-1] != "cluster":
                assert time.monotonic() < deadline, served_by
                frames = await roundtrip(d.infer, req(f"probe{len(served_by)}", max_tokens=4), timeout=60)
                assert frames[-1]["type"] == "done", frames
                served_by.append(frames[-1]["backend"])
                if served_by[-1] == "local":
                    await asyncio.sleep(0.1)  # give the cool-down time to pass; the loop waits for a state
            states = []
            while not states or states[-1] != "closed":
                states.append((await next_status(admin_r, "backend_state"))["state"])
            assert states[-2:] == ["half_open", "closed"]
            assert set(states[:-2]) <= {"half_open", "open"}  # trials before the server was up
            assert cluster.breaker.state is CircuitState.CLOSED and not cluster.breaker.trial_in_flight
            admin_w.close()
        finally:
            await asyncio.to_thread(server.kill)


# ---- boot against a remote that does not answer ------------------------------------------

async def test_a_remote_down_at_boot_joins_its_group_when_it_answers(daemon_factory, sockdir, fast_probe):
    """Issue 20: a remote that does not answer at boot no longer keeps the daemon in
    loading_model while a local member can serve; it joins (first in its group, as the
    config orders it) once it answers, and the admin socket says what it waits for."""
    with reserved_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        d = await daemon_factory(config=config(sockdir, remote(url), LOCAL), wait_ready=False)
        sub = d.server.broadcaster.subscribe()
        assert await d.wait_ready(10)
        frames = await roundtrip(d.infer, req("meanwhile"))
        assert frames[-1]["content"] == "from-local" and frames[-1]["backend"] == "local"
        seen: list[dict] = []
        while not any(f.get("attempt") == 2 for f in seen):
            seen.append(json.loads(await asyncio.wait_for(sub.next(), 10)))
        waits = [f for f in seen if f.get("phase") == "waiting_remote"]
        assert all(w["status"] == "model" and w["model"] == "cluster" and w["state"] == "loading" for w in waits)
        assert all(w["path"] == url and w["reason"].endswith("connection refused") for w in waits)
        async with FakeRemote(answer("remote-up"), port=port) as fake:
            while not (seen[-1].get("status") == "model" and seen[-1].get("state") == "loaded"):
                seen.append(json.loads(await asyncio.wait_for(sub.next(), 10)))
            assert seen[-1]["model"] == "cluster" and fake.seen[0].path == "/v1/models"
            frames = await roundtrip(d.infer, req("up"))
            assert frames[-1]["content"] == "remote-up" and frames[-1]["backend"] == "cluster"
        d.server.broadcaster.unsubscribe(sub)


async def test_shutdown_while_waiting_for_the_remote_exits_cleanly(daemon_factory, sockdir, fast_probe):
    with reserved_port() as port:
        d = await daemon_factory(config=config(sockdir, remote(f"http://127.0.0.1:{port}")), wait_ready=False)
        sub = d.server.broadcaster.subscribe()
        while json.loads(await asyncio.wait_for(sub.next(), 10)).get("phase") != "waiting_remote":
            pass
        assert await d.stop(5) == 0


async def test_wrong_key_is_a_clear_reason_and_a_missing_one_a_clear_refusal(daemon_factory, sockdir, fast_probe,
                                                                             monkeypatch):
    async with FakeRemote(api_key="right-key") as fake:
        monkeypatch.setenv("INFERD_TEST_WRONG_KEY", "sk-wrong-secret")
        d = await daemon_factory(config=config(sockdir, remote(fake.url, api_key_env="INFERD_TEST_WRONG_KEY")),
                                 wait_ready=False)
        sub = d.server.broadcaster.subscribe()
        while (frame := json.loads(await asyncio.wait_for(sub.next(), 10))).get("phase") != "waiting_remote":
            pass
        assert frame["reason"].endswith("HTTP 401: the API key from $INFERD_TEST_WRONG_KEY was refused")
        assert "sk-wrong-secret" not in json.dumps(frame)
        assert await d.stop(5) == 0

    monkeypatch.delenv("INFERD_TEST_WRONG_KEY")
    activity = RecordingActivityLog()
    d = await daemon_factory(config=config(sockdir, remote("http://127.0.0.1:9/v1", api_key_env="INFERD_TEST_WRONG_KEY"),
                                           name="missing.json"),
                             wait_ready=False, activity=activity, admin_addr=str(sockdir / "admin2.sock"),
                             lock=str(sockdir / "lock2"))
    assert await asyncio.wait_for(d.task, 10) == 1
    reason = next(r["reason"] for r in activity.records if r["msg"] == "boot_failed")
    assert reason == ("backend 'cluster': environment variable INFERD_TEST_WRONG_KEY (api_key_env) "
                      "is not set in the daemon's environment")


async def test_a_key_in_the_config_file_is_refused_with_the_reason(daemon_factory, sockdir):
    activity = RecordingActivityLog()
    bad = remote("http://127.0.0.1:9/v1", api_key="sk-in-a-file")
    d = await daemon_factory(config=config(sockdir, bad), wait_ready=False, activity=activity)
    assert await asyncio.wait_for(d.task, 10) == 1
    reason = next(r["reason"] for r in activity.records if r["msg"] == "boot_failed")
    assert "backends.0.openai: `api_key` is refused" in reason and "api_key_env" in reason
    assert "sk-in-a-file" not in reason


async def test_a_reload_towards_a_dead_remote_keeps_the_old_backends_serving(daemon_factory, sockdir, fast_probe):
    path = config(sockdir, LOCAL)
    d = await daemon_factory(config=path)
    admin_r, admin_w, _ = await admin_events(d.admin)
    with reserved_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        config(sockdir, remote(url), {**LOCAL, "tokens": ["new-", "local"]})
        d.server.request_reload()
        assert (await next_status(admin_r, "restarting"))["phase"] == "checking_local"
        waiting = await next_status(admin_r, "restarting")
        while waiting["phase"] != "waiting_remote":
            waiting = await next_status(admin_r, "restarting")
        assert waiting["path"] == url and "connection refused" in waiting["reason"]
        frames = await roundtrip(d.infer, req("meanwhile"))
        assert frames[-1]["content"] == "from-local"  # the previous config still serves
        async with FakeRemote(answer("remote-up"), port=port):
            ready = await next_status(admin_r, "ready")
            assert "reload_error" not in ready
            assert [e.label for e in d.server.router.entries] == ["cluster", "local"]
            frames = await roundtrip(d.infer, req("after"))
            assert frames[-1]["content"] == "remote-up" and frames[-1]["backend"] == "cluster"
    admin_w.close()


# ---- a remote that misbehaves --------------------------------------------------------------

def answer(content: str):
    async def handler(ex: Exchange) -> None:
        await ex.start_sse()
        await ex.send(chunk(content, finish="stop"))
        await ex.send("[DONE]")
    return handler


def answer_500(ex: Exchange):
    return ex.respond(500, {"error": {"message": "the GPU caught fire"}})


async def garbage_sse(ex: Exchange) -> None:
    await ex.start_sse()
    await ex.raw(b"data: {this is not json\n\n")


async def stall_before_first(ex: Exchange) -> None:
    await ex.start_sse()
    await ex.send({"id": "c1", "object": "chat.completion.chunk", "model": "fake-model",
                   "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    await ex.wait_closed_by_peer()  # stalls until the daemon gives up on it


async def garbage_mid_stream(ex: Exchange) -> None:
    await ex.start_sse()
    await ex.send(chunk("one "))
    await ex.send(chunk("two "))
    await ex.raw(b"data: {broken\n\n")


async def stall_mid_stream(ex: Exchange) -> None:
    await ex.start_sse()
    await ex.send(chunk("one "))
    await ex.send(chunk("two "))
    await ex.wait_closed_by_peer()  # stalls until the daemon gives up on it


TIMEOUTS = {"connect_timeout_secs": 1, "first_token_timeout_secs": 1, "idle_timeout_secs": 0.5}


@pytest.mark.parametrize("handler, message", [
    (answer_500, "HTTP 500 for /chat/completions: the GPU caught fire"),
    (garbage_sse, "unreadable stream: data is not JSON"),
    (stall_before_first, "stalled: no output within 1 s (first_token_timeout)"),
])
async def test_a_remote_failing_before_its_first_token_hands_the_request_on(daemon_factory, sockdir, handler,
                                                                            message):
    async with FakeRemote(handler) as fake:
        (sockdir / "alone").mkdir()
        alone = await daemon_factory(config=config(sockdir, remote(fake.url, **TIMEOUTS), name="alone.json"),
                                     directory=sockdir / "alone")
        t0 = time.monotonic()
        frames = await roundtrip(alone.infer, req("alone"))
        assert len(frames) == 1 and frames[0]["type"] == "error" and frames[0]["code"] == "backend_unavailable"
        assert frames[0]["message"].startswith(f"remote {fake.url}: {message}")
        paired = await daemon_factory(
            config=config(sockdir, remote(fake.url, **TIMEOUTS), LOCAL, breaker={"failures": 2, "cooldown_secs": 60}))
        admin_r, admin_w, _ = await admin_events(paired.admin)
        for i in range(2):
            frames = await roundtrip(paired.infer, req(f"r{i}"))
            assert frames[-1]["content"] == "from-local" and frames[-1]["backend"] == "local"
        opened = await next_status(admin_r, "backend_state")
        assert opened["state"] == "open" and message in opened["reason"]
        posts = len(fake.posts())
        frames = await roundtrip(paired.infer, req("skipped"))
        assert frames[-1]["backend"] == "local" and len(fake.posts()) == posts  # open: not even asked
        assert time.monotonic() - t0 < 15
        admin_w.close()


@pytest.mark.parametrize("handler, message", [
    (garbage_mid_stream, "unreadable stream: data is not JSON"),
    (stall_mid_stream, "stalled: no output within 0.5 s (idle_timeout)"),
])
async def test_a_remote_failing_mid_stream_ends_the_answer_it_started(daemon_factory, sockdir, handler, message):
    async with FakeRemote(handler) as fake:
        d = await daemon_factory(config=config(sockdir, remote(fake.url, **TIMEOUTS), LOCAL))
        t0 = time.monotonic()
        frames = await roundtrip(d.infer, req("mid"))
        assert [f["type"] for f in frames] == ["token", "token", "error"]
        assert text(frames) == "one two "
        assert frames[-1]["code"] == "backend_unavailable"
        assert frames[-1]["message"].startswith(f"remote {fake.url}: {message}")
        assert time.monotonic() - t0 < 5
        assert len(fake.posts()) == 1, "an answer that has begun is not retried elsewhere"
        assert d.server.router.entries[0].breaker.failures == 1
        assert d.server.router.entries[0].breaker.reason == frames[-1]["message"]



# ---- another inferd, over its OpenAI-compatible HTTP surface, as the remote -------------

async def test_an_inferd_serving_http_is_a_remote(daemon_factory, sockdir, monkeypatch):
    """inferd in front of inferd: the upstream daemon's `--http` surface is the remote."""
    (sockdir / "upstream").mkdir()
    monkeypatch.setenv("INFERD_TEST_UPSTREAM_KEY", "upstream-secret")
    with reserved_port() as port:
        upstream = await daemon_factory(
            directory=sockdir / "upstream",
            config=config(sockdir, {"kind": "mock", "name": "far", "tokens": ["from-", "far", " away"]},
                          name="upstream.json"),
            http=f"127.0.0.1:{port}", api_key="upstream-secret")
        url = f"http://127.0.0.1:{port}/v1"
        d = await daemon_factory(config=config(sockdir, remote(url, api_key_env="INFERD_TEST_UPSTREAM_KEY"), LOCAL,
                                               breaker={"failures": 1, "cooldown_secs": 60}))
        _, w, replay = await admin_events(d.admin)
        w.close()
        assert next(f for f in replay if f.get("backend") == "cluster")["accelerator"] == "remote"
        frames = await roundtrip(d.infer, req("through", max_tokens=16))
        assert text(frames) == frames[-1]["content"] == "from-far away"
        assert frames[-1]["backend"] == "cluster" and frames[-1]["stop_reason"] == "end"
        assert sum(f["type"] == "token" for f in frames) == 3  # streamed piece by piece, as upstream sent them

        assert await upstream.stop() == 0  # the upstream daemon goes away
        frames = await roundtrip(d.infer, req("after"))
        assert frames[-1]["content"] == "from-local" and frames[-1]["backend"] == "local"
        assert d.server.router.entries[0].breaker.state is CircuitState.OPEN


async def test_doctor_asks_each_configured_remote(sockdir, monkeypatch):
    async with FakeRemote(api_key="k") as fake:
        with reserved_port() as dead:
            monkeypatch.setenv("INFERD_TEST_DOCTOR_KEY", "k")
            path = config(sockdir, remote(fake.url, api_key_env="INFERD_TEST_DOCTOR_KEY"),
                          remote(f"http://127.0.0.1:{dead}/v1", name="gone"), LOCAL)
            remotes = await doctor.remote_lines(path)
    assert remotes == [
        (True, "remote[cluster]", f"{fake.url} answers; model=fake-model n_ctx=4096"),
        (False, "remote[gone]", f"remote http://127.0.0.1:{dead}/v1: connection refused"),
    ]
    assert doctor.format_line(*remotes[1]).startswith("[FAIL] remote[gone]: ")
