"""Where the HTTP listener (daemon/surfaces/http/server.py) reaches past uvicorn's
documented API (ADR 0024). Each test fails if an upgrade of uvicorn moves the seam;
the connection wrapper's other duties (the shared cap, the drain, the write bound on
the transport found by `scope["client"]`) are pinned in test_http_surface.py."""

from __future__ import annotations

import signal
import socket

import httpx

from http_helpers import base_url, host_port


def refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


async def test_closing_the_listener_frees_the_port_before_the_loop_runs_again(http_daemon):
    """Through `Server.servers` the port goes at once (F-13: a drain starts with the port
    gone); `should_exit` alone would free it at uvicorn's next tick, up to 0.1 s later."""
    d = await http_daemon()
    host, port = host_port(d)
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.get("/health")).status_code == 200
    (listener,) = [s for s in d.server._surfaces if s.surface == "http"]
    listener.close()
    assert refused(host, port)  # no await since close(): uvicorn has not ticked
    assert await d.stop() == 0


async def test_uvicorn_leaves_the_signals_to_the_daemon(http_daemon):
    """`capture_signals` is overridden: while uvicorn serves, SIGINT and SIGTERM are not
    uvicorn's (it would take SIGTERM for itself and re-raise it after its shutdown)."""
    import uvicorn

    d = await http_daemon()
    async with httpx.AsyncClient(base_url=base_url(d)) as c:
        assert (await c.get("/health")).status_code == 200  # uvicorn is serving
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        assert not isinstance(getattr(handler, "__self__", None), uvicorn.Server), (sig, handler)
