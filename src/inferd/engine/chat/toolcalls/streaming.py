"""A call's arguments while the model writes them: pieces of the text they will be sent as.

Clients render a call as it is written (OpenAI's `function.arguments` pieces, v2's
`tool_use_delta` blocks), and the pieces must add up to exactly the arguments of the
whole call that follows: the text `json.dumps(arguments, ensure_ascii=False)`, which is
what a non-streamed answer carries. A model writes its own layout (with or without
spaces, `\\u00e9` or `é`, `1E2`), so the JSON it writes is re-written here token by
token in `json.dumps`'s layout: spaces outside strings dropped and `, ` / `: ` put
back, each string re-encoded, each number re-printed from its value. A key written
twice is the one case the pieces cannot foresee (the whole call keeps its last value
at its first place); the parser then sends nothing more for that call and the whole
call is the authority.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

_ARG_KEYS = frozenset({"arguments", "parameters"})
_SCALAR = frozenset("0123456789+-.eEtrufalsn")
_HIGH_SURROGATE = ("\\ud8", "\\ud9", "\\uda", "\\udb", "\\uD8", "\\uD9", "\\uDA", "\\uDB")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass(slots=True)
class _Call:
    name: str | None = None
    #: Canonical pieces written so far and not yet taken.
    pieces: list[str] = field(default_factory=list)
    #: The stack depth the arguments value started at, while inside it.
    args_depth: int | None = None
    args_seen: bool = False
    #: Keys met in each open object of the arguments (to notice a key written twice).
    keys: list[set[str]] = field(default_factory=list)
    broken: bool = False


class CallStream:
    """Follows the JSON of one call region as it arrives.

    `name` given: the JSON value is the arguments of a call by that name (Mistral's
    `NAME[ARGS]{...}`). Otherwise the value is a call object `{"name": N, "arguments":
    {...}}` (or "parameters"), or a list of them (Mistral v3): their top-level members
    are followed. Anything else (OpenAI's nested `function` shape, arguments written as
    a JSON string, text that is not JSON) yields nothing, and the parser sends that
    call's arguments in one piece once it is whole. `take()` hands out the pieces of
    the calls whose name is known, as (index of the call in the region, name, piece).
    """

    def __init__(self, name: str | None = None) -> None:
        self._fixed = name
        self._stack: list[str] = []
        self._key_next = False
        self._member: str | None = None
        self._raw: str | None = None  # the raw text of the string being read
        self._raw_sent = 0  # how much of it was already written out
        self._escape = False
        self._is_key = False
        self._scalar = ""
        self._done = False
        self.calls: list[_Call] = []

    # ---- reading ------------------------------------------------------------------------

    def feed(self, text: str) -> None:
        if self._done:
            return
        i, n = 0, len(text)
        while i < n:
            if self._raw is not None:
                i = self._string_part(text, i)
                continue
            ch = text[i]
            i += 1
            if self._scalar:
                if ch in _SCALAR:
                    self._scalar += ch
                    continue
                self._end_scalar()
                if self._done:
                    return
            if ch in " \t\r\n":
                continue
            if ch == '"':
                self._is_key = bool(self._stack) and self._stack[-1] == "{" and self._key_next
                if not self._is_key:
                    self._begin_value(ch)
                    self._out('"')
                self._raw, self._raw_sent = "", 0
            elif ch in "{[":
                self._begin_value(ch)
                self._out(ch)
                self._stack.append(ch)
                self._key_next = ch == "{"
                call = self._current()
                if ch == "{" and call is not None and call.args_depth is not None:
                    call.keys.append(set())
            elif ch in "}]":
                if not self._stack:
                    self._done = True
                    return
                closed = self._stack.pop()
                call = self._current()
                if closed == "{" and call is not None and call.args_depth is not None and call.keys:
                    call.keys.pop()
                self._out(ch)
                self._value_ended()
            elif ch == ",":
                self._out(", ")
                self._key_next = bool(self._stack) and self._stack[-1] == "{"
            elif ch == ":":
                self._out(": ")
                self._key_next = False
            elif ch in _SCALAR:
                self._begin_value(ch)
                self._scalar = ch
            else:
                self._done = True  # not JSON: the parse of the whole call decides
            if self._done:
                return
        if self._raw is not None:
            self._flush_string()

    def _string_part(self, text: str, i: int) -> int:
        """Read string content from `text[i:]` up to its closing quote (or the end of
        `text`); returns where reading stopped. Long strings (a file's content) are
        taken in runs, not character by character."""
        raw = self._raw
        assert raw is not None
        n = len(text)
        if self._escape:  # the character after a backslash, whatever it is
            self._escape = False
            self._raw = raw + text[i]
            return i + 1
        quote, slash = text.find('"', i), text.find("\\", i)
        if slash >= 0 and (quote < 0 or slash < quote):
            self._raw = raw + text[i:slash + 1]
            self._escape = True
            return slash + 1
        if quote < 0:
            self._raw = raw + text[i:]
            return n
        self._raw = raw + text[i:quote]
        self._end_string()
        return quote + 1

    def _flush_string(self) -> None:
        """Write out what of the open string can be decoded already."""
        raw = self._raw
        assert raw is not None
        end = len(raw)
        if self._escape:
            end -= 1
        while True:  # hold back an escape still arriving, and the first half of a surrogate pair
            cut = raw.rfind("\\u", self._raw_sent, end)
            if cut < 0 or end - cut > 6 or end - cut == 6 and raw[cut:cut + 4] not in _HIGH_SURROGATE:
                break
            end = cut
        if end > self._raw_sent and not self._is_key:
            self._out(_dumps(self._decode(raw[self._raw_sent:end]))[1:-1])
            self._raw_sent = end

    def _end_string(self) -> None:
        raw = self._raw
        assert raw is not None
        self._raw = None
        if self._done:
            return
        if self._is_key:
            key = self._decode(raw)
            self._out(_dumps(key))
            self._key_seen(key)
            if self._at_call_members():
                self._member = key
            return
        self._out(_dumps(self._decode(raw[self._raw_sent:]))[1:-1] + '"')
        if self._at_call_members() and self._member == "name" and self.calls:
            name = self._decode(raw).strip()
            if name and self.calls[-1].name is None:
                self.calls[-1].name = name
        self._value_ended()

    def _decode(self, raw: str) -> str:
        try:
            return json.loads('"' + raw + '"', strict=False)
        except ValueError:
            self._done = True
            return ""

    def _end_scalar(self) -> None:
        text, self._scalar = self._scalar, ""
        try:
            value = json.loads(text)
        except ValueError:
            self._done = True
            return
        self._out(_dumps(value))
        self._value_ended()

    # ---- where the text is ------------------------------------------------------------

    def _call_depth(self) -> int:
        """The stack depth of a call object's members (0 when the value is the arguments)."""
        if self._fixed is not None:
            return 0
        return 2 if self._stack and self._stack[0] == "[" else 1

    def _at_call_members(self) -> bool:
        return self._fixed is None and len(self._stack) == self._call_depth() and self._stack[-1] == "{"

    def _current(self) -> _Call | None:
        return self.calls[-1] if self.calls else None

    def _begin_value(self, first: str) -> None:
        depth = len(self._stack)
        if self._fixed is not None:
            if depth == 0:
                self.calls.append(_Call(name=self._fixed, args_depth=0, args_seen=True))
            return
        if first == "{" and (depth == 0 or depth == 1 and self._stack[0] == "["):
            self.calls.append(_Call())  # a call object starts (the parse of the whole checks it is one)
            return
        call = self._current()
        if (call is not None and self._at_call_members() and self._member in _ARG_KEYS
                and not call.args_seen):
            call.args_seen = True
            # Arguments written as a JSON string are sent as the object they hold: whole, at the end.
            if first == "{":
                call.args_depth = depth

    def _value_ended(self) -> None:
        depth = len(self._stack)
        call = self._current()
        if call is not None and call.args_depth is not None and depth == call.args_depth:
            call.args_depth = None
        if depth == 0:
            self._done = True

    def _key_seen(self, key: str) -> None:
        call = self._current()
        if call is not None and call.args_depth is not None and call.keys:
            seen = call.keys[-1]
            if key in seen:
                call.broken = True
            seen.add(key)

    def _out(self, piece: str) -> None:
        """Keep `piece` if it is part of the arguments value being read."""
        call = self._current()
        if call is not None and call.args_depth is not None and not call.broken:
            call.pieces.append(piece)

    # ---- handing out ----------------------------------------------------------------------

    def take(self) -> list[tuple[int, str, str]]:
        out: list[tuple[int, str, str]] = []
        for index, call in enumerate(self.calls):
            if call.name is not None and call.pieces and not call.broken:
                out.append((index, call.name, "".join(call.pieces)))
                call.pieces.clear()
        return out
