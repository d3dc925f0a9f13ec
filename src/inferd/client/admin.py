"""Admin socket subscriber: lifecycle events from the daemon, read-only.

On connect the daemon sends its capabilities frame(s), one snapshot of the current
state, then live events (upstream-protocol §4.4). It never reads what we write.

Timeouts: a subscription is quiet for as long as nothing happens (hours, once the
daemon is ready), so `recv`, iteration and `wait_ready` wait without limit unless
given one (`read_timeout=` when dialing, or `timeout=` per call). The one-shot
question "what state is the daemon in" is `snapshot()`, which the daemon answers
at once on connect; it is bounded by SNAPSHOT_TIMEOUT (5 s) by default.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from pydantic import ValidationError

from inferd.proto.admin import AdminEvent

from . import transport
from .errors import AdminClosed, ClientDecodeError, ReadTimeout
from .transport import UNSET, Connection, Dialable, Unset, check_timeout

# Bound of `snapshot()`: the daemon writes the snapshot as soon as it accepts us.
SNAPSHOT_TIMEOUT: Final = 5.0


@dataclass
class AdminSnapshot:
    """What the daemon says on connect: its capabilities, then its current state."""

    capabilities: list[AdminEvent]
    state: AdminEvent
    # The JSON objects as received, capabilities first, for tools that re-print them.
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.state.status == "ready"


class AdminClient(Dialable):
    """A subscription to the admin socket.

    Dialed like every client (`dial_uds`, `dial_pipe`, `dial`; the `dial_admin*`
    names are kept). `read_timeout` (default None: no limit) bounds each `recv`.
    This client never writes (the admin surface is daemon-to-client only), so
    `write_timeout` has nothing to bound; it is accepted like everywhere else.
    """

    @classmethod
    async def dial_admin_uds(cls, path: str, **timeouts: float | None) -> "AdminClient":
        return await cls.dial_uds(path, **timeouts)

    @classmethod
    async def dial_admin_pipe(cls, name: str, **timeouts: float | None) -> "AdminClient":
        return await cls.dial_pipe(name, **timeouts)

    @classmethod
    async def dial_admin(cls, addr: str, **timeouts: float | None) -> "AdminClient":
        """Dial a socket path or a `\\\\.\\pipe\\NAME`; the admin surface has no TCP."""
        if transport.classify_addr(addr) == "pipe":
            return await cls.dial_pipe(addr, **timeouts)
        return await cls.dial_uds(addr.removeprefix("unix://"), **timeouts)

    async def recv_raw(self, *, timeout: float | None | Unset = UNSET) -> tuple[AdminEvent, dict[str, Any]]:
        """The next event together with the JSON object it came from.

        The raw object keeps keys this client does not model (a newer daemon's
        additions), for tools that re-print frames. `timeout` overrides the read
        timeout for this one event (ReadTimeout, and the connection is closed).
        """
        raw = await self._conn.recv(timeout)
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

    async def recv(self, *, timeout: float | None | Unset = UNSET) -> AdminEvent:
        """The next event; AdminClosed at EOF."""
        event, _ = await self.recv_raw(timeout=timeout)
        return event

    async def snapshot(self, timeout: float | None = SNAPSHOT_TIMEOUT) -> AdminSnapshot:
        """Read what the daemon sends on connect: capabilities frames, then the state.

        Call it first thing after dialing. The whole read is bounded by `timeout`
        (ReadTimeout, and the connection is closed; None leaves only the client's
        read timeout); AdminClosed if the stream ends before the state frame.
        """
        deadline = _Deadline(timeout, "the admin snapshot")
        capabilities: list[AdminEvent] = []
        frames: list[dict[str, Any]] = []
        while True:
            event, obj = await deadline.run(self._conn, self.recv_raw)
            frames.append(obj)
            if event.status != "capabilities":
                return AdminSnapshot(capabilities=capabilities, state=event, frames=frames)
            capabilities.append(event)

    async def wait_ready(self, timeout: float | None = None) -> AdminEvent:
        """Skip events until `ready` and return it; AdminClosed if the stream ends first.

        With `timeout`, give up after that many seconds in all (ReadTimeout, and
        the connection is closed).
        """
        deadline = _Deadline(timeout, "ready event")
        while True:
            event, _ = await deadline.run(self._conn, self.recv_raw)
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


class _Deadline:
    """One time limit over several reads; each read gets the time that is left."""

    def __init__(self, timeout: float | None, what: str) -> None:
        self.limit = check_timeout("timeout", timeout)
        self.what = what
        self.at = None if self.limit is None else asyncio.get_running_loop().time() + self.limit

    def _expired(self) -> ReadTimeout:
        return ReadTimeout(f"no {self.what} within {self.limit:g}s (read timeout)", self.limit)

    async def run(
        self, conn: Connection, read: Callable[..., Awaitable[tuple[AdminEvent, dict[str, Any]]]]
    ) -> tuple[AdminEvent, dict[str, Any]]:
        if self.at is None:
            return await read()
        left = self.at - asyncio.get_running_loop().time()
        if left <= 0:
            conn.abort()
            raise self._expired()
        try:
            return await read(timeout=left)
        except ReadTimeout:
            raise self._expired() from None
