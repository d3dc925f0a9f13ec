"""Property-based fuzzing of the wire: framing, the three request parsers, TokenLines,
and a live daemon's v1 / v2 / embed sockets (upstream-protocol §3, §5, §6).

Invariants checked:

* FrameReader (random bytes, random feed_data chunking, random cap 1..4096, random
  StreamReader limit so that the >limit slow path runs too): raises nothing but
  FrameTooLarge; every frame is newline-free and <= cap; frames are exactly the
  input's lines in order (so frames joined by newlines reproduce the consumed
  prefix); a line of exactly `cap` bytes passes, cap+1 raises at its turn; a partial
  last line is held until EOF and then returned; EOF with nothing buffered is None,
  and None is sticky.
* parse_request / parse_embed_request / v2.parse_request on random bytes, random
  text, random JSON values, mutated valid requests, valid requests with one number
  at a boundary, and embed requests around the input cap: a model or DecodeError, no
  other exception; resolve() returns or raises InvalidRequest; a parsed v1/v2 request
  never holds a temperature/top_p that is not a finite float (NaN, Infinity, 1e400
  and integers too large for a float, e.g. 10**400, are DecodeErrors), nor a
  non-finite float anywhere in v2's free-form JSON (tool input_schema, tool_use
  input); an embed request with more than 2048 inputs resolves to InvalidRequest
  naming the count and the cap; encoding a parsed model the way our client does
  (client.transport.encode_line) parses back to an equal model.
* TokenLines(id)(text) is, as JSON, TokenFrame(id, text).model_dump_json().
* A live daemon (in this process, own thread and event loop, mock backend): every
  answer line is one JSON object of the surface, and each request gets exactly one of
  three answers, each checked frame by frame by an oracle written here with the
  standard library's json and the mock's tape - never with the daemon's own parsers:
  served (token*/done, frame*/done, embeddings; the mock's embed refuses `dimensions`
  outside 1..4096 with an invalid_request frame), refused (invalid_request echoing the
  id), or a decode error (id "", then the connection closes). Lines that are not JSON,
  or JSON but no object, can only be decode errors; lines whose generator knows their
  fate (valid requests, numbers out of range, too many inputs) must get it. The
  connection closes cleanly where upstream says (after a decode error, or after the
  client's EOF), no exchange makes a handler fail, and after every test the daemon is
  idle and the process holds exactly the descriptors it held before. Embed requests
  near the 2048-input cap and the 4096-dimension cap are sent too, kept small enough
  that a correct daemon answers at once.

Every test stands alone: hypothesis draws from a seed fixed per test (derandomize, no
example database), and the shared live daemon is checked clean before and after each
test, so no test depends on which ran before it.

The regression tests at the end of the file pin the bugs this fuzzing found: huge
integer sampling numbers, non-finite values in v2 free-form JSON, and unbounded mock
embed dimensions (plus the embed input cap added with those fixes).

Case counts per test are printed at module teardown (visible with `-s`) and in the
terminal summary (tests/fuzz/conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st

from daemon_harness import assert_same_fds, cleanup, open_fds, short_tmpdir, start_daemon
from inferd.client.transport import encode_line
from inferd.proto import v2
from inferd.proto.embed import parse_embed_request
from inferd.proto.errors import DecodeError, FrameTooLarge, InvalidRequest
from inferd.proto.framing import STREAM_LIMIT, FrameReader
from inferd.proto.v1 import (ContextInfo, DoneFrame, StopReason, Timings, TokenFrame, TokenLines, Usage, encode_done,
                             parse_request, parse_response)
from inferd.proto.framing import encode_frame

# The caps the oracle holds the daemon to (spelled out here, not imported from src).
EMBED_MAX_INPUTS = 2048  # proto/embed.py: more inputs -> InvalidRequest
MOCK_MAX_DIMENSIONS = 4096  # engine/mock.py: dimensions outside 1..4096 -> invalid_request
EMBED_MAX_VALUES = 2_097_152  # proto/limits.py: inputs x dimensions beyond it -> InvalidRequest

# ---- bookkeeping -----------------------------------------------------------------------

CASES: collections.Counter[str] = collections.Counter()
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def count(test: str, outcome: str | None = None) -> None:
    CASES[test] += 1
    if outcome is not None:
        OUTCOMES[test][outcome] += 1
        with contextlib.suppress(InvalidArgument):  # outside a @given test
            event(outcome)


def summary_lines() -> list[str]:
    return [f"{name}: {n} cases  {dict(OUTCOMES.get(name, {}))}" for name, n in CASES.items()]


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print("\n==== hypothesis cases per test (tests/fuzz/test_fuzz_wire.py) ====")
    for text in summary_lines():
        print("  " + text)


# derandomize: each test draws from a seed fixed by the test itself (not by what ran
# before it, nor by a database of earlier runs), so any order, any subset, same cases.
FAST = settings(deadline=None, max_examples=300, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
LIVE = settings(FAST, max_examples=120)


# ---- FrameReader ---------------------------------------------------------------------------

def _line_body(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda b: b.replace(b"\n", b""))


@st.composite
def frame_streams(draw) -> tuple[bytes, int]:
    cap = draw(st.integers(1, 16) | st.integers(1, 4096))
    near_cap = st.integers(max(0, cap - 2), cap + 2).map(lambda n: b"x" * n)
    body = st.one_of(_line_body(64), near_cap, st.just(b""),
                     st.lists(st.sampled_from([b"a", b"\r", b"\x00", b"\xff", b" "]), max_size=20).map(b"".join))
    kind = draw(st.sampled_from(["lines", "random", "newline-heavy"]))
    if kind == "lines":
        lines = draw(st.lists(body, max_size=8))
        trailing = draw(body)
        data = b"".join(line + b"\n" for line in lines) + trailing
    elif kind == "random":
        data = draw(st.binary(max_size=2048))
    else:
        data = draw(st.lists(st.sampled_from([b"\n", b"\n\n", b"a", b"bb", b"\r\n", b"\x00"]), max_size=60).map(b"".join))
    return data, cap


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(newline-terminated lines without their newline, the trailing partial line)."""
    *complete, trailing = data.split(b"\n")
    return complete, trailing


async def _read_events(frames: FrameReader, out: list[Any]) -> None:
    while True:
        try:
            frame = await frames.read_frame()
        except FrameTooLarge:
            out.append("too-large")
            return
        out.append(frame)
        if frame is None:
            # "no more frames" is sticky
            out.append(await frames.read_frame())
            return


async def drive_frame_reader(data: bytes, cap: int, limit: int, chunks: list[int], eof_late: bool) -> tuple[list[Any], list[Any] | None]:
    """Feed `data` in `chunks` (cycled) while a reader task reads; returns (events, events-before-EOF)."""
    reader = asyncio.StreamReader(limit=limit)
    events: list[Any] = []
    task = asyncio.create_task(_read_events(FrameReader(reader, cap), events))
    pos = 0
    i = 0
    while pos < len(data):
        size = chunks[i % len(chunks)]
        reader.feed_data(data[pos:pos + size])
        pos += size
        i += 1
        await asyncio.sleep(0)
    before_eof: list[Any] | None = None
    if eof_late:
        for _ in range(8):
            await asyncio.sleep(0)
        if not task.done():
            before_eof = list(events)
    reader.feed_eof()
    await asyncio.wait_for(task, 5)
    return events, before_eof


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as r:
        yield r


@FAST
@given(stream=frame_streams(),
       limit=st.sampled_from([1, 2, 3, 7, 16, 100, 4096, STREAM_LIMIT]),
       chunks=st.lists(st.integers(1, 300), min_size=1, max_size=8),
       eof_late=st.booleans())
