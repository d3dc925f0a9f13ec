"""The one request pipeline every surface shares: admit, dispatch, stream, account.

A surface decodes its wire into a `GenerationRequest` (or an embed request), hands
it here with a `Sink` that encodes events for that wire, and is done. Everything
between the two ends lives here once: routing by what the request needs, the
backend's admission gate (fair between apps, F-21), the pre-stream refusal of one
backend handing the request to the next, each backend's circuit breaker hearing how its request went
(breaker.py, F-10), cancellation (a sink that raises ConnectionError closes the
engine stream, which cancels the generation), `tool_choice_unsatisfied`, and the
activity log record and the metrics (observe/metrics.py) of every outcome. And, for
a request that asked (issue 22, ADR 0029), its progress: its place in the queue, how
much of its prompt is read, and the context it will use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Protocol, TypeVar

from ...engine.backend import BackendError, EmbedResult, Fault
from ...engine.events import Done, EventStream, PromptProgress, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ...engine.request import GenerationRequest
from ...proto.embed import EmbedResolved
from ..context import DaemonContext
from ..observe.activity import activity_record
from ..observe.metrics import RequestClock
from .admission import AdmissionClosed, QueueFull
from .breaker import BACKEND_FAULTS, Attempt
from ..models.manager import Lease, ModelRefused
from .router import BackendEntry, Needs

log = logging.getLogger("inferd.pipeline")

MID_STREAM_DROP = "backend ended stream without terminal frame"

T = TypeVar("T")


class Refused(Exception):
    """The request was not served; `kind` says why, the surface says it in its wire."""

    def __init__(self, kind: Fault, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Sink(Protocol):
    """The encoding end of a surface. Its methods raise ConnectionError when the peer is gone."""

    async def event(self, event: TextDelta | ThinkingDelta | ToolCallDelta | ToolCall) -> None: ...

    async def done(self, done: Done, backend: str) -> None: ...

    async def fail(self, kind: Fault, message: str) -> None: ...


class Progress(Protocol):
    """The progress end of a surface, for a request that asked for it (issue 22).
    Its methods raise ConnectionError when the peer is gone, like a Sink's."""

    async def queued(self, position: int) -> None: ...

    async def prompt(self, event: PromptProgress) -> None: ...

    async def context(self, used: int, max: int) -> None: ...


def _candidates(entries: list[BackendEntry], needs: Needs) -> list[BackendEntry]:
    """Backends to try, best first: those with everything the request needs; failing
    that, those with its hard needs (v2, embed), which then judge tools and media
    themselves (a mock ignores an image; llama.cpp without a projector refuses it)."""
    ready = [e for e in entries if e.backend.ready()]
    found = [e for e in ready if needs.unmet(e.caps) is None]
    if not found:
        hard = needs.hard()
        found = [e for e in ready if hard.unmet(e.caps) is None]
    if found:
        return found
    if not ready:
        raise Refused(Fault.UNAVAILABLE, "no backend available")
    if needs.unmet(ready[0].caps) == "v2":
        raise Refused(Fault.INTERNAL, f'backend "{ready[0].label}" does not advertise v2 capability')
    raise Refused(Fault.UNAVAILABLE, "no embed-capable backend available")


async def _route(ctx: DaemonContext, needs: Needs) -> tuple[Lease, list[BackendEntry]]:
    """The model the request names (the default when it names none), loaded if it was
    not (daemon/models/manager.py), under a lease the caller releases; and its backends
    to try, best first."""
    try:
        lease = await ctx.models.route(needs)
    except ModelRefused as exc:
        raise Refused(exc.kind, exc.message) from None
    try:
        return lease, _candidates(lease.entries, needs)
    except BaseException:
        lease.release()
        raise


