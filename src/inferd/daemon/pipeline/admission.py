"""The admission queue: the only place requests wait.

`active_permits` requests run at once; up to `queue_depth` more wait their turn. A
request beyond active + queue gets `queue_full` at once, never a wait. One slot is one
slot: v1, v2, HTTP and embed share this gate.

Fairness between apps (THREAT_MODEL F-21, ADR 0030). Every ticket belongs to an app:
the peer the sockets identified (`app_of`: a Unix peer is its uid and pid, a TCP peer
its host). Each app waits in its own FIFO line; a freed permit goes to the app that
holds the fewest running permits, ties to the app served least recently (so two apps
on one permit take turns), then to whoever has waited longest. With one app
this is plain FIFO (upstream left the order to an unfair mutex). And when the queue is
full, an app holding at least two places more than the newcomer's app gives up its
newest waiting place to it (that request ends with `queue_full`, as if refused on
arrival): one app opening 50 streams cannot keep another out of the queue, and the
other is served as soon as a permit frees, ahead of the first app's backlog.

Progress (issue 22, ADR 0029): a ticket started with `report` hears its place in the
serving order (1 = next) when it starts waiting and whenever that place changes. The
places are computed only while somebody asked for them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable

Report = Callable[[int], Awaitable[None]]


class QueueFull(Exception):
    pass


class AdmissionClosed(Exception):
    pass


def app_of(peer: str) -> str:
    """The app a request counts against (F-21). Peer labels are `unix:<uid>:<pid>`
    (kernel-vouched, one per process), `tcp:<host>:<port>` (HTTP) or `tcp` (NDJSON TCP):
    a TCP peer's port changes with every connection, so TCP apps count per host."""
    if peer.startswith("tcp:"):
        return peer.rsplit(":", 1)[0]
    return peer


