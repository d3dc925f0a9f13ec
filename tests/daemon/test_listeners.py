"""Listeners (daemon/net/listeners.py; issue 8, THREAT_MODEL F-1, F-8, F-17): per-surface
connection budgets, the TCP first frame, the listen backlog.

Each test says how the code before issue 8 (8da2fcd) failed it. Real Unix sockets and
loopback TCP against a daemon in this process; waits are for conditions and bounded.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import selectors
import socket
import time
from typing import Any

import pytest

from daemon_harness import dial, line, read_json, req, reserved_port, roundtrip, tcp_exchange, wait_until
from serve_child import records

from inferd.daemon.net.listeners import MAX_ADMIN_CONNECTIONS, MAX_PENDING_AUTH, PENDING_AUTH_POOL
from inferd.daemon.observe.activity import ActivityLog
from inferd.proto import limits

KEY = "plainkey-ABCdef-0123456789"  # matches none of the redactor's patterns


@pytest.mark.parametrize("keyed", [True, False], ids=["api-key", "no-key"])
async def test_owner_is_served_on_unix_while_300_silent_tcp_peers_connect(daemon_factory, keyed):
    """Item 3: 300 TCP peers that connect and say nothing. With an API key at most 16 wait
    to authenticate and the rest are closed at once; without one they fill the TCP pool
    (256). Either way they never count against the Unix socket: the owner is served.
    Old code: they filled the daemon-wide 256 and the owner's request got EOF."""
    with reserved_port() as port:
        d = await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}",
                                 api_key="k-0123456789" if keyed else None)
    tracker = d.server.tracker
    peers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    reads = [asyncio.create_task(r.read()) for r, _ in peers]
    try:
        kept = MAX_PENDING_AUTH if keyed else 256
        await wait_until(lambda: sum(t.done() for t in reads) == 300 - kept, 30, "the excess peers to be closed")
        assert all(t.result() == b"" for t in reads if t.done())  # closed without a byte
        pool = PENDING_AUTH_POOL if keyed else "inference:tcp"
        assert tracker.in_pool(pool) == kept and tracker.in_pool("inference:local") == 0
        frames = await roundtrip(d.infer, req("owner"))
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "owner"
    finally:
        for t in reads:
            t.cancel()
        for _, w in peers:
            w.close()
    await wait_until(lambda: tracker.count() == 0, 15, "every peer's handler to end")
    if keyed:  # with the silent peers gone, the owner authenticates over TCP as before
        frames = await tcp_exchange(port, line({"type": "auth", "key": "k-0123456789"}), line(req("tcp")))
        assert frames[-1]["type"] == "done"


async def test_admin_subscribers_are_capped_on_their_own(daemon_factory):
    """Item 3: the admin socket takes 64 subscribers and closes the 65th at once; they do not
    count against the inference budget (here 3). Old code: admin uncapped, and its
    subscribers made the inference socket refuse the owner."""
    d = await daemon_factory(mock={"tokens": ["ok"]}, max_connections=3)
    subs = [await dial(d.admin) for _ in range(MAX_ADMIN_CONNECTIONS)]
    try:
        for r, _ in subs:  # each one is subscribed: it got its capabilities and the snapshot
            assert [(await read_json(r))["status"] for _ in range(2)] == ["capabilities", "ready"]
        extra_r, extra_w = await dial(d.admin)
        assert await asyncio.wait_for(extra_r.read(), 10) == b""
        extra_w.close()
        frames = await roundtrip(d.infer, req("owner"))
        assert frames[-1]["type"] == "done"
    finally:
        for _, w in subs:
            w.close()


# =============================================================================
# Item 4 and 10: the TCP first frame (F-8)
# =============================================================================

async def test_auth_line_is_capped_at_4_KiB(daemon_factory):
    """Item 4: the line before authentication may be MAX_AUTH_FRAME_BYTES (4096) bytes; a
    longer one is refused as soon as it is longer, not after buffering 64 MiB or waiting
    out the auth timeout (60 s here). An auth line of exactly 4096 bytes works. Old code:
    read up to 64 MiB and parsed it on the loop; here it waited for the timeout."""
    key = "k" * (limits.MAX_AUTH_FRAME_BYTES - len('{"type":"auth","key":""}'))
    auth = json.dumps({"type": "auth", "key": key}, separators=(",", ":")).encode()
    assert len(auth) == limits.MAX_AUTH_FRAME_BYTES
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=key, read_timeout_secs=60)
    ok = await tcp_exchange(port, auth + b"\n", line(req("at-cap")))
    assert ok[-1]["type"] == "done"
    # A big request pipelined right behind the auth line is read with the normal limits.
    ok = await tcp_exchange(port, auth + b"\n", line(req("big", content="y" * (1 << 20))))
    assert ok[-1]["type"] == "done" and ok[-1]["id"] == "big"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b'{"type":"auth","key":"' + b"k" * 8192)  # no newline: still "the first line"
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        pass  # closed with our bytes unread: a reset is a close too
    finally:
        writer.close()


