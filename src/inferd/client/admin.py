"""Admin socket subscriber: lifecycle events from the daemon, read-only.

On connect the daemon sends its capabilities frame(s), one snapshot of the current
state, then live events (upstream-protocol §4.4). It never reads what we write.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from inferd.proto.admin import AdminEvent

from . import transport
from .errors import AdminClosed, ClientDecodeError
from .transport import Connection


class AdminClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = Connection(reader, writer)

    @classmethod
    async def dial_admin_uds(cls, path: str) -> "AdminClient":
        return cls(*await transport.dial_uds(path))

    @classmethod
    async def dial_admin_pipe(cls, name: str) -> "AdminClient":
        return cls(*await transport.dial_pipe(name))

    @classmethod
    async def dial_admin(cls, addr: str) -> "AdminClient":
        """Dial a socket path or a `\\\\.\\pipe\\NAME`; the admin surface has no TCP."""
        if transport.classify_addr(addr) == "pipe":
            return await cls.dial_admin_pipe(addr)
        return await cls.dial_admin_uds(addr.removeprefix("unix://"))

    async def recv_raw(self) -> tuple[AdminEvent, dict[str, Any]]:
        """The next event together with the JSON object it came from.

        The raw object keeps keys this client does not model (a newer daemon's
        additions), for tools that re-print frames.
        """
        raw = await self._conn.recv()
        if raw is None:
            raise AdminClosed()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ClientDecodeError(f"admin frame is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ClientDecodeError("admin frame is not a JSON object")
        try:
            event = AdminEvent.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "frame"
            raise ClientDecodeError(f"admin frame: {where}: {first.get('msg', 'invalid')}") from None
        return event, obj

    async def recv(self) -> AdminEvent:
        """The next event; AdminClosed at EOF."""
        event, _ = await self.recv_raw()
        return event

    async def wait_ready(self) -> AdminEvent:
        """Skip events until `ready` and return it; AdminClosed if the stream ends first."""
        while True:
            event = await self.recv()
            if event.status == "ready":
                return event

    def __aiter__(self) -> "AdminClient":
        return self

    async def __anext__(self) -> AdminEvent:
        try:
            return await self.recv()
        except AdminClosed:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def __aenter__(self) -> "AdminClient":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