def test_frame_reader_random_streams(runner, stream, limit, chunks, eof_late) -> None:
    data, cap = stream
    try:
        events, before_eof = runner.run(drive_frame_reader(data, cap, limit, chunks, eof_late))
    except FrameTooLarge:  # pragma: no cover - _read_events catches it
        raise AssertionError("FrameTooLarge escaped the reader task")
    complete, trailing = split_lines(data)

    # Every frame returned is newline-free and within the cap.
    frames = [e for e in events if isinstance(e, bytes)]
    for frame in frames:
        assert b"\n" not in frame and len(frame) <= cap

    too_large = [i for i, line in enumerate(complete) if len(line) > cap]
    if too_large:  # a complete line is too large: everything before it, then the error
        idx = too_large[0]
        want = complete[:idx] + ["too-large"]
        assert events == want, (events, want)
        # Frames joined by newlines reproduce the consumed prefix of the input.
        assert b"".join(f + b"\n" for f in complete[:idx]) == data[:sum(len(f) + 1 for f in complete[:idx])]
        outcome = "too-large-line"
    else:
        assert events[:len(complete)] == complete, (events, complete)
        tail = events[len(complete):]
        if trailing == b"":
            assert tail == [None, None], tail
            outcome = "clean-eof"
        elif len(trailing) > cap:
            assert tail == ["too-large"], tail
            outcome = "too-large-partial"
        else:
            assert tail == [trailing, None, None], tail
            outcome = "partial-at-eof"
        consumed = b"".join(f + b"\n" for f in complete)
        assert data.startswith(consumed)
        if outcome == "partial-at-eof":
            assert consumed + trailing == data

    if eof_late and before_eof is not None:
        # Before EOF the reader had returned exactly the complete lines and was waiting.
        assert before_eof == complete[:len(before_eof)]
        assert len(before_eof) == len(complete) and outcome in ("clean-eof", "partial-at-eof", "too-large-partial")
    elif eof_late and outcome in ("clean-eof", "partial-at-eof"):
        raise AssertionError(f"reader finished before EOF: {events}")
    count("frame_reader_random_streams", outcome)


# ---- JSON strategies -----------------------------------------------------------------------

V1_FIELDS = ["id", "messages", "role", "content", "temperature", "top_p", "top_k", "max_tokens", "stream",
             "image_token_budget", "grammar", "stop", "seed"]
EMBED_FIELDS = ["id", "input", "dimensions", "task"]
V2_FIELDS = ["id", "messages", "role", "content", "type", "text", "attachment_id", "attachments", "kind",
             "width", "height", "sample_rate", "bytes", "tools", "name", "description", "input_schema",
             "tool_call_id", "input", "temperature", "top_p", "top_k", "max_tokens", "stream"]
ALL_FIELDS = sorted(set(V1_FIELDS + EMBED_FIELDS + V2_FIELDS))

TAG_VALUES = ["system", "user", "assistant", "text", "image", "audio", "video", "tool_use", "tool_result",
              "retrieval_query", "similarity", "USER", "", "thinking"]

# Every code point, lone surrogates included (they only survive as \\uXXXX escapes or
# as invalid UTF-8 on the wire).
any_char = st.characters(blacklist_categories=())  # () = no exclusions: Cs (surrogates) included
special_text = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\u2028", "\u2029",
                                "\ufeff", "\ufffd", "\U0010ffff", "\U0001f600", "\ud800", "\udfff",
                                "\ud83d\ude00", "é", "e\u0301"])
wild_text = st.lists(any_char.map(str) | special_text, max_size=12).map("".join)

HUGE_INTS = [-1, 0, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64, -2**63, 10**308,
             2**1024, 10**400, -10**400]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 1e-400, 0.5]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
                         st.floats(), st.sampled_from(SPECIAL_FLOATS), wild_text, st.sampled_from(TAG_VALUES))
json_keys = st.sampled_from(ALL_FIELDS) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=8)


@st.composite
def serialised(draw, value_strategy) -> bytes:
    """One JSON value as a request line body, in one of several encodings.

    json.dumps writes NaN/Infinity literals for non-finite floats (not JSON) and, with
    ensure_ascii, lone surrogates as \\ud800 escapes; with ensure_ascii=False they
    are encoded with surrogatepass, i.e. as invalid UTF-8.
    """
    value = draw(value_strategy)
    mode = draw(st.sampled_from(["ascii", "utf8", "compact", "padded"]))
    if mode == "ascii":
        return json.dumps(value).encode()
    if mode == "compact":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if mode == "padded":
        pad = draw(st.sampled_from([" ", "\t", "\r", " \r", ""]))
        return (pad + json.dumps(value) + pad).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# ---- valid requests and mutations ----------------------------------------------------------

plain_text = st.text(max_size=20)
roles = st.sampled_from(["system", "user", "assistant"])


@st.composite
def valid_v1(draw) -> dict[str, Any]:
    req: dict[str, Any] = {"messages": draw(st.lists(st.fixed_dictionaries({"role": roles, "content": plain_text}),
                                                    min_size=1, max_size=3))}
    optional = {
        "id": plain_text,
        "temperature": st.floats(0, 2) | st.integers(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 2**32 - 1),
        "max_tokens": st.integers(0, 4000),
        "stream": st.booleans(),
        "image_token_budget": st.sampled_from([70, 140, 280, 560, 1120]),
        "grammar": st.sampled_from(["", 'root ::= "a"']),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "seed": st.integers(0, 2**32 - 1),
    }
    for key, strat in optional.items():
        if draw(st.booleans()):
            req[key] = draw(strat)
    return req


@st.composite
def valid_embed(draw) -> dict[str, Any]:
    req: dict[str, Any] = {"input": draw(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4))}
    if draw(st.booleans()):
        req["id"] = draw(plain_text)
    if draw(st.booleans()):
        req["dimensions"] = draw(st.integers(0, 64))
    if draw(st.booleans()):
        req["task"] = draw(st.sampled_from(["retrieval_query", "retrieval_document", "similarity", "classification",
                                            "clustering", "question_answering", "fact_verification",
                                            "code_retrieval_query"]))
    return req


@st.composite
def valid_v2(draw) -> dict[str, Any]:
    attachments: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["image", "audio"]))
        if kind == "image":
            w, h = draw(st.integers(0, 3)), draw(st.integers(0, 3))
            attachments.append({"kind": "image", "id": f"img{i}", "width": w, "height": h,
                                "bytes": base64.b64encode(b"\x01" * (w * h * 3)).decode()})
        else:
            attachments.append({"kind": "audio", "id": f"aud{i}", "sample_rate": 16000,
                                "bytes": base64.b64encode(b"\0\0\0\0" * draw(st.integers(0, 4))).decode()})
    text_block = st.builds(lambda t: {"type": "text", "text": t}, plain_text)
    blocks = [text_block]
    if attachments:
        blocks.append(st.sampled_from([{"type": a["kind"], "attachment_id": a["id"]} for a in attachments]))
    blocks.append(st.builds(lambda n: {"type": "tool_use", "tool_call_id": "tc-1", "name": n, "input": {"q": 1}},
                            plain_text))
    leaf = st.one_of(*blocks)
    block = leaf | st.builds(lambda c: {"type": "tool_result", "tool_call_id": "tc-1", "content": c},
                             st.lists(leaf, max_size=2))
    messages = draw(st.lists(st.fixed_dictionaries({"role": roles, "content": st.lists(block, min_size=1, max_size=3)}),
                             min_size=1, max_size=3))
    def uses(blocks: list[dict[str, Any]], kind: str) -> bool:
        return any(b["type"] == kind or (b["type"] == "tool_result" and uses(b["content"], kind)) for b in blocks)

    if any(uses(m["content"], "tool_result") for m in messages) and not any(
            b["type"] == "tool_use" for m in messages for b in m["content"]):  # top level only counts
        # A tool_result must answer a tool_use of the same request (upstream v0.8).
        messages.insert(0, {"role": "assistant", "content": [
            {"type": "tool_use", "tool_call_id": "tc-1", "name": "t", "input": {}}]})
    req: dict[str, Any] = {"messages": messages}
    if attachments:
        req["attachments"] = attachments
    if draw(st.booleans()):
        names = draw(st.lists(st.text(max_size=6), unique=True, max_size=2))
        req["tools"] = [{"name": n, "description": "d", "input_schema": {"type": "object"}} for n in names]
    optional = {"id": plain_text, "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
                "top_k": st.integers(0, 100), "max_tokens": st.integers(0, 100), "stream": st.booleans()}
    for key, strat in optional.items():
        if draw(st.booleans()):
            req[key] = draw(strat)
    return req


