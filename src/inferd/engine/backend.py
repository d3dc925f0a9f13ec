"""The Backend contract: what the daemon asks of a model adapter.

`generate()` is a coroutine that either raises a BackendError (a *pre-stream*
refusal, which every surface turns into one error reply) or returns an async
iterator of the events in events.py: text, thinking and tool-call events, then
exactly one Done. An iterator that ends, or raises, before its Done is a mid-stream
failure: the surface reports `backend_unavailable` after the partial output.
Closing the iterator (`aclose()`) cancels the generation; a backend must stop
promptly and free what it holds.

Errors carry a *kind*, not a wire code: one table, daemon/surfaces/faults.py, says
what each surface (v1, v2, embed, HTTP) calls a kind, and with which HTTP status.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..proto.admin import BackendCapabilities, SequenceSlot
from ..proto.embed import EmbedResolved
from .events import EventStream
from .request import GenerationRequest

__all__ = [
    "Backend", "BackendCapabilities", "BackendError", "BackendInvalidRequest", "EmbedResult", "Fault",
    "Internal", "NotReady", "Unavailable", "Unsupported", "AttachmentUnsupported", "ToolCallMalformed",
    "EngineCrashed",
]


@dataclass(slots=True)
class EmbedResult:
    embeddings: list[list[float]]
    dimensions: int
    model: str
    input_tokens: int


# ---- errors ------------------------------------------------------------------------

class Fault(StrEnum):
    """Why a request could not be served, before any wire names it."""

    NOT_READY = "not_ready"
    INVALID_REQUEST = "invalid_request"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    UNSUPPORTED = "unsupported"
    ATTACHMENT_UNSUPPORTED = "attachment_unsupported"
    TOOL_CALL_MALFORMED = "tool_call_malformed"
    #: The engine's process ended under the request; its supervisor is restarting it
    #: (ADR 0025). Every wire calls it backend_unavailable; it is no verdict on the
    #: backend's health, so no circuit breaker counts it.
    ENGINE_CRASHED = "engine_crashed"
    # Raised by the daemon's pipeline, never by a backend:
    QUEUE_FULL = "queue_full"
    CLOSED = "closed"  # admission closed: shutting down
    #: The request names a model nobody here answers to (issue 20).
    MODEL_NOT_FOUND = "model_not_found"
    #: The model it names does not fit in the memory budget beside those serving (issue 20).
    INSUFFICIENT_MEMORY = "insufficient_memory"


class BackendError(Exception):
    kind: Fault = Fault.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(BackendError):
    kind = Fault.NOT_READY

    def __init__(self, message: str = "backend not ready") -> None:
        super().__init__(message)


class BackendInvalidRequest(BackendError):
    kind = Fault.INVALID_REQUEST


class Unavailable(BackendError):
    kind = Fault.UNAVAILABLE


class Internal(BackendError):
    kind = Fault.INTERNAL


class Unsupported(BackendError):
    kind = Fault.UNSUPPORTED


class AttachmentUnsupported(BackendError):
    kind = Fault.ATTACHMENT_UNSUPPORTED


class ToolCallMalformed(BackendError):
    kind = Fault.TOOL_CALL_MALFORMED


class EngineCrashed(BackendError):
    kind = Fault.ENGINE_CRASHED


# ---- the contract ----------------------------------------------------------------

class Backend(ABC):
    """A model adapter. One instance serves one config entry for the daemon's lifetime."""

    #: Stable adapter id echoed as `done.backend` ("mock", "llamacpp", "openai").
    name: str = "backend"
    #: Requests this backend runs at once; the daemon gives it that many admission permits.
    concurrency: int = 1

    @abstractmethod
    def ready(self) -> bool:
        """True once the backend can serve; the daemon binds no inference socket before."""

    @abstractmethod
    def capabilities(self) -> BackendCapabilities:
        """What this backend can do; published on the admin socket before `ready`."""

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> EventStream:
        """Start one generation. Raise a BackendError for pre-stream refusals."""

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens `request` would take, without generating anything."""
        raise Unsupported("token counting not supported by this backend")

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        raise Unsupported("embed not supported by this backend")

    def observe_sequences(self, sink: Callable[[list[SequenceSlot]], None] | None) -> None:
        """A backend that decodes requests in slots calls `sink` (from any thread) with
        the running ones whenever they change (ADR 0018); others ignore it."""

    def watch_lifecycle(self, sink: Callable[[str, str], None] | None) -> None:
        """A backend whose engine can end and come back (a runner process, ADR 0025)
        calls `sink(state, reason)` on the loop: `restarting`, `ready` or `failed`;
        others ignore it."""

    async def stop(self, timeout: float) -> None:
        """Release the model. Best effort, bounded by `timeout` seconds."""
