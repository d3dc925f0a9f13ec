"""The private channel between the daemon and a llama.cpp runner process (ADR 0025).

Frames are a 4-byte big-endian length and a body. The two directions trust each
other differently, so they are encoded differently:

- daemon -> runner: pickle. The daemon is the trusted side; what it sends (a
  GenerationRequest with its dataclasses, an EmbedResolved) is what the runner will
  execute anyway.
- runner -> daemon: JSON with a closed vocabulary, every field checked on the way in.
  A runner is where a hostile GGUF or a llama.cpp bug runs native code; whatever it
  sends must not be able to do more to the daemon than end its own requests. The
  daemon never unpickles.

Events travel batched: one `ev` message carries every event the runner's scheduler
produced for all its sequences in one step (`[[rid, event], ...]`), not one message
per token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from ...proto.v1 import Timings
from .. import events as ev
from ..backend import (
    AttachmentUnsupported,
    BackendError,
    BackendInvalidRequest,
    EngineCrashed,
    Fault,
    Internal,
    NotReady,
    ToolCallMalformed,
    Unavailable,
    Unsupported,
)

_LEN = struct.Struct(">I")
#: A frame from the runner larger than this ends the runner (embeddings of a large
#: batch are the biggest honest frames: 2,048 x 4,096 floats as JSON is ~100 MiB).
MAX_RUNNER_FRAME = 256 * 1024 * 1024


class ChannelError(Exception):
    """The peer broke the channel's rules (a malformed or oversized frame)."""


def frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


class FrameChannel(asyncio.Protocol):
    """One end of a runner channel: frames are cut from the bytes as they arrive and
    handed to `serve()`'s handler in the same callback (the daemon's end), or returned
    one at a time by `read()` (the runner's end, and the daemon's until `hello`).

    A step's events cost the daemon one read callback, with no stream buffer, waiter
    future or task wake-up between the bytes and the dispatch (the in-process engine
    hands its events over with one `call_soon_threadsafe`; issue 18's goal is a
    runner within 2% of that per token on a tiny model).
    """

    def __init__(self, limit: int = MAX_RUNNER_FRAME) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handler: Callable[[bytes], None] | None = None
        self._pending: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: Resolved when the channel ends: None at a clean end, a ChannelError when the
        #: runner broke its rules (or the handler refused a frame), another error else.
        self.ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        buf = self._buf
        buf += data
        at, n = 0, len(buf)
        try:
            while n - at >= 4:
                (size,) = _LEN.unpack_from(buf, at)
                if size > self.limit:
                    raise ChannelError(f"a frame of {size} bytes is over the {self.limit} byte limit")
                if n - at - 4 < size:
                    break  # a large frame arriving in pieces is copied out once, when whole
                body = bytes(buf[at + 4:at + 4 + size])
                at += 4 + size
                self._deliver(body)
                if self.ended.done():
                    return
        except ChannelError as exc:
            self._end(exc)
            return
        del buf[:at]

    def eof_received(self) -> bool:
        self._end(ChannelError("the channel ended inside a frame") if self._buf else None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf and exc is None:
            exc = ChannelError("the channel ended inside a frame")
        self._end(exc)

    # ---- frames out: to serve()'s handler, or queued for read() ----

    def _deliver(self, body: bytes) -> None:
        handler = self._handler
        if handler is not None:
            handler(body)
            return
        self._pending.append(body)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, exc: BaseException | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)
            if exc is not None and self.transport is not None:
                self.transport.close()
        self._wake()

    async def read(self) -> bytes | None:
        """The next frame (before `serve()`); None at a clean end; raises ChannelError."""
        while not self._pending:
            if self.ended.done():
                exc = self.ended.result()
                if isinstance(exc, ChannelError):
                    raise exc
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._pending.popleft()

    async def serve(self, handler: Callable[[bytes], None]) -> BaseException | None:
        """Hand every frame to `handler` (which may raise ChannelError to end the
        channel) until the channel ends; returns how it ended (see `ended`)."""
        self._handler = handler
        pending, self._pending = self._pending, deque()
        try:
            for body in pending:
                handler(body)
        except ChannelError as exc:
            self._end(exc)
        return await asyncio.shield(self.ended)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---- daemon -> runner ---------------------------------------------------------------

