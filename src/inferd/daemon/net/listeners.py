"""Transports: Unix sockets, loopback TCP and Windows named pipes behind one shape.

Each listener accepts connections, establishes who the peer is (F-7 on Unix, the
API-key first frame F-8 on TCP) and hands a `PeerConnection` to the surface handler.
Every connection task is tracked so shutdown and reload can wait for or cancel them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...proto.auth import keys_match, parse_auth_key
from ...proto.errors import ProtoError
from ...proto.endpoints import parse_tcp_addr
from ...proto.framing import STREAM_LIMIT, FrameReader
from ...proto.limits import MAX_AUTH_FRAME_BYTES
from ..observe.activity import ActivityLog, NullActivityLog, activity_record
from ..observe.throttle import Throttle, log_refusal
from .buffers import ByteBudget
from .conn import PeerConnection
from .paths import prepare_socket_path, remove_socket_file
from .peercred import PeerPolicy, peer_credentials

log = logging.getLogger("inferd.listeners")

Handler = Callable[[PeerConnection], Awaitable[None]]

#: The default read timeout (`--read-timeout-secs`, F-22): how long a peer may take to
#: send what it has begun or owes - the TCP auth frame, an HTTP request's head or body,
#: the rest of an NDJSON line past the stream limit, an HTTP connection's first
#: authorized request.
DEFAULT_READ_TIMEOUT_SECS = 30.0
# Connections the kernel queues before accept(); Python's default of 100 made bursts
# of non-blocking connects fail with EAGAIN (a Unix socket does not queue past it).
LISTEN_BACKLOG = 1024

# Connection budgets (issue 8 item 3, issue 19 item 2, THREAT_MODEL F-1/F-8/F-17). Each
# surface and transport has its own pool, HTTP included, so one kind of peer can never
# use up another's: silent TCP peers cannot evict the owner's Unix-socket requests,
# idle Unix connections cannot shut out HTTP, admin subscribers cannot either.
#: TCP peers that have not yet sent a valid auth frame, across every NDJSON TCP listener.
#: Each waits at most the read timeout and buffers at most MAX_AUTH_FRAME_BYTES (+ the
#: stream limit). When the pool is full, a new peer takes the place of the one that has
#: waited longest (`ConnectionTracker.admit`): a flood of silent peers cannot keep an
#: honest one, which sends its frame at once, from authenticating.
MAX_PENDING_AUTH = 16
PENDING_AUTH_POOL = "tcp:pending-auth"
#: With an API key, HTTP connections that have not yet made an authorized request; the
#: same rule as above, in a pool of their own (browsers and SDKs open several at once).
MAX_PENDING_HTTP = 64
PENDING_HTTP_POOL = "http:pending-auth"
#: Admin subscribers (the admin socket is same-user only, but a runaway watcher loop
#: must not pile up connections and fan-out queues without bound).
MAX_ADMIN_CONNECTIONS = 64


class ListenerError(Exception):
    pass


@dataclass
class ListenerSecurity:
    write_timeout: float | None = 60.0
    peer_policy: PeerPolicy | None = None
    api_key: str | None = None
    group_gid: int | None = None
    activity: ActivityLog | NullActivityLog = field(default_factory=NullActivityLog)
    # F-1/F-17 in aggregate: each connection may buffer a partial line up to the frame
    # cap, so their number is bounded too: per surface and transport (a pool: "inference
    # over Unix", "v2 over TCP", "http", "admin"), never daemon-wide. None = unbounded.
    max_connections: int | None = None
    #: F-22: seconds a peer may take to send what it began or owes (None = unbounded).
    read_timeout: float | None = DEFAULT_READ_TIMEOUT_SECS
    #: F-22: the daemon-wide budget for partial frames and bodies (None = not counted).
    budget: ByteBudget | None = None
    #: The one rate limit on refusal records (daemon/observe/throttle.py), per daemon.
    refusals: Throttle = field(default_factory=Throttle)

    def refuse(self, name: str, message: str, *, surface: str, **fields: object) -> bool:
        """Log a refusal through the daemon's one throttle (F-4)."""
        return log_refusal(self.refusals, self.activity.logger, name, message, surface=surface, **fields)


