"""The admission queue: the only place requests wait.

`active_permits` requests run at once; up to `queue_depth` more wait their turn in
FIFO order (upstream left the order to an unfair mutex). A request beyond
active + queue gets `queue_full` at once, never a wait. One slot is one slot: v1,
v2 and embed share this gate.
"""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    pass


class AdmissionClosed(Exception):
    pass


class Admission:
    def __init__(self, active_permits: int = 1, queue_depth: int = 10) -> None:
        # 0 permits would admit requests that can never run; upstream treats it as 1.
        self.active_permits = max(active_permits, 1)
        self.queue_depth = max(queue_depth, 0)
        self.capacity = self.active_permits + self.queue_depth
        self._outstanding = 0
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def outstanding(self) -> int:
        """Admitted requests not yet released (running + waiting)."""
        return self._outstanding

    @property
    def running(self) -> int:
        return self._running

    @property
    def closed(self) -> bool:
        return self._closed

    def try_admit(self) -> "Ticket":
        if self._closed:
            raise AdmissionClosed()
        if self._outstanding >= self.capacity:
            raise QueueFull()
        self._outstanding += 1
        self._idle.clear()
        return Ticket(self)

    def close(self) -> None:
        """Refuse new admissions; admitted requests still run to completion."""
        self._closed = True

    def reopen(self) -> None:
        self._closed = False

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- internal, used by Ticket ------------------------------------------------

    async def _acquire_run(self) -> None:
        if self._running < self.active_permits and not self._waiters:
            self._running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # We were handed the permit just as we were cancelled: pass it on.
                self._release_run()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass  # a release in the same tick already skipped our cancelled future
            raise

    def _release_run(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the permit moves straight to the next in line
                return
        self._running -= 1

    def _release_slot(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()


class Ticket:
    """One admitted request. Hold it until the terminal frame is written."""

    __slots__ = ("_admission", "_running", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._running = False
        self._released = False

    async def start(self) -> None:
        """Wait (FIFO) for an active permit."""
        await self._admission._acquire_run()
        self._running = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._running:
            self._running = False
            self._admission._release_run()
        self._admission._release_slot()

    async def __aenter__(self) -> "Ticket":
        try:
            await self.start()
        except BaseException:
            self.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
