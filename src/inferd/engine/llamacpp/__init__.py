"""The llama.cpp backend (llama-cpp-python, low-level API).

`LlamaCppSettings` imports without the native library; `LlamaCppBackend` loads it
on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import LlamaCppSettings

if TYPE_CHECKING:
    from .backend import LlamaCppBackend

__all__ = ["LlamaCppBackend", "LlamaCppSettings"]


def __getattr__(name: str) -> object:
    if name == "LlamaCppBackend":
        from .backend import LlamaCppBackend

        return LlamaCppBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
