"""Reload of a running daemon (daemon/server.py; issue 8, THREAT_MODEL F-8, F-13).

Each test says how the code before issue 8 (8da2fcd) failed it. Everything runs over
real Unix sockets or loopback TCP against a daemon in this process, or against
`inferd serve` as a child process where signals or exit codes are the point; the
eviction test loads the real model. Waits are for conditions and bounded.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import (
    cleanup,
    dial,
    line,
    read_json,
    read_until_terminal,
    req,
    reserved_port,
    roundtrip,
    short_tmpdir,
    start_daemon,
    tcp_exchange,
    wait_until,
)
from serve_child import admin_until, serve_args, serve_env, spawn_serve, wait_for_path, write_mock_config

from inferd.daemon.server import RELOAD_EVICTED


async def test_tcp_port_is_never_unbound_across_a_reload(sockdir):
    """Item 2 (F-8): while a SIGHUP reload loads the new backend, another local user trying
    to bind the TCP port (SO_REUSEADDR, the strongest attempt) must fail every time, and
    the port serves the new model afterwards. Old code: the listeners were closed during
    the reload, so the racer got the port and with it the owner's next auth frame."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    with reserved_port() as port:
        d = await start_daemon(sockdir, config=str(cfg), tcp=f"127.0.0.1:{port}")
    try:
        admin_r, admin_w = await dial(d.admin)
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=1500)
        d.server.request_reload()
        # The new backend's load phase: before issue 8 the sockets were closed by now.
        await admin_until(admin_r, "restarting", phase="checking_local")
        await admin_until(admin_r, "restarting", phase="checking_local")
        attempts = 0
        ready = asyncio.ensure_future(admin_until(admin_r, "ready"))
        try:
            while not ready.done():
                racer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                racer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    with pytest.raises(OSError) as err:
                        racer.bind(("127.0.0.1", port))
                    assert err.value.errno == errno.EADDRINUSE
                finally:
                    racer.close()
                attempts += 1
                await asyncio.sleep(0.01)  # the racer's pace: it tries for as long as the reload runs
            assert "reload_error" not in ready.result()[-1]
        finally:
            ready.cancel()
        assert attempts >= 10, attempts  # the racer really ran during the reload
        frames = await tcp_exchange(port, line(req("after")))
        assert frames[-1]["content"] == "new"
        admin_w.close()
    finally:
        await d.stop()


async def test_reload_to_a_backend_that_never_becomes_ready_keeps_the_old_one(sockdir):
    """Item 7 (F-13): a new backend not ready within --ready-timeout-secs is stopped and the
    previous config serves again; `ready` carries reload_error. Old code: exit 1."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    d = await start_daemon(sockdir, config=str(cfg), ready_timeout_secs=0.5)
    try:
        admin_r, admin_w = await dial(d.admin)
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=600_000)
        d.server.request_reload()
        ready = (await admin_until(admin_r, "ready", timeout=30))[-1]
        assert "not ready within 0.5s" in ready["reload_error"], ready
        assert not d.task.done()
        assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "old"
        admin_w.close()
    finally:
        assert await d.stop() == 0


async def test_sigterm_during_a_slow_reload_exits_promptly_with_0(sockdir):
    """Item 7: SIGTERM abandons a reload in progress (here a backend that takes 10 minutes
    to get ready, with --ready-timeout-secs 900) and drains at once: exit 0 within seconds.
    Old code: the drain waited for the whole reload, past any service manager's stop timeout."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    proc = spawn_serve(serve_env(sockdir), *serve_args(sockdir, cfg, "--ready-timeout-secs", "900"))
    try:
        await wait_for_path(sockdir / "infer.sock", proc)
        admin_r, admin_w = await dial(str(sockdir / "admin.sock"))
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=600_000)
        proc.send_signal(signal.SIGHUP)
        await admin_until(admin_r, "restarting", phase="checking_local")
        await admin_until(admin_r, "restarting", phase="checking_local")  # the new backend is loading
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else rc
        assert not (sockdir / "infer.sock").exists()
        admin_w.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _GatedBodies:
    """Wraps a fake Hub handler's wfile: the first body write (after the headers) waits
    for `gate`, so a download is in progress for as long as the test wants."""

    def __init__(self, raw: Any, gate: threading.Event) -> None:
        self._raw = raw
        self._gate = gate
        self._writes = 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes == 2:
            assert self._gate.wait(60), "the test never opened the download gate"
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


