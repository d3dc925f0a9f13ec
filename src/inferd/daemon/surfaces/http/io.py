"""The two ends of one HTTP exchange: reading a bounded body, writing a bounded response.

F-1: a body is read up to MAX_BODY_BYTES (the NDJSON frame cap, 64 MiB); beyond it
the rest is discarded for at most BODY_LINGER_SECS so the client can read our 413
before the connection closes (closing on unread input resets the connection and
the client would lose the answer), and nothing past the cap is ever held.

F-17: every write waits for the client to read at most the write timeout (the bound
net/conn.py defines for every surface); then the connection is aborted and the write raises WriteTimeout (a ConnectionError), which
the pipeline treats like a client that left: the generation is cancelled and its
slot freed. uvicorn's own `send` would wait for a stalled reader forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ....proto.framing import MAX_FRAME_BYTES
from ...net.conn import WriteTimeout, bounded, ensure_open, write_may_wait
from .errors import HttpError

MAX_BODY_BYTES = MAX_FRAME_BYTES
BODY_LINGER_SECS = 2.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: dict[str, Any], receive: Receive, cap: int = MAX_BODY_BYTES) -> bytes:
    """The whole request body, or HttpError 413 past `cap`, or ClientGone."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        if header(scope, b"expect") != b"100-continue":
            await _discard(receive)  # it is on its way already: let it arrive, unread
        raise too_large(cap)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body += message.get("body", b"")
        if len(body) > cap:
            del body[:]
            await _discard(receive)
            raise too_large(cap)
        if not message.get("more_body", False):
            return bytes(body)


def too_large(cap: int) -> HttpError:
    return HttpError(413, f"request body exceeds {cap} bytes", code="request_too_large", headers=[CLOSE])


async def _discard(receive: Receive) -> None:
    try:
        async with asyncio.timeout(BODY_LINGER_SECS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
    except TimeoutError:
        pass  # still sending: it gets the 413 and a closed connection


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (call once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Responder:
    """ASGI `send` for one response, bounded by the write timeout (F-17).

    `gone` turns true when the client left (or stalled past the timeout); every
    later write raises ConnectionResetError, which is how the pipeline hears of it.
    """

    __slots__ = ("_send", "_transport", "write_timeout", "extra_headers", "gone", "status", "route", "shape")

    def __init__(self, send: Send, transport: asyncio.Transport | None, write_timeout: float | None,
                 extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._transport = transport
        self.write_timeout = write_timeout
        self.extra_headers = extra_headers or []
        self.gone = False
        self.status = 0  # 0 until the response has started
        self.route = "unknown"  # the route name, once known (a metrics label)
        #: A route whose wire has its own error shape (Anthropic's) sets it: error -> (status, body).
        self.shape: Callable[[HttpError], tuple[int, bytes]] | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        await self._emit({"type": "http.response.start", "status": status, "headers": headers + self.extra_headers})

    async def body(self, data: bytes, more: bool = True) -> None:
        await self._emit({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        await self.start(status, [JSON, (b"content-length", str(len(data)).encode()), *(headers or [])])
        await self.body(data, more=False)

    async def error(self, err: HttpError) -> None:
        status, data = self.shape(err) if self.shape is not None else (err.status, err.encode())
        await self.start(status, [JSON, (b"content-length", str(len(data)).encode()), *err.headers])
        await self.body(data, more=False)

    async def _emit(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise ConnectionResetError("client went away")
        transport = self._transport
        if transport is None:
            await self._send(message)
            return
        try:
            ensure_open(transport)
            # uvicorn's send waits for a paused transport before it writes, so the check
            # comes first.
            if write_may_wait(transport):
                await bounded(self._send(message), transport, self.write_timeout)
            else:
                await self._send(message)
        except (ConnectionResetError, WriteTimeout):
            self.gone = True
            raise
