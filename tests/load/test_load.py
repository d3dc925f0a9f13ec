"""Load against a real daemon (upstream stress.rs, plus a SIGTERM drain of a `inferd serve` process).

All traffic goes over Unix sockets; every wait is bounded. The in-process daemon shares
this test's event loop, so the client counts here are modest, as in upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from daemon_harness import cleanup, dial, line, read_json, read_until_terminal, req, roundtrip, short_tmpdir


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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


async def test_clients_that_leave_mid_stream_release_their_slots(daemon_factory):
    """stress.rs: 20 clients each read the first frame of a 64-token stream (5 ms/token) and
    drop the connection. Their generations are abandoned, not run to the end (64 x 5 ms
    would outlast the 200 ms pause), so afterwards nothing is outstanding and a fresh
    request completes."""
    d = await daemon_factory(mock={"tokens": ["t"] * 64, "token_delay_ms": 5}, active_permits=1, queue_depth=32)
    for i in range(20):
        reader, writer = await dial(d.infer)
        writer.write(line(req(f"leaver-{i}")))
        first = await read_json(reader, timeout=15)
        assert first is not None and first["type"] == "token" and first["id"] == f"leaver-{i}"
        writer.transport.abort()  # abrupt: unread frames are left in the socket
    await asyncio.sleep(0.2)
    assert d.server.router.outstanding == 0
    frames = await roundtrip(d.infer, req("fresh"), timeout=15)
    assert frames[-1]["type"] == "done" and frames[-1]["content"] == "t" * 64
    assert d.server.router.outstanding == 0


async def test_connect_close_cycles_leak_nothing(daemon_factory):
    """stress.rs: 200 connect/close cycles with no payload (half closing at once, half
    after 1 ms) leave no handler, slot or file descriptor behind, and a request completes."""
    d = await daemon_factory(mock={"tokens": ["a"]})
    assert (await roundtrip(d.infer, req("warm-up")))[-1]["type"] == "done"
    await wait_until(lambda: d.server.tracker.count() == 0, 10, "warm-up handler to end")
    before = open_fds()
    for i in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, d.infer)
        if i % 2:
            await asyncio.sleep(0.001)
        s.close()
        if i % 20 == 0:
            await asyncio.sleep(0)
    await wait_until(lambda: d.server.tracker.count() == 0, 15, "every cycle's handler to end")
    after = open_fds()
    assert after <= before + 5, f"fds {before} -> {after} after 200 connect/close cycles"
    frames = await roundtrip(d.infer, req("after-cycles"))
    assert frames[-1]["type"] == "done"
    assert d.server.router.outstanding == 0


async def test_sigterm_drains_fifty_in_flight_requests():
    """Drain (SCOPE: draining really drains; upstream dropped in-flight work): `inferd serve`
    as a subprocess, 50 requests of 32 tokens x 10 ms admitted (10 streaming, the rest
    queued), then SIGTERM. Every request still ends with `done` carrying all 32 tokens,
    the socket files are removed and the process exits 0 within the drain deadline."""
    d = short_tmpdir()
    try:
        await _sigterm_drain(d)
    finally:
        cleanup(d)


async def _sigterm_drain(d) -> None:
    log_dir = d / "logs"
    log_dir.mkdir()
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", "tokens": ["t"] * 32,
                                             "token_delay_ms": 10}]}))
    infer, admin, embed = str(d / "infer.sock"), str(d / "admin.sock"), str(d / "infer.embed.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env.update(INFERD_LOG_DIR=str(log_dir), INFERD_LOG="info")
    out, err = open(d / "stdout", "wb"), open(d / "stderr", "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(cfg), "--uds", infer,
        "--admin-addr", admin, "--embed-addr", embed, "--lock", str(d / "inferd.lock"),
        "--active-permits", "10", "--queue-depth", "64", "--drain-timeout-secs", "20",
        env=env, stdout=out, stderr=err)
    try:
        # Wait until the inference socket accepts (it appears only after `ready`).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            assert proc.returncode is None, (d / "stderr").read_text()
            try:
                _, w = await asyncio.open_unix_connection(infer)
                w.close()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert loop.time() < deadline, "daemon did not come up: " + (d / "stderr").read_text()
                await asyncio.sleep(0.05)

        conns = [await dial(infer) for _ in range(50)]
        first_frames = 0
        all_first = asyncio.Event()

        async def client(i: int) -> list[dict[str, Any]]:
            nonlocal first_frames
            reader, writer = conns[i]
            writer.write(line(req(f"drain-{i}")))
            await writer.drain()
            frames = [await read_json(reader, timeout=30)]
            first_frames += 1
            if first_frames == 50:
                all_first.set()
            if frames[0] is not None and frames[0]["type"] == "token":
                frames += await read_until_terminal(reader, timeout=30)
            writer.close()
            return frames

        tasks = [asyncio.create_task(client(i)) for i in range(50)]
        try:
            await asyncio.wait_for(all_first.wait(), 1.0)
        except TimeoutError:
            pass
        assert first_frames >= 10  # the first ten were streaming when the signal came
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 40)
        rc = await asyncio.wait_for(proc.wait(), 25)
        stopped_after = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        out.close()
        err.close()
    stderr = (d / "stderr").read_text()
    for i, frames in enumerate(results):
        assert frames[-1] is not None, f"drain-{i}: EOF without a terminal frame"
        assert frames[-1]["type"] == "done", f"drain-{i}: {frames[-1]}"
        assert frames[-1]["id"] == f"drain-{i}" and frames[-1]["content"] == "t" * 32
        assert sum(f["type"] == "token" for f in frames) == 32
    assert rc == 0, stderr
    assert stopped_after < 20, f"exit took {stopped_after:.1f}s, past the drain deadline"
    assert "drain deadline" not in stderr
    for path in (infer, admin, embed):
        assert not os.path.exists(path), path
