"""Backends: the Backend ABC and its adapters. Knows proto, never the daemon."""

from .backend import (
    Backend,
    BackendCapabilities,
    BackendError,
    BackendInvalidRequest,
    Done,
    EmbedResult,
    Event,
    Internal,
    NotReady,
    Token,
    TokenStream,
    Unavailable,
    Unsupported,
)
from .mock import MockBackend, MockConfig

__all__ = [name for name in dir() if not name.startswith("_")]
