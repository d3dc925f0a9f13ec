"""One small transport interface so UDS, TCP and Windows named pipes look the same.

Every dialer returns an asyncio (StreamReader, StreamWriter) pair; `Connection` wraps
that pair with NDJSON framing so the clients above never care which transport it was.
"""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from typing import Self, Union

from pydantic import BaseModel

from inferd.proto.errors import FrameTooLarge
from inferd.proto.framing import MAX_FRAME_BYTES, STREAM_LIMIT, FrameReader

from .errors import ClientDecodeError, ClientError

TcpAddr = Union[str, tuple[str, int]]
StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]

PIPE_PREFIX = "\\\\.\\pipe\\"


async def dial_uds(path: str) -> StreamPair:
    return await asyncio.open_unix_connection(str(path), limit=STREAM_LIMIT)


def parse_tcp_addr(addr: TcpAddr) -> tuple[str, int]:
    """Accept ("host", port), "host:port" or "[v6]:port"."""
    if isinstance(addr, tuple):
        host, port = addr
        return str(host), int(port)
    text = addr.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"TCP address must be HOST:PORT, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def dial_tcp(addr: TcpAddr, api_key: str | None = None) -> StreamPair:
    """Connect over loopback TCP; with `api_key`, send the auth frame first.

    The daemon closes silently on a wrong key (F-8), so a bad key shows up as an
    EOF on the first read, not as an error here.
    """
    host, port = parse_tcp_addr(addr)
    reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
    if api_key is not None:
        auth = json.dumps({"type": "auth", "key": api_key}, separators=(",", ":"))
        try:
            writer.write(auth.encode() + b"\n")
            await writer.drain()
        except BaseException:
            writer.close()
            raise
    return reader, writer


async def dial_pipe(name: str) -> StreamPair:
    """Connect to a Windows named pipe such as \\\\.\\pipe\\inferd-infer."""
    if sys.platform != "win32":
        raise OSError(errno.EOPNOTSUPP, f"named pipes are only available on Windows: {name}")
    loop = asyncio.get_running_loop()
    create = getattr(loop, "create_pipe_connection", None)
    if create is None:
        raise OSError(errno.EOPNOTSUPP, "named pipes need the Windows proactor event loop")
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


async def dial_addr(addr: str, api_key: str | None = None) -> StreamPair:
    """Dial whatever transport a CLI-style address names."""
    kind = classify_addr(addr)
    if kind == "pipe":
        return await dial_pipe(addr)
    if kind == "tcp":
        return await dial_tcp(addr, api_key)
    return await dial_uds(addr.removeprefix("unix://"))


class Connection:
    """An NDJSON conversation over any transport: send lines, receive frames."""

    __slots__ = ("_reader", "_writer", "_frames", "_closed")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader(reader, MAX_FRAME_BYTES)
        self._closed = False

    @classmethod
    def from_pair(cls, pair: StreamPair) -> "Connection":
        return cls(*pair)

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, line: bytes) -> None:
        if self._closed:
            raise ClientError("connection is closed")
        self._writer.write(line)
        await self._writer.drain()

    async def recv(self) -> bytes | None:
        """The next frame's bytes, or None at a clean EOF."""
        if self._closed:
            raise ClientError("connection is closed")
        try:
            return await self._frames.read_frame()
        except FrameTooLarge as exc:
            raise ClientDecodeError(str(exc)) from exc

    def close(self) -> None:
        """Drop the connection; for a running request this is the cancel signal."""
        if not self._closed:
            self._closed = True
            self._writer.close()

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
    """The four ways to reach a surface, for any client built as `cls(reader, writer)`."""

    @classmethod
    async def dial_uds(cls, path: str) -> Self:
        return cls(*await dial_uds(path))

    @classmethod
    async def dial_tcp(cls, addr: TcpAddr, api_key: str | None = None) -> Self:
        """Loopback TCP; with `api_key` the auth frame is sent first (THREAT_MODEL F-8)."""
        return cls(*await dial_tcp(addr, api_key))

    @classmethod
    async def dial_pipe(cls, name: str) -> Self:
        return cls(*await dial_pipe(name))

    @classmethod
    async def dial(cls, addr: str, api_key: str | None = None) -> Self:
        """Dial a socket path, `\\\\.\\pipe\\NAME` or `[tcp://]HOST:PORT`."""
        return cls(*await dial_addr(addr, api_key))
