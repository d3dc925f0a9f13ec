"""Backends: the Backend ABC, the engine events and requests, and the adapters.

Knows proto, never the daemon.
"""

from .backend import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendInvalidRequest,
    EmbedResult,
    Fault,
    Internal,
    NotReady,
    Unavailable,
    Unsupported,
)
from .events import ContextUsage, Done, Event, EventStream, FinishReason, TextDelta, ThinkingDelta, Timings, ToolCall, Usage
from .mock import MockBackend, MockConfig
from .request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec, ToolSpec

__all__ = [name for name in dir() if not name.startswith("_")]
