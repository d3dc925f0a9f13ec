"""The streaming parser: a model's output in; text, argument pieces and whole tool calls out."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from ...backend import ToolCallMalformed
from ...events import TextDelta, ToolCall, ToolCallDelta
from .readers import _BareJson, _Reader

if TYPE_CHECKING:
    from .base import ToolCallFormat

IdFactory = Callable[[], str]
ToolEvent = TextDelta | ToolCallDelta | ToolCall

_WS = " \t\r\n"


class ToolCallParser:
    """Incremental: `push(piece)` per decoded piece, `finish()` once at the end.

    Returns TextDelta, ToolCallDelta and ToolCall events; raises ToolCallMalformed on
    a bad call (the parser is then unusable). `known_names`, when given, makes a call
    to any other name malformed too (and such a call shows no pieces first). A call
    whose format is JSON streams its arguments as ToolCallDelta pieces once its name is
    known (streaming.py); its ToolCall, with the same id, follows once it is whole and
    parsed. Other calls come out whole only.
    """

    def __init__(self, fmt: ToolCallFormat, *, id_factory: IdFactory | None = None,
                 known_names: Collection[str] | None = None) -> None:
        self.fmt = fmt
        self._new_id = id_factory or fmt.new_call_id
        self._known = frozenset(known_names) if known_names is not None else None
        self._buf = ""
        self._reader: _Reader | None = None
        self._at_start = True
        self._after_call = False
        self._ids: set[str] = set()
        #: Calls of the open region whose pieces went out: index in the region -> id.
        self._streaming: dict[int, str] = {}
        self._finished = False
        #: The open region's text as the model wrote it (its opener included).
        self._raw = ""
        #: How many calls were emitted so far.
        self.calls = 0

    @property
    def saw_tool_call(self) -> bool:
        return self.calls > 0

    def push(self, text: str) -> list[ToolEvent]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        out: list[ToolEvent] = []
        if text:
            self._buf += text
            self._drain(out)
        return out

    def finish(self, cut: bool = False) -> list[ToolEvent]:
        """The output ended. `cut`: by the token limit, so a call still open is not
        malformed but unfinished: its text comes out as text, as the model wrote it
        (issue 21: OpenAI answers finish_reason "length" with what was generated)."""
        if self._finished:
            return []
        self._finished = True
        out: list[ToolEvent] = []
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if cut:
                self._text(out, self._raw)
                self._buf = ""
                return out
            reader.finish()
            self._complete(reader, out)
        rest, self._buf = self._buf, ""
        if rest and not (self._after_call and not rest.strip(self.fmt.separators)):
            self._text(out, rest)
        return out

    # -- internals --

    def _text(self, out: list[ToolEvent], text: str) -> None:
        if not text:
            return
        if out and isinstance(out[-1], TextDelta):
            out[-1].text += text
        else:
            out.append(TextDelta(text))

    def _id(self) -> str:
        for _ in range(16):
            new = self._new_id()
            if new not in self._ids:
                break
        n = 2
        base = new
        while new in self._ids:
            new = f"{base}_{n}"
            n += 1
        self._ids.add(new)
        return new

    def _complete(self, reader: _Reader, out: list[ToolEvent]) -> None:
        if reader.text is not None:
            self._text(out, reader.text)
            self._at_start = self._after_call = False
            return
        streaming, self._streaming = self._streaming, {}
        for index, (name, args) in enumerate(reader.calls):
            if self._known is not None and name not in self._known:
                raise ToolCallMalformed(f"the model called {name!r}, which is not a declared tool")
            call_id = streaming.get(index)
            out.append(ToolCall(id=call_id if call_id is not None else self._id(), name=name, input=args))
            self.calls += 1
        self._after_call = True

    def _pieces(self, reader: _Reader, out: list[ToolEvent]) -> None:
        for index, name, piece in reader.pieces():
            if self._known is not None and name not in self._known:
                continue  # refused when it completes
            call_id = self._streaming.get(index)
            if call_id is None:
                call_id = self._streaming[index] = self._id()
            out.append(ToolCallDelta(call_id, name, piece))

    def _start(self, reader: _Reader, text: str, out: list[ToolEvent], opener: str = "") -> bool:
        """Feed `text` to a new reader; True when it completed (buffer holds the rest)."""
        self._reader = reader
        self._raw = opener + text
        self._at_start = False
        rest = reader.feed(text)
        self._pieces(reader, out)
        if rest is None:
            self._buf = ""
            return False
        self._reader = None
        self._complete(reader, out)
        self._buf = rest
        return True

    def _drain(self, out: list[ToolEvent]) -> None:
        fmt = self.fmt
        while self._buf:
            if self._reader is not None:
                text, self._buf = self._buf, ""
                self._raw += text
                rest = self._reader.feed(text)
                self._pieces(self._reader, out)
                if rest is None:
                    return
                reader, self._reader = self._reader, None
                self._complete(reader, out)
                self._buf = rest
                continue

            holding = self._at_start or self._after_call
            lead = len(self._buf) - len(self._buf.lstrip(fmt.separators if self._after_call else " \t\r\n")) \
                if holding else 0
            body = self._buf[lead:]
            if holding and not body:
                return  # only whitespace so far: it may precede a call
            if holding and fmt.bare_json and body[0] == "{":
                if not self._start(_BareJson(), body, out):
                    return
                continue

            idx, opener = -1, ""
            for op in fmt.openers:
                j = body.find(op)
                if j >= 0 and (idx < 0 or j < idx):
                    idx, opener = j, op
            # Whitespace right after a call is layout, like whitespace right before one.
            skip = lead if self._after_call else 0
            if idx >= 0:
                self._text(out, self._buf[skip:lead + idx].rstrip(_WS))
                self._after_call = False
                if not self._start(fmt._reader(opener), body[idx + len(opener):], out, opener):
                    return
                continue

            hold = _held_prefix(body, fmt.openers)
            if holding and hold == len(body):
                return  # whitespace then a possible marker start: undecided
            # Emit all but a possible marker start and the whitespace before it (which
            # is dropped if a call follows).
            cut = len(self._buf) - hold
            cut = len(self._buf[:cut].rstrip(_WS))
            if cut <= skip:
                return
            self._text(out, self._buf[skip:cut])
            self._buf = self._buf[cut:]
            self._at_start = self._after_call = False
            return


def _held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that could begin one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best