class Admission:
    def __init__(self, active_permits: int = 1, queue_depth: int = 10) -> None:
        # 0 permits would admit requests that can never run; upstream treats it as 1.
        self.active_permits = max(active_permits, 1)
        self.queue_depth = max(queue_depth, 0)
        self.capacity = self.active_permits + self.queue_depth
        self._outstanding = 0
        self._running = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: Per app: its waiting tickets in arrival order; its admitted tickets; its permits.
        self._lines: dict[str, deque[Ticket]] = {}
        self._held: dict[str, int] = {}
        self._runs: dict[str, int] = {}
        #: Per app with admitted tickets: when it was last handed a permit (a grant count).
        self._served: dict[str, int] = {}
        self._grants = 0
        self._waiting = 0
        #: Waiting tickets that asked for their place in line.
        self._watching = 0
        self._arrivals = itertools.count()

    @property
    def outstanding(self) -> int:
        """Admitted requests not yet released (running + waiting)."""
        return self._outstanding

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        """Tickets in line for a permit."""
        return self._waiting

    @property
    def closed(self) -> bool:
        return self._closed

    def held(self, peer: str) -> int:
        """Admitted tickets of the app `peer` belongs to."""
        return self._held.get(app_of(peer), 0)

    def try_admit(self, peer: str = "") -> "Ticket":
        if self._closed:
            raise AdmissionClosed()
        app = app_of(peer)
        if self._outstanding >= self.capacity:
            self._displace_for(app)  # raises QueueFull when no app holds more than its share
        self._outstanding += 1
        self._held[app] = self._held.get(app, 0) + 1
        self._idle.clear()
        return Ticket(self, app)

    def close(self) -> None:
        """Refuse new admissions; admitted requests still run to completion."""
        self._closed = True

    def reopen(self) -> None:
        self._closed = False

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- fairness (F-21) -----------------------------------------------------------------

    def _displace_for(self, app: str) -> None:
        """Free a queue place for `app` by taking the newest waiting place of the app
        that holds the most, if it holds at least two more than `app` (one more would
        only swap the two); else QueueFull."""
        mine = self._held.get(app, 0)
        while True:
            victim_app, most = None, mine + 1
            for other, line in self._lines.items():
                if other != app and self._held[other] > most:
                    victim_app, most = other, self._held[other]
            if victim_app is None:
                raise QueueFull()
            victim = self._lines[victim_app].pop()
            self._unqueue(victim)
            if not victim._fut.done():  # type: ignore[union-attr]
                break
            # A cancelled waiter its task has yet to clean up: it frees its own place.
        victim._slot_returned = True
        self._release_slot(victim_app)
        victim._fut.set_exception(QueueFull())  # type: ignore[union-attr]
        self._reposition()

    def _next(self) -> "Ticket | None":
        """The ticket the next permit goes to: of the waiting apps, the one running the
        fewest permits, then the one served least recently, then the earliest arrival.
        Cancelled waiters are dropped."""
        best: Ticket | None = None
        best_key: tuple[int, int, int] | None = None
        for app, line in list(self._lines.items()):
            while line and line[0]._fut.done():  # type: ignore[union-attr]
                self._unqueue(line.popleft())
            if not line:
                continue
            key = (self._runs.get(app, 0), self._served.get(app, -1), line[0]._arrival)
            if best_key is None or key < best_key:
                best, best_key = line[0], key
        return best

    def _reposition(self) -> None:
        """Tell watching waiters their place in the serving order `_next` would follow
        if no running request ended meanwhile."""
        if not self._watching:
            return
        heap = [(self._runs.get(app, 0), self._served.get(app, -1), line[0]._arrival, app, 0)
                for app, line in self._lines.items()]
        heapq.heapify(heap)
        place = 0
        while heap:
            runs, _, _, app, i = heapq.heappop(heap)
            line = self._lines[app]
            ticket = line[i]
            place += 1
            if ticket._report is not None and ticket.position != place:
                ticket.position = place
                nudge = ticket._nudge
                if nudge is not None and not nudge.done():
                    nudge.set_result(None)
            if i + 1 < len(line):  # as if granted: one more permit, served last
                heapq.heappush(heap, (runs + 1, self._grants + place, line[i + 1]._arrival, app, i + 1))

    # -- internal, used by Ticket ------------------------------------------------------------

    async def _acquire_run(self, ticket: "Ticket", report: Report | None) -> None:
        if self._running < self.active_permits and not self._waiting:
            self._grant(ticket.app)
            return
        ticket._fut = asyncio.get_running_loop().create_future()
        ticket._arrival = next(self._arrivals)
        ticket._queued = True
        self._lines.setdefault(ticket.app, deque()).append(ticket)
        self._waiting += 1
        if report is not None:
            ticket._report = report
            self._watching += 1
        self._reposition()
        try:
            if report is None:
                await ticket._fut
            else:
                await self._watch(ticket, report)
        except BaseException:
            self._abandon(ticket)
            raise

    async def _watch(self, ticket: "Ticket", report: Report) -> None:
        fut = ticket._fut
        assert fut is not None
        loop = asyncio.get_running_loop()
        told = 0
        while not fut.done():
            if ticket.position != told:
                told = ticket.position
                await report(told)
                continue  # the place may have changed while the frame was written
            ticket._nudge = loop.create_future()
            await asyncio.wait((fut, ticket._nudge), return_when=asyncio.FIRST_COMPLETED)
        fut.result()  # QueueFull when its place went to another app

    def _abandon(self, ticket: "Ticket") -> None:
        """A waiter that will not run after all (cancelled, displaced, or its progress
        report failed): leave the line, or pass on a permit it was handed."""
        fut = ticket._fut
        if ticket._queued:
            self._lines[ticket.app].remove(ticket)
            self._unqueue(ticket)
            self._reposition()
        elif fut is not None and fut.done() and not fut.cancelled():
            if fut.exception() is None:  # handed the permit just as it gave up: pass it on
                self._release_run(ticket.app)
        self._forget_watch(ticket)

    def _unqueue(self, ticket: "Ticket") -> None:
        """Bookkeeping for a ticket just taken out of its app's line."""
        ticket._queued = False
        self._waiting -= 1
        self._forget_watch(ticket)
        if not self._lines[ticket.app]:
            del self._lines[ticket.app]

    def _forget_watch(self, ticket: "Ticket") -> None:
        if ticket._report is not None:
            ticket._report = None
            self._watching -= 1

    def _grant(self, app: str) -> None:
        self._running += 1
        self._runs[app] = self._runs.get(app, 0) + 1
        self._grants += 1
        self._served[app] = self._grants

    def _release_run(self, app: str) -> None:
        self._running -= 1
        left = self._runs[app] - 1
        if left:
            self._runs[app] = left
        else:
            del self._runs[app]
        if not self._waiting:
            return
        nxt = self._next()
        if nxt is None:
            return
        self._lines[nxt.app].popleft()
        self._unqueue(nxt)
        self._grant(nxt.app)
        nxt._fut.set_result(None)  # type: ignore[union-attr]  # the permit moves straight to it
        self._reposition()

    def _release_slot(self, app: str) -> None:
        self._outstanding -= 1
        left = self._held[app] - 1
        if left:
            self._held[app] = left
        else:
            del self._held[app]
            self._served.pop(app, None)  # an app that comes back later counts as new
        if self._outstanding == 0:
            self._idle.set()


class Ticket:
    """One admitted request. Hold it until the terminal frame is written."""

    __slots__ = ("_admission", "app", "_running", "_released", "_slot_returned", "_fut", "_arrival", "_queued",
                 "_report", "_nudge", "position")

    def __init__(self, admission: Admission, app: str = "") -> None:
        self._admission = admission
        self.app = app
        self._running = False
        self._released = False
        self._slot_returned = False  # its queue place went to another app (F-21)
        self._fut: asyncio.Future[None] | None = None
        self._arrival = 0
        self._queued = False
        self._report: Report | None = None
        self._nudge: asyncio.Future[None] | None = None
        #: Its place in the serving order while it waits and reports it (1 = next).
        self.position = 0

    async def start(self, report: Report | None = None) -> None:
        """Wait for an active permit (fairly between apps, FIFO within one). `report`,
        when given, is awaited with the ticket's place whenever it waits and the place
        changes. Raises QueueFull if the ticket's place went to another app."""
        await self._admission._acquire_run(self, report)
        self._running = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._running:
            self._running = False
            self._admission._release_run(self.app)
        if not self._slot_returned:
            self._admission._release_slot(self.app)

    async def __aenter__(self) -> "Ticket":
        try:
            await self.start()
        except BaseException:
            self.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
