"""Every limit a request line is held to, in one place (ADR 0017, THREAT_MODEL F-1, F-8, F-11).

The frame cap (64 MiB, framing.py) bounds the bytes of one line. These bound what
those bytes may multiply into: objects the parser builds, work per generated token,
the size of the reply. Each limit is refused with `invalid_request` and a message
that names it, so a client can tell which one it hit. The v1, v2 and embed
`resolve()` methods apply them; the NDJSON loop applies the two that must be
checked before parsing or before anything is echoed (`check_json_budget`,
`check_id`). docs/protocol-v1.md ("Limits") lists them for client authors.
"""

from __future__ import annotations

from .errors import InvalidRequest
from .grammar_cost import GrammarShapeError, stack_bound

# ---- identity -----------------------------------------------------------------------

#: A request id is echoed in every frame of its reply and written to the activity log:
#: 256 UTF-8 bytes fits any UUID, ULID or trace id with room to spare.
MAX_ID_BYTES = 256

# ---- what a request may multiply ----------------------------------------------------------

#: JSON values in one request line, as estimated before parsing (`json_values_bound`:
#: every string, key or not, plus every `,`, `[` and `{` outside strings; that counts a
#: typical value about twice, so the real budget is 65,536 to 131,072 values). The
#: parser's time and memory follow this count, not the byte count: 64 MiB of
#: `{"role":"user","content":"a"}` is two million messages and ~17 s of parsing with the
#: event loop blocked, while a line at this limit parses in about 0.1 s.
MAX_JSON_VALUES = 131_072
#: A line shorter than this cannot reach MAX_JSON_VALUES (n bytes hold at most n/2
#: strings and n separators), so it is not scanned: every line up to 64 KiB.
JSON_SCAN_THRESHOLD = MAX_JSON_VALUES // 2

#: Messages in one conversation (v1 and v2).
MAX_MESSAGES = 4096
#: Stop strings per request, and UTF-8 bytes in each one.
MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256
#: Tools declared by one v2 request (OpenAI's limit too).
MAX_TOOLS = 128
#: Compact JSON bytes of one tool's `input_schema`, and of a `response_format` schema:
#: either may be compiled into a grammar, so it gets the F-11 grammar cap.
MAX_SCHEMA_BYTES = 65_536
#: Attachments (images, audio, video) of one v2 request.
MAX_ATTACHMENTS = 100
#: A client's GBNF grammar (THREAT_MODEL F-11; the llama.cpp backend checks it again).
MAX_GRAMMAR_BYTES = 65_536
#: Parse stacks a grammar may hold at once, as `grammar_cost.stack_bound` estimates them
#: (THREAT_MODEL F-11, ADR 0032): each costs a full-vocabulary pass per constrained
#: token, and optional or repeated items in a row, alternatives and nested rules
#: multiply them while adding only bytes. The same limit holds for a client's
#: `grammar` and for the grammars converted from `response_format` and tool schemas
#: (`check_grammar_stacks`). Converted JSON schemas of nested objects, arrays of objects
#: and enums stay far below (tens; an enum holds one stack per value).
MAX_GRAMMAR_STACKS = 1024

# ---- embeddings -----------------------------------------------------------------------

#: Inputs of one embed request.
MAX_EMBED_INPUTS = 2048
#: Numbers in one embeddings reply (inputs x dimensions). A float takes at most 24 bytes
#: in JSON, so 2,097,152 of them stay below the 64 MiB frame cap whatever their values.
MAX_EMBED_VALUES = 2_097_152

# ---- the TCP first frame ---------------------------------------------------------------

#: `{"type":"auth","key":"..."}` needs a few hundred bytes; nothing bigger is read
#: from a peer that has not authenticated (THREAT_MODEL F-8).
MAX_AUTH_FRAME_BYTES = 4096


