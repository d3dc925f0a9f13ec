"""Call objects and the incremental readers of one call region, shared by the formats.

A reader consumes the text after a call's opening marker and says where the region
ends; what it read becomes (name, arguments) pairs, or ordinary text when a bare JSON
reply turns out not to be a call (Llama 3).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from ...backend import ToolCallMalformed  # the model wrote a call we cannot parse
from .streaming import CallStream, _dumps


# ---- call objects ----------------------------------------------------------------------

def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise ToolCallMalformed(f"{what} is not valid JSON: {e.msg} at offset {e.pos}") from None


def _arguments(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = _loads(value, f"the arguments of {name!r}") if value.strip() else {}
    if not isinstance(value, dict):
        raise ToolCallMalformed(f"the arguments of {name!r} must be a JSON object")
    return value


def _call_from_object(obj: Any, arg_keys: Sequence[str] = ("arguments", "parameters")) -> tuple[str, dict[str, Any]]:
    """(name, arguments) from a decoded call object; accepts OpenAI's nested shape."""
    if not isinstance(obj, dict):
        raise ToolCallMalformed("a tool call must be a JSON object")
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallMalformed("the tool call has no name")
    args: Any = None
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    return name.strip(), _arguments(args, name)


def _looks_like_call(obj: Any) -> bool:
    if isinstance(obj, dict) and "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    return (isinstance(obj, dict) and isinstance(obj.get("name"), str)
            and ("parameters" in obj or "arguments" in obj))


def _coerce_arguments(arguments: Any) -> Any:
    """History arguments as an object when they are JSON text (HF allows either)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


# ---- incremental readers (one call region each) --------------------------------------

class _JsonEnd:
    """Finds where one JSON object/array ends in a stream, without parsing it."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = False
        self.escape = False
        self.started = False

    def feed(self, text: str) -> int | None:
        """Index in `text` just past the value's end, None if not there yet.

        Raises ValueError if the first non-space character does not open a container.
        """
        for i, ch in enumerate(text):
            if not self.started:
                if ch in " \t\r\n":
                    continue
                if ch not in "{[":
                    raise ValueError(ch)
                self.started = True
                self.depth = 1
                continue
            if self.in_str:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_str = False
            elif ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


class _Reader(ABC):
    """Consumes the text of one call region, after its opening marker."""

    def __init__(self, stream: CallStream | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Set instead of `calls` when the region turned out to be ordinary text.
        self.text: str | None = None
        #: Follows the region's JSON for argument pieces; None where the syntax is not JSON.
        self.stream = stream

    def pieces(self) -> list[tuple[int, str, str]]:
        """Argument pieces ready since the last call: (index of the call in the region, name, piece)."""
        return self.stream.take() if self.stream is not None else []

    @abstractmethod
    def feed(self, text: str) -> str | None:
        """Consume `text`; when the region ends, return the text after it (maybe "")."""

    @abstractmethod
    def finish(self) -> None:
        """The stream ended inside the region: complete it or raise ToolCallMalformed."""


class _Delimited(_Reader):
    """`opener` BODY `closer`; BODY is parsed whole once the closer arrives."""

    def __init__(self, closer: str, parse: Callable[[str], list[tuple[str, dict[str, Any]]]], label: str,
                 stream: CallStream | None = None) -> None:
        super().__init__(stream)
        self.closer = closer
        self.parse = parse
        self.label = label
        self.buf = ""

    def feed(self, text: str) -> str | None:
        start = max(0, len(self.buf) - len(self.closer) + 1)
        self.buf += text
        if self.stream is not None:
            self.stream.feed(text)
        idx = self.buf.find(self.closer, start)
        if idx < 0:
            return None
        body, rest = self.buf[:idx], self.buf[idx + len(self.closer):]
        # An empty region (`<tool_call></tool_call>`) names no tool: it is no call, not
        # a malformed one (issue 21; ADR 0026); the turn ends as the model ended it.
        self.calls = self.parse(body) if body.strip() else []
        return rest

    def finish(self) -> None:
        raise ToolCallMalformed(f"the output ended inside a {self.label} tool call (no {self.closer})")


class _Json(_Reader):
    """One JSON value, ended by its own closing bracket; `post` turns it into calls."""

    def __init__(self, post: Callable[[Any], list[tuple[str, dict[str, Any]]]], label: str,
                 stream: CallStream | None = None) -> None:
        super().__init__(stream)
        self.post = post
        self.label = label
        self.scan = _JsonEnd()
        self.buf = ""

    def feed(self, text: str) -> str | None:
        try:
            end = self.scan.feed(text)
        except ValueError:
            raise ToolCallMalformed(f"the {self.label} tool call is not a JSON object or array") from None
        if self.stream is not None:
            self.stream.feed(text if end is None else text[:end])
        if end is None:
            self.buf += text
            return None
        value_text = self.buf + text[:end]
        self.calls = self.post(_loads(value_text, f"the {self.label} tool call"))
        return text[end:]

    def finish(self) -> None:
        raise ToolCallMalformed(f"the output ended inside a {self.label} tool call (unterminated JSON)")


_CALL_HEADS = ('{"name"', '{"type"', '{"function"')


class _BareJson(_Reader):
    """Llama 3: a reply that starts with `{` may be a call, or may just be JSON text."""

    def __init__(self) -> None:
        super().__init__(CallStream())
        self.scan = _JsonEnd()
        self.buf = ""
        self.confirmed = False

    def pieces(self) -> list[tuple[int, str, str]]:
        # JSON text that is not a call shows nothing as a call.
        return super().pieces() if self.confirmed else []

    def _head_state(self) -> bool | None:
        """True: starts like a call; False: cannot be one; None: not known yet."""
        head = self.buf.lstrip()
        compact = "{" + head[1:].lstrip()
        if any(compact.startswith(h) for h in _CALL_HEADS):
            return True
        if any(h.startswith(compact) for h in _CALL_HEADS):
            return None
        return False

    def feed(self, text: str) -> str | None:
        end = self.scan.feed(text)  # the parser starts this reader only on "{"
        value = text if end is None else text[:end]
        self.buf += value
        self.stream.feed(value)  # type: ignore[union-attr]
        rest = "" if end is None else text[end:]
        if not self.confirmed:
            state = self._head_state()
            if state is False:
                self.text = self.buf
                return rest
            self.confirmed = state is True
        if end is None:
            return None
        try:
            obj = json.loads(self.buf, strict=False)
        except json.JSONDecodeError as e:
            if self.confirmed:
                raise ToolCallMalformed(f"the llama3 tool call is not valid JSON: {e.msg} at offset {e.pos}") from None
            obj = None
        if _looks_like_call(obj):
            self.calls = [_call_from_object(obj)]
        else:
            self.text = self.buf
        return rest

    def finish(self) -> None:
        if self.confirmed:
            raise ToolCallMalformed("the output ended inside a llama3 tool call (unterminated JSON)")
        self.text = self.buf
