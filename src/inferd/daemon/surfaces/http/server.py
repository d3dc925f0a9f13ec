"""The HTTP listener: uvicorn serving HttpApp inside the daemon's own event loop.

ADR 0013 has the why (and the measured cost). What this file adds to uvicorn:

- the socket is bound here, loopback only (F-8, `require_loopback`), and handed to
  `uvicorn.Server.serve(sockets=[...])`; the daemon binds it only once ready and
  closes it on drain like every inference surface (F-13, daemon/server.py);
- uvicorn's signal capture is switched off: the daemon's SignalHandlers own SIGINT,
  SIGTERM and SIGHUP (uvicorn would take SIGTERM for itself);
- each connection is registered with the daemon's ConnectionTracker as surface
  "http" and counted against `--max-connections` with every other surface (F-1 in
  aggregate); a connection beyond the cap is aborted at once, as on the sockets;
  the daemon's drain cancels the tracker entries, which aborts the connections;
- each connection's transport is kept by client address, the `scope["client"]` of
  its requests, so a write that outlives the write timeout can abort it (F-17, io.py).

uvicorn is driven through its public Config/Server API; the few places that reach
further are listed in ADR 0024 and pinned by tests/daemon/surfaces/http/test_http_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from .... import __version__
from ....proto.endpoints import parse_tcp_addr
from ...context import DaemonContext
from ...observe.activity import activity_record
from ...net.listeners import LISTEN_BACKLOG, ConnectionTracker, Listener, ListenerError, ListenerSecurity, require_loopback
from . import DEFAULT_HTTP_PORT
from .app import HttpApp, Transports

log = logging.getLogger("inferd.http")

SURFACE = "http"

_running: set[asyncio.Task[None]] = set()  # uvicorn serve tasks: strong references until they end


def parse_http_addr(text: str) -> tuple[str, int]:
    """`PORT`, `HOST`, `HOST:PORT` or `[V6]:PORT`; port 0 asks the kernel for a free one."""
    text = text.strip().removeprefix("http://").rstrip("/")
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    if text.endswith(":0"):
        host, _ = parse_tcp_addr(text[:-1] + "1")
        return host, 0
    return parse_tcp_addr(text, DEFAULT_HTTP_PORT)


def _listening_socket(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV)
    family, kind, proto, _, address = infos[0]
    require_loopback(address[0])  # what `localhost` resolved to must be loopback too (F-8)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _protocol_factory(tracker: ConnectionTracker, sec: ListenerSecurity,
                      transports: Transports) -> Callable[..., asyncio.Protocol]:
    # h11, not "auto" (httptools when installed): the same parser wherever inferd runs,
    # pure Python and strict; httptools measured no faster for SSE (ADR 0013).
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TrackedConnection(asyncio.Protocol):
        """uvicorn's h11 protocol, counted and cancellable like every daemon connection.

        A wrapper, not a subclass: uvicorn's protocol is driven only through asyncio's
        Protocol methods, and what uvicorn builds it with is handed on unread (ADR 0024).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._http = H11Protocol(*args, **kwargs)
            self._entry: asyncio.Future[None] | None = None
            self._client: tuple[str, int] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            label = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp"
            if sec.max_connections is not None and tracker.count() >= sec.max_connections:
                sec.activity.logger.warning("refusing an http connection: %d connections open", sec.max_connections,
                                            extra=activity_record("activity", "connection_refused_limit", surface=SURFACE,
                                                        limit=sec.max_connections))
                transport.abort()
                return
            entry = self._entry = asyncio.get_running_loop().create_future()
            # The tracker cancels its entries on drain; for us that means: drop the connection.
            entry.add_done_callback(lambda f: transport.abort() if f.cancelled() else None)
            tracker.add(entry, SURFACE)  # type: ignore[arg-type]
            if peer:
                self._client = (str(peer[0]), int(peer[1]))  # what uvicorn puts in scope["client"]
                transports[self._client] = transport  # type: ignore[assignment]
            sec.activity.traffic.info("http_connection_accepted", extra=activity_record("activity", transport="tcp", peer=label))
            self._http.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            self._http.data_received(data)

        def eof_received(self) -> bool | None:
            return self._http.eof_received()

        def pause_writing(self) -> None:
            self._http.pause_writing()

        def resume_writing(self) -> None:
            self._http.resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            entry = self._entry
            if entry is None:
                return  # refused at the cap: uvicorn never saw it
            tracker.discard(entry)  # type: ignore[arg-type]
            if not entry.done():
                entry.set_result(None)
            transports.pop(self._client, None)  # type: ignore[arg-type]
            self._http.connection_lost(exc)

    return TrackedConnection


class _UvicornServer:
    """uvicorn.Server with the daemon's signal handling and an event for "listening"."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            def __init__(self, config: Any) -> None:
                super().__init__(config)
                self.listening = asyncio.Event()

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the daemon's SignalHandlers own the signals

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                self.listening.set()

        return Server(config)


async def bind_http(addr: str, ctx: DaemonContext, *, sec: ListenerSecurity,
                    tracker: ConnectionTracker) -> Listener:
    """Listen for HTTP on loopback `addr`; the returned Listener's close() stops
    accepting at once (the port is gone) and lets uvicorn finish its connections."""
    try:
        import uvicorn
    except ImportError:
        raise ListenerError("the HTTP surface needs uvicorn: pip install 'inferd[http]'") from None
    try:
        host, port = parse_http_addr(addr)
    except ValueError as exc:
        raise ListenerError(str(exc)) from None
    require_loopback(host)
    try:
        sock = _listening_socket(host, port)
    except socket.gaierror as exc:
        raise ListenerError(f"cannot resolve {host!r}: {exc}") from None
    transports: Transports = {}
    app = HttpApp(ctx, api_key=sec.api_key, write_timeout=sec.write_timeout, activity=sec.activity,
                  transports=transports)
    config = uvicorn.Config(
        app, http=_protocol_factory(tracker, sec, transports), ws="none", lifespan="off", interface="asgi3",
        log_config=None, log_level="warning", access_log=False, proxy_headers=False,
        server_header=False, headers=[("server", f"inferd/{__version__}")], timeout_keep_alive=5,
        backlog=LISTEN_BACKLOG,
    )
    server = _UvicornServer(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    _running.add(task)
    task.add_done_callback(_running.discard)
    listening = asyncio.ensure_future(server.listening.wait())
    await asyncio.wait((listening, task), return_when=asyncio.FIRST_COMPLETED)
    if not listening.done():
        listening.cancel()
        sock.close()
        exc = task.exception()
        raise ListenerError(f"http server did not start: {exc!r}")
    bound = sock.getsockname()
    address = f"[{bound[0]}]:{bound[1]}" if sock.family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
    if not sec.api_key:
        log.warning("http listening on %s without an API key: any local process can use it", address)

    def close() -> None:
        # `servers` is not uvicorn's documented API (ADR 0024): through it the port is
        # released now; should_exit alone releases it at uvicorn's next tick.
        for srv in server.servers:
            srv.close()
        server.should_exit = True

    lst = Listener(SURFACE, "tcp", address, None, closer=close)
    lst.uvicorn_task = task  # type: ignore[attr-defined]
    return lst