class ConnectionTracker:
    """The live connection tasks of one daemon, each counted in one pool."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], tuple[str, str]] = {}
        self._pools: dict[str, int] = {}

    def add(self, task: asyncio.Task[None], surface: str, pool: str | None = None) -> None:
        pool = pool or surface
        self._tasks[task] = (surface, pool)
        self._pools[pool] = self._pools.get(pool, 0) + 1

    def move(self, task: asyncio.Task[None], pool: str) -> None:
        surface, old = self._tasks[task]
        self._pools[old] -= 1
        self._tasks[task] = (surface, pool)
        self._pools[pool] = self._pools.get(pool, 0) + 1

    def discard(self, task: asyncio.Task[None]) -> None:
        entry = self._tasks.pop(task, None)
        if entry is not None:
            self._pools[entry[1]] -= 1

    def admit(self, task: asyncio.Task[None], surface: str, pool: str, limit: int | None,
              evict_oldest: bool = False) -> bool:
        """Count `task` in `pool` if there is room. A full pool refuses it, or with
        `evict_oldest` (the pools of peers yet to authenticate) makes room by cancelling
        the entry that has waited longest: the newcomer may be honest, the oldest has
        had the most time to say who it is."""
        if limit is not None and self.in_pool(pool) >= limit:
            oldest = next((t for t, (_, p) in self._tasks.items() if p == pool), None) if evict_oldest else None
            if oldest is None:
                return False
            self.discard(oldest)
            oldest.cancel()
        self.add(task, surface, pool)
        return True

    def promote(self, task: asyncio.Task[None], pool: str, limit: int | None) -> bool:
        """Move an authenticated entry into its surface's pool, if there is room."""
        if limit is not None and self.in_pool(pool) >= limit:
            return False
        self.move(task, pool)
        return True

    def count(self, surfaces: set[str] | None = None) -> int:
        if surfaces is None:
            return len(self._tasks)
        return sum(1 for s, _ in self._tasks.values() if s in surfaces)

    def in_pool(self, pool: str) -> int:
        return self._pools.get(pool, 0)

    async def cancel(self, surfaces: set[str] | None = None, timeout: float = 2.0) -> None:
        tasks = [t for t, s in self._tasks.items() if surfaces is None or s in surfaces]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


class Listener:
    def __init__(self, surface: str, kind: str, address: str, server: asyncio.AbstractServer | None,
                 socket_path: str | None = None, closer: Callable[[], None] | None = None) -> None:
        self.surface = surface
        self.kind = kind
        self.address = address
        self._server = server
        self._socket_path = socket_path
        self._closer = closer

    def close(self) -> None:
        """Stop accepting. Established connections are left to their handlers."""
        if self._server is not None:
            self._server.close()
        if self._closer is not None:
            self._closer()
        if self._socket_path is not None:
            remove_socket_file(self._socket_path)

    def __repr__(self) -> str:
        return f"Listener({self.surface} {self.kind}:{self.address})"


def surface_pool(surface: str, kind: str) -> str:
    """The pool a surface's connections over one transport are counted in."""
    return f"{surface}:{'tcp' if kind == 'tcp' else 'local'}"


def _make_callback(surface: str, kind: str, handler: Handler, sec: ListenerSecurity,
                   tracker: ConnectionTracker) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    def refuse(conn: PeerConnection, reason: str, **fields: object) -> None:
        sec.refuse(reason, f"refusing a {surface} {kind} connection ({reason})", surface=surface, transport=kind,
                   **fields)
        conn.abort()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = PeerConnection(reader, writer, surface=surface, transport_kind=kind, write_timeout=sec.write_timeout,
                              read_timeout=sec.read_timeout, budget=sec.budget)
        conn.on_refusal = lambda name, message: sec.refuse(name, message, surface=surface, transport=kind,
                                                           peer=conn.peer_label)
        # Issue 8 item 3: a TCP peer that has yet to authenticate is counted apart (and
        # far more tightly) from everyone else; the others each have their own pool.
        pending = kind == "tcp" and bool(sec.api_key)
        pool, limit = (PENDING_AUTH_POOL, MAX_PENDING_AUTH) if pending else (surface_pool(surface, kind), sec.max_connections)
        if not tracker.admit(task, surface, pool, limit, evict_oldest=pending):
            refuse(conn, "connection_refused_limit", pool=pool, limit=limit)
            return
        try:
            if kind == "unix":
                sock = writer.get_extra_info("socket")
                conn.peer = peer_credentials(sock) if sock is not None else None
                if sec.peer_policy is not None and not await _admits(sec.peer_policy, conn.peer):
                    # F-7: a different user's process gets nothing but a closed socket.
                    refuse(conn, "peer_refused", peer=conn.peer_label, peer_uid=getattr(conn.peer, "uid", None),
                           peer_gid=getattr(conn.peer, "gid", None), peer_pid=getattr(conn.peer, "pid", None))
                    return
            if pending:
                assert sec.api_key is not None
                if not await _authenticate(conn, sec.api_key, sec.read_timeout):
                    refuse(conn, "auth_refused", peer=conn.peer_label)  # F-8: silent close, no frame
                    return
                pool = surface_pool(surface, kind)
                if not tracker.promote(task, pool, sec.max_connections):
                    refuse(conn, "connection_refused_limit", pool=pool, limit=sec.max_connections)
                    return
            sec.activity.traffic.info("%s_connection_accepted", surface, extra=activity_record(
                "activity", transport=kind, peer=conn.peer_label,
                peer_uid=getattr(conn.peer, "uid", None), peer_gid=getattr(conn.peer, "gid", None),
                peer_pid=getattr(conn.peer, "pid", None)))
            await handler(conn)
        except asyncio.CancelledError:
            # Shutdown or reload cancelled us. End quietly: asyncio's stream
            # callback would otherwise log the cancellation as an error.
            conn.abort()
        except Exception:  # noqa: BLE001 - one client never takes the daemon down
            log.exception("%s connection handler failed", surface)
            conn.abort()
        finally:
            tracker.discard(task)

    return on_connect