def _slots(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every (path) to a container slot in a JSON document, the root included as ()."""
    out: list[tuple] = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_slots(v, path + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_slots(v, path + (i,)))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


MUTATIONS = ["delete", "insert", "swap-type", "huge-int", "special-float", "unicode", "wrap", "null", "empty",
             "number"]
# For "number": the numbers that sit at a boundary of some field (a float's range, NaN and
# Infinity, u32, the mock's 1..4096 dimensions) ...
BOUNDARY_NUMBERS = st.sampled_from(HUGE_INTS + SPECIAL_FLOATS + [1, 2, 1.5, MOCK_MAX_DIMENSIONS, MOCK_MAX_DIMENSIONS + 1])
# ... put where a number is read: the sampling numbers, embed dimensions, or anywhere
# inside v2's free-form JSON (tool input_schema, tool_use input).
NUMBER_FIELDS = ["temperature", "top_p", "dimensions"]
FREE_FORM_KEYS = ("input_schema", "input")


@st.composite
def mutated(draw, base: st.SearchStrategy[dict[str, Any]]) -> bytes:
    doc = copy.deepcopy(draw(base))
    applied = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))):
        slots = [p for p in _slots(doc) if p]
        op = draw(st.sampled_from(MUTATIONS))
        if op == "number":
            value = draw(BOUNDARY_NUMBERS)
            free = [p for p in _slots(doc)
                    if any(k in FREE_FORM_KEYS for k in p) and isinstance(_get(doc, p), (dict, list))]
            if free and draw(st.booleans()):
                target = _get(doc, draw(st.sampled_from(free)))
                if isinstance(target, dict):
                    target[draw(st.sampled_from(["n", "type"]))] = value
                else:
                    target.insert(draw(st.integers(0, len(target))), value)
            else:
                doc[draw(st.sampled_from(NUMBER_FIELDS))] = value  # the root is always an object
            applied.append("number")
            continue
        if op == "insert" or not slots:
            containers = [p for p in _slots(doc) if isinstance(_get(doc, p), (dict, list))]
            if not containers:
                break
            target = _get(doc, draw(st.sampled_from(containers)))
            value = draw(json_values)
            if isinstance(target, dict):
                target[draw(json_keys)] = value
            else:
                target.insert(draw(st.integers(0, len(target))), value)
            applied.append("insert")
            continue
        path = draw(st.sampled_from(slots))
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "swap-type":
            parent[key] = draw(json_values)
        elif op == "huge-int":
            parent[key] = draw(st.sampled_from(HUGE_INTS))
        elif op == "special-float":
            parent[key] = draw(st.sampled_from(SPECIAL_FLOATS))
        elif op == "unicode":
            parent[key] = draw(wild_text)
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
        elif op == "null":
            parent[key] = None
        elif op == "empty":
            parent[key] = draw(st.sampled_from(["", [], {}, 0]))
        applied.append(op)
    note(f"mutations: {applied}")
    raw = draw(serialised(st.just(doc)))
    if draw(st.integers(0, 9)) == 0:
        # Occasionally damage the text itself (truncate, splice a byte, duplicate a key).
        how = draw(st.sampled_from(["truncate", "splice", "dup-key"]))
        if how == "truncate" and raw:
            raw = raw[:draw(st.integers(0, len(raw) - 1))]
        elif how == "splice":
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=3)).replace(b"\n", b"") + raw[at:]
        elif how == "dup-key" and raw.startswith(b"{") and len(raw) > 2:
            raw = b'{"id":"dup",' + raw[1:]
    return raw


# ---- the parser oracle ---------------------------------------------------------------------

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "v1": parse_request,
    "embed": parse_embed_request,
    "v2": v2.parse_request,
}


@dataclass
class Verdict:
    kind: str  # "decode" | "invalid" | "ok"
    id: str = ""
    message: str = ""
    resolved: Any = None


def _finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (an int too large for a float is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _json_has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_json_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_json_has_nonfinite(v) for v in value)
    return False


def _v2_json_values(model: v2.RequestV2) -> list[Any]:
    out: list[Any] = [t.input_schema for t in model.tools]

    def walk(blocks: list[Any]) -> None:
        for b in blocks:
            if isinstance(b, v2.ToolUseBlock):
                out.append(b.input)
            elif isinstance(b, v2.ToolResultBlock):
                walk(b.content)

    for m in model.messages:
        walk(m.content)
    return out


def classify(surface: str, line: bytes | str) -> Verdict:
    """What the daemon must do with this request line (and the parser invariants)."""
    try:
        model = PARSERS[surface](line)
    except DecodeError as exc:
        assert exc.message.startswith("decode: ")
        return Verdict("decode", message=exc.message)
    # Anything else escaping the parser fails the test right here.
    if surface in ("v1", "v2"):
        # NaN, Infinity, 1e400 and integers beyond a float's range are decode errors
        # (upstream's serde_json: "number out of range"), never a parsed request.
        for name in ("temperature", "top_p"):
            value = getattr(model, name)
            assert value is None or _finite_number(value), f"{surface} parsed a non-finite {name}: {value!r}"
    if surface == "v2":
        bad = [v for v in _v2_json_values(model) if _json_has_nonfinite(v)]
        assert not bad, f"v2 parsed non-finite free-form JSON: {bad!r}"
    try:
        resolved = model.resolve()
    except InvalidRequest as exc:
        assert exc.message.startswith("invalid request: ")
        if surface == "embed" and len(model.input) > EMBED_MAX_INPUTS:
            # The count is checked before any single input.
            assert exc.message == (f"invalid request: input has {len(model.input)} entries; "
                                   f"at most {EMBED_MAX_INPUTS} per request"), exc.message
        return Verdict("invalid", id=model.id, message=exc.message)
    if surface == "embed":
        assert 1 <= len(resolved.input) <= EMBED_MAX_INPUTS, f"embed resolved {len(resolved.input)} inputs"
    if surface in ("v1", "v2"):
        for name in ("temperature", "top_p"):
            value = getattr(resolved, name)
            assert value is None or math.isfinite(value), f"{surface} resolved a non-finite {name}: {value!r}"
    # Our own client's encoding of the parsed request must parse back to the same request.
    again = PARSERS[surface](encode_line(model)[:-1])
    assert again == model, (model, again)
    return Verdict("ok", id=model.id, resolved=resolved)


def check_all_parsers(test: str, line: bytes | str) -> None:
    kinds = [f"{surface}:{classify(surface, line).kind}" for surface in PARSERS]
    count(test, " ".join(kinds))


@FAST
@given(line=st.binary(max_size=512))
def test_parsers_random_bytes(line: bytes) -> None:
    check_all_parsers("parsers_random_bytes", line)


@FAST
@given(line=wild_text | st.text(max_size=200))
def test_parsers_random_text(line: str) -> None:
    # parse_* also take str; lone surrogates in a str must still be a DecodeError.
    check_all_parsers("parsers_random_text", line)


@FAST
@given(line=serialised(json_values))
def test_parsers_random_json_values(line: bytes) -> None:
    check_all_parsers("parsers_random_json_values", line)


@FAST
@given(line=serialised(json_objects))
def test_parsers_random_json_objects(line: bytes) -> None:
    # Objects keyed mostly by real field names reach much deeper into the models.
    check_all_parsers("parsers_random_json_objects", line)


BASES = {"v1": valid_v1(), "embed": valid_embed(), "v2": valid_v2()}


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_valid_requests_are_ok(surface: str) -> None:
    @FAST
    @given(doc=BASES[surface])
    def inner(doc: dict[str, Any]) -> None:
        verdict = classify(surface, json.dumps(doc).encode())
        assert verdict.kind == "ok", (doc, verdict)
        count(f"valid_requests_are_ok[{surface}]", "ok")

    inner()


U32_MAX = 2**32 - 1
FINITE_NUMBERS = [0, 1, -1, 2**53 + 1, 10**308, 0.5, -0.0, 5e-324, 1.7976931348623157e308, -1e300]
NON_FINITE = [math.nan, math.inf, -math.inf]
# Half of the draws from each side of the line (sampled_from alone favours its first entries).
SAMPLING_NUMBERS = st.one_of(st.sampled_from([2**1024, 10**400, -10**400] + NON_FINITE),
                             st.sampled_from(FINITE_NUMBERS + HUGE_INTS[:-3]))
FREE_FORM_NUMBERS = st.one_of(st.sampled_from(NON_FINITE), st.sampled_from(FINITE_NUMBERS))
DIMENSIONS = st.one_of(st.sampled_from([-1, U32_MAX + 1, 2**64, 10**400, 0.5, 1.0, math.nan]),
                       st.sampled_from([0, 1, MOCK_MAX_DIMENSIONS, MOCK_MAX_DIMENSIONS + 1, 2**31, U32_MAX]))


@st.composite
def boundary_request(draw, surface: str) -> tuple[bytes, str, str]:
    """(a valid request with exactly one number at a boundary, where, the verdict it must get).

    Sampling numbers and v2 free-form JSON must be finite floats: NaN, Infinity and
    integers beyond a float's range are decode errors (upstream: "number out of
    range"). Embed dimensions must be a u32 (whether the backend can build that many
    is the live daemon's business).
    """
    doc = copy.deepcopy(draw(BASES[surface]))
    if surface == "embed":
        value = draw(DIMENSIONS)
        doc["dimensions"] = value
        where = "dimensions"
        if not (isinstance(value, int) and 0 <= value <= U32_MAX):
            return draw(serialised(st.just(doc))), where, "decode"
        # A u32 parses; a reply of more than EMBED_MAX_VALUES numbers is refused (issue 8).
        too_big = len(doc["input"]) * value > EMBED_MAX_VALUES
        return draw(serialised(st.just(doc))), where, "invalid" if too_big else "ok"
    else:
        places = ["input_schema", "tool_use.input", "temperature", "top_p"] if surface == "v2" else ["temperature", "top_p"]
        where = draw(st.sampled_from(places))
        if where in ("temperature", "top_p"):
            value = draw(SAMPLING_NUMBERS)
            doc[where] = value
            ok = _finite_number(value)
        else:
            # Integers beyond a float's range are left out here: v2 keeps them in free-form JSON.
            value = draw(FREE_FORM_NUMBERS)
            nested = draw(st.sampled_from([value, [value], {"n": value}, {"type": "object", "x": [1, {"y": value}]}]))
            if where == "input_schema":  # the name is longer than any drawn one: still unique
                doc.setdefault("tools", []).append({"name": "boundary", "description": "d", "input_schema": nested})
            else:
                message = doc["messages"][draw(st.integers(0, len(doc["messages"]) - 1))]
                message["content"].append({"type": "tool_use", "tool_call_id": "tc-b", "name": "t", "input": nested})
            ok = math.isfinite(value)
    return draw(serialised(st.just(doc))), where, "ok" if ok else "decode"


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_parsers_boundary_numbers(surface: str) -> None:
    @FAST
    @given(case=boundary_request(surface))
    def inner(case: tuple[bytes, str, str]) -> None:
        line, where, want = case
        verdict = classify(surface, line)
        assert verdict.kind == want, (line, verdict)
        count(f"parsers_boundary_numbers[{surface}]", f"{where}:{verdict.kind}")

    inner()


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_parsers_mutated_requests(surface: str) -> None:
    @FAST
    @given(line=mutated(BASES[surface]))
    def inner(line: bytes) -> None:
        verdict = classify(surface, line)
        # The other two parsers must hold the invariant on a foreign surface's request too.
        for other in PARSERS:
            if other != surface:
                classify(other, line)
        count(f"parsers_mutated_requests[{surface}]", verdict.kind)

    inner()


# Embed requests around the caps. Whatever the mock must build (inputs x dimensions, for
# a request it accepts) stays at or below LIVE_MAX_FLOATS, so the live daemon answers
# these at once too.
LIVE_MAX_FLOATS = 1 << 16
INPUT_COUNTS = st.one_of(st.integers(1, 16), st.integers(EMBED_MAX_INPUTS - 8, EMBED_MAX_INPUTS + 8),
                         st.sampled_from([1, EMBED_MAX_INPUTS, EMBED_MAX_INPUTS + 1, 2 * EMBED_MAX_INPUTS, 5000]))
OUT_OF_RANGE_DIMS = st.sampled_from([0, MOCK_MAX_DIMENSIONS + 1, 5000, 100_000, 2**31, 2**32 - 1]) | \
    st.integers(MOCK_MAX_DIMENSIONS + 1, 2**32 - 1)


@st.composite
def embed_near_caps(draw) -> dict[str, Any]:
    n = draw(INPUT_COUNTS)
    pool = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4))
    inputs = [pool[i % len(pool)] for i in range(n)]
    if draw(st.integers(0, 4)) == 0:
        inputs[draw(st.integers(0, n - 1))] = ""  # refused by name, unless the count is refused first
    req: dict[str, Any] = {"input": inputs}
    if draw(st.booleans()):
        req["id"] = draw(plain_text)
    if n > EMBED_MAX_INPUTS:
        dims = draw(st.none() | st.integers(0, 2**32 - 1) | OUT_OF_RANGE_DIMS)
    else:
        cap = min(MOCK_MAX_DIMENSIONS, LIVE_MAX_FLOATS // n)  # the default (None) is 8 <= cap
        dims = draw(st.none() | st.integers(1, cap) | st.just(cap) | OUT_OF_RANGE_DIMS)
    if dims is not None:
        req["dimensions"] = dims
    return req


@FAST
@given(doc=embed_near_caps())
def test_parsers_embed_caps(doc: dict[str, Any]) -> None:
    verdict = classify("embed", json.dumps(doc).encode())
    n = len(doc["input"])
    if n > EMBED_MAX_INPUTS:
        # classify already checked the message names the count and the cap.
        assert verdict.kind == "invalid", verdict
        outcome = "too-many-inputs"
    elif "" in doc["input"]:
        assert verdict.kind == "invalid" and verdict.message == (
            f"invalid request: input[{doc['input'].index('')}] must not be empty"), verdict
        outcome = "empty-input"
    elif n * doc.get("dimensions", 0) > EMBED_MAX_VALUES:
        # Issue 8: a reply that could not fit one frame is refused before any compute.
        assert verdict.kind == "invalid" and "(MAX_EMBED_VALUES)" in verdict.message, verdict
        outcome = "reply-too-big"
    else:
        assert verdict.kind == "ok", verdict
        # The parser accepts any u32; the mock refuses what it cannot build (see the live tests).
        assert verdict.resolved.dimensions == doc.get("dimensions")
        outcome = "ok"
    count("parsers_embed_caps", outcome)


# ---- TokenLines -------------------------------------------------------------------------------

scalar_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | \
    st.lists(special_text.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)), max_size=10).map("".join)


@FAST
@given(id=scalar_text, text=scalar_text)
def test_token_lines_match_token_frame(id: str, text: str) -> None:
    line = TokenLines(id)(text)
    assert line.endswith(b"\n") and b"\n" not in line[:-1] and b"\r" not in line
    reference = TokenFrame(id=id, content=text).model_dump_json()
    assert json.loads(line) == json.loads(reference) == {"type": "token", "id": id, "content": text}
    # What our client decodes it to:
    assert parse_response(line) == TokenFrame(id=id, content=text)
    # U+2028/2029 travel raw (valid JSON, and fine for NDJSON: only \n splits lines).
    count("token_lines_match_token_frame", "ok")


counts = st.integers(0, 2**40)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12)


@FAST
@given(id=scalar_text, text=scalar_text, backend=scalar_text, prompt=counts, completion=counts,
       cached=st.none() | counts, thinking=st.none() | counts, reason=st.sampled_from(list(StopReason)),
       timings=st.none() | st.builds(Timings, prompt_ms=finite, generate_ms=finite, tokens_per_second=finite),
       context=st.none() | st.builds(ContextInfo, used=counts, max=counts))
def test_encode_done_writes_what_done_frame_writes(id: str, text: str, backend: str, prompt: int, completion: int,
                                                   cached: int | None, thinking: int | None, reason: StopReason,
                                                   timings: Timings | None, context: ContextInfo | None) -> None:
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, thinking_tokens=thinking)
    line = encode_done(id, text, usage, reason, backend, timings, context)
    reference = encode_frame(DoneFrame(id=id, content=text, usage=usage, stop_reason=reason, backend=backend,
                                       timings=timings, context=context))
    # The same members in the same order with the same values (the bytes differ only
    # where two JSON encoders may escape a character differently).
    assert list(json.loads(line).items()) == list(json.loads(reference).items())
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert parse_response(line) == parse_response(reference)
    count("encode_done_matches_done_frame", "ok")


def test_encode_done_refuses_what_the_frame_cap_refuses() -> None:
    from inferd.proto.framing import MAX_FRAME_BYTES

    usage = Usage(prompt_tokens=1, completion_tokens=1)
    head = len(encode_done("x", "", usage, StopReason.END, "b"))  # the line around an empty content
    fits = "a" * (MAX_FRAME_BYTES - head)  # payload MAX_FRAME_BYTES - 1 bytes: the largest allowed
    assert len(encode_done("x", fits, usage, StopReason.END, "b")) == MAX_FRAME_BYTES
    with pytest.raises(FrameTooLarge):
        encode_done("x", fits + "a", usage, StopReason.END, "b")
    with pytest.raises(FrameTooLarge):
        encode_frame(DoneFrame(id="x", content=fits + "a", usage=usage, stop_reason=StopReason.END, backend="b"))


@FAST
@given(id=scalar_text, text=scalar_text, surrogate=st.integers(0xD800, 0xDFFF), where=st.booleans())
def test_token_lines_lone_surrogates(id: str, text: str, surrogate: int, where: bool) -> None:
    """Lone surrogates are not Unicode scalar values and cannot be UTF-8 encoded.

    Both encoders refuse them with a ValueError subclass (TokenLines: UnicodeEncodeError,
    pydantic: PydanticSerializationError). They cannot arrive from the wire (the JSON
    parser rejects a lone \\ud800 escape as a decode error); only a mock tape loaded
    with json.loads could carry one.
    """
    bad = text + chr(surrogate)
    args = (bad, text) if where else (id, bad)
    with pytest.raises(ValueError):
        TokenLines(args[0])(args[1])
    with pytest.raises(ValueError):
        TokenFrame(id=args[0], content=args[1]).model_dump_json()
    count("token_lines_lone_surrogates", "both-refuse")


# ---- the live daemon ------------------------------------------------------------------------
#
# The oracle for the live tests is written here, from the protocol and the mock's tape,
# with the standard library's json: it never asks the daemon's own parsers what a request
# means, nor whether an answer is well formed. What a generator knows about a line (a
# valid request, a number out of range, too many inputs) it says, and that answer is
# required; for the rest (random bytes, mutations) the daemon may serve, refuse or fail
# to decode, but whichever it does must be exactly right.

MOCK_TOKENS = ["tok ", 'q"\\\u2028é\n']
IO_TIMEOUT = 10.0
DEFAULT_MAX_TOKENS = 1000  # the request policy (daemon/pipeline/policy.py): a request without max_tokens
MOCK_DIMS_REFUSAL = f"dimensions must be between 1 and {MOCK_MAX_DIMENSIONS}"
TERMINAL = {"v1": {"done", "error"}, "v2": {"done", "error"}, "embed": {"embeddings", "error"}}


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Live:
    loop: asyncio.AbstractEventLoop
    daemon: Any
    paths: dict[str, str]
    failures: _Failures

    def wait_for_failure_logs(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the daemon thread has logged its n-th handler failure (and is done with it).

        Called before a test fails on a logged handler failure: on CPython 3.11 the
        _ast module's recursion counter is per interpreter, not per thread (cpython
        gh-106905, pytest-dev/pytest#10763). The daemon thread formats the traceback of
        a failed handler (3.11's traceback module calls ast.parse for its ^^^ anchors);
        if pytest parses a test's source to report a failure at that same moment, one of
        them gets "SystemError: AST constructor recursion depth mismatch" and pytest
        dies with INTERNALERROR instead of reporting the failure.
        """
        deadline = time.monotonic() + timeout
        while len(self.failures.records) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        # Our handler sees the record before the root logger's (pytest's) handlers format
        # it; the connection task leaves the tracker only after log.exception returned.
        tracker = self.daemon.server.tracker
        while self.call(tracker.count) and time.monotonic() < deadline:
            time.sleep(0.01)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the daemon's loop thread and return its result."""
        fut: Any = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)
        return fut.result(10)

    def wait_idle(self, timeout: float = 10.0) -> tuple[int, int]:
        """(admitted requests, connection tasks) once both are zero, or when `timeout` ran out."""
        server = self.daemon.server
        deadline = time.monotonic() + timeout
        while True:
            state = self.call(lambda: (server.router.outstanding, server.tracker.count()))
            if state == (0, 0) or time.monotonic() >= deadline:
                return state
            time.sleep(0.01)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _require_caps(runner) -> None:
    """The live tests send `dimensions` up to u32 max and up to 5000 inputs, cheap only
    for a daemon that refuses them. Check both caps on requests that stay cheap even
    without them, and fail here, saying why, rather than let a daemon without them
    build billions of floats (and the machine run out of memory)."""
    from inferd.engine.backend import BackendInvalidRequest
    from inferd.engine.mock import MockBackend
    from inferd.proto.embed import EmbedRequest, EmbedResolved

    try:
        runner.run(MockBackend().embed(EmbedResolved(id="", input=["x"], dimensions=MOCK_MAX_DIMENSIONS + 1)))
    except BackendInvalidRequest:
        pass
    else:
        pytest.fail(f"the mock embeds {MOCK_MAX_DIMENSIONS + 1} dimensions: its cap is gone, live fuzz not started")
    try:
        EmbedRequest(input=["x"] * (EMBED_MAX_INPUTS + 1)).resolve()
    except InvalidRequest:
        pass
    else:
        pytest.fail(f"{EMBED_MAX_INPUTS + 1} embed inputs resolve: the input cap is gone, live fuzz not started")