def to_runner(message: dict[str, Any]) -> bytes:
    return frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def from_daemon(body: bytes) -> dict[str, Any]:
    return pickle.loads(body)  # noqa: S301 - the daemon is the trusted side (module doc)


# ---- runner -> daemon ----------------------------------------------------------------

def to_daemon(message: dict[str, Any]) -> bytes:
    return frame(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def from_runner(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ChannelError(f"a runner frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ChannelError("a runner frame is not an object with an op")
    return message


#: Text pieces are most of the traffic: [tag, text] instead of [type name, fields].
_TEXT_TAGS = {ev.TextDelta: "t", ev.ThinkingDelta: "k"}
_TEXT_TYPES = {tag: cls for cls, tag in _TEXT_TAGS.items()}


def encode_event(event: ev.Event) -> list[Any]:
    """[type name, fields]: the dataclass's fields, nested ones as dicts."""
    tag = _TEXT_TAGS.get(type(event))
    if tag is not None:
        return [tag, event.text]  # type: ignore[union-attr]
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    if isinstance(event, ev.Done):
        fields["reason"] = event.reason.value
        fields["usage"] = dataclasses.asdict(event.usage)
        fields["timings"] = event.timings.model_dump() if event.timings is not None else None
        fields["context"] = dataclasses.asdict(event.context) if event.context is not None else None
    return [type(event).__name__, fields]


def _done(fields: dict[str, Any]) -> ev.Done:
    timings, context = fields.get("timings"), fields.get("context")
    return ev.Done(
        reason=ev.FinishReason(fields["reason"]),
        usage=ev.Usage(**fields.get("usage") or {}),
        timings=Timings.model_validate(timings) if timings is not None else None,
        context=ev.ContextUsage(**context) if context is not None else None,
        tool_choice_unsatisfied=bool(fields.get("tool_choice_unsatisfied", False)),
        stop_sequence=fields.get("stop_sequence"),
    )


def _flat(cls: type) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}

    def build(fields: dict[str, Any]) -> Any:
        if set(fields) - names:
            raise ChannelError(f"unknown fields for {cls.__name__}: {sorted(set(fields) - names)}")
        return cls(**fields)

    return build


#: Every event type a runner may send, by name; anything else ends the runner.
_EVENT_TYPES: dict[str, Any] = {"Done": _done}
for _name in ev.__all__:
    _cls = getattr(ev, _name)
    if _name != "Done" and dataclasses.is_dataclass(_cls) and _name not in ("Usage", "ContextUsage"):
        _EVENT_TYPES[_name] = _flat(_cls)


def decode_event(item: Any) -> ev.Event:
    try:
        name, fields = item
        text_type = _TEXT_TYPES.get(name)
        if text_type is not None:
            if type(fields) is not str:
                raise ChannelError("a text event whose text is not a string")
            return text_type(fields)
        return _EVENT_TYPES[name](fields)
    except ChannelError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"a malformed event from the runner: {exc!r}"[:300]) from None


# ---- faults across the channel ----------------------------------------------------------

_ERRORS: dict[Fault, type[BackendError]] = {
    Fault.NOT_READY: NotReady,
    Fault.INVALID_REQUEST: BackendInvalidRequest,
    Fault.UNAVAILABLE: Unavailable,
    Fault.INTERNAL: Internal,
    Fault.UNSUPPORTED: Unsupported,
    Fault.ATTACHMENT_UNSUPPORTED: AttachmentUnsupported,
    Fault.TOOL_CALL_MALFORMED: ToolCallMalformed,
    Fault.ENGINE_CRASHED: EngineCrashed,
}


def encode_error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, BackendError):
        return {"kind": exc.kind.value, "message": exc.message}
    return {"kind": Fault.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"}


def decode_error(message: dict[str, Any]) -> BackendError:
    try:
        cls = _ERRORS[Fault(message.get("kind"))]
    except (KeyError, ValueError):
        cls = Internal
    return cls(str(message.get("message", "the engine failed"))[:2000])
