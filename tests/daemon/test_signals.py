"""Signals (daemon/signals.py) and boot errors of `inferd serve`, as a child process
or in this one where the exit code is the point (issue 8)."""

from __future__ import annotations

import asyncio
import signal

from daemon_harness import dial, line, read_json, req, start_daemon
from serve_child import admin_until, serve_args, serve_env, spawn_serve, wait_for_path, write_mock_config


async def test_a_tcp_port_out_of_range_is_a_boot_error(sockdir):
    """Item 10: `--tcp 127.0.0.1:99999` used to listen on 99999 mod 65536 (34463). Now
    the boot fails (exit 1) naming the range."""
    d = await start_daemon(sockdir, wait_ready=False, mock={"tokens": ["x"]}, tcp="127.0.0.1:99999")
    assert await asyncio.wait_for(d.task, 30) == 1


async def test_a_second_sigterm_exits_at_once_with_143(sockdir):
    """Item 10: SIGTERM starts a drain that would wait (a slow request, --drain-timeout-secs
    600); a second SIGTERM ends the process at once with 128 + 15."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["t"] * 1000, token_delay_ms=100)
    proc = spawn_serve(serve_env(sockdir), *serve_args(sockdir, cfg, "--drain-timeout-secs", "600"))
    try:
        await wait_for_path(sockdir / "infer.sock", proc)
        reader, writer = await dial(str(sockdir / "infer.sock"))
        writer.write(line(req("slow")))
        assert (await read_json(reader, 30))["type"] == "token"  # the request is in flight
        admin_r, admin_w = await dial(str(sockdir / "admin.sock"))
        await admin_until(admin_r, "ready")
        proc.send_signal(signal.SIGTERM)
        await admin_until(admin_r, "draining")
        assert proc.poll() is None  # the drain waits for the slow request
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        assert rc == 128 + signal.SIGTERM
        writer.close()
        admin_w.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
