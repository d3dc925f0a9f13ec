"""A small OpenAI-shaped HTTP peer on raw asyncio streams, for the misbehaviour tests.

It is deliberately not a real server: each test hands it a coroutine that writes
exactly the bytes (or silences) it wants to test, such as a 500, garbage SSE, a stall
after two chunks or a dropped connection. It records every request and notices when
the client closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MODEL = "fake-model"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Exchange:
    """One connection as a handler sees it."""

    request: Seen
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def respond(self, status: int, body: Any, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n")
        self.writer.write(head.encode() + raw)
        await self.writer.drain()

    async def start_sse(self) -> None:
        # No length, no chunking: the body ends when we close (valid HTTP/1.1).
        self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
        await self.writer.drain()

    async def send(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self.writer.write(f"data: {text}\n\n".encode())
        await self.writer.drain()

    async def raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_closed_by_peer(self, timeout: float = 30.0) -> bool:
        """True when the client closed its side within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except (TimeoutError, ConnectionError):
            return False


Handler = Callable[[Exchange], Awaitable[None]]


def chunk(content: str | None = None, *, reasoning: str | None = None, tool_calls: list | None = None,
          finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@dataclass
class FakeRemote:
    handler: Handler | None = None
    models: Any = field(default_factory=lambda: {"object": "list",
                                                 "data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]})
    api_key: str | None = None
    seen: list[Seen] = field(default_factory=list)
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def __aenter__(self) -> FakeRemote:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks: set[asyncio.Task] = set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.seen.append(request)
            ex = Exchange(request, reader, writer)
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                await ex.respond(401, {"error": {"message": f"Incorrect API key provided: "
                                                            f"{request.headers.get('authorization', '')}",
                                                 "type": "invalid_request_error"}})
            elif request.method == "GET" and request.path == "/v1/models":
                await ex.respond(200, self.models)
            elif self.handler is not None:
                await self.handler(ex)
            else:
                await ex.respond(404, {"error": {"message": "no handler"}})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # our own shutdown; asyncio would log a cancelled connection task as an error
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body: Any = None
    length = int(headers.get("content-length", "0"))
    if length:
        raw = await reader.readexactly(length)
        body = json.loads(raw)
    return Seen(method, target, headers, body)