async def test_requests_during_a_reload_download_are_served_by_the_old_model(sockdir, monkeypatch):
    """Item 7: a reload downloads and verifies its model while the old one serves. The
    download is held open by the test; requests sent meanwhile complete on the old model
    (the new file is no GGUF, so afterwards the old config comes back with reload_error).
    Old code: sockets closed for the whole download, every request refused."""
    import fake_hub

    gate = threading.Event()
    real_handler = fake_hub._handler

    def gated_handler(hub: Any) -> Any:
        base = real_handler(hub)

        class Gated(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.wfile = _GatedBodies(self.wfile, gate)

        return Gated

    monkeypatch.setattr(fake_hub, "_handler", gated_handler)
    blob = sockdir / "not-a-model.gguf"
    blob.write_bytes(b"GGUF-but-not-really" * 1000)
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    d = await start_daemon(sockdir, config=str(cfg))
    try:
        with fake_hub.serving_hub() as hub:
            hub.add(blob, repo="acme/tiny-GGUF", filename="tiny.gguf")
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            cfg.write_text(json.dumps({"models_home": str(sockdir / "models"), "backends": [{
                "kind": "llamacpp", "name": "tiny", "n_ctx": 256,
                "model": {"name": "tiny", "repo": "acme/tiny-GGUF", "filename": "tiny.gguf",
                          "sha256": hub.sha_of(blob)}}]}))
            admin_r, admin_w = await dial(d.admin)
            await admin_until(admin_r, "ready")
            d.server.request_reload()
            await admin_until(admin_r, "restarting", phase="download")
            for i in range(3):  # the download is still held: the old model answers
                frames = await roundtrip(d.infer, req(f"during-{i}"))
                assert frames[-1]["type"] == "done" and frames[-1]["content"] == "old"
            assert not gate.is_set()
            gate.set()
            ready = (await admin_until(admin_r, "ready", timeout=60))[-1]
            assert "serving the previous model again" in ready.get("reload_error", ""), ready
            assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "old"
            admin_w.close()
    finally:
        gate.set()
        await d.stop()


@pytest.fixture
async def model_daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=512, n_threads=2,
                                parallel=1, drain_timeout_secs=0.5, boot_timeout=120)
    yield daemon
    try:
        assert await daemon.stop(60) == 0
    finally:
        cleanup(d)


# A grammar the model can never finish (no accepting state), so the generation runs until
# it is stopped, whatever the model would rather say.
ENDLESS = 'root ::= "a" root'


async def test_reload_past_the_drain_deadline_cancels_and_frees_the_old_model(model_daemon, caplog):
    """Item 7 (real model): a generation still running on the old model when the reload's
    drain deadline (0.5 s) passes is cancelled: its client gets one error frame saying so
    and keeps its connection, which the new model then serves; the old model is freed
    (closed cleanly), not left loaded beside the new one. Old code: the connection was
    aborted without a frame."""
    caplog.set_level(logging.WARNING)
    d = model_daemon
    old = d.server.router.entries[0].backend
    old_pid = old.pid
    reader, writer = await dial(d.infer)
    try:
        writer.write(line(req("long", content="Say a.", grammar=ENDLESS, max_tokens=100_000, temperature=0)))
        first = await read_json(reader, 120)
        assert first is not None and first["type"] == "token"
        d.server.request_reload()
        frames = [first] + await read_until_terminal(reader, 120)
        end = frames[-1]
        assert end == {"type": "error", "id": "long", "code": "backend_unavailable", "message": RELOAD_EVICTED}
        await wait_until(lambda: d.server.router.entries[0].backend is not old
                         and d.server.router.entries[0].backend.ready(), 120, "the new model")
        # Freed: the old model's runner process has exited (and was reaped).
        assert not Path(f"/proc/{old_pid}").exists(), [r.getMessage() for r in caplog.records]
        writer.write(line(req("next", content="Hi", max_tokens=3, temperature=0)))
        frames = await read_until_terminal(reader, 120)
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "next"
    finally:
        writer.close()