async def test_bom_prefixed_auth_line_is_refused(daemon_factory):
    """Item 10: `\\ufeff{"type":"auth",...}` is not the auth frame (json.loads on bytes
    skipped the BOM). Old code: accepted and served."""
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY)
    frames = await tcp_exchange(port, b"\xef\xbb\xbf" + line({"type": "auth", "key": KEY}), line(req("bom")))
    assert frames == []
    frames = await tcp_exchange(port, line({"type": "auth", "key": KEY}), line(req("plain")))
    assert frames[-1]["type"] == "done"


async def test_lone_surrogate_key_is_refused_and_logged_without_a_traceback(daemon_factory, sockdir, caplog):
    """Item 10: a key "\\ud800" could not be encoded for the comparison: the handler died with
    a traceback and no `auth_refused` record. Now it is an ordinary wrong key."""
    caplog.set_level(logging.WARNING)
    logs = sockdir / "logs"
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY,
                             activity=ActivityLog(logs, level="info"))
    frames = await tcp_exchange(port, b'{"type":"auth","key":"\\ud800"}\n', line(req("s")))
    assert frames == []
    await wait_until(lambda: any(r["msg"] == "auth_refused" for r in records(logs)), 10, "auth_refused")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def _burst(family: int, address: Any, n: int) -> tuple[list[socket.socket], int]:
    """`n` non-blocking connects in a row, without yielding to the daemon's event loop (so
    it accepts none of them meanwhile). Returns the sockets and how many were refused."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(address)
        if err in (0, errno.EINPROGRESS):
            socks.append(s)
        else:
            refused += 1
            s.close()
    return socks, refused


def _completed(socks: list[socket.socket], timeout: float) -> int:
    """How many of `socks` finished connecting within `timeout` (the loop is not run)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    done, pending = 0, len(socks)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, end - time.monotonic())):
            sel.unregister(key.fileobj)
            pending -= 1
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                done += 1
    sel.close()
    return done


async def test_a_burst_of_1000_connects_is_queued_not_refused(daemon_factory):
    """Item 9: 1,000 non-blocking connects in a row while the daemon accepts none of them
    (the test holds the event loop). The listen backlog (1024) queues them all, on the Unix
    socket and on TCP. Old code: Python's default backlog of 100 refused ~900 with EAGAIN."""
    with reserved_port() as port:
        d = await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", max_connections=0)
    unix, refused = _burst(socket.AF_UNIX, d.infer, 1000)
    try:
        assert refused == 0 and len(unix) == 1000
    finally:
        for s in unix:
            s.close()
    await wait_until(lambda: d.server.tracker.count() == 0, 30, "the burst's handlers to end")
    tcp, refused = _burst(socket.AF_INET, ("127.0.0.1", port), 1000)
    try:
        assert refused == 0 and _completed(tcp, 2.0) == 1000
    finally:
        for s in tcp:
            s.close()
    await wait_until(lambda: d.server.tracker.count() == 0, 30, "the burst's handlers to end")
    assert (await roundtrip(d.infer, req("after")))[-1]["type"] == "done"


async def test_a_unix_socket_accepts_as_soon_as_its_file_exists(daemon_factory, monkeypatch):
    # Was: the file appeared at bind() and the socket listened only inside
    # start_unix_server, after a chmod and an await: a client that waits for the file
    # (bench/runner.py did) was refused with ECONNREFUSED in between.
    from inferd.daemon.net import listeners

    real = asyncio.start_unix_server
    dialled: list[tuple[str, object]] = []

    async def start_unix_server(*args: Any, **kw: Any):
        path = kw["sock"].getsockname()
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)  # what a client that saw the file does, before the server starts
            dialled.append((path, "accepted"))
        except OSError as exc:
            dialled.append((path, errno.errorcode.get(exc.errno, str(exc))))
        finally:
            probe.close()
        return await real(*args, **kw)

    monkeypatch.setattr(listeners.asyncio, "start_unix_server", start_unix_server)
    d = await daemon_factory()
    assert len(dialled) >= 3, dialled  # admin, inference, embed (and v2 where on)
    assert all(how == "accepted" for _, how in dialled), dialled
    frames = await roundtrip(d.infer, req("after"))  # the probes left nothing behind
    assert frames[-1]["type"] == "done", frames
