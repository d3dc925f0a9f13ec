"""Helpers for the HTTP surface tests: a daemon's HTTP address, raw HTTP over a socket
(for framing, disconnects and stalls) and a spy on the backend that counts the events
a generation really produced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from daemon_harness import Daemon


def http_address(d: Daemon) -> str:
    (lst,) = [s for s in d.server._surfaces if s.surface == "http"]
    return lst.address


def base_url(d: Daemon) -> str:
    return f"http://{http_address(d)}"


def host_port(d: Daemon) -> tuple[str, int]:
    host, _, port = http_address(d).rpartition(":")
    return host.strip("[]"), int(port)


def raw_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    hdrs = {"content-type": "application/json", **(headers or {})}
    if body is not None:
        hdrs.setdefault("content-length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def read_head(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[int, dict[str, str]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *rest = raw.decode("latin-1").split("\r\n")
    headers = {}
    for item in rest:
        if item:
            k, _, v = item.partition(":")
            headers[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), headers


async def read_chunked(reader: asyncio.StreamReader, timeout: float = 10.0) -> AsyncIterator[bytes]:
    """The chunks of a chunked body, as the server wrote them."""
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        size = int(size_line.strip(), 16)
        data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
        if size == 0:
            return
        yield data[:-2]


class GenerationSpy:
    """Wraps one backend's generate(): counts the events each stream yielded and
    whether the stream was closed (which is how a generation is cancelled)."""

    def __init__(self, backend: Any) -> None:
        self.events = 0
        self.closed = 0
        self.first = asyncio.Event()
        self._generate = backend.generate
        backend.generate = self.generate

    async def generate(self, request: Any) -> Any:
        stream = await self._generate(request)
        return self._wrap(stream)

    async def _wrap(self, stream: Any) -> AsyncIterator[Any]:
        try:
            async for event in stream:
                self.events += 1
                self.first.set()
                yield event
        finally:
            self.closed += 1
            await stream.aclose()


def sse_events(body: bytes) -> list[bytes]:
    """Split an SSE body into its `data:` payloads, checking the framing on the way."""
    assert body.endswith(b"\n\n"), body[-40:]
    out = []
    for block in body.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block[:60]
        assert b"\n" not in block, block[:60]
        out.append(block[len(b"data: "):])
    return out


def chunks_of(events: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events if e != b"[DONE]"]
