"""Lifecycle status events and their fan-out to admin subscribers.

On subscribe a subscriber gets every backend's latest `capabilities` (name-sorted),
then one snapshot of the current lifecycle state, then live events. A backend's
circuit state (`backend_state`, F-10) is live news that never replaces the snapshot;
while a backend is not closed, its replayed capabilities frame carries that `state`
and `reason`, so a late subscriber learns it without any frame old clients would
mistake for the snapshot. Each subscriber
has its own bounded queue: one that falls more than LAG_LIMIT events behind is
dropped (EOF) and may reconnect for a fresh snapshot; nobody else waits for it and
its memory stays bounded.

A model's memory estimate and expiry (`model` events, issue 20) are live news too;
while known they ride on its backend's replayed capabilities frame (`inferd ps`).

A backend's running sequences (`sequences`, ADR 0018) are live news of the same kind:
the latest list per backend rides on its replayed capabilities frame while non-empty.
A backend reports them from its decode thread through `sequence_sink`, which keeps
only the newest list until the loop publishes it: a busy backend costs subscribers
at most one frame per loop turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel

from ..proto.admin import BackendState, Capabilities, ModelState, SequenceSlot, Sequences, Starting, encode_status

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
        self._health: dict[str, BackendState] = {}  # backends whose circuit is not closed
        self._sequences: dict[str, list[dict[str, object]]] = {}  # backends decoding something
        self._models: dict[str, dict[str, object]] = {}  # loaded models' memory and expiry (issue 20)
        self._epoch = 0  # bumped when the backends are replaced: late news of old ones is dropped
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
        elif isinstance(event, BackendState):
            if event.state == "closed":
                self._health.pop(event.backend, None)
            else:
                self._health[event.backend] = event
        elif isinstance(event, ModelState):
            if event.backend is not None and event.state in ("loaded", "idle"):
                extra = {"memory_bytes": event.memory_bytes, "expires_at": event.expires_at}
                extra = {k: v for k, v in extra.items() if v is not None}
                if extra:
                    self._models[event.backend] = extra
                else:
                    self._models.pop(event.backend, None)
        elif isinstance(event, Sequences):
            if event.sequences:
                self._sequences[event.backend] = [s.model_dump() for s in event.sequences]
            else:
                self._sequences.pop(event.backend, None)
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

    def forget(self, backend: str) -> None:
        """A backend unloaded on its own (a model past its keep_alive): no replay of it."""
        self._caps.pop(backend, None)
        self._health.pop(backend, None)
        self._sequences.pop(backend, None)
        self._models.pop(backend, None)

    def clear_capabilities(self) -> None:
        """Forget the previous backends' capabilities and health (before a reload publishes new ones)."""
        self._caps.clear()
        self._health.clear()
        self._sequences.clear()
        self._models.clear()
        self._epoch += 1

    def sequence_sink(self, loop: asyncio.AbstractEventLoop, backend: str) -> Callable[[list[SequenceSlot]], None]:
        """A callback any thread may call with `backend`'s running sequences.

        Lists that arrive faster than the loop publishes them collapse into the newest;
        once the backends are replaced (reload) the callback publishes nothing more.
        """
        epoch = self._epoch
        lock = threading.Lock()
        latest: list[list[SequenceSlot]] = []

        def publish() -> None:
            with lock:
                slots = latest.pop()
            if self._epoch == epoch and not self._closed:
                self.publish(Sequences(backend=backend, sequences=slots))

        def sink(slots: list[SequenceSlot]) -> None:
            with lock:
                pending = bool(latest)
                latest[:] = [slots]
            if not pending:
                try:
                    loop.call_soon_threadsafe(publish)
                except RuntimeError:
                    pass  # the loop is gone: nobody is watching any more

        return sink

    def subscribe(self) -> Subscription:
        initial = [self._capabilities_frame(name) for name in sorted(self._caps)]
        initial.append(self._snapshot_frame)
        sub = Subscription(initial, self._lag_limit)
        if self._closed:
            sub.end()
        else:
            self._subs.add(sub)
        return sub

    def _capabilities_frame(self, name: str) -> bytes:
        health = self._health.get(name)
        running = self._sequences.get(name)
        model = self._models.get(name)
        if health is None and running is None and model is None:
            return self._caps[name]
        obj = json.loads(self._caps[name])
        if model is not None:
            obj.update(model)
        if health is not None:
            obj["state"] = health.state
            if health.reason is not None:
                obj["reason"] = health.reason
        if running is not None:
            obj["sequences"] = running
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.end()

    def close(self) -> None:
        """End every subscription; queued frames (e.g. `draining`) are still delivered."""
        self._closed = True
        for sub in self._subs:
            sub.end()
        self._subs.clear()
