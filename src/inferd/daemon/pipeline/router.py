"""Which backend serves a request, and which backends are healthy enough to try.

The daemon decides; there is no backend field on the wire. Priority is config
order: the first backend that is ready, healthy and has what the request needs (v2,
tools, embeddings, media) gets it. Each backend has its own admission gate, sized by
what it can run at once (a local context's sequences, a remote's `max_concurrency`),
so a remote cluster is never serialised behind the local model.

Health is each backend's circuit breaker (breaker.py): the router skips a backend
whose circuit is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ...engine.backend import Backend, BackendCapabilities
from .admission import Admission, QueueFull
from .breaker import Breaker, StateChange


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request requires of the backend that serves it."""

    v2: bool = False
    tools: bool = False
    embed: bool = False
    media: bool = False
    #: The model a request names (OpenAI's `model`, the `model` extension on v1, v2
    #: and embed, Ollama's and Anthropic's `model`); None: the default (issue 20).
    model: str | None = None
    #: How long the named model stays loaded after this request, in seconds
    #: (keepalive.parse_keep_alive; math.inf = for ever); None: the configured default.
    keep_alive: float | None = None

    def hard(self) -> "Needs":
        """Only what no backend can work around: the wire (v2), embeddings, the model named."""
        return Needs(v2=self.v2, embed=self.embed, model=self.model, keep_alive=self.keep_alive)

    def unmet(self, caps: BackendCapabilities) -> str | None:
        """The first capability `caps` lacks, by its capabilities-frame name, or None."""
        if self.embed and not caps.embed:
            return "embed"
        if self.v2 and not caps.v2:
            return "v2"
        if self.tools and not caps.tools:
            return "tools"
        if self.media and not (caps.vision or caps.audio):
            return "vision"
        return None



# ---- the router ---------------------------------------------------------------------

@dataclass(slots=True)
class BackendEntry:
    """One configured backend: its config name, the adapter, its admission gate and health."""

    label: str  # config entry name: what capabilities frames and done.backend call it
    backend: Backend
    caps: BackendCapabilities
    admission: Admission
    breaker: Breaker = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.breaker is None:
            self.breaker = Breaker(self.label)


class Router:
    def __init__(self, entries: list[BackendEntry] | None = None) -> None:
        #: Called with every circuit change of every installed backend (the daemon
        #: publishes it on the admin socket).
        self.on_change: Callable[[StateChange], None] | None = None
        self._entries: list[BackendEntry] = []
        self.entries = entries or []
        # Cleared while a reload swaps the backends: requests wait here (the sockets
        # stay bound), at most `pause_limit` of them; beyond that, queue_full.
        self._open = asyncio.Event()
        self._open.set()
        self._waiting = 0
        self.pause_limit = 10

    @property
    def entries(self) -> list[BackendEntry]:
        return self._entries

    @entries.setter
    def entries(self, entries: list[BackendEntry]) -> None:
        for old in self._entries:
            old.breaker.listener = None  # a replaced backend's stragglers stay silent
        self._entries = entries
        for entry in entries:
            entry.breaker.listener = self._changed

    def add(self, entry: BackendEntry) -> None:
        """A model loaded on demand joins the served backends (issue 20)."""
        entry.breaker.listener = self._changed
        self._entries = [*self._entries, entry]

    def remove(self, entry: BackendEntry) -> None:
        """A model unloaded leaves them; its stragglers stay silent."""
        entry.breaker.listener = None
        self._entries = [e for e in self._entries if e is not entry]

    def _changed(self, change: StateChange) -> None:
        if self.on_change is not None:
            self.on_change(change)

    async def wait_open(self) -> None:
        """Return at once unless a reload is swapping the backends; then wait for it."""
        if self._open.is_set():
            return
        if self._waiting >= self.pause_limit:
            raise QueueFull()
        self._waiting += 1
        try:
            await self._open.wait()
        finally:
            self._waiting -= 1

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def candidates(self, needs: Needs) -> Iterator[BackendEntry]:
        """Ready backends able to serve `needs`, in priority order. Their circuits are
        asked at the moment one is tried (`Breaker.admit`), so a half-open backend's
        single trial is taken only by a request that really goes there."""
        for entry in self.entries:
            if needs.unmet(entry.caps) is None and entry.backend.ready():
                yield entry

    def first_ready(self) -> BackendEntry | None:
        return next((e for e in self.entries if e.backend.ready()), None)

    @property
    def can_embed(self) -> bool:
        return any(e.caps.embed for e in self.entries)

    # ---- admission across every backend ---------------------------------------------

    @property
    def outstanding(self) -> int:
        return sum(e.admission.outstanding for e in self.entries)

    def close_admission(self) -> None:
        for e in self.entries:
            e.admission.close()

    async def wait_idle(self, entries: list[BackendEntry] | None = None) -> None:
        for e in self.entries if entries is None else entries:
            await e.admission.wait_idle()
