"""The daemon-wide budget for bytes held on a peer's behalf before its request is whole
(THREAT_MODEL F-22, ADR 0033).

A request may be 64 MiB (the frame cap, F-1), and until its last byte arrives the
daemon holds what came so far: an NDJSON line past the stream limit (`FrameReader`'s
accumulator) or an HTTP body (`surfaces/http/io.py`). Per connection that is bounded
by the cap, and connections by their pools (F-17), but the product was about 16 GiB
per pool: 20 HTTP clients that declared 64 MiB and sent 63 MiB held 1.3 GiB. One
`ByteBudget` per daemon bounds the sum over every connection of every surface; a
reader takes from it before it keeps bytes and gives them back when the request is
whole (or refused). A reader that cannot take is refused at once, with a clear error,
and holds nothing more. A slow sender is also cut by the read timeout, so a budget
held by stalled peers is freed within that time.

What is not counted: the per-connection buffers below the readers (asyncio's stream
reader, at most about 128 KiB; uvicorn's, about 64 KiB before it pauses reading),
bounded per connection and so by the pools.
"""

from __future__ import annotations

#: The default budget: four requests at the 64 MiB frame cap at once.
DEFAULT_BUFFER_BUDGET = 256 << 20


class ByteBudget:
    """Bytes that partial frames and bodies may hold across the daemon; None = unbounded."""

    __slots__ = ("limit", "in_use", "peak", "refused")

    def __init__(self, limit: int | None = DEFAULT_BUFFER_BUDGET) -> None:
        self.limit = limit if limit else None
        self.in_use = 0
        self.peak = 0  # the most ever held at once (tests and metrics)
        self.refused = 0  # readers refused for want of room

    def take(self, n: int) -> bool:
        """Reserve `n` bytes; False (and nothing reserved) when they do not fit."""
        if self.limit is not None and self.in_use + n > self.limit:
            self.refused += 1
            return False
        self.in_use += n
        if self.in_use > self.peak:
            self.peak = self.in_use
        return True

    def give(self, n: int) -> None:
        self.in_use -= n

    def hold(self) -> "Held":
        return Held(self)


class Held:
    """One reader's share of a budget: what it took, given back in one call."""

    __slots__ = ("budget", "taken")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.taken = 0

    def take(self, n: int) -> bool:
        if not self.budget.take(n):
            return False
        self.taken += n
        return True

    def give(self, n: int) -> None:
        self.budget.give(n)
        self.taken -= n

    def release(self) -> None:
        if self.taken:
            self.budget.give(self.taken)
            self.taken = 0
