"""Smaller security guarantees: F-8's auth deadline and F-3 on stderr."""

from __future__ import annotations

import asyncio
import logging
import socket

from inferd.daemon.net import listeners


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_tcp_client_that_never_authenticates_is_dropped(daemon_factory, monkeypatch):
    """F-8: a connection that sends no auth frame cannot sit on a socket forever."""
    monkeypatch.setattr(listeners, "AUTH_TIMEOUT_SECS", 0.3)
    port = free_port()
    await daemon_factory(tcp=f"127.0.0.1:{port}", api_key="k-123456")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, and not one byte sent
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()


def test_stderr_log_lines_are_redacted(capsys):
    """F-3: what the daemon prints to stderr (journald keeps it) is redacted too."""
    from inferd.cli.serve import _setup_logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        _setup_logging()
        logging.getLogger("inferd.test").error("upstream said %s", "Authorization: Bearer abcdefgh12345678")
        logging.getLogger("inferd.test").error("key sk-1234567890abcdefghij leaked")
    finally:
        for handler in root.handlers:
            handler.flush()
        root.handlers = saved
    err = capsys.readouterr().err
    assert "abcdefgh12345678" not in err and "sk-1234567890abcdefghij" not in err
    assert err.count("[REDACTED") == 2


async def test_connection_count_is_bounded(daemon_factory):
    """F-1/F-17 in aggregate: idle connections cannot pile up without bound."""
    from daemon_harness import dial, line, read_until_terminal, req

    d = await daemon_factory(max_connections=5, mock={"tokens": ["ok"]})
    held = [await dial(d.infer) for _ in range(5)]
    for _ in range(100):  # wait until all five are being served
        if d.server.tracker.count() >= 5:
            break
        await asyncio.sleep(0.01)
    extra_r, extra_w = await dial(d.infer)
    extra_w.write(line(req("over")))
    try:
        got = await asyncio.wait_for(extra_r.read(), 5)
    except ConnectionResetError:
        got = b""
    assert got == b""  # refused without a frame
    held[0][1].close()
    for _ in range(200):
        if d.server.tracker.count() < 5:
            break
        await asyncio.sleep(0.01)
    r, w = await dial(d.infer)
    w.write(line(req("after")))
    assert (await read_until_terminal(r))[-1]["type"] == "done"
    for _, writer in held[1:] + [(r, w)]:
        writer.close()
