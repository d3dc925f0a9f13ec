"""Protocol v1 wire types: upstream-protocol §9 items 1-15 plus our additive fields."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from inferd.proto.errors import DecodeError, ErrorCode, FrameTooLarge, InvalidRequest, ProtoError
from inferd.proto.framing import MAX_FRAME_BYTES, FrameReader, encode_frame
from inferd.proto.v1 import (
    VALID_IMAGE_TOKEN_BUDGETS,
    DoneFrame,
    ErrorFrame,
    Message,
    Request,
    Role,
    StatusFrame,
    StopReason,
    Timings,
    TokenFrame,
    Usage,
    error_frame,
    parse_request,
    parse_response,
)

USER_HI = '{"role":"user","content":"hi"}'


def req_line(**extra: object) -> bytes:
    """A minimal valid request line with `extra` top-level fields spliced in as raw JSON."""
    parts = [f'"messages":[{USER_HI}]']
    parts += [f'"{k}":{v}' for k, v in extra.items()]
    return ("{" + ",".join(parts) + "}").encode()


def sample_request() -> Request:
    return Request(
        id="r1",
        messages=[
            Message(role=Role.SYSTEM, content="be brief"),
            Message(role=Role.USER, content="line one\nline two"),
            Message(role=Role.ASSISTANT, content="ok"),
        ],
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        max_tokens=256,
        stream=False,
        image_token_budget=280,
        grammar='root ::= "yes" | "no"',
    )


def done_frame(**kw: object) -> DoneFrame:
    fields: dict[str, object] = dict(
        id="r1",
        content="full text",
        usage=Usage(prompt_tokens=12, completion_tokens=7),
        stop_reason=StopReason.END,
        backend="llamacpp",
    )
    fields.update(kw)
    return DoneFrame(**fields)


# ---- item 1: encode / write round-trip ------------------------------------------------


def test_encode_round_trip_ends_in_single_newline() -> None:
    req = sample_request()
    line = encode_frame(req)
    assert line.endswith(b"\n")
    # Compact JSON: the only raw newline is the terminator (the one in content is escaped).
    assert line.count(b"\n") == 1
    assert b"\\n" in line
    assert b": " not in line and b", " not in line
    back = parse_request(line[:-1])
    assert back == req
    assert back.messages[1].content == "line one\nline two"


async def test_encoded_frames_round_trip_over_socketpair() -> None:
    a, b = socket.socketpair()
    reader_a, writer_a = await asyncio.open_unix_connection(sock=a)
    reader_b, writer_b = await asyncio.open_unix_connection(sock=b)
    try:
        req = sample_request()
        writer_a.write(encode_frame(req))
        writer_a.write(encode_frame(error_frame("r1", ErrorCode.QUEUE_FULL, "queue full")))
        writer_a.close()
        frames = FrameReader(reader_b)
        first = await frames.read_frame()
        second = await frames.read_frame()
        assert await frames.read_frame() is None
        assert first is not None and second is not None
        assert parse_request(first) == req
        err = parse_response(second)
        assert isinstance(err, ErrorFrame)
        assert (err.id, err.code, err.message) == ("r1", "queue_full", "queue full")
    finally:
        writer_a.close()
        writer_b.close()


# ---- item 2: defaults --------------------------------------------------------------------


def test_resolve_leaves_sampling_defaults_to_the_request_policy() -> None:
    # The daemon applies them, the same for every wire (tests/daemon/test_request_policy.py).
    resolved = parse_request(req_line()).resolve()
    assert resolved.id == ""
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.max_tokens) == (None, None, None, None)
    assert resolved.stream is True
    assert resolved.image_token_budget is None
    assert resolved.grammar == ""
    assert resolved.stop == []
    assert resolved.seed is None
    assert [(m.role, m.content) for m in resolved.messages] == [(Role.USER, "hi")]


def test_resolve_keeps_explicit_values() -> None:
    resolved = sample_request().resolve()
    assert resolved.id == "r1"
    assert resolved.temperature == 0.7
    assert resolved.top_p == 0.9
    assert resolved.top_k == 40
    assert resolved.max_tokens == 256
    assert resolved.stream is False
    assert resolved.image_token_budget == 280
    assert resolved.grammar == 'root ::= "yes" | "no"'


def test_integer_temperature_is_a_number() -> None:
    resolved = parse_request(req_line(temperature=0, top_p=1)).resolve()
    assert resolved.temperature == 0.0 and isinstance(resolved.temperature, float)
    assert resolved.top_p == 1.0 and isinstance(resolved.top_p, float)


def test_no_range_checks_on_sampling_values() -> None:
    # Upstream bounds nothing: only JSON types are checked (upstream-protocol §10 item 13).
    resolved = parse_request(req_line(temperature=3.0, top_p=7.5, top_k=0, max_tokens=0)).resolve()
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.max_tokens) == (3.0, 7.5, 0, 0)


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k", "max_tokens", "stream", "image_token_budget"])
def test_null_optional_field_means_absent(field: str) -> None:
    explicit_null = parse_request(req_line(**{field: "null"})).resolve()
    absent = parse_request(req_line()).resolve()
    assert explicit_null == absent


def test_null_temperature_is_left_out() -> None:
    assert parse_request(req_line(temperature="null")).resolve().temperature is None


# ---- items 3-5: semantic checks --------------------------------------------------------


def test_empty_messages_is_invalid_request() -> None:
    req = parse_request(b'{"id":"bad","messages":[]}')  # valid JSON: decodes fine
    with pytest.raises(InvalidRequest) as info:
        req.resolve()
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.code == "invalid_request"
    assert info.value.detail == "messages must not be empty"
    assert info.value.message == "invalid request: messages must not be empty"


def test_image_token_budget_999_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(req_line(image_token_budget=999)).resolve()
    assert info.value.code == "invalid_request"
    assert info.value.detail == "image_token_budget 999 not in [70, 140, 280, 560, 1120]"


def test_empty_messages_checked_before_budget() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(b'{"messages":[],"image_token_budget":999}').resolve()
    assert info.value.detail == "messages must not be empty"


@pytest.mark.parametrize("budget", [70, 140, 280, 560, 1120])
def test_each_valid_image_token_budget_accepted(budget: int) -> None:
    resolved = parse_request(req_line(image_token_budget=budget)).resolve()
    assert resolved.image_token_budget == budget


def test_valid_budget_constant() -> None:
    assert VALID_IMAGE_TOKEN_BUDGETS == (70, 140, 280, 560, 1120)


@pytest.mark.parametrize("budget", [0, 69, 71, 1121, 4294967295])
def test_other_budgets_rejected(budget: int) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(req_line(image_token_budget=budget)).resolve()


# ---- item 6: forward compatibility --------------------------------------------------------


def test_unknown_fields_ignored() -> None:
    req = parse_request(req_line(future_field=42, another='{"nested":[1,2,3]}'))
    assert req.resolve().messages[0].content == "hi"
    assert "future_field" not in req.model_dump()
    assert b"future_field" not in encode_frame(req)


def test_unknown_message_field_ignored() -> None:
    req = parse_request(b'{"messages":[{"role":"user","content":"hi","name":"bob"}]}')
    assert req.messages[0].content == "hi"


# ---- items 7-9: response frames ------------------------------------------------------------


def test_done_frame_serialisation() -> None:
    line = encode_frame(done_frame())
    text = line.decode()
    assert text.startswith('{"type":"done"')  # `type` first, as serde's internal tag
    assert '"type":"done"' in text
    assert '"stop_reason":"end"' in text
    assert '"backend":"llamacpp"' in text
    assert '"prompt_tokens":12' in text
    assert '"completion_tokens":7' in text
    assert '"id":"r1"' in text
    back = parse_response(line[:-1])
    assert isinstance(back, DoneFrame)
    assert back == done_frame()


def test_done_frame_omits_timings_when_none() -> None:
    line = encode_frame(done_frame())
    assert b"timings" not in line
    assert set(json.loads(line)) == {"type", "id", "content", "usage", "stop_reason", "backend"}


def test_done_frame_carries_timings_when_set() -> None:
    timings = Timings(prompt_ms=12.5, generate_ms=250.0, tokens_per_second=28.0)
    obj = json.loads(encode_frame(done_frame(timings=timings)))
    assert obj["timings"] == {"prompt_ms": 12.5, "generate_ms": 250.0, "tokens_per_second": 28.0}
    back = parse_response(json.dumps(obj))
    assert isinstance(back, DoneFrame) and back.timings == timings


def test_done_frame_without_timings_parses() -> None:
    line = b'{"type":"done","id":"x","content":"","usage":{"prompt_tokens":0,"completion_tokens":0},"stop_reason":"length","backend":"mock"}'
    frame = parse_response(line)
    assert isinstance(frame, DoneFrame)
    assert frame.timings is None
    assert frame.stop_reason == StopReason.LENGTH


@pytest.mark.parametrize("reason", ["end", "length", "cancelled", "error"])
def test_stop_reasons_serialise_lowercase(reason: str) -> None:
    line = encode_frame(done_frame(stop_reason=StopReason(reason)))
    assert f'"stop_reason":"{reason}"'.encode() in line


def test_empty_id_is_always_serialised() -> None:
    assert b'"id":""' in encode_frame(TokenFrame(id="", content="x"))
    assert b'"id":""' in encode_frame(error_frame("", ErrorCode.FRAME_TOO_LARGE, "too big"))


def test_error_frame_queue_full_round_trip() -> None:
    frame = error_frame("r1", ErrorCode.QUEUE_FULL, "queue full")
    line = encode_frame(frame)
    assert b'"code":"queue_full"' in line
    assert line == b'{"type":"error","id":"r1","code":"queue_full","message":"queue full"}\n'
    back = parse_response(line)
    assert isinstance(back, ErrorFrame)
    assert back == frame
    assert back.code == ErrorCode.QUEUE_FULL


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips(code: ErrorCode) -> None:
    back = parse_response(encode_frame(error_frame("i", code, "m")))
    assert isinstance(back, ErrorFrame) and back.code == code.value


def test_error_code_set_is_closed() -> None:
    # Upstream's closed set, plus model_not_found: only a request using the `model`
    # extension (issue 20) can get it, so an upstream client never sees it.
    assert {c.value for c in ErrorCode} == {
        "queue_full",
        "backend_unavailable",
        "invalid_request",
        "frame_too_large",
        "internal",
        "model_not_found",
    }


def test_unknown_error_code_from_newer_daemon_parses() -> None:
    back = parse_response(b'{"type":"error","id":"a","code":"future_code","message":"m"}')
    assert isinstance(back, ErrorFrame) and back.code == "future_code"


def test_id_and_terminal_flags_for_every_variant() -> None:
    frames = [
        (TokenFrame(id="t", content="x"), False),
        (done_frame(id="d"), True),
        (error_frame("e", ErrorCode.INTERNAL, "boom"), True),
        (StatusFrame(id="s", status="ready"), False),
    ]
    for frame, terminal in frames:
        back = parse_response(encode_frame(frame))
        assert type(back) is type(frame)
        assert back.id == frame.id
        assert back.is_terminal is terminal
    assert [f.id for f, _ in frames] == ["t", "d", "e", "s"]


def test_token_frame_serialisation() -> None:
    assert encode_frame(TokenFrame(id="r1", content="partial text")) == (
        b'{"type":"token","id":"r1","content":"partial text"}\n'
    )


def test_unknown_response_type_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        parse_response(b'{"type":"heartbeat","id":"x"}')


# ---- item 15 and friends: decode errors --------------------------------------------------

DECODE_ERRORS = {
    "not_json": b"{ this is not json }",
    "empty_line": b"",
    "whitespace_only": b"   ",
    "missing_messages": b'{"id":"x"}',
    "messages_not_list": b'{"messages":"hi"}',
    "bad_role": b'{"messages":[{"role":"tool","content":"hi"}]}',
    "uppercase_role": b'{"messages":[{"role":"User","content":"hi"}]}',
    "content_array": b'{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}',
    "content_missing": b'{"messages":[{"role":"user"}]}',
    "top_k_float": req_line(top_k="64.0"),
    "top_k_fraction": req_line(top_k="64.5"),
    "top_k_negative": req_line(top_k=-1),
    "top_k_over_u32": req_line(top_k=4294967296),
    "top_k_string": req_line(top_k='"64"'),
    "max_tokens_negative": req_line(max_tokens=-5),
    "max_tokens_over_u32": req_line(max_tokens=4294967296),
    "max_tokens_float": req_line(max_tokens="10.0"),
    "budget_negative": req_line(image_token_budget=-70),
    "temperature_string": req_line(temperature='"1.0"'),
    "temperature_bool": req_line(temperature="true"),
    "top_p_string": req_line(top_p='"0.9"'),
    "stream_string": req_line(stream='"true"'),
    "stream_int": req_line(stream=1),
    "grammar_null": req_line(grammar="null"),
    "grammar_number": req_line(grammar=5),
    "id_number": req_line(id=7),
    "trailing_garbage": req_line() + b"x",
    "two_objects": req_line() + req_line(),
    "top_level_array": b"[" + req_line() + b"]",
    "deeply_nested": b"[" * 100_000,
    "deeply_nested_field": b'{"messages":' + b"[" * 100_000,
    "invalid_utf8": b'{"messages":[{"role":"user","content":"\xff\xfe"}]}',
    "truncated_utf8": b'{"messages":[{"role":"user","content":"\xe2\x82"}]}',
    "nul_in_string": b'{"messages":[{"role":"user","content":"a\x00b"}]}',
    "nul_after_object": req_line() + b"\x00",
    "raw_newline_in_string": b'{"messages":[{"role":"user","content":"a\nb"}]}',
    "single_quotes": b"{'messages':[]}",
}


@pytest.mark.parametrize("line", DECODE_ERRORS.values(), ids=DECODE_ERRORS.keys())
def test_decode_errors(line: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        parse_request(line)
    err = info.value
    assert isinstance(err, ProtoError)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert err.message.startswith("decode: ")
    # One line: it is sent back inside an error frame.
    assert "\n" not in err.message


def test_decode_error_for_str_input_too() -> None:
    with pytest.raises(DecodeError):
        parse_request("{ this is not json }")


@pytest.mark.parametrize(
    "value",
    ["NaN", "Infinity", "-Infinity", "1e400"],
)
def test_non_finite_numbers_are_decode_errors(value: str) -> None:
    # NaN/Infinity are not JSON and 1e400 does not fit an f64: serde_json refuses all
    # of them, so upstream closes the connection with a decode error. They must never
    # reach a sampler as a temperature.
    with pytest.raises(DecodeError):
        parse_request(req_line(temperature=value))
    with pytest.raises(DecodeError):
        parse_request(req_line(top_p=value))


def test_u32_boundaries_accepted() -> None:
    resolved = parse_request(req_line(top_k=4294967295, max_tokens=4294967295)).resolve()
    assert resolved.top_k == 4294967295
    assert resolved.max_tokens == 4294967295


def test_trailing_whitespace_tolerated() -> None:
    # A CRLF client leaves `\r` on the line; serde_json tolerates trailing whitespace.
    assert parse_request(req_line() + b"\r").messages[0].content == "hi"
    assert parse_request(req_line() + b" \t").messages[0].content == "hi"


def test_escaped_nul_is_valid_json() -> None:
    req = parse_request(b'{"messages":[{"role":"user","content":"a\\u0000b"}]}')
    assert req.messages[0].content == "a\x00b"


def test_unicode_content_round_trips() -> None:
    req = Request(messages=[Message(role=Role.USER, content="héllo ✓ 😀")])
    assert parse_request(encode_frame(req)).messages[0].content == "héllo ✓ 😀"


def test_proto_error_code_mapping() -> None:
    too_big = FrameTooLarge(MAX_FRAME_BYTES)
    assert too_big.code == "frame_too_large"
    assert too_big.message == "frame exceeds 67108864 byte cap"
    assert DecodeError("x").code == "invalid_request"
    assert InvalidRequest("x").code == "invalid_request"


# ---- inferd extensions: stop and seed -------------------------------------------------------


def test_stop_and_seed_parse_and_resolve() -> None:
    resolved = parse_request(req_line(stop='["\\n\\n","END"]', seed=42)).resolve()
    assert resolved.stop == ["\n\n", "END"]
    assert resolved.seed == 42


def test_seed_u32_bounds() -> None:
    assert parse_request(req_line(seed=0)).resolve().seed == 0
    assert parse_request(req_line(seed=4294967295)).resolve().seed == 4294967295
    for bad in ("4294967296", "-1", "1.5", '"7"'):
        with pytest.raises(DecodeError):
            parse_request(req_line(seed=bad))


def test_empty_stop_string_rejected_by_resolve() -> None:
    req = parse_request(req_line(stop='["END",""]'))  # decodes
    with pytest.raises(InvalidRequest) as info:
        req.resolve()
    assert info.value.code == "invalid_request"
    assert "stop" in info.value.detail


def test_empty_stop_list_is_no_stop() -> None:
    assert parse_request(req_line(stop="[]")).resolve().stop == []


@pytest.mark.parametrize("bad", ['"END"', "[1]", "[null]", '{"a":"b"}'])
def test_stop_must_be_list_of_strings(bad: str) -> None:
    with pytest.raises(DecodeError):
        parse_request(req_line(stop=bad))


def test_extensions_left_out_when_unset() -> None:
    line = encode_frame(Request(messages=[Message(role=Role.USER, content="x")]))
    obj = json.loads(line)
    assert "stop" not in obj and "seed" not in obj
    assert "temperature" not in obj  # unset sampling fields are left for the server


def test_integer_too_large_for_a_float_is_a_decode_error():
    """Found by fuzzing: float(10**400) raised OverflowError inside resolve()."""
    body = '{"messages":[{"role":"user","content":"x"}],"top_p":1' + "0" * 400 + "}"
    with pytest.raises(DecodeError, match="number out of range"):
        parse_request(body)