@pytest.fixture(scope="module")
def live_daemon(runner):
    """One daemon for the module's live tests, on its own thread and event loop."""
    _require_caps(runner)
    d = short_tmpdir()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-daemon", daemon=True)
    thread.start()
    failures = _Failures()
    logging.getLogger("inferd").addHandler(failures)
    paths = {"v1": str(d / "infer.sock"), "v2": str(d / "v2.sock"), "embed": str(d / "embed.sock")}
    daemon = asyncio.run_coroutine_threadsafe(
        start_daemon(d, mock={"tokens": MOCK_TOKENS}, v2=True, v2_addr=paths["v2"], uds=paths["v1"],
                     embed_addr=paths["embed"], queue_depth=64, write_timeout_secs=5.0, drain_timeout_secs=2.0),
        loop).result(30)
    try:
        yield Live(loop, daemon, paths, failures)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            logging.getLogger("inferd").removeHandler(failures)
            cleanup(d)


@pytest.fixture
def live(live_daemon, runner):
    """The shared daemon, checked after the test whatever ran before it: idle (no admission
    slot, no connection task), no handler failure logged, and the process holds exactly
    the descriptors it held before the test (client and daemon share this process)."""
    assert live_daemon.wait_idle() == (0, 0), "the daemon was not idle when the test began"
    fds = open_fds()
    logged = len(live_daemon.failures.records)
    yield live_daemon
    assert live_daemon.wait_idle() == (0, 0), "(admitted requests, connection tasks) left behind"
    assert not live_daemon.daemon.task.done()
    assert_no_handler_failure(live_daemon, logged)
    assert_same_fds(fds, "after the test's exchanges")


