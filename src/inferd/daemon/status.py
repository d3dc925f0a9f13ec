"""Lifecycle status events and their fan-out to admin subscribers.

On subscribe a subscriber gets every backend's latest `capabilities` (name-sorted),
then one snapshot of the current lifecycle state, then live events. Each subscriber
has its own bounded queue: one that falls more than LAG_LIMIT events behind is
dropped (EOF) and may reconnect for a fresh snapshot; nobody else waits for it and
its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from pydantic import BaseModel

from ..proto.admin import Capabilities, Starting, encode_status

log = logging.getLogger("inferd.status")

LAG_LIMIT = 256


class Subscription:
    """One subscriber's view: the connect-time replay, then a bounded live queue."""

    __slots__ = ("_initial", "_queue", "_wake", "_ended", "lagged", "_limit")

    def __init__(self, initial: list[bytes], limit: int) -> None:
        self._initial: deque[bytes] = deque(initial)
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._wake.set()
        self._ended = False
        self._limit = limit  # live events only; the replay does not count
        self.lagged = False

    def _push(self, frame: bytes) -> None:
        if self._ended:
            return
        if len(self._queue) >= self._limit:
            self.lagged = True
            self._ended = True
            self._initial.clear()
            self._queue.clear()
        else:
            self._queue.append(frame)
        self._wake.set()

    def end(self) -> None:
        """No more events: the subscriber drains what is queued, then sees EOF."""
        self._ended = True
        self._wake.set()

    async def next(self) -> bytes | None:
        while True:
            if self.lagged:
                return None
            if self._initial:
                return self._initial.popleft()
            if self._queue:
                return self._queue.popleft()
            if self._ended:
                return None
            self._wake.clear()
            await self._wake.wait()

    @property
    def pending(self) -> int:
        return len(self._initial) + len(self._queue)


class StatusBroadcaster:
    def __init__(self, lag_limit: int = LAG_LIMIT) -> None:
        self._lag_limit = lag_limit
        self._snapshot: BaseModel = Starting()
        self._snapshot_frame = encode_status(self._snapshot)
        self._caps: dict[str, bytes] = {}
        self._subs: set[Subscription] = set()
        self._closed = False

    @property
    def snapshot(self) -> BaseModel:
        return self._snapshot

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: BaseModel) -> None:
        frame = encode_status(event)
        if isinstance(event, Capabilities):
            self._caps[event.backend] = frame
        else:
            self._snapshot = event
            self._snapshot_frame = frame
        for sub in list(self._subs):
            sub._push(frame)
            if sub.lagged:
                self._subs.discard(sub)
                log.warning("admin subscriber dropped: more than %d events behind", self._lag_limit)

    def publish_threadsafe(self, loop: asyncio.AbstractEventLoop, event: BaseModel) -> None:
        loop.call_soon_threadsafe(self.publish, event)

    def clear_capabilities(self) -> None:
        """Forget the previous backends' capabilities (before a reload publishes new ones)."""
        self._caps.clear()

    def subscribe(self) -> Subscription:
        initial = [self._caps[name] for name in sorted(self._caps)]
        initial.append(self._snapshot_frame)
        sub = Subscription(initial, self._lag_limit)
        if self._closed:
            sub.end()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.end()

    def close(self) -> None:
        """End every subscription; queued frames (e.g. `draining`) are still delivered."""
        self._closed = True
        for sub in self._subs:
            sub.end()
        self._subs.clear()