class _Serving:
    """`async with _Serving(ctx, needs, call) as (entry, result, attempt)`: `call`
    started on the first backend that accepts it, inside that backend's admission.

    A backend whose circuit is open is skipped; one refusing before its stream (or
    its admission being full) hands the request to the next candidate; the last
    refusal is what the client hears. The admission ticket is held until the
    `async with` body - the whole reply - ends. The body settles the Attempt
    (succeeded/failed) once it knows how the reply went; one it leaves unsettled
    (the client went away) tells the breaker nothing. A request evicted by a reload
    (its task cancelled with a reason) becomes a Refused with that reason.

    A class rather than an @asynccontextmanager: every request passes here, and the
    generator machinery cost more than the routing it wraps.
    """

    __slots__ = ("ctx", "needs", "call", "peer", "report", "ticket", "live", "attempt", "lease")

    def __init__(self, ctx: DaemonContext, needs: Needs, call: Callable[[BackendEntry], Awaitable[T]],
                 peer: str = "", report: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.ctx = ctx
        self.needs = needs
        self.call = call
        self.peer = peer  # the app it counts against in admission (F-21)
        self.report = report  # hears its place in the queue (issue 22)

    async def __aenter__(self) -> tuple[BackendEntry, T, Attempt]:  # type: ignore[type-var]
        ctx = self.ctx
        try:
            await ctx.router.wait_open()  # a reload in progress: wait for the new backends
        except QueueFull:
            raise Refused(Fault.QUEUE_FULL, "queue full") from None
        lease, entries = await _route(ctx, self.needs)
        try:
            while True:
                try:
                    entry, result, attempt = await self._first(entries)
                    break
                except Refused as exc:
                    if exc.kind in _REQUEST_FAULTS or exc.kind is Fault.CLOSED:
                        raise
                    # Its group's next member, loaded for it (issue 20), may serve it.
                    more = await ctx.models.fallback(lease)
                    if more is None:
                        raise
                    entries = [more]
        except BaseException:
            lease.release()
            raise
        lease.served, self.lease = entry, lease
        return entry, result, attempt

    async def _first(self, entries: list[BackendEntry]) -> tuple[BackendEntry, T, Attempt]:  # type: ignore[type-var]
        last: Refused | None = None
        for entry in entries:
            attempt = entry.breaker.admit()
            if attempt is None:
                last = Refused(Fault.UNAVAILABLE, entry.breaker.refusal())
                continue
            live = _InFlight.track(entry)
            ticket = None
            handed = False
            try:
                try:
                    ticket = entry.admission.try_admit(self.peer)
                except QueueFull:
                    last = Refused(Fault.QUEUE_FULL, "queue full")
                    continue
                except AdmissionClosed:
                    raise Refused(Fault.CLOSED, "admission closed") from None
                try:
                    await ticket.start(self.report)  # waits its turn (fair between apps) for a permit
                except QueueFull:  # its place went to another app's request (F-21)
                    last = Refused(Fault.QUEUE_FULL, "queue full")
                    continue
                try:
                    result = await self.call(entry)
                except BackendError as exc:
                    last = Refused(exc.kind, exc.message)
                    if exc.kind in BACKEND_FAULTS:
                        attempt.failed(exc.message)
                    if exc.kind in _REQUEST_FAULTS:
                        break  # the request is at fault: another backend would refuse it too
                    continue  # before the first token: the next backend may serve it
                except Exception as exc:  # noqa: BLE001 - a backend bug must not take the daemon down
                    log.exception("backend %s failed before streaming", entry.label)
                    attempt.failed(f"backend failed: {type(exc).__name__}")
                    raise Refused(Fault.INTERNAL, f"backend failed: {type(exc).__name__}") from None
                self.ticket, self.live, self.attempt = ticket, live, attempt
                handed = True  # the body's now: __aexit__ releases them
                return entry, result, attempt
            except asyncio.CancelledError:
                _evicted(live)
                raise
            finally:
                if not handed:
                    if ticket is not None:
                        ticket.release()
                    live.untrack()
                    attempt.release()  # no-op once settled
        assert last is not None
        raise last

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is asyncio.CancelledError:
                _evicted(self.live)
        finally:
            self.ticket.release()
            self.live.untrack()
            self.attempt.release()  # no-op once settled
            self.lease.release()


def _evicted(live: "_InFlight") -> None:
    """A cancellation that is a reload's eviction becomes a Refused (and the task is
    no longer cancelled); any other cancellation goes on."""
    if live.reason is None:
        return
    asyncio.current_task().uncancel()  # type: ignore[union-attr]
    raise Refused(Fault.UNAVAILABLE, live.reason) from None


class _InFlight:
    """A request admitted to one backend (waiting for its permit, starting, or streaming),
    so that a reload whose drain deadline has passed can end it and free the old model
    (issue 8 item 7, THREAT_MODEL F-13). Eviction cancels the request's task; `_Serving` turns that one
    cancellation into a terminal error for the client, whose connection stays open."""

    __slots__ = ("entry_id", "task", "reason")
    _by_entry: dict[int, set["_InFlight"]] = {}

    def __init__(self, entry_id: int, task: "asyncio.Task[object]") -> None:
        self.entry_id = entry_id
        self.task = task
        self.reason: str | None = None

    @classmethod
    def track(cls, entry: BackendEntry) -> "_InFlight":
        live = cls(id(entry), asyncio.current_task())  # type: ignore[arg-type]
        cls._by_entry.setdefault(live.entry_id, set()).add(live)
        return live

    def untrack(self) -> None:
        group = self._by_entry.get(self.entry_id)
        if group is not None:
            group.discard(self)
            if not group:
                del self._by_entry[self.entry_id]


def evict(entries: Iterable[BackendEntry], reason: str) -> int:
    """End every request admitted to `entries` with `reason`; returns how many."""
    n = 0
    for entry in entries:
        for live in list(_InFlight._by_entry.get(id(entry), ())):
            if live.reason is None:
                live.reason = reason
                live.task.cancel()
                n += 1
    return n


_REQUEST_FAULTS = frozenset({Fault.INVALID_REQUEST, Fault.TOOL_CALL_MALFORMED, Fault.ATTACHMENT_UNSUPPORTED})


async def generate(ctx: DaemonContext, req: GenerationRequest, sink: Sink, *, surface: str,
                   needs: Needs = Needs(), peer: str = "",
                   serving: Callable[[BackendEntry], GenerationRequest] | None = None,
                   progress: Progress | None = None) -> Refused | None:
    """Serve one generation through `sink`, or return why it was refused before its
    stream began (the sink has been sent nothing: the surface says it in its wire).

    `serving`, when given, hears which backend serves before that backend starts (and
    again for the next one if this one refuses before its stream); it returns the
    request as that backend is to serve it, so a surface may size a default by it and
    name it in its answer. A failure once the stream began goes to `sink.fail`.
    `progress`, given only for a request that asked, hears its progress (issue 22).
    ConnectionError/OSError from the sink (the peer left or stalled) propagates after
    the engine stream is closed, which cancels the generation.
    """
    clock = RequestClock()
    served = req

    def start(entry: BackendEntry) -> Awaitable[EventStream]:
        nonlocal served
        clock.permit()  # called holding the admission permit
        if serving is not None:
            served = serving(entry)
        if progress is not None and not served.progress:
            served = replace(served, progress=True)
        return entry.backend.generate(served)

    try:
        async with _Serving(ctx, needs, start, peer, None if progress is None else progress.queued) \
                as (entry, stream, attempt):
            await _relay(ctx, served, sink, entry, stream, attempt, surface, peer, clock, progress)
    except Refused as exc:
        clock.outcome = exc.kind.value
        return exc
    finally:
        ctx.metrics.generation(surface, clock)
    return None


async def _relay(ctx: DaemonContext, req: GenerationRequest, sink: Sink, entry: BackendEntry,
                 stream: EventStream, attempt: Attempt, surface: str, peer: str, clock: RequestClock,
                 progress: Progress | None) -> None:
    done: Done | None = None
    # The token loop: per event one type test, one add, one await. Counts by kind are
    # kept in locals and only gathered for the log at the end.
    counts = {"text_frames": 0, "thinking_frames": 0, "tool_use_frames": 0}
    texts = others = 0
    crash: Exception | None = None
    emit = sink.event
    try:
        async for event in stream:
            kind = type(event)
            if kind is TextDelta:
                texts += 1
                if texts == 1 and not others:
                    clock.first_event()
            elif kind is ThinkingDelta or kind is ToolCall:
                others += 1
                counts["thinking_frames" if kind is ThinkingDelta else "tool_use_frames"] += 1
                clock.first_event()
            elif kind is ToolCallDelta:
                others += 1  # a piece of a call: the call itself is counted when it comes whole
                clock.first_event()
            elif kind is Done:
                done = event  # type: ignore[assignment]
                break
            elif kind is PromptProgress:
                # Only a request that asked gets these from a backend (issue 22).
                if progress is not None:
                    await _prompt(progress, event, entry)  # type: ignore[arg-type]
                continue
            else:
                log.warning("backend %s yielded %s; treating it as a fault", entry.label, kind.__name__)
                break
            await emit(event)  # type: ignore[arg-type]
    except (ConnectionError, OSError):
        raise
    except BackendError as exc:
        # A fault the backend could name (e.g. an unparseable tool call) after output began.
        counts["text_frames"] = texts
        if exc.kind in BACKEND_FAULTS:
            attempt.failed(exc.message)
        clock.outcome = "error"
        await _mid_stream(ctx, sink, entry, surface, req.id, counts, peer, exc.kind, exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - mid-stream backend fault
        crash = exc  # logged with its traceback by _mid_stream
    finally:
        counts["text_frames"] = texts
        await stream.aclose()  # cancels the generation if we stopped early
    if done is None:
        # Not retried elsewhere: the client already has part of this answer.
        attempt.failed(MID_STREAM_DROP)
        clock.outcome = "error"
        await _mid_stream(ctx, sink, entry, surface, req.id, counts, peer, Fault.UNAVAILABLE, MID_STREAM_DROP,
                          crash=crash)
        return
    attempt.succeeded()
    if req.tool_choice == "required" and req.tools and not counts["tool_use_frames"]:
        done = replace(done, tool_choice_unsatisfied=True)
    clock.outcome, clock.done = "ok", done
    await sink.done(done, entry.label)
    activity = ctx.activity.traffic
    if activity.isEnabledFor(logging.INFO):
        usage = done.usage
        activity.info(_event_name(surface, "request_done"), extra=activity_record(
            surface, req_id=req.id, backend=entry.label, stop_reason=str(done.reason),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens, **counts,
            ms=round((time.perf_counter() - clock.started) * 1000, 1), peer=peer,
        ))


async def _prompt(progress: Progress, event: PromptProgress, entry: BackendEntry) -> None:
    await progress.prompt(event)
    if event.done == event.total and entry.caps.n_ctx:
        await progress.context(event.total, entry.caps.n_ctx)  # once: the prompt is read


async def _mid_stream(ctx: DaemonContext, sink: Sink, entry: BackendEntry, surface: str, rid: str,
                      counts: dict[str, int], peer: str, kind: Fault, message: str,
                      crash: Exception | None = None) -> None:
    await sink.fail(kind, message)
    # A daemon or backend bug (`crash`) looks like this too: stderr keeps its traceback.
    ctx.activity.logger.warning(
        "backend %s failed mid-stream: %s", entry.label, message, exc_info=crash,
        extra=activity_record(surface, _event_name(surface, "request_error_mid_stream"), req_id=rid,
                              backend=entry.label, **counts, peer=peer, reason=message))


async def count(ctx: DaemonContext, req: GenerationRequest, *, needs: Needs = Needs()) -> tuple[int, int | None]:
    """(prompt tokens, the serving backend's context size) without generating anything.

    Tokenizing takes no decode slot, so this skips admission; it still waits out a
    reload and goes to the backend the same request would be generated on.
    """
    try:
        await ctx.router.wait_open()
    except QueueFull:
        raise Refused(Fault.QUEUE_FULL, "queue full") from None
    lease, entries = await _route(ctx, needs)
    try:
        return await _count_on(entries, req)
    finally:
        lease.release()


async def _count_on(entries: list[BackendEntry], req: GenerationRequest) -> tuple[int, int | None]:
    last: Refused | None = None
    for entry in entries:
        if not entry.breaker.would_admit():
            last = Refused(Fault.UNAVAILABLE, entry.breaker.refusal())
            continue  # generation would skip it too
        try:
            return await entry.backend.count_tokens(req), entry.caps.n_ctx
        except BackendError as exc:
            last = Refused(exc.kind, exc.message)
            if exc.kind in _REQUEST_FAULTS:
                break
        except Exception as exc:  # noqa: BLE001
            log.exception("backend %s failed counting tokens", entry.label)
            raise Refused(Fault.INTERNAL, f"backend failed: {type(exc).__name__}") from None
    assert last is not None
    raise last


async def embed(ctx: DaemonContext, req: EmbedResolved, *, surface: str = "embed",
                peer: str = "", keep_alive: float | None = None) -> tuple[str, EmbedResult]:
    """Serve one embed request on the model it names (`req.model`; None: the default):
    (the serving backend's config name, the result). Raises Refused."""
    outcome, tokens = "cancelled", 0
    needs = Needs(embed=True, model=req.model, keep_alive=keep_alive)
    try:
        async with _Serving(ctx, needs, lambda e: e.backend.embed(req), peer) as (entry, result, attempt):
            attempt.succeeded()
            outcome, tokens = "ok", result.input_tokens
            ctx.activity.traffic.info(_event_name(surface, "embed_request_done"), extra=activity_record(
                surface, req_id=req.id, backend=entry.label, n_inputs=len(req.input),
                input_tokens=result.input_tokens, dimensions=result.dimensions, peer=peer,
            ))
            return entry.label, result
    except Refused as exc:
        outcome = exc.kind.value
        raise
    finally:
        ctx.metrics.embedding(surface, outcome, tokens)


def _event_name(surface: str, name: str) -> str:
    # v1 ("inference") and embed keep upstream's names; other surfaces prefix theirs.
    return name if surface in ("inference", "embed") else f"{surface}_{name}"
