"""One small transport interface so UDS, TCP and Windows named pipes look the same.

Every dialer returns an asyncio (StreamReader, StreamWriter) pair; `Connection` wraps
that pair with NDJSON framing so the clients above never care which transport it was.

Timeouts (all in seconds; None means no limit):

- `connect_timeout` (default 5 s) bounds a dial: the connect itself, and for TCP
  with an API key also the auth frame. Expiry raises ConnectTimeout.
- `read_timeout` bounds the wait for each frame. The default for generation and
  embedding is None: a request can legitimately wait in the daemon's admission
  queue behind other requests for as long as they take, and the daemon sends
  nothing meanwhile. Set one when you would rather give up than wait. Expiry
  raises ReadTimeout.
- `write_timeout` (default 30 s) bounds the handing over of one request to the
  daemon. The daemon reads a request as soon as the previous one on the
  connection is answered, so only a wedged daemon makes this expire. Expiry
  raises WriteTimeout.

After any timeout the connection is closed (aborted, without waiting for unsent
bytes), which is also how the daemon learns to drop the request (protocol §7.3).

I/O failures of a dial, a send or a receive (refused, reset, broken pipe, no such
socket) leave this module as ClientIOError subclasses (`errors.as_client_error`),
never as a bare OSError; after one the connection is closed too.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self, TypeVar, Union

from pydantic import BaseModel

from inferd.proto.endpoints import parse_tcp_addr  # the daemon binds by the same rules
from inferd.proto.errors import FrameTooLarge
from inferd.proto.framing import MAX_FRAME_BYTES, STREAM_LIMIT, FrameReader

from .errors import (
    ClientDecodeError,
    ClientError,
    ClientIOError,
    ClientTimeout,
    ConnectTimeout,
    ReadTimeout,
    WriteTimeout,
    as_client_error,
)

TcpAddr = Union[str, tuple[str, int]]
StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
T = TypeVar("T")

PIPE_PREFIX = "\\\\.\\pipe\\"

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_WRITE_TIMEOUT: Final = 30.0
# Generation and embedding: unbounded between frames (see the module docstring).
DEFAULT_READ_TIMEOUT: Final = None

# A Unix socket whose accept queue is full refuses a non-blocking connect with
# EAGAIN (Linux) instead of queueing it; we try again at these intervals until
# the connect timeout. asyncio's own dial would report a "connection" on a socket
# that is not connected at all and fail later with EINVAL.
_UDS_RETRY_FIRST = 0.001
_UDS_RETRY_MAX = 0.05


class Unset:
    """Marks "use the connection's own setting" in per-call timeout arguments."""

    _instance: "Unset | None" = None

    def __new__(cls) -> "Unset":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


def check_timeout(name: str, value: float | None) -> float | None:
    """A timeout argument as seconds, or None for no limit; anything else is a ValueError.

    0 is refused rather than read as "no limit" (the daemon's CLI convention) or
    as "fail at once": say None for no limit.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds or None (no limit), got {value!r}")
    return float(value)


async def bounded(aw: Awaitable[T], timeout: float | None, expired: Callable[[], ClientTimeout]) -> T:
    """Await `aw`; if `timeout` seconds pass first, cancel it and raise `expired()`.

    A TimeoutError that `aw` raises by itself (an ETIMEDOUT from the kernel, say)
    passes through unchanged: only our own deadline becomes a ClientTimeout.
    """
    if timeout is None:
        return await aw
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await aw
    except TimeoutError:
        if deadline.expired():
            raise expired() from None
        raise


async def io_guarded(aw: Awaitable[T]) -> T:
    """Await `aw`; an OSError it raises becomes the ClientIOError of its kind."""
    try:
        return await aw
    except OSError as exc:
        if isinstance(exc, ClientError):
            raise
        raise as_client_error(exc) from exc


def _connect_expired(what: str, timeout: float) -> Callable[[], ConnectTimeout]:
    return lambda: ConnectTimeout(f"connecting to {what} took longer than {timeout:g}s", timeout)


# ---- dialers ------------------------------------------------------------------------


async def dial_uds(path: str, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> StreamPair:
    """Connect to a Unix socket; ConnectTimeout if it is not accepted within `connect_timeout`."""
    timeout = check_timeout("connect_timeout", connect_timeout)
    path = os.fspath(path)
    if timeout is None:
        return await io_guarded(_open_uds(path))
    return await io_guarded(bounded(_open_uds(path), timeout, _connect_expired(path, timeout)))


async def _open_uds(path: str) -> StreamPair:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await _connect_unix(sock, path)
        return await asyncio.open_unix_connection(sock=sock, limit=STREAM_LIMIT)
    except BaseException:
        sock.close()
        raise


async def _connect_unix(sock: socket.socket, path: str) -> None:
    delay = _UDS_RETRY_FIRST
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                # In progress (not seen on Unix sockets, but allowed): let the loop
                # wait for writability and read SO_ERROR, as it does for TCP.
                await asyncio.get_running_loop().sock_connect(sock, path)
                return
        # The daemon's accept queue is full; it may drain in a moment.
        await asyncio.sleep(delay)
        delay = min(delay * 2, _UDS_RETRY_MAX)


async def dial_tcp(
    addr: TcpAddr, api_key: str | None = None, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
) -> StreamPair:
    """Connect over loopback TCP; with `api_key`, send the auth frame first.

    `connect_timeout` covers the handshake and the auth frame together. The daemon
    closes silently on a wrong key (F-8), so a bad key shows up as an EOF on the
    first read, not as an error here.
    """
    host, port = parse_tcp_addr(addr)
    timeout = check_timeout("connect_timeout", connect_timeout)
    if timeout is None:
        return await io_guarded(_open_tcp(host, port, api_key))
    return await io_guarded(
        bounded(_open_tcp(host, port, api_key), timeout, _connect_expired(f"{host}:{port}", timeout))
    )


async def _open_tcp(host: str, port: int, api_key: str | None) -> StreamPair:
    reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
    if api_key is not None:
        auth = json.dumps({"type": "auth", "key": api_key}, separators=(",", ":"))
        try:
            writer.write(auth.encode() + b"\n")
            await writer.drain()
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer


async def dial_pipe(name: str, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> StreamPair:
    """Connect to a Windows named pipe such as \\\\.\\pipe\\inferd-infer.

    asyncio retries a busy pipe (every instance taken) on its own, indefinitely;
    `connect_timeout` is what ends that.
    """
    timeout = check_timeout("connect_timeout", connect_timeout)
    if sys.platform != "win32":
        raise ClientIOError(errno.EOPNOTSUPP, f"named pipes are only available on Windows: {name}")
    loop = asyncio.get_running_loop()
    create = getattr(loop, "create_pipe_connection", None)
    if create is None:
        raise ClientIOError(errno.EOPNOTSUPP, "named pipes need the Windows proactor event loop")
    if timeout is None:
        return await io_guarded(_open_pipe(loop, create, name))
    return await io_guarded(bounded(_open_pipe(loop, create, name), timeout, _connect_expired(name, timeout)))


async def _open_pipe(loop: asyncio.AbstractEventLoop, create: Any, name: str) -> StreamPair:
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create(lambda: protocol, name)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


def classify_addr(addr: str) -> str:
    """Which transport a textual address names: "pipe", "tcp" or "uds"."""
    if addr.lower().startswith(PIPE_PREFIX):
        return "pipe"
    if addr.startswith("tcp://"):
        return "tcp"
    if addr.startswith("unix://"):
        return "uds"
    host, sep, port = addr.rpartition(":")
    # A socket path never looks like host:port; a Windows drive path has a backslash.
    if sep and host and port.isdigit() and "/" not in host and "\\" not in host:
        return "tcp"
    return "uds"


async def dial_addr(
    addr: str, api_key: str | None = None, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
) -> StreamPair:
    """Dial whatever transport a CLI-style address names."""
    kind = classify_addr(addr)
    if kind == "pipe":
        return await dial_pipe(addr, connect_timeout=connect_timeout)
    if kind == "tcp":
        return await dial_tcp(addr, api_key, connect_timeout=connect_timeout)
    return await dial_uds(addr.removeprefix("unix://"), connect_timeout=connect_timeout)


# ---- the framed connection --------------------------------------------------------------


class Connection:
    """An NDJSON conversation over any transport: send lines, receive frames.

    `read_timeout` bounds each `recv` and `write_timeout` each `send` (None: no
    limit); both can be changed at any time. On expiry the connection is aborted
    and ReadTimeout / WriteTimeout raised.
    """

    __slots__ = ("_reader", "_writer", "_frames", "_closed", "_read_timeout", "_write_timeout")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader(reader, MAX_FRAME_BYTES)
        self._closed = False
        self._read_timeout = check_timeout("read_timeout", read_timeout)
        self._write_timeout = check_timeout("write_timeout", write_timeout)

    @classmethod
    def from_pair(cls, pair: StreamPair, **timeouts: float | None) -> "Connection":
        return cls(*pair, **timeouts)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    @read_timeout.setter
    def read_timeout(self, value: float | None) -> None:
        self._read_timeout = check_timeout("read_timeout", value)

    @property
    def write_timeout(self) -> float | None:
        return self._write_timeout

    @write_timeout.setter
    def write_timeout(self, value: float | None) -> None:
        self._write_timeout = check_timeout("write_timeout", value)

    async def send(self, line: bytes) -> None:
        if self._closed:
            raise ClientError("connection is closed")
        timeout = self._write_timeout
        try:
            self._writer.write(line)
            if timeout is None:
                await self._writer.drain()
                return
            await bounded(self._writer.drain(), timeout, lambda: WriteTimeout(
                f"the daemon did not take the request within {timeout:g}s (write timeout)", timeout
            ))
        except ClientTimeout:
            self.abort()
            raise
        except OSError as exc:  # reset, broken pipe: the connection is gone
            self.abort()
            raise as_client_error(exc) from exc

    async def recv(self, timeout: float | None | Unset = UNSET) -> bytes | None:
        """The next frame's bytes, or None at a clean EOF.

        `timeout` overrides the connection's read timeout for this one frame.
        """
        if self._closed:
            raise ClientError("connection is closed")
        limit = self._read_timeout if isinstance(timeout, Unset) else check_timeout("timeout", timeout)
        try:
            if limit is None:
                return await self._frames.read_frame()
            return await bounded(self._frames.read_frame(), limit, lambda: ReadTimeout(
                f"no frame from the daemon within {limit:g}s (read timeout)", limit
            ))
        except FrameTooLarge as exc:
            raise ClientDecodeError(str(exc)) from exc
        except ClientTimeout:
            # Part of a frame may have been consumed: the stream is out of step.
            self.abort()
            raise
        except OSError as exc:  # reset mid-stream: the connection is gone
            self.abort()
            raise as_client_error(exc) from exc

    def close(self) -> None:
        """Drop the connection; for a running request this is the cancel signal."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding anything not yet sent."""
        if not self._closed:
            self._closed = True
            self._writer.transport.abort()

    async def aclose(self) -> None:
        self.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            # The peer may already be gone; closing is best effort.
            pass


def encode_line(model: BaseModel, omit_empty: tuple[str, ...] = ("id",)) -> bytes:
    """One request line: None fields left out, and the listed fields left out when "".

    Leaving optional fields out (rather than sending null) keeps requests readable by
    older daemons that do not know our additive fields.
    """
    data = model.model_dump(mode="json", exclude_none=True)
    for key in omit_empty:
        if data.get(key) == "":
            del data[key]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class Dialable:
    """The four ways to reach a surface, for any client built as `cls(reader, writer, **timeouts)`.

    Every dial takes `connect_timeout` (default 5 s), `read_timeout` (default None:
    unbounded, see the module docstring) and `write_timeout` (default 30 s).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self._conn = Connection(reader, writer, read_timeout=read_timeout, write_timeout=write_timeout)

    @property
    def closed(self) -> bool:
        return self._conn.closed

    @property
    def read_timeout(self) -> float | None:
        """Seconds to wait for each frame (None: no limit); settable."""
        return self._conn.read_timeout

    @read_timeout.setter
    def read_timeout(self, value: float | None) -> None:
        self._conn.read_timeout = value

    @property
    def write_timeout(self) -> float | None:
        """Seconds the daemon has to take each request (None: no limit); settable."""
        return self._conn.write_timeout

    @write_timeout.setter
    def write_timeout(self, value: float | None) -> None:
        self._conn.write_timeout = value

    @classmethod
    async def _connected(
        cls, dial: Callable[[], Awaitable[StreamPair]], read_timeout: float | None, write_timeout: float | None
    ) -> Self:
        # Refuse bad timeouts before a connection exists that would then leak.
        check_timeout("read_timeout", read_timeout)
        check_timeout("write_timeout", write_timeout)
        return cls(*await dial(), read_timeout=read_timeout, write_timeout=write_timeout)

    @classmethod
    async def dial_uds(
        cls,
        path: str,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> Self:
        return await cls._connected(
            lambda: dial_uds(path, connect_timeout=connect_timeout), read_timeout, write_timeout
        )

    @classmethod
    async def dial_tcp(
        cls,
        addr: TcpAddr,
        api_key: str | None = None,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> Self:
        """Loopback TCP; with `api_key` the auth frame is sent first (THREAT_MODEL F-8)."""
        return await cls._connected(
            lambda: dial_tcp(addr, api_key, connect_timeout=connect_timeout), read_timeout, write_timeout
        )

    @classmethod
    async def dial_pipe(
        cls,
        name: str,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> Self:
        return await cls._connected(
            lambda: dial_pipe(name, connect_timeout=connect_timeout), read_timeout, write_timeout
        )

    @classmethod
    async def dial(
        cls,
        addr: str,
        api_key: str | None = None,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    ) -> Self:
        """Dial a socket path, `\\\\.\\pipe\\NAME` or `[tcp://]HOST:PORT`."""
        return await cls._connected(
            lambda: dial_addr(addr, api_key, connect_timeout=connect_timeout), read_timeout, write_timeout
        )