async def exchange(path: str, chunks: list[bytes]) -> tuple[list[bytes], str]:
    """Send `chunks`, half-close, read every line until the daemon closes."""
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
    lines: list[bytes] = []
    end = "eof"
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(IO_TIMEOUT):
            while True:
                line = await reader.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    end = f"partial line {line[:100]!r}"
                    break
                lines.append(line)
    except (ConnectionResetError, BrokenPipeError) as exc:
        end = f"reset ({type(exc).__name__})"
    except TimeoutError:
        end = "timeout"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return lines, end


def assert_no_handler_failure(live: Live, logged: int) -> None:
    """No connection handler failed since `logged` records (the daemon logs each at ERROR)."""
    if len(live.failures.records) > logged:
        live.wait_for_failure_logs(len(live.failures.records))
        new = live.failures.records[logged:]
        raise AssertionError(f"handler failure logged: {[(r.getMessage(), r.exc_info and repr(r.exc_info[1])) for r in new]}")


# -- what a request line is, by the standard library alone

@dataclass(frozen=True)
class Line:
    """One request line, and the answer its generator knows it must get, if any:
    "served" (a request the protocol accepts), "decode" or "invalid"."""

    raw: bytes
    want: str | None = None


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def read_request(raw: bytes) -> tuple[str, Any]:
    """("not-json" | "not-object" | "unsure" | "object", the decoded value).

    Not JSON (invalid UTF-8 included) and JSON that is no object can only be decode
    errors. "unsure": Python's json took something a stricter parser may refuse (NaN or
    Infinity literals, lone surrogate escapes, numbers it will not convert).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not-json", None
    literals: list[str] = []
    try:
        value = json.loads(text, parse_constant=lambda name: literals.append(name) or math.nan)
    except json.JSONDecodeError:
        return "not-json", None
    except (ValueError, RecursionError):
        return "unsure", None
    if not isinstance(value, dict):
        return "not-object", value
    if literals or _has_surrogate(value):
        return "unsure", value
    return "object", value


# -- what the daemon must answer to a request it serves, from the mock's tape

class Unservable(Exception):
    """The request's fields are not of the protocol's types: it cannot be served."""


def _field(doc: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Unservable(f"{name}={value!r}")
    return value


def _stop_start(sent: str, text: str, stops: list[str]) -> int | None:
    """Where in `sent + text` the earliest stop string begins, counting only occurrences
    that end inside `text` (those ending earlier would have stopped an earlier token)."""
    whole = sent + text
    starts = []
    for stop in stops:
        at = whole.find(stop, max(0, len(sent) - len(stop) + 1))
        if at != -1:
            starts.append(at)
    return min(starts) if starts else None


def _held(whole: str, stops: list[str]) -> int:
    """How much of the end of `whole` could still begin a stop string: the longest suffix
    that is a proper prefix of one (held back until the next token shows)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(whole)), best, -1):
            if whole.endswith(stop[:n]):
                best = n
                break
    return best


