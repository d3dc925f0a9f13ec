"""The Backend contract: what the daemon asks of a model adapter.

`generate()` is a coroutine that either raises a BackendError (a *pre-stream* error,
which the daemon turns into one error frame) or returns an async iterator of events.
The iterator yields Token events and then exactly one Done. An iterator that ends, or
raises, before its Done is a mid-stream failure: the daemon reports
`backend_unavailable` after the partial frames. Closing the iterator (`aclose()`)
cancels the generation; a backend must stop promptly and free its context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..proto.embed import EmbedResolved
from ..proto.errors import EmbedErrorCode, ErrorCode
from ..proto.v1 import Resolved, StopReason, Timings


# ---- events --------------------------------------------------------------------

@dataclass(slots=True)
class Token:
    text: str


@dataclass(slots=True)
class Done:
    stop_reason: StopReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings | None = None


Event = Token | Done
TokenStream = AsyncIterator[Event]


@dataclass(slots=True)
class EmbedResult:
    embeddings: list[list[float]]
    dimensions: int
    model: str
    input_tokens: int


@dataclass(slots=True)
class BackendCapabilities:
    """What a backend can do; the admin `capabilities` frame carries exactly these fields."""

    v2: bool = False
    vision: bool = False
    audio: bool = False
    tools: bool = False
    thinking: bool = False
    embed: bool = False
    accelerator: str = "cpu"
    gpu_layers: int = 0
    device_name: str | None = None
    vram_total_bytes: int | None = None
    model: str | None = None
    n_ctx: int | None = None


# ---- errors (Display strings follow upstream) ------------------------------------

class BackendError(Exception):
    code: str = ErrorCode.INTERNAL
    embed_code: str = EmbedErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(BackendError):
    code = ErrorCode.BACKEND_UNAVAILABLE
    embed_code = EmbedErrorCode.BACKEND_UNAVAILABLE

    def __init__(self, message: str = "backend not ready") -> None:
        super().__init__(message)


class BackendInvalidRequest(BackendError):
    code = ErrorCode.INVALID_REQUEST
    embed_code = EmbedErrorCode.INVALID_REQUEST


class Unavailable(BackendError):
    code = ErrorCode.BACKEND_UNAVAILABLE
    embed_code = EmbedErrorCode.BACKEND_UNAVAILABLE


class Internal(BackendError):
    code = ErrorCode.INTERNAL
    embed_code = EmbedErrorCode.INTERNAL


class Unsupported(BackendError):
    code = ErrorCode.INTERNAL
    embed_code = EmbedErrorCode.EMBED_UNSUPPORTED


# ---- the contract ----------------------------------------------------------------

class Backend(ABC):
    """A model adapter. One instance serves one config entry for the daemon's lifetime."""

    #: Stable adapter id echoed as `done.backend` ("mock", "llamacpp").
    name: str = "backend"

    @abstractmethod
    def ready(self) -> bool:
        """True once the backend can serve; the daemon binds no inference socket before."""

    @abstractmethod
    def capabilities(self) -> BackendCapabilities:
        """What this backend can do; published on the admin socket before `ready`."""

    @abstractmethod
    async def generate(self, request: Resolved) -> TokenStream:
        """Start one generation. Raise a BackendError for pre-stream failures."""

    async def generate_v2(self, request: object) -> AsyncIterator[object]:
        raise Unsupported("v2 not supported by this backend")

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        raise Unsupported("embed not supported by this backend")

    async def stop(self, timeout: float) -> None:
        """Release the model. Best effort, bounded by `timeout` seconds."""
