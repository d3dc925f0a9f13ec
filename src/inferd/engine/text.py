"""The text a generation emits, for every backend: no llama.cpp here, so the mock
backend shares it with llama.cpp's scheduler.

- `Utf8Stream`: piece bytes -> text without ever splitting a character.
- `StopScanner`: cuts the text at the first stop string and holds back any tail that
  could still become one.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Incremental UTF-8 decoding: a character split across tokens waits for its tail."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, data: bytes) -> str:
        return self._dec.decode(data)

    def finish(self) -> None:
        # An incomplete trailing sequence can never be completed: drop it rather
        # than emit U+FFFD.
        self._dec.reset()


class StopScanner:
    """Cuts the text at the first stop string and holds back any tail that could still
    become one.

    An Aho-Corasick automaton over the stop strings (issue 8 item 5, THREAT_MODEL
    F-1): each pushed character costs O(1) amortised, whatever the number and length
    of the stops. The
    scan it replaces searched every stop in the pending text and tried every prefix of
    every stop against its end: O(stops x length) per token, with the GIL held (100,000
    stops cost 56 ms a token). The result is the same: the earliest-starting stop is
    cut at, and the held tail is the longest suffix that is a proper prefix of a stop.
    """

    __slots__ = ("_goto", "_fail", "_depth", "_out", "_longest", "_state", "_pending", "matched")

    def __init__(self, stops: list[str]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        out = [0]  # per state: length of the longest stop that ends there (0: none)
        for stop in stops:
            if not stop:
                continue
            node = 0
            for ch in stop:
                nxt = goto[node].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto[node][ch] = nxt
                    goto.append({})
                    depth.append(depth[node] + 1)
                    out.append(0)
                node = nxt
            out[node] = len(stop)
        fail = [0] * len(goto)
        order = list(goto[0].values())  # breadth first: a node's fail link is shallower
        for node in order:
            for ch, child in goto[node].items():
                f = fail[node]
                while f and ch not in goto[f]:
                    f = fail[f]
                fail[child] = goto[f].get(ch, 0)
                if not out[child]:
                    out[child] = out[fail[child]]
                order.append(child)
        self._goto = goto
        self._fail = fail
        self._depth = depth
        self._out = out
        self._longest = max(depth)
        self._state = 0
        self._pending = ""
        #: The stop string the text was cut at, once one was (Anthropic's `stop_sequence`).
        self.matched: str | None = None

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        if not self._longest:
            return text, False
        goto, fail, out, longest = self._goto, self._fail, self._out, self._longest
        state = self._state
        base = len(self._pending)
        first = -1
        size = 0
        for i, ch in enumerate(text):
            nxt = goto[state].get(ch)
            while nxt is None and state:
                state = fail[state]
                nxt = goto[state].get(ch)
            state = nxt or 0
            end = base + i + 1
            n = out[state]
            if n and (first < 0 or end - n < first):
                first, size = end - n, n
            if first >= 0 and end - first >= longest:
                break  # a stop ending later would start later
        pending = self._pending + text
        if first >= 0:
            self._state = 0
            self._pending = ""
            self.matched = pending[first:first + size]
            return pending[:first], True
        self._state = state
        hold = self._depth[state]
        self._pending = pending[len(pending) - hold:] if hold else ""
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        self._state = 0
        return out
