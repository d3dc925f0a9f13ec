"""NDJSON framing: one compact JSON object per line, capped at MAX_FRAME_BYTES.

THREAT_MODEL F-1: the reader never holds more than the cap for one line. asyncio's
StreamReader keeps at most ~2x its (64 KiB) limit in its own buffer before pausing the
transport, and our accumulator refuses to grow past the cap, so an endless line costs
at most cap + 128 KiB before the connection is answered with `frame_too_large`.

F-22: a line longer than the stream limit is the expensive kind, so only there a
reader may be given a `budget` (the daemon's ByteBudget: bytes are taken from it
before they are kept, given back once the line is whole or refused; `BufferBudgetFull`
when none is left) and a `deadline` (seconds for the rest of the line once its first
64 KiB are in; `ReadTimedOut` past it). A shorter partial line sits in asyncio's own
bounded buffer and is an idle connection's business (F-17).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from pydantic import BaseModel

from .errors import BufferBudgetFull, FrameTooLarge, ReadTimedOut

MAX_FRAME_BYTES = 64 << 20  # 67,108,864

# asyncio's default StreamReader limit; chosen explicitly so listeners and clients agree.
STREAM_LIMIT = 64 * 1024


class Budget(Protocol):
    limit: int | None

    def take(self, n: int) -> bool: ...

    def give(self, n: int) -> None: ...


class FrameReader:
    """Reads newline-terminated frames from an asyncio StreamReader.

    A line of exactly `cap` bytes (newline excluded) is accepted; one more byte is
    `FrameTooLarge`. EOF with nothing buffered returns None; EOF after a partial
    line returns that line as a final frame (upstream-protocol §3.1).
    """

    __slots__ = ("_reader", "_cap", "_budget", "_deadline")

    def __init__(self, reader: asyncio.StreamReader, cap: int = MAX_FRAME_BYTES, *,
                 budget: Budget | None = None, deadline: float | None = None) -> None:
        self._reader = reader
        self._cap = cap
        self._budget = budget
        self._deadline = deadline

    async def read_frame(self) -> bytes | None:
        reader = self._reader
        cap = self._cap
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            return await self._read_long(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            return self._final(exc.partial, b"")
        if len(line) - 1 > cap:
            raise FrameTooLarge(cap)
        return line[:-1]

    async def _read_long(self, available: int) -> bytes | None:
        """Slow path for lines longer than the StreamReader limit, within the deadline."""
        if self._deadline is None:
            return await self._accumulate(available)
        try:
            async with asyncio.timeout(self._deadline):
                return await self._accumulate(available)
        except TimeoutError:
            raise ReadTimedOut(self._deadline) from None

    async def _accumulate(self, available: int) -> bytes | None:
        budget = self._budget
        cap = self._cap
        buf = bytearray()
        taken = 0
        try:
            while True:
                if len(buf) + available > cap:
                    raise FrameTooLarge(cap)
                if budget is not None:
                    if not budget.take(available):
                        raise BufferBudgetFull(budget.limit or 0)
                    taken += available
                buf += await self._reader.readexactly(available)
                try:
                    tail = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    available = exc.consumed
                    continue
                except asyncio.IncompleteReadError as exc:
                    return self._final(exc.partial, bytes(buf))
                if len(buf) + len(tail) - 1 > cap:
                    raise FrameTooLarge(cap)
                buf += tail
                del buf[-1]  # the newline; in place, so the line is copied once, not twice
                return bytes(buf)
        finally:
            if taken:
                budget.give(taken)  # type: ignore[union-attr]

    def _final(self, partial: bytes, head: bytes) -> bytes | None:
        if not partial and not head:
            return None
        if len(head) + len(partial) > self._cap:
            raise FrameTooLarge(self._cap)
        return head + partial


def encode_frame(frame: BaseModel, cap: int = MAX_FRAME_BYTES) -> bytes:
    """Serialise a wire model as one NDJSON line.

    A payload of `cap` bytes or more is refused (the writer is one byte stricter than
    the reader, as upstream).
    """
    payload = frame.model_dump_json(exclude_none=True).encode()
    if len(payload) >= cap:
        raise FrameTooLarge(cap)
    return payload + b"\n"
