"""Boot, TCP auth (F-8), lock (F-2), drain and reload of a real in-process daemon."""

from __future__ import annotations

import asyncio
import json
import os

from daemon_harness import (
    dial,
    line,
    read_json,
    read_until_terminal,
    req,
    reserved_port,
    roundtrip,
    start_daemon,
    tcp_exchange,
)

from inferd.daemon.config import ServeOptions


async def test_tcp_api_key_first_frame(daemon_factory):
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["a", "b"]}, tcp=f"127.0.0.1:{port}", api_key="s3cret-key")
    ok = await tcp_exchange(port, line({"type": "auth", "key": "s3cret-key"}), line(req("t1")))
    assert ok[-1]["type"] == "done" and ok[-1]["content"] == "ab"
    # F-8: wrong key, missing auth frame, garbage: silent close, zero frames.
    assert await tcp_exchange(port, line({"type": "auth", "key": "wrong"}), line(req("t2"))) == []
    assert await tcp_exchange(port, line(req("t3"))) == []
    assert await tcp_exchange(port, b"garbage\n") == []


async def test_tcp_without_key_needs_no_auth(daemon_factory):
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["a"]}, tcp=f"127.0.0.1:{port}")
    frames = await tcp_exchange(port, line(req("plain")))
    assert frames[-1]["type"] == "done"


async def test_tcp_refuses_non_loopback(sockdir, caplog):
    with reserved_port() as port:  # a valid port: the refusal must be for the host
        d = await start_daemon(sockdir, wait_ready=False, tcp=f"0.0.0.0:{port}")
        assert await asyncio.wait_for(d.task, 15) == 1
    assert "refusing TCP bind to 0.0.0.0: only loopback addresses are allowed" in caplog.text
    assert not os.path.exists(d.infer)


async def test_second_daemon_on_same_lock_exits_1(daemon_factory, sockdir):
    first = await daemon_factory()
    other = sockdir / "other"
    other.mkdir()
    second = await start_daemon(other, wait_ready=False, lock=first.opts.lock)
    assert await asyncio.wait_for(second.task, 15) == 1
    frames = await roundtrip(first.infer, req("still-first"))
    assert frames[-1]["type"] == "done"


async def test_missing_config_file_fails_boot_clearly(sockdir, caplog):
    d = await start_daemon(sockdir, wait_ready=False, config=str(sockdir / "nope.json"))
    assert await asyncio.wait_for(d.task, 15) == 1
    assert "does not exist" in caplog.text


async def test_bad_config_key_fails_boot_clearly(sockdir, caplog):
    cfg = sockdir / "bad.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "m", "tokenz": ["x"]}]}))
    d = await start_daemon(sockdir, wait_ready=False, config=str(cfg))
    assert await asyncio.wait_for(d.task, 15) == 1
    assert "backends.0.mock.tokenz: unknown key" in caplog.text


async def test_ready_timeout_exits_1(sockdir, caplog):
    # Never ready by itself: only the daemon's own ready timeout can end this boot.
    d = await start_daemon(sockdir, wait_ready=False, mock={"ready_delay_ms": 600_000}, ready_timeout_secs=0.3)
    assert await asyncio.wait_for(d.task, 15) == 1
    assert "not ready within" in caplog.text
    assert not os.path.exists(d.infer)


async def test_drain_finishes_in_flight_and_removes_sockets(sockdir):
    d = await start_daemon(sockdir, mock={"tokens": ["t"] * 20, "token_delay_ms": 25})
    admin_r, admin_w = await dial(d.admin)
    assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
    reader, writer = await dial(d.infer)
    writer.write(line(req("inflight")))
    assert (await read_json(reader))["type"] == "token"
    d.server.request_shutdown()
    frames = await read_until_terminal(reader, timeout=15)
    assert frames[-1]["type"] == "done" and frames[-1]["content"] == "t" * 20
    assert (await read_json(admin_r))["status"] == "draining"
    assert await asyncio.wait_for(d.task, 15) == 0
    for path in (d.infer, d.embed, d.admin):
        assert not os.path.exists(path), path


async def test_new_request_during_drain_is_refused(sockdir):
    d = await start_daemon(sockdir, mock={"tokens": ["t"] * 10, "token_delay_ms": 50})
    admin_r, admin_w = await dial(d.admin)
    assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
    busy_r, busy_w = await dial(d.infer)
    idle_r, idle_w = await dial(d.infer)
    busy_w.write(line(req("busy")))
    assert (await read_json(busy_r))["type"] == "token"
    d.server.request_shutdown()
    # `draining` is published in the step that closes admission.
    assert (await read_json(admin_r))["status"] == "draining"
    admin_w.close()
    idle_w.write(line(req("late")))
    late = await read_json(idle_r)
    assert late == {"type": "error", "id": "late", "code": "backend_unavailable", "message": "admission closed"}
    assert (await read_until_terminal(busy_r))[-1]["type"] == "done"
    assert await asyncio.wait_for(d.task, 15) == 0


async def test_reload_switches_config_and_publishes_restarting(sockdir):
    cfg = sockdir / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "one", "tokens": ["old"]}]}))
    d = await start_daemon(sockdir, config=str(cfg))
    try:
        admin_r, admin_w = await dial(d.admin)
        assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
        assert (await roundtrip(d.infer, req("before")))[-1]["content"] == "old"
        cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "two", "tokens": ["new"]}]}))
        d.server.request_reload()
        seen = []
        while True:
            frame = await read_json(admin_r, timeout=10)
            seen.append(frame)
            if frame["status"] == "ready":
                break
        statuses = [f["status"] for f in seen]
        # `restarting` at once (sockets closing), then the new backend's load phases.
        assert statuses == ["restarting", "restarting", "capabilities", "ready"]
        assert seen[0]["phase"] == "checking_local" and seen[0]["path"] == str(cfg)
        assert seen[1]["path"] == "(mock)"
        assert seen[2]["backend"] == "two"
        assert "reload_error" not in seen[3]
        assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "new"
    finally:
        await d.stop()


async def test_broken_reload_keeps_the_old_model(sockdir):
    cfg = sockdir / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "one", "tokens": ["old"]}]}))
    d = await start_daemon(sockdir, config=str(cfg))
    try:
        admin_r, admin_w = await dial(d.admin)
        assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
        cfg.write_text("{ broken json")
        d.server.request_reload()
        frame = await read_json(admin_r, timeout=10)
        assert frame["status"] == "ready" and "not valid JSON" in frame["reload_error"]
        assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "old"
    finally:
        await d.stop()


def test_serve_option_defaults():
    opts = ServeOptions()
    assert opts.active_permits is None and opts.queue_depth == 10  # None: what each backend can run
    assert opts.embed is None  # bound when a backend can embed
    assert opts.write_timeout_secs == 60.0 and opts.ready_timeout_secs == 30.0
