"""The thread-to-loop bridge: how the scheduler's thread hands events to event loops.

Events travel to the event loop through `loop.call_soon_threadsafe`, batched once per
decode step (`StepPost`); cancellation travels back through a threading.Event that the
scheduler checks every step. `WorkerStream` is the async iterator `generate()` returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import Done, Event, PromptProgress, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta


@dataclass(slots=True)
class Failure:
    exc: BaseException


class StepPost:
    """Hands a decode step's events to their event loops in one wake-up per loop.

    Between `begin()` and `flush()` (the scheduler wraps each step in them) an emitter
    only queues its event on this thread; `flush()` posts them, in order, with one
    `call_soon_threadsafe` per loop. Outside a step an emitter posts at once.
    """

    _local = threading.local()

    @classmethod
    def pending(cls) -> list[tuple[asyncio.AbstractEventLoop, Callable[[object], None], object, threading.Event]] | None:
        return getattr(cls._local, "items", None)

    @classmethod
    def begin(cls) -> None:
        cls._local.items = []

    @classmethod
    def hold(cls, release: Callable[[], None]) -> None:
        """A poster keeps what a step gave it for the step after (a runner while its
        steps are short, ADR 0035): `release` sends it when the thread next calls
        `idle()`, unless the poster sent it first (its release then has nothing to do)."""
        releases = getattr(cls._local, "releases", None)
        if releases is None:
            releases = cls._local.releases = {}
        releases[release] = None

    @classmethod
    def idle(cls) -> None:
        """The thread is about to do something longer than a decode step (a prompt
        chunk, a wait, a side job): whatever any poster holds leaves now."""
        releases = getattr(cls._local, "releases", None)
        if releases:
            cls._local.releases = {}
            for release in releases:
                release()

    @classmethod
    def flush(cls) -> None:
        items = cls._local.items
        cls._local.items = None
        if not items:
            return
        loop = items[0][0]
        if all(it[0] is loop for it in items):
            _post(loop, items)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for it in items:
            by_loop.setdefault(it[0], []).append(it)
        for loop, group in by_loop.items():
            _post(loop, group)


def _deliver(items: list[tuple[Any, Callable[[object], None], object, threading.Event]]) -> None:
    for _, put, item, _ in items:
        put(item)


def _post(loop: asyncio.AbstractEventLoop, items: list[Any]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:
        # The loop is gone: nobody will read these streams again.
        for it in items:
            it[3].set()


def loop_emitter(loop: asyncio.AbstractEventLoop, put: Callable[[object], None],
                 cancel: threading.Event) -> Callable[[object], None]:
    """An emitter for the scheduler's thread: `put` gets each item on `loop`."""
    call = loop.call_soon_threadsafe
    pending = StepPost.pending

    def emit(item: object) -> None:
        items = pending()
        if items is not None:
            items.append((loop, put, item, cancel))
            return
        try:
            call(put, item)
        except RuntimeError:
            # The loop is gone: nobody will read this stream again.
            cancel.set()

    return emit


class WorkerStream:
    """What the worker feeds and `generate()` returns: text events, then one Done (or an exception)."""

    __slots__ = ("_queue", "_cancel", "_finished", "__weakref__")

    def __init__(self, queue: asyncio.Queue[object], cancel: threading.Event) -> None:
        self._queue = queue
        self._cancel = cancel
        self._finished = False

    def __aiter__(self) -> WorkerStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        kind = type(item)
        if kind is TextDelta or kind is ThinkingDelta or kind is ToolCallDelta or kind is ToolCall \
                or kind is PromptProgress:
            return item  # type: ignore[return-value]
        self._finished = True
        if kind is Done:
            return item  # type: ignore[return-value]
        self._cancel.set()
        assert isinstance(item, Failure)
        raise item.exc

    async def aclose(self) -> None:
        self._finished = True
        self._cancel.set()

    def __del__(self) -> None:
        # A stream dropped without aclose() must still free the worker.
        self._cancel.set()