async def _admits(policy: PeerPolicy, cred: object) -> bool:
    verdict = policy.quick_verdict(cred)  # type: ignore[arg-type]
    if verdict is None:  # a group-database lookup: never on the loop
        verdict = await asyncio.to_thread(policy.admits, cred)  # type: ignore[arg-type]
    return verdict


async def _authenticate(conn: PeerConnection, api_key: str, timeout: float | None) -> bool:
    """F-8: the first line must be the auth frame. Issue 8 item 4: it may be at most
    MAX_AUTH_FRAME_BYTES, so an unauthenticated peer never makes the daemon buffer or
    parse a 64 MiB line; a longer one is refused as soon as the excess arrives (the
    reader's limit, set in bind_tcp)."""
    try:
        async with asyncio.timeout(timeout):
            line = await FrameReader(conn.reader, cap=MAX_AUTH_FRAME_BYTES).read_frame()
    except (TimeoutError, ProtoError, ConnectionError, OSError):
        return False
    if line is None:
        return False
    presented = parse_auth_key(line)
    return presented is not None and keys_match(presented, api_key)


async def bind_unix(path: str, surface: str, handler: Handler, *, mode: int, sec: ListenerSecurity,
                    tracker: ConnectionTracker) -> Listener:
    # F-2: no symlinks, no directories, stale files replaced. The liveness probe of a
    # stale socket may wait, so it runs off the loop.
    await asyncio.to_thread(prepare_socket_path, path)
    callback = _make_callback(surface, "unix", handler, sec, tracker)
    sock = _bind_private_unix(path)
    try:
        if sec.group_gid is not None:
            os.chown(path, -1, sec.group_gid)
        os.chmod(path, mode)
        server = await asyncio.start_unix_server(callback, sock=sock, limit=STREAM_LIMIT, backlog=LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        remove_socket_file(path)
        raise
    return Listener(surface, "unix", path, server, socket_path=path)


def _bind_private_unix(path: str) -> socket.socket:
    """A Unix socket bound at `path` with no group/other bits, then opened up by chmod:
    there is no window in which another user can connect. The umask is process-wide,
    so it is changed only around the bind() itself - never across an await.

    It listens at once: the file appears at bind(), and a client that waits for the
    file (a script, a service manager, a bench) must not be refused in the moment
    before the server starts. Connections that arrive meanwhile wait in the backlog."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def require_loopback(host: str) -> None:
    """F-8: the daemon never listens beyond this machine."""
    if host == "localhost":
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ListenerError(f"refusing TCP bind to {host!r}: only loopback addresses are allowed") from None
    mapped = getattr(ip, "ipv4_mapped", None)
    if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
        raise ListenerError(f"refusing TCP bind to {host}: only loopback addresses are allowed")


async def bind_tcp(addr: str, default_port: int, surface: str, handler: Handler, *, sec: ListenerSecurity,
                   tracker: ConnectionTracker) -> Listener:
    try:
        host, port = parse_tcp_addr(addr, default_port)
    except ValueError as exc:
        raise ListenerError(str(exc)) from None
    require_loopback(host)
    if not sec.api_key:
        log.warning("%s listening on TCP %s:%d without an API key: any local process can use it", surface, host, port)
    callback = _make_callback(surface, "tcp", handler, sec, tracker)
    # A StreamReader notices an overlong line only once its limit is passed, and the
    # limit is fixed when the reader is made. With a key, the first line is the auth
    # frame: the limit is its cap, so a longer one is refused as soon as 4 KiB without a
    # newline are in (issue 8 item 4). Later frames are read past the limit in chunks
    # (FrameReader), as fast on loopback as with the 64 KiB limit (ADR 0024).
    limit = MAX_AUTH_FRAME_BYTES + 1 if sec.api_key else STREAM_LIMIT
    server = await asyncio.start_server(callback, host=host, port=port, limit=limit, reuse_address=True,
                                        backlog=LISTEN_BACKLOG)
    bound = server.sockets[0].getsockname() if server.sockets else (host, port)
    return Listener(surface, "tcp", f"{bound[0]}:{bound[1]}", server)


async def bind_pipe(name: str, surface: str, handler: Handler, *, sec: ListenerSecurity,
                    tracker: ConnectionTracker) -> Listener:
    """Windows named pipe via the proactor loop (multi-instance accept)."""
    if sys.platform != "win32":
        raise ListenerError("named pipes exist only on Windows; use --uds or --tcp")
    loop = asyncio.get_running_loop()
    callback = _make_callback(surface, "pipe", handler, sec, tracker)

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        return asyncio.StreamReaderProtocol(reader, callback, loop=loop)

    servers = await loop.start_serving_pipe(factory, name)  # type: ignore[attr-defined]

    def closer() -> None:
        for srv in servers:
            srv.close()

    return Listener(surface, "pipe", name, None, closer=closer)

