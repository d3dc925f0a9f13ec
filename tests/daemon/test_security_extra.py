"""Smaller security guarantees: F-8's auth deadline and F-3 on stderr."""

from __future__ import annotations

import asyncio
import logging

from daemon_harness import dial, line, read_until_terminal, req, reserved_port, wait_until


async def test_tcp_client_that_never_authenticates_is_dropped(daemon_factory):
    """F-8: a connection that sends no auth frame cannot sit on a socket forever."""
    with reserved_port() as port:
        await daemon_factory(tcp=f"127.0.0.1:{port}", api_key="k-123456", read_timeout_secs=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Closed, and not one byte sent; the bound is far past the 0.3 s deadline and far
    # short of the default one, so only the deadline under test can pass it.
    assert await asyncio.wait_for(reader.read(), 0.3 + 4.7) == b""
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
    d = await daemon_factory(max_connections=5, mock={"tokens": ["ok"]})
    held = [await dial(d.infer) for _ in range(5)]
    await wait_until(lambda: d.server.tracker.count() >= 5, 10, "all five to be served")
    extra_r, extra_w = await dial(d.infer)
    extra_w.write(line(req("over")))
    try:
        got = await asyncio.wait_for(extra_r.read(), 5)
    except ConnectionResetError:
        got = b""
    assert got == b""  # refused without a frame
    held[0][1].close()
    await wait_until(lambda: d.server.tracker.count() < 5, 10, "the closed one's handler to end")
    r, w = await dial(d.infer)
    w.write(line(req("after")))
    assert (await read_until_terminal(r))[-1]["type"] == "done"
    for _, writer in held[1:] + [(r, w)]:
        writer.close()
