"""The one request pipeline every surface shares: admit, dispatch, stream, account.

A surface decodes its wire into a `GenerationRequest` (or an embed request), hands
it here with a `Sink` that encodes events for that wire, and is done. Everything
between the two ends lives here once: routing by what the request needs, the
backend's FIFO admission gate, the pre-stream refusal of one backend handing the
request to the next, cancellation (a sink that raises ConnectionError closes the
engine stream, which cancels the generation), `tool_choice_unsatisfied`, and the
activity log record of every outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Protocol, TypeVar

from ...engine.backend import BackendError, EmbedResult, Fault
from ...engine.events import Done, EventStream, TextDelta, ThinkingDelta, ToolCall
from ...engine.request import GenerationRequest
from ...proto.embed import EmbedResolved
from ..context import DaemonContext
from .admission import AdmissionClosed, QueueFull
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

    async def event(self, event: TextDelta | ThinkingDelta | ToolCall) -> None: ...

    async def done(self, done: Done, backend: str) -> None: ...

    async def fail(self, kind: Fault, message: str) -> None: ...


def _route(ctx: DaemonContext, needs: Needs) -> list[BackendEntry]:
    """Backends to try, best first: those with everything the request needs; failing
    that, those with its hard needs (v2, embed), which then judge tools and media
    themselves (a mock ignores an image; llama.cpp without a projector refuses it)."""
    entries = list(ctx.router.candidates(needs))
    if not entries:
        entries = list(ctx.router.candidates(needs.hard()))
    if entries:
        return entries
    ready = ctx.router.first_ready()
    if ready is None:
        raise Refused(Fault.UNAVAILABLE, "no backend available")
    if needs.unmet(ready.caps) == "v2":
        raise Refused(Fault.INTERNAL, f'backend "{ready.label}" does not advertise v2 capability')
    raise Refused(Fault.UNAVAILABLE, "no embed-capable backend available")


@asynccontextmanager
async def _serving(ctx: DaemonContext, needs: Needs,
                   call: Callable[[BackendEntry], Awaitable[T]]) -> AsyncIterator[tuple[BackendEntry, T]]:
    """`call` started on the first backend that accepts it, inside that backend's admission.

    A backend refusing before its stream (or its admission being full) hands the
    request to the next candidate; the last refusal is what the client hears. The
    admission ticket is held until the `async with` body - the whole reply - ends.
    """
    try:
        await ctx.router.wait_open()  # a reload in progress: wait for the new backends
    except QueueFull:
        raise Refused(Fault.QUEUE_FULL, "queue full") from None
    last: Refused | None = None
    for entry in _route(ctx, needs):
        try:
            ticket = entry.admission.try_admit()
        except QueueFull:
            last = Refused(Fault.QUEUE_FULL, "queue full")
            continue
        except AdmissionClosed:
            raise Refused(Fault.CLOSED, "admission closed") from None
        async with ticket:  # waits FIFO for a permit of this backend
            try:
                result = await call(entry)
            except BackendError as exc:
                last = Refused(exc.kind, exc.message)
                if exc.kind in _REQUEST_FAULTS:
                    break  # the request is at fault: another backend would refuse it too
                continue
            except Exception as exc:  # noqa: BLE001 - a backend bug must not take the daemon down
                log.exception("backend %s failed before streaming", entry.label)
                raise Refused(Fault.INTERNAL, f"backend failed: {type(exc).__name__}") from None
            yield entry, result
            return
    assert last is not None
    raise last


_REQUEST_FAULTS = frozenset({Fault.INVALID_REQUEST, Fault.TOOL_CALL_MALFORMED, Fault.ATTACHMENT_UNSUPPORTED})


async def generate(ctx: DaemonContext, req: GenerationRequest, sink: Sink, *,
                   surface: str, needs: Needs = Needs(), peer: str = "") -> Fault | None:
    """Serve one generation through `sink`. Returns the refusal kind, if it was refused.

    ConnectionError/OSError from the sink (the peer left or stalled) propagates after
    the engine stream is closed, which cancels the generation.
    """
    started = time.perf_counter()
    try:
        async with _serving(ctx, needs, lambda e: e.backend.generate(req)) as (entry, stream):
            await _relay(ctx, req, sink, entry, stream, surface, peer, started)
    except Refused as exc:
        await sink.fail(exc.kind, exc.message)
        return exc.kind
    return None


async def _relay(ctx: DaemonContext, req: GenerationRequest, sink: Sink, entry: BackendEntry,
                 stream: EventStream, surface: str, peer: str, started: float) -> None:
    done: Done | None = None
    counts = {"text_frames": 0, "thinking_frames": 0, "tool_use_frames": 0}
    emit = sink.event
    try:
        async for event in stream:
            kind = type(event)
            if kind is TextDelta:
                counts["text_frames"] += 1
            elif kind is ThinkingDelta:
                counts["thinking_frames"] += 1
            elif kind is ToolCall:
                counts["tool_use_frames"] += 1
            elif kind is Done:
                done = event  # type: ignore[assignment]
                break
            else:
                log.warning("backend %s yielded %s; treating it as a fault", entry.label, kind.__name__)
                break
            await emit(event)  # type: ignore[arg-type]
    except (ConnectionError, OSError):
        raise
    except BackendError as exc:
        # A fault the backend could name (e.g. an unparseable tool call) after output began.
        log.warning("backend %s failed mid-stream: %s", entry.label, exc.message)
        await _mid_stream(ctx, sink, entry, surface, req.id, counts, peer, exc.kind, exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - mid-stream backend fault
        log.warning("backend %s failed mid-stream: %r", entry.label, exc)
    finally:
        await stream.aclose()  # cancels the generation if we stopped early
    if done is None:
        await _mid_stream(ctx, sink, entry, surface, req.id, counts, peer, Fault.UNAVAILABLE, MID_STREAM_DROP)
        return
    if req.tool_choice == "required" and req.tools and not counts["tool_use_frames"]:
        done = replace(done, tool_choice_unsatisfied=True)
    await sink.done(done, entry.backend.name)
    usage = done.usage
    ctx.activity.record(
        "info", surface, _event_name(surface, "request_done"),
        req_id=req.id, backend=entry.backend.name, stop_reason=str(done.reason),
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, **counts,
        ms=round((time.perf_counter() - started) * 1000, 1), peer=peer,
    )


async def _mid_stream(ctx: DaemonContext, sink: Sink, entry: BackendEntry, surface: str, rid: str,
                      counts: dict[str, int], peer: str, kind: Fault, message: str) -> None:
    await sink.fail(kind, message)
    ctx.activity.record(
        "warn", surface, _event_name(surface, "request_error_mid_stream"),
        req_id=rid, backend=entry.backend.name, **counts, peer=peer, reason=message,
    )


async def embed(ctx: DaemonContext, req: EmbedResolved, *, surface: str = "embed",
                peer: str = "") -> tuple[str, EmbedResult]:
    """Serve one embed request: (the serving adapter's name, the result). Raises Refused."""
    async with _serving(ctx, Needs(embed=True), lambda e: e.backend.embed(req)) as (entry, result):
        ctx.activity.record(
            "info", surface, _event_name(surface, "embed_request_done"),
            req_id=req.id, backend=entry.backend.name, n_inputs=len(req.input),
            input_tokens=result.input_tokens, dimensions=result.dimensions, peer=peer,
        )
        return entry.backend.name, result


def _event_name(surface: str, name: str) -> str:
    # v1 ("inference") and embed keep upstream's names; other surfaces prefix theirs.
    return name if surface in ("inference", "embed") else f"{surface}_{name}"
