"""The HTTP listener: uvicorn serving HttpApp inside the daemon's own event loop.

ADR 0013 has the why (and the measured cost). What this file adds to uvicorn:

- the socket is bound here, loopback only (F-8, `require_loopback`), and handed to
  `uvicorn.Server.serve(sockets=[...])`; the daemon binds it only once ready and
  closes it on drain like every inference surface (F-13, daemon/server.py);
- uvicorn's signal capture is switched off: the daemon's SignalHandlers own SIGINT,
  SIGTERM and SIGHUP (uvicorn would take SIGTERM for itself);
- each connection is registered with the daemon's ConnectionTracker as surface
  "http", in a pool of its own (`http:tcp`, `--max-connections`, issue 19 item 2):
  the sockets' connections never count against it, nor its against theirs. With an
  API key a connection starts in the pending pool (`http:pending-auth`, 64) and moves
  to `http:tcp` with its first authorized request, as an NDJSON TCP peer does with
  its auth frame (`ConnectionTracker.admit`/`promote`, the same code); a full pending
  pool makes room by dropping the connection that has waited longest;
- a deadline for each request's head (F-22): uvicorn arms no timer before a
  connection's first request, nor while a later request's head trickles in (its
  keep-alive timer stops at the first byte). `HttpConnection` arms `--read-timeout-secs`
  when the connection opens and after each response and stops it when a request
  reaches a route; a pending connection's deadline runs from its connect until an
  authorized request. Past it the connection gets `408` (when no request is in
  flight) and is closed;
- the daemon's drain cancels the tracker entries, which aborts the connections;
- each connection is kept by client address, the `scope["client"]` of its requests,
  so a write that outlives the write timeout can abort it (F-17, io.py) and a request
  can tell its connection when it starts and ends;
- every refusal is logged through the daemon's one throttle (observe/throttle.py),
  uvicorn's own warnings ("Invalid HTTP request received.") included.

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
from ...observe.throttle import ThrottleFilter
from ...net.listeners import (LISTEN_BACKLOG, MAX_PENDING_HTTP, PENDING_HTTP_POOL, ConnectionTracker, Listener,
                              ListenerError, ListenerSecurity, require_loopback, surface_pool)
from . import DEFAULT_HTTP_PORT
from .app import Connections, HttpApp

log = logging.getLogger("inferd.http")

SURFACE = "http"

_running: set[asyncio.Task[None]] = set()  # uvicorn serve tasks: strong references until they end
#: uvicorn logs a warning per malformed request: through the one throttle (F-4). Its
#: logger is process-wide, so the filter is too (added once).
_UVICORN_FILTER = ThrottleFilter()
TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


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
                      connections: Connections) -> Callable[..., asyncio.Protocol]:
    # h11, not "auto" (httptools when installed): the same parser wherever inferd runs,
    # pure Python and strict; httptools measured no faster for SSE (ADR 0013).
    from uvicorn.protocols.http.h11_impl import H11Protocol

    pool = surface_pool(SURFACE, "tcp")

    class HttpConnection(asyncio.Protocol):
        """uvicorn's h11 protocol, counted, deadlined and cancellable like every daemon connection.

        A wrapper, not a subclass: uvicorn's protocol is driven only through asyncio's
        Protocol methods, and what uvicorn builds it with is handed on unread (ADR 0024).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._http = H11Protocol(*args, **kwargs)
            self._entry: asyncio.Future[None] | None = None
            self._client: tuple[str, int] | None = None
            self._timer: asyncio.TimerHandle | None = None
            self._busy = False
            #: Requests between their begin and end. uvicorn starts a pipelined or quick
            #: next request before the previous one's app has returned, so one request's
            #: end may come after the next one's begin: the head deadline is re-armed
            #: only when none is left.
            self._active = 0
            self._label = "tcp"
            self.transport: asyncio.Transport | None = None
            self.pending = False

        # ---- what asyncio calls ----------------------------------------------------

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            self._label = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp"
            self.pending = bool(sec.api_key)
            where, limit = (PENDING_HTTP_POOL, MAX_PENDING_HTTP) if self.pending else (pool, sec.max_connections)
            entry = asyncio.get_running_loop().create_future()
            if not tracker.admit(entry, SURFACE, where, limit, evict_oldest=self.pending):  # type: ignore[arg-type]
                self._refuse("connection_refused_limit", f"refusing an http connection: {limit} open in {where}",
                             pool=where, limit=limit)
                transport.abort()
                return
            self._entry = entry
            self.transport = transport  # type: ignore[assignment]
            # The tracker cancels its entries on drain (or to make room): drop the connection.
            entry.add_done_callback(lambda f: transport.abort() if f.cancelled() else None)
            if peer:
                self._client = (str(peer[0]), int(peer[1]))  # what uvicorn puts in scope["client"]
                connections[self._client] = self
            if not self.pending:
                self._accepted()
            self._arm()
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
            self._disarm()
            tracker.discard(entry)  # type: ignore[arg-type]
            if not entry.done():
                entry.set_result(None)
            if self._client is not None and connections.get(self._client) is self:
                del connections[self._client]
            self._http.connection_lost(exc)

        # ---- what a request tells it (io.HttpPeer) ---------------------------------

        def begin(self, authorized: bool) -> bool:
            self._active += 1  # the app calls end() for every begin(), whatever it returns
            self._busy = True
            if self.pending:
                if not authorized:
                    return True  # the pending deadline runs on
                if not tracker.promote(self._entry, pool, sec.max_connections):  # type: ignore[arg-type]
                    self._refuse("connection_refused_limit", f"refusing an http request: {sec.max_connections} "
                                 f"connections open in {pool}", pool=pool, limit=sec.max_connections)
                    return False
                self.pending = False
                self._accepted()
            self._disarm()
            return True

        def end(self) -> None:
            self._active -= 1
            if self._active > 0:
                return  # another request on this connection is still being served
            self._busy = False
            if not self.pending and self.transport is not None and not self.transport.is_closing():
                self._arm()  # the next request's head is due within the read timeout

        # ---- the head deadline -----------------------------------------------------

        def _arm(self) -> None:
            self._disarm()
            if sec.read_timeout is not None:
                self._timer = asyncio.get_running_loop().call_later(sec.read_timeout, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            what = "an authorized request" if self.pending else "a request head"
            self._refuse("read_timeout", f"closing an http connection: no {what} within {sec.read_timeout:g} s")
            if self._busy:
                transport.abort()  # a pending connection's unauthorized request: nothing to answer
                return
            transport.write(TIMEOUT_408)  # between requests: nothing else is being written
            transport.close()

        # ---- records ---------------------------------------------------------------

        def _accepted(self) -> None:
            sec.activity.traffic.info("http_connection_accepted",
                                      extra=activity_record("activity", transport="tcp", peer=self._label))

        def _refuse(self, name: str, message: str, **fields: object) -> None:
            sec.refuse(name, message, surface=SURFACE, transport="tcp", peer=self._label, **fields)

    return HttpConnection


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
    connections: Connections = {}
    app = HttpApp(ctx, api_key=sec.api_key, write_timeout=sec.write_timeout, activity=sec.activity,
                  connections=connections, refusals=sec.refusals, read_timeout=sec.read_timeout, budget=sec.budget)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _UVICORN_FILTER not in uvicorn_log.filters:
        uvicorn_log.addFilter(_UVICORN_FILTER)
    config = uvicorn.Config(
        app, http=_protocol_factory(tracker, sec, connections), ws="none", lifespan="off", interface="asgi3",
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