def utf8_len(text: str) -> int:
    """UTF-8 length of `text`, lone surrogates counted as the 3 bytes they would take."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def check_id(rid: str) -> None:
    """Refuse an id over MAX_ID_BYTES (the caller must not echo it back)."""
    # Every character is at least one byte: skip encoding a 40 MiB id just to measure it.
    n = len(rid) if len(rid) > MAX_ID_BYTES else utf8_len(rid)
    if n > MAX_ID_BYTES:
        size = "over 256" if len(rid) > MAX_ID_BYTES and not rid.isascii() else str(n)
        raise InvalidRequest(f"id is {size} bytes; at most {MAX_ID_BYTES} (MAX_ID_BYTES)")


def check_count(what: str, n: int, limit: int, name: str) -> None:
    if n > limit:
        raise InvalidRequest(f"{what} has {n} entries; at most {limit} ({name})")


def check_stops(stops: list[str] | None) -> None:
    if not stops:
        return
    check_count("stop", len(stops), MAX_STOP_STRINGS, "MAX_STOP_STRINGS")
    for i, stop in enumerate(stops):
        if stop == "":
            raise InvalidRequest("stop strings must not be empty")
        size = utf8_len(stop)
        if size > MAX_STOP_BYTES:
            raise InvalidRequest(f"stop[{i}] is {size} bytes; at most {MAX_STOP_BYTES} (MAX_STOP_BYTES)")


def check_grammar(grammar: str) -> None:
    size = utf8_len(grammar)
    if size > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(f"grammar is {size} bytes; at most {MAX_GRAMMAR_BYTES} (MAX_GRAMMAR_BYTES)")
    check_grammar_stacks(grammar)


def check_grammar_stacks(grammar: str, what: str = "grammar") -> None:
    """Refuse a grammar (a client's or one converted from a schema) whose estimated parse
    stacks exceed MAX_GRAMMAR_STACKS (F-11). Text that cannot be read is left to
    libllama's parser, which names the fault."""
    try:
        stacks = stack_bound(grammar)
    except GrammarShapeError:
        return
    except RecursionError:
        raise InvalidRequest(f"{what} nests groups or rules too deeply to measure its parse stacks "
                             "(MAX_GRAMMAR_STACKS)") from None
    if stacks > MAX_GRAMMAR_STACKS:
        raise InvalidRequest(
            f"{what} can hold about {stacks} parse stacks at once (optional or repeated items in a row, "
            f"alternatives, nested rules); at most {MAX_GRAMMAR_STACKS} (MAX_GRAMMAR_STACKS)")


def json_values_bound(line: bytes) -> int:
    """An upper bound on the JSON values (keys included) in `line`, in linear time at
    memchr speed, without copying the line or building a Python object per value.

    Once escaped backslashes and escaped quotes are dropped, every remaining `"`
    delimits a string, so half their number is the exact number of strings (keys
    included). Every other value is the first element of a container (one per `[` or
    `{`), follows a `,`, or is the top-level value; so counting `,`, `[` and `{`
    outside strings, plus one, covers them.
    """
    if b'\\\\' in line:
        line = line.replace(b'\\\\', b"")
    if b'\\"' in line:
        line = line.replace(b'\\"', b"")
    strings = line.count(b'"') // 2
    if strings > MAX_JSON_VALUES:
        return strings  # already over: no need to look closer
    if strings > 256:
        # Many strings: one C-level split beats a Python loop over them.
        outside_bytes = b"".join(line.split(b'"')[0::2])
        return strings + 1 + sum(outside_bytes.count(c) for c in (b",", b"[", b"{"))
    # Few strings (perhaps huge ones): count between them in place, copying nothing.
    outside = 1
    pos, end = 0, len(line)
    while pos < end:
        quote = line.find(b'"', pos)
        stop = end if quote < 0 else quote
        outside += line.count(b",", pos, stop) + line.count(b"[", pos, stop) + line.count(b"{", pos, stop)
        if quote < 0:
            break
        close = line.find(b'"', quote + 1)
        if close < 0:
            break
        pos = close + 1
    return strings + outside


def check_json_budget(line: bytes | str) -> None:
    """Refuse, before parsing, a line that would build more than MAX_JSON_VALUES values."""
    if len(line) < JSON_SCAN_THRESHOLD:
        return
    raw = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else bytes(line)
    bound = json_values_bound(raw)
    if bound > MAX_JSON_VALUES:
        raise InvalidRequest(
            f"request holds about {bound} JSON values; at most {MAX_JSON_VALUES} (MAX_JSON_VALUES)"
        )
