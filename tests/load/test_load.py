"""Load against a real daemon (upstream stress.rs, plus a SIGTERM drain of fifty admitted requests).

All traffic goes over Unix sockets; every wait is bounded and waits for a state or an
event, never for time to pass. The in-process daemon shares this test's event loop, so
the client counts here are modest, as in upstream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

from daemon_harness import (
    assert_same_fds,
    dial,
    line,
    open_fds,
    read_json,
    read_until_terminal,
    req,
    roundtrip,
    start_daemon,
    wait_until,
    watch_mock,
)


async def test_fifty_concurrent_clients_all_served(daemon_factory):
    """stress.rs: 50 concurrent clients x 8 tokens (5 ms each) through one active permit and
    a queue of 64: every client gets its tokens and `done`, nobody gets an error frame."""
    d = await daemon_factory(mock={"tokens": [f"t{i}" for i in range(8)], "token_delay_ms": 5},
                             active_permits=1, queue_depth=64)

    async def client(i: int) -> list[dict[str, Any]]:
        return await roundtrip(d.infer, req(f"load-{i}"), timeout=30)

    results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(50))), 60)
    errors = [f for frames in results for f in frames if f["type"] == "error"]
    assert errors == []
    for i, frames in enumerate(results):
        assert all(f["id"] == f"load-{i}" for f in frames)
        assert sum(f["type"] == "token" for f in frames) >= 1
        assert frames[-1]["type"] == "done" and frames[-1]["content"] == "".join(f"t{k}" for k in range(8))
    await wait_until(lambda: d.server.router.outstanding == 0, 5, "all slots released")


async def test_clients_that_leave_mid_stream_release_their_slots(daemon_factory, monkeypatch):
    """stress.rs: 20 clients each read the first frame of a 64-token stream (5 ms/token) and
    drop the connection. Their generations are abandoned - not one reaches its Done - so
    every slot comes back and a fresh request completes."""
    d = await daemon_factory(mock={"tokens": ["t"] * 64, "token_delay_ms": 5}, active_permits=1, queue_depth=32)
    finished = watch_mock(d, monkeypatch).finished
    for i in range(20):
        reader, writer = await dial(d.infer)
        writer.write(line(req(f"leaver-{i}")))
        first = await read_json(reader, timeout=15)
        assert first is not None and first["type"] == "token" and first["id"] == f"leaver-{i}"
        writer.transport.abort()  # abrupt: unread frames are left in the socket
    await wait_until(lambda: d.server.router.outstanding == 0, 15, "the leavers' slots to come back")
    assert finished == [], "a generation ran to its end for a client that had left"
    frames = await roundtrip(d.infer, req("fresh"), timeout=15)
    assert frames[-1]["type"] == "done" and frames[-1]["content"] == "t" * 64
    assert finished == ["fresh"]
    assert d.server.router.outstanding == 0


async def test_connect_close_cycles_leak_nothing(daemon_factory):
    """stress.rs: 200 connect/close cycles with no payload (half closing at once, half
    after 1 ms) leave no handler, slot or file descriptor behind, and a request completes."""
    d = await daemon_factory(mock={"tokens": ["a"]})
    assert (await roundtrip(d.infer, req("warm-up")))[-1]["type"] == "done"
    await wait_until(lambda: d.server.tracker.count() == 0, 10, "warm-up handler to end")
    fds = open_fds()
    for i in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, d.infer)
        if i % 2:
            await asyncio.sleep(0.001)  # variety, not order: nothing below depends on it
        s.close()
        if i % 20 == 0:
            await asyncio.sleep(0)
    await wait_until(lambda: d.server.tracker.count() == 0, 15, "every cycle's handler to end")
    assert_same_fds(fds, "after 200 connect/close cycles")
    frames = await roundtrip(d.infer, req("after-cycles"))
    assert frames[-1]["type"] == "done"
    assert d.server.router.outstanding == 0


async def test_sigterm_drains_fifty_admitted_requests(sockdir, monkeypatch, caplog):
    """Drain (SCOPE: draining really drains; upstream dropped in-flight work): a daemon with
    its signal handlers installed holds 50 admitted requests of 32 tokens (10 running, 40
    queued) when a real SIGTERM reaches this process. The generations are held at a gate
    until `draining` is published, so the order is: all admitted, signal, drain, output.
    Every request still ends with `done` carrying all 32 tokens, within the drain
    deadline; the socket files are removed and serve() returns 0."""
    d = await start_daemon(sockdir, install_signals=True, mock={"tokens": ["t"] * 32, "token_delay_ms": 10},
                           active_permits=10, queue_depth=64, drain_timeout_secs=20)
    try:
        mock = watch_mock(d, monkeypatch, hold_at=0)
        admin_r, admin_w = await dial(d.admin)
        assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
        conns = [await dial(d.infer) for _ in range(50)]
        for i, (_, writer) in enumerate(conns):
            writer.write(line(req(f"drain-{i}")))
        await wait_until(lambda: d.server.router.outstanding == 50, 15, "all 50 requests admitted")

        os.kill(os.getpid(), signal.SIGTERM)
        assert (await read_json(admin_r, timeout=15))["status"] == "draining"
        mock.gate.set()
        results = await asyncio.wait_for(
            asyncio.gather(*(read_until_terminal(reader, timeout=30) for reader, _ in conns)), 40)
        assert await asyncio.wait_for(d.task, 30) == 0
    finally:
        if not d.task.done():
            await d.stop()
    for i, frames in enumerate(results):
        assert frames[-1]["type"] == "done", f"drain-{i}: {frames[-1]}"
        assert frames[-1]["id"] == f"drain-{i}" and frames[-1]["content"] == "t" * 32
        assert sum(f["type"] == "token" for f in frames) == 32
    assert sorted(mock.finished) == sorted(f"drain-{i}" for i in range(50))
    assert "drain deadline" not in caplog.text
    for path in (d.infer, d.admin, d.embed):
        assert not os.path.exists(path), path
    for _, writer in conns:
        writer.close()
    admin_w.close()