def mock_tape(doc: dict[str, Any]) -> tuple[list[str], int, bool]:
    """(text deltas, completion tokens, ended by max_tokens) for this request.

    With stop strings, a token's text that ends in what could begin one is held back
    and sent with the next token's (or alone, before the end)."""
    max_tokens = _field(doc, "max_tokens", int, DEFAULT_MAX_TOKENS)
    stops = _field(doc, "stop", list, [])
    if not all(isinstance(s, str) for s in stops):
        raise Unservable(f"stop={stops!r}")
    stops = [s for s in stops if s]
    deltas: list[str] = []
    sent = ""  # every token's text so far
    emitted = 0  # how much of it went out
    completion = 0
    length = False
    for text in MOCK_TOKENS:
        if completion >= max_tokens:
            length = True
            break
        completion += 1
        start = _stop_start(sent, text, stops)
        if start is not None:
            if start > emitted:
                deltas.append((sent + text)[emitted:start])
            return deltas, completion, False
        sent += text
        keep = len(sent) - _held(sent, stops)
        if keep > emitted:
            deltas.append(sent[emitted:keep])
            emitted = keep
    if emitted < len(sent):
        deltas.append(sent[emitted:])
    return deltas, completion, length


def served_frames(surface: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Exactly the frames the daemon sends for `doc` if it serves it."""
    rid = _field(doc, "id", str, "")
    if surface == "embed":
        inputs = doc.get("input")
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise Unservable(f"input={inputs!r}")
        dims = _field(doc, "dimensions", int, 8)
        if not 1 <= dims <= MOCK_MAX_DIMENSIONS:
            # Refused by the mock: the request is answered, the connection stays open.
            return [{"type": "error", "id": rid, "code": "invalid_request", "message": MOCK_DIMS_REFUSAL}]
        if dims * len(inputs) > LIVE_MAX_FLOATS:  # the generators build no such request to be served
            raise Unservable(f"{len(inputs)} inputs x {dims} dimensions: too many numbers for a live test")
        vectors = [[(k + 1) / (len(t.encode()) + 1) for k in range(dims)] for t in inputs]
        return [{"type": "embeddings", "id": rid, "embeddings": vectors, "dimensions": dims, "model": "mock",
                 "usage": {"input_tokens": sum(len(t.encode()) for t in inputs)}, "backend": "mock"}]
    deltas, completion, length = mock_tape(doc)
    if surface == "v1":
        stream = _field(doc, "stream", bool, True)
        frames = [{"type": "token", "id": rid, "content": t} for t in deltas] if stream else []
        frames.append({"type": "done", "id": rid, "content": "".join(deltas),
                       "usage": {"prompt_tokens": 0, "completion_tokens": completion, "cached_tokens": 0,
                                 "thinking_tokens": 0},
                       "stop_reason": "length" if length else "end", "backend": "mock"})
        return frames
    frames = [{"type": "frame", "id": rid, "block": {"type": "text", "delta": t}} for t in deltas]  # v2 always streams
    frames.append({"type": "done", "id": rid,
                   "usage": {"input_tokens": 0, "output_tokens": completion, "cached_tokens": 0, "thinking_tokens": 0},
                   "stop_reason": "max_tokens" if length else "end_turn", "backend": "mock"})
    return frames


# -- judging an exchange

def is_decode_error(frame: dict[str, Any]) -> bool:
    return (set(frame) == {"type", "id", "code", "message"} and frame["type"] == "error" and frame["id"] == ""
            and frame["code"] == "invalid_request" and isinstance(frame["message"], str)
            and frame["message"].startswith("decode: "))


def is_refusal(frame: dict[str, Any], doc: Any) -> bool:
    """A request-level `invalid_request`, echoing the request's id."""
    rid = doc.get("id", "") if isinstance(doc, dict) else None
    return (set(frame) == {"type", "id", "code", "message"} and frame["type"] == "error"
            and isinstance(rid, str) and frame["id"] == rid and frame["code"] == "invalid_request"
            and isinstance(frame["message"], str) and frame["message"].startswith("invalid request: "))


def frames_of(payload: bytes) -> list[Line]:
    """The request lines a FrameReader yields for `payload` followed by EOF (all far below the cap)."""
    *complete, trailing = payload.split(b"\n")
    return [Line(raw) for raw in complete + ([trailing] if trailing else [])]


def judge(surface: str, requests: list[Line], answers: list[dict[str, Any]]) -> str:
    """Match the daemon's answers to the requests in order; the outcome summary, or AssertionError."""
    at = 0
    outcomes = []
    for n, request in enumerate(requests):
        kind, doc = read_request(request.raw)
        where = f"request {n} {request.raw[:300]!r} ({kind}, want {request.want})"
        assert at < len(answers), f"{where}: no answer (answers: {answers})"
        first = answers[at]
        if is_decode_error(first):
            outcome, took = "decode", 1
        else:
            assert kind in ("object", "unsure"), f"{where}: answered {first} instead of a decode error"
            try:
                served = served_frames(surface, doc)
            except Unservable as exc:
                served = None
                why = str(exc)
            if served is not None and answers[at:at + len(served)] == served:
                outcome, took = "served", len(served)
            elif is_refusal(first, doc):
                outcome, took = "invalid", 1
            else:
                expected = served if served is not None else f"no service ({why})"
                raise AssertionError(f"{where}: got {answers[at:]}, serving would be {expected}")
        if request.want is not None:
            assert outcome == request.want, f"{where}: {outcome}, not {request.want}: {answers[at:at + took]}"
        if kind in ("not-json", "not-object"):
            assert outcome == "decode", f"{where}: {outcome}"
        at += took
        outcomes.append(outcome)
        if outcome == "decode":  # the connection ends here: later lines are not read
            break
    assert at == len(answers), f"answers beyond the requests: {answers[at:]}"
    return outcomes[-1] + f"/{len(answers)} frames" if outcomes else "no request"


def check_exchange(live: Live, surface: str, requests: list[Line], payload: bytes, splits: list[int], test: str,
                   runner) -> None:
    logged = len(live.failures.records)
    cuts = sorted({min(len(payload), s) for s in splits})
    chunks = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)]) if payload[a:b]]
    lines, end = runner.run(exchange(live.paths[surface], chunks))
    note(f"payload={payload[:2000]!r} lines={[line[:500] for line in lines]!r} end={end}")
    assert_no_handler_failure(live, logged)
    answers = []
    for raw in lines:
        frame = json.loads(raw)  # every answer line is one JSON object of this surface
        assert isinstance(frame, dict) and frame.get("type") in {"token", "frame"} | TERMINAL[surface], frame
        assert isinstance(frame.get("id"), str), frame
        answers.append(frame)
    # The daemon never leaves a request without its terminal frame, and closes cleanly.
    if answers:
        assert answers[-1]["type"] in TERMINAL[surface], answers[-1]
    assert end == "eof", end
    for a in answers:
        a.pop("timings", None)
    count(test, judge(surface, requests, answers))


