"""Remote backends: a model served by another machine, reached over HTTP.

`OpenAISettings` imports without httpx (the config layer builds it); `OpenAIBackend`
loads the HTTP stack on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import OpenAISettings

if TYPE_CHECKING:
    from .openai import OpenAIBackend

__all__ = ["OpenAIBackend", "OpenAISettings"]


def __getattr__(name: str) -> object:
    if name == "OpenAIBackend":
        from .openai import OpenAIBackend

        return OpenAIBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
