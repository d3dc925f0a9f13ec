"""Tiny in-test daemons: real asyncio Unix/TCP servers that speak NDJSON, closed with
their connections' handlers at the end (the `servers` fixture, or `async with`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Servers:
    def __init__(self, sock_dir: Path) -> None:
        self._dir = sock_dir
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()

    def _wrap(self, handler: Handler) -> Handler:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._tasks.add(asyncio.current_task())
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        return run

    async def uds(self, handler: Handler, name: str = "s.sock") -> str:
        path = str(self._dir / name)
        self._servers.append(await asyncio.start_unix_server(self._wrap(handler), path))
        return path

    async def tcp(self, handler: Handler) -> tuple[str, int]:
        server = await asyncio.start_server(self._wrap(handler), "127.0.0.1", 0)
        self._servers.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Servers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