# -- payloads: one to three request lines, the last sometimes without its newline

def _no_newline(b: bytes) -> bytes:
    return b.replace(b"\n", b" ")


def lines_from(strategy: st.SearchStrategy[bytes], want: str | None = None) -> st.SearchStrategy[Line]:
    return strategy.map(lambda raw: Line(_no_newline(raw), want))


@st.composite
def live_payloads(draw, line: st.SearchStrategy[Line]) -> tuple[bytes, list[Line]]:
    lines = draw(st.lists(line, min_size=1, max_size=3))
    newline = draw(st.booleans())
    payload = b"\n".join(x.raw for x in lines) + (b"\n" if newline else b"")
    if not newline and lines[-1].raw == b"":
        lines = lines[:-1]  # an empty last line without its newline is no line at all
    return payload, lines


def _splits() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 600), max_size=3)


SURFACE_BASES = {"v1": valid_v1(), "embed": valid_embed(), "v2": valid_v2()}


def good_lines(surface: str) -> st.SearchStrategy[Line]:
    return lines_from(SURFACE_BASES[surface].map(lambda d: json.dumps(d).encode()), "served")


def boundary_lines(surface: str) -> st.SearchStrategy[Line]:
    want = {"ok": "served", "decode": "decode", "invalid": "invalid"}
    return boundary_request(surface).map(lambda case: Line(_no_newline(case[0]), want[case[2]]))


def embed_cap_lines() -> st.SearchStrategy[Line]:
    def line(doc: dict[str, Any]) -> Line:
        n = len(doc["input"])
        refused = n > EMBED_MAX_INPUTS or "" in doc["input"] or n * doc.get("dimensions", 0) > EMBED_MAX_VALUES
        return Line(json.dumps(doc).encode(), "invalid" if refused else "served")

    return embed_near_caps().map(line)


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_live_random_bytes(live, runner, surface: str) -> None:
    @LIVE
    @given(payload=st.binary(max_size=300) | st.lists(st.sampled_from([b"\n", b"{", b"}", b"\r", b"\xff", b"[]", b"x"]),
                                                       max_size=30).map(b"".join),
           splits=_splits())
    def inner(payload: bytes, splits: list[int]) -> None:
        check_exchange(live, surface, frames_of(payload), payload, splits, f"live_random_bytes[{surface}]", runner)

    inner()


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_live_random_json_lines(live, runner, surface: str) -> None:
    @LIVE
    @given(case=live_payloads(lines_from(serialised(json_values | json_objects))), splits=_splits())
    def inner(case: tuple[bytes, list[Line]], splits: list[int]) -> None:
        payload, lines = case
        check_exchange(live, surface, lines, payload, splits, f"live_random_json_lines[{surface}]", runner)

    inner()


@pytest.mark.parametrize("surface", ["v1", "embed", "v2"])
def test_live_mutated_requests(live, runner, surface: str) -> None:
    line = st.one_of(lines_from(mutated(SURFACE_BASES[surface])), good_lines(surface), boundary_lines(surface))

    @LIVE
    @given(case=live_payloads(line), splits=_splits())
    def inner(case: tuple[bytes, list[Line]], splits: list[int]) -> None:
        payload, lines = case
        check_exchange(live, surface, lines, payload, splits, f"live_mutated_requests[{surface}]", runner)

    inner()


def test_live_embed_caps(live, runner) -> None:
    """Up to 5000 inputs and u32 dimensions: refused by the 2048-input cap, the mock's
    1..4096 dimensions, or an empty input, and otherwise answered, on one connection."""
    @LIVE
    @given(case=live_payloads(embed_cap_lines()), splits=_splits())
    def inner(case: tuple[bytes, list[Line]], splits: list[int]) -> None:
        payload, lines = case
        check_exchange(live, "embed", lines, payload, splits, "live_embed_caps", runner)

    inner()


