"""Just enough of a Server-Sent Events reader for OpenAI-style streams.

Bytes go in as the network delivers them; complete events come out. Only what the
OpenAI-compatible servers use is kept: `data:` lines (joined with newlines) and the
`event:` name. llama-server reports a failure as an `error:` line, which the SSE
grammar would drop as an unknown field, so it is surfaced as an event named "error".
Comments (`: ping`) and `id:`/`retry:` are ignored.

Every line and every event is bounded: a remote that never sends a newline cannot
make the daemon buffer without end.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest line or event we buffer. A chunk is one token's delta; even a whole
#: tool call's arguments in one chunk stay far below this.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSEError(Exception):
    """The byte stream is not an event stream we can read."""


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEDecoder:
    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._data: list[str] = []
        self._data_bytes = 0
        self._event = ""
        self._error: list[str] = []
        self._at_start = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Take the next bytes; return the events they completed."""
        self._buf += chunk
        out: list[SSEEvent] = []
        start = 0
        buf = self._buf
        n = len(buf)
        while start < n:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == n:
                    break  # a CR at the end may be the first half of CRLF: wait
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = lf, lf + 1
            self._line(bytes(buf[start:end]), out)
            start = nxt
        del buf[:start]
        if len(buf) > self._max:
            raise SSEError(f"line longer than {self._max} bytes")
        return out

    def close(self) -> list[SSEEvent]:
        """The stream ended: an event not closed by a blank line is dropped (as SSE says)."""
        if self._buf.endswith(b"\r"):
            out: list[SSEEvent] = []
            self._line(bytes(self._buf[:-1]), out)
            self._buf.clear()
            return out
        return []

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if self._at_start:
            self._at_start = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if not raw:
            self._dispatch(out)
            return
        if raw[:1] == b":":
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SSEError("stream is not UTF-8") from None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_bytes += len(raw)
            if self._data_bytes > self._max:
                raise SSEError(f"event larger than {self._max} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._error.append(value)

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._error:
            out.append(SSEEvent("\n".join(self._error), "error"))
        elif self._data:
            out.append(SSEEvent("\n".join(self._data), self._event or "message"))
        self._data = []
        self._data_bytes = 0
        self._event = ""
        self._error = []
