"""The jobs the scheduler's thread runs: a generation request, and side work (embeddings)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..backend import BackendError, Unavailable
from ..events import TextDelta
from .bridge import Failure
from .sampling import SamplingParams


class _PlainText:
    """The output parser of a request that needs none: text stays text."""

    saw_tool_call = False
    last_was_thinking = False

    def push(self, text: str) -> list[TextDelta]:
        return [TextDelta(text)]

    def finish(self, cut: bool = False) -> list[TextDelta]:
        return []


@dataclass(eq=False)
class GenerationJob:
    tokens: list[int]
    params: SamplingParams
    grammar: str
    max_tokens: int
    stop: list[str]
    emit: Callable[[object], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    #: A fresh output parser (reasoning split, tool calls); the default passes text through.
    new_parser: Callable[[], Any] = field(default=lambda: _PlainText())
    #: The request's id, shown in the backend's sequence reports (`inferd status`).
    request_id: str = ""
    #: Emit PromptProgress as the prompt is read (issue 22).
    progress: bool = False

    def abandon(self, exc: BaseException) -> None:
        if not isinstance(exc, BackendError):
            exc = Unavailable(str(exc) or type(exc).__name__)
        self.emit(Failure(exc))

    def interrupt(self) -> None:
        self.cancel.set()


class SideJob(ABC):
    """Work on the scheduler's thread that takes no slot: `advance` runs one bounded
    piece between decode steps (an embedding pass) and says whether it is finished."""

    @abstractmethod
    def advance(self) -> bool: ...

    @abstractmethod
    def abandon(self, exc: BaseException) -> None: ...

    @abstractmethod
    def interrupt(self) -> None: ...