def test_live_daemon_serves(live, runner) -> None:
    """One good request per surface, answered as the oracle says (the `live` fixture then
    checks the daemon is idle and holds no descriptor). In any order with the others."""
    good = {
        "v1": {"id": "after", "messages": [{"role": "user", "content": "hi"}]},
        "v2": {"id": "after", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "embed": {"id": "after", "input": ["hi"]},
    }
    for surface, doc in good.items():
        lines, end = runner.run(exchange(live.paths[surface], [json.dumps(doc).encode() + b"\n"]))
        assert end == "eof"
        answers = [json.loads(line) for line in lines]
        assert answers == served_frames(surface, doc), answers
    count("live_daemon_serves", "ok")


# ---- regressions: bugs this fuzzing found, fixed -----------------------------------------------

MSG = [{"role": "user", "content": "x"}]
MSG_V2 = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
HUGE = "1" + "0" * 400  # a valid JSON integer, far beyond a float's range


@pytest.mark.parametrize("surface", ["v1", "v2"])
@pytest.mark.parametrize("field_name", ["temperature", "top_p"])
def test_huge_integer_sampling_float_is_decode_error(surface: str, field_name: str) -> None:
    # Was: float(int) raised OverflowError in resolve(); now refused at parse time, as
    # upstream's serde_json refuses it ("number out of range").
    messages = MSG if surface == "v1" else MSG_V2
    line = '{"messages":%s,"%s":%s}' % (json.dumps(messages), field_name, HUGE)
    with pytest.raises(DecodeError, match="number out of range"):
        PARSERS[surface](line)
    # An integer a float holds is still a valid sampling number.
    line = '{"messages":%s,"%s":%d}' % (json.dumps(messages), field_name, 10**308)
    assert getattr(PARSERS[surface](line), field_name) == 10**308


@pytest.mark.parametrize("surface", ["v1", "v2"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nonfinite_sampling_floats_are_decode_errors(surface: str, literal: str) -> None:
    # Regression (v2 lacked allow_inf_nan=False until it was added to v2._Wire).
    messages = MSG if surface == "v1" else MSG_V2
    for name in ("temperature", "top_p"):
        with pytest.raises(DecodeError):
            PARSERS[surface]('{"messages":%s,"%s":%s}' % (json.dumps(messages), name, literal))


def _v2_free_form(where: str, value: str) -> str:
    if where == "input_schema":
        return '{"messages":%s,"tools":[{"name":"t","description":"d","input_schema":{"x":[%s]}}]}' % (
            json.dumps(MSG_V2), value)
    return ('{"messages":[{"role":"assistant","content":[{"type":"tool_use","tool_call_id":"c","name":"t",'
            '"input":{"x":[%s]}}]}]}' % value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("where", ["input_schema", "tool_use.input"])
def test_v2_json_values_refuse_nonfinite(literal: str, where: str) -> None:
    # Was: JsonValue ignored allow_inf_nan. Upstream (serde_json) refuses these literals
    # and out-of-range floats (1e400): a decode error.
    with pytest.raises(DecodeError, match="NaN and Infinity are not JSON"):
        v2.parse_request(_v2_free_form(where, literal))
    # Finite numbers still pass through untouched.
    model = v2.parse_request(_v2_free_form(where, "1.5e308"))
    assert _v2_json_values(model)[0] == {"x": [1.5e308]}


@pytest.mark.parametrize("stop", [" 0", "q\"", "tok q", " "])
def test_live_stop_prefix_is_held_to_the_next_token(live, runner, stop: str) -> None:
    # Found by test_live_mutated_requests: a token ending in what could begin a stop
    # string (" " of " 0") is held back and sent with the next one; the oracle had
    # expected every token's text as it came.
    for surface, messages in (("v1", MSG), ("v2", MSG_V2)):
        doc = {"id": "hold", "messages": messages, "stop": [stop]}
        lines, end = runner.run(exchange(live.paths[surface], [json.dumps(doc).encode() + b"\n"]))
        assert end == "eof"
        answers = [json.loads(line) for line in lines]
        for a in answers:
            a.pop("timings", None)
        assert answers == served_frames(surface, doc), (surface, answers)
    deltas, _, _ = mock_tape(doc)
    assert "".join(deltas) == "".join(MOCK_TOKENS).split(stop)[0]


@pytest.mark.parametrize("surface", ["v1", "v2"])
def test_live_huge_integer_gets_one_decode_error(live, runner, surface: str) -> None:
    # Was: the handler died on an OverflowError and the connection closed without a frame.
    messages = MSG if surface == "v1" else MSG_V2
    payload = ('{"id":"big","messages":%s,"temperature":%s}\n' % (json.dumps(messages), HUGE)).encode()
    after = ('{"id":"after","messages":%s}\n' % json.dumps(messages)).encode()  # never read
    logged = len(live.failures.records)
    lines, end = runner.run(exchange(live.paths[surface], [payload + after]))
    assert_no_handler_failure(live, logged)
    assert end == "eof", end
    assert len(lines) == 1, lines
    frame = json.loads(lines[0])
    assert frame == {"type": "error", "id": "", "code": "invalid_request",
                     "message": "decode: temperature: Value error, number out of range"}, frame


# Without the cap these build `dims` floats: keep them cheap enough to fail, not to exhaust memory.
@pytest.mark.parametrize("dims", [0, MOCK_MAX_DIMENSIONS + 1, 5000, 100_000])
def test_mock_embed_dimensions_are_bounded(runner, dims: int) -> None:
    # Was: the mock built `dimensions` floats per input, up to 4,294,967,295 (a valid u32).
    from inferd.engine.backend import BackendInvalidRequest
    from inferd.engine.mock import MockBackend
    from inferd.proto.embed import EmbedResolved

    with pytest.raises(BackendInvalidRequest, match=f"dimensions must be between 1 and {MOCK_MAX_DIMENSIONS}"):
        runner.run(MockBackend().embed(EmbedResolved(id="", input=["x"], dimensions=dims)))
    result = runner.run(MockBackend().embed(EmbedResolved(id="", input=["x"], dimensions=MOCK_MAX_DIMENSIONS)))
    assert result.dimensions == MOCK_MAX_DIMENSIONS and len(result.embeddings[0]) == MOCK_MAX_DIMENSIONS


def _live_embed_then_good(live, runner, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Send `request` and then a good request on the same connection; both answers."""
    good = {"id": "after", "input": ["hi"]}
    payload = (json.dumps(request) + "\n" + json.dumps(good) + "\n").encode()
    logged = len(live.failures.records)
    lines, end = runner.run(exchange(live.paths["embed"], [payload]))
    assert_no_handler_failure(live, logged)
    assert end == "eof", end
    frames = [json.loads(line) for line in lines]
    assert len(frames) == 2, frames
    # The connection stayed open: the request after the refusal is served.
    assert frames[1]["type"] == "embeddings" and frames[1]["id"] == "after" and frames[1]["dimensions"] == 8, frames[1]
    return frames


@pytest.mark.parametrize("dims", [0, 5000, U32_MAX])
def test_live_mock_embed_dimensions_out_of_range(live, runner, dims: int) -> None:
    frames = _live_embed_then_good(live, runner, {"id": "dims", "input": ["x", "y"], "dimensions": dims})
    if 2 * dims > EMBED_MAX_VALUES:  # refused by the proto before the mock sees it (issue 8)
        message = (f"invalid request: 2 inputs x {dims} dimensions = {2 * dims} numbers; "
                   f"a reply holds at most {EMBED_MAX_VALUES} (MAX_EMBED_VALUES)")
    else:
        message = f"dimensions must be between 1 and {MOCK_MAX_DIMENSIONS}"
    assert frames[0] == {"type": "error", "id": "dims", "code": "invalid_request", "message": message}, frames[0]


def test_live_embed_input_cap(live, runner) -> None:
    frames = _live_embed_then_good(live, runner, {"id": "many", "input": ["x"] * (EMBED_MAX_INPUTS + 1)})
    assert frames[0] == {"type": "error", "id": "many", "code": "invalid_request",
                         "message": f"invalid request: input has {EMBED_MAX_INPUTS + 1} entries; "
                                    f"at most {EMBED_MAX_INPUTS} per request"}, frames[0]
    # Exactly at the cap is served.
    frames = _live_embed_then_good(live, runner, {"id": "cap", "input": ["x"] * EMBED_MAX_INPUTS, "dimensions": 2})
    assert frames[0]["type"] == "embeddings" and len(frames[0]["embeddings"]) == EMBED_MAX_INPUTS, frames[0]["type"]
