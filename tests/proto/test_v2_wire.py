"""Protocol v2 wire (upstream-protocol §6.1, conformance items 21-25)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from inferd.proto import v2
from inferd.proto.errors import DecodeError, InvalidRequest
from inferd.proto.framing import encode_frame

RGB_2X2 = bytes(range(12))  # 2 * 2 * 3 raw RGB octets
PCM = struct.pack("<3f", 0.0, 0.5, -1.0)


def text_request(**extra) -> v2.RequestV2:
    return v2.RequestV2(
        id="r1",
        messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="hello")])],
        **extra,
    )


def request_json(messages=None, **extra) -> str:
    if messages is None:
        messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    return json.dumps({"id": "r1", "messages": messages, **extra})


def resolve_error(line: str) -> str:
    with pytest.raises(InvalidRequest) as info:
        v2.parse_request(line).resolve()
    assert info.value.code == "invalid_request"
    return info.value.detail


def image(id: str = "img-1", raw: bytes = RGB_2X2) -> dict:
    return {"kind": "image", "id": id, "width": 2, "height": 2, "bytes": base64.b64encode(raw).decode()}


def audio(id: str = "aud-1") -> dict:
    return {"kind": "audio", "id": id, "sample_rate": 16000, "bytes": base64.b64encode(PCM).decode()}


# ---- item 21: round trips ----------------------------------------------------------


def test_text_only_request_round_trips_compactly():
    req = text_request(temperature=0.7, max_tokens=64)
    line = encode_frame(req)
    assert line.endswith(b"\n")
    data = json.loads(line)
    # Empty attachments / tools are omitted, as upstream serialises them.
    assert "attachments" not in data and "tools" not in data
    assert data["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert v2.parse_request(line) == req


def test_empty_id_is_omitted_and_defaults_back_to_empty():
    req = v2.RequestV2(messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="")])])
    data = json.loads(encode_frame(req))
    assert "id" not in data
    assert v2.parse_request(json.dumps(data)).id == ""


def test_multimodal_request_round_trips_with_base64_bytes():
    line = request_json(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "attachment_id": "img-1"},
                    {"type": "audio", "attachment_id": "aud-1"},
                ],
            },
            {"role": "assistant", "content": [{"type": "tool_use", "tool_call_id": "tc-1", "name": "look", "input": {"q": None}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_call_id": "tc-1", "content": [{"type": "text", "text": "ok"}]}]},
        ],
        attachments=[image(), audio(), {"kind": "video", "id": "vid-1", "bytes": ""}],
        tools=[{"name": "look", "description": "looks", "input_schema": {"type": "object"}}],
        top_k=40,
        stream=False,
    )
    req = v2.parse_request(line)
    img, aud, vid = req.attachments
    assert isinstance(img, v2.ImageAttachment) and img.bytes == RGB_2X2 and (img.width, img.height) == (2, 2)
    assert isinstance(aud, v2.AudioAttachment) and aud.bytes == PCM and aud.sample_rate == 16000
    assert isinstance(vid, v2.VideoAttachment) and vid.bytes == b""
    assert req.messages[2].content[0].input == {"q": None}

    again = encode_frame(req)
    assert json.loads(again)["attachments"][0] == image()  # kind first, bytes as padded base64
    assert v2.parse_request(again) == req
    assert req.resolve().attachment("aud-1") is aud


def test_raw_bytes_accepted_from_python_and_encoded_as_base64():
    att = v2.ImageAttachment(id="i", width=2, height=2, bytes=RGB_2X2)
    assert json.loads(att.model_dump_json())["bytes"] == base64.b64encode(RGB_2X2).decode()
    assert "bytes" not in repr(att)  # megabytes of pixels stay out of logs and tracebacks


@pytest.mark.parametrize("bad", ["AAE", "AA=E", "!!!!", 12])
def test_invalid_base64_is_a_decode_error(bad):
    with pytest.raises(DecodeError) as info:
        v2.parse_request(request_json(attachments=[{**image(), "bytes": bad}]))
    assert info.value.code == "invalid_request"
    assert info.value.message.startswith("decode: ")


@pytest.mark.parametrize(
    "line",
    [
        '{"id":"x"}',  # messages missing
        '{"messages":[{"role":"user","content":"plain string"}]}',
        '{"messages":[{"role":"tool","content":[]}]}',
        '{"messages":[{"role":"user","content":[{"text":"no type"}]}]}',
        '{"messages":[],"attachments":[{"id":"no-kind"}]}',
        '{"messages":[],"attachments":null}',
        '{"messages":[],"tools":[{"name":"t","description":"d"}]}',
        '{"messages":[],"top_k":64.0}',
        "{ this is not json }",
    ],
)
def test_shape_errors_are_decode_errors(line):
    with pytest.raises(DecodeError):
        v2.parse_request(line)


def test_unknown_fields_are_ignored():
    req = v2.parse_request(request_json(future_field=42))
    assert req.id == "r1"


# ---- item 22: resolve rules, in order, with upstream's messages ---------------------


def test_resolve_keeps_sampling_unset_and_fields_intact():
    resolved = v2.parse_request(request_json(temperature=1, top_p=0.9)).resolve()
    assert resolved.id == "r1"
    assert resolved.temperature == 1.0 and isinstance(resolved.temperature, float)
    assert resolved.top_p == 0.9
    assert resolved.top_k is None and resolved.max_tokens is None and resolved.stream is None


def test_empty_messages_rejected():
    assert resolve_error(request_json(messages=[])) == "messages must not be empty"


def test_unknown_attachment_kind_parses_and_is_rejected():
    req = v2.parse_request(request_json(attachments=[{"kind": "hologram", "id": "h"}]))
    assert isinstance(req.attachments[0], v2.UnknownAttachment)
    assert req.attachments[0].kind == "hologram"
    assert resolve_error(request_json(attachments=[{"kind": "hologram", "id": "h"}])) == "attachments contain an unknown kind"


def test_attachment_id_must_not_be_empty():
    assert resolve_error(request_json(attachments=[image(id="")])) == "attachments must have non-empty id"


def test_duplicate_attachment_ids_rejected_even_across_kinds():
    detail = resolve_error(request_json(attachments=[image(id="same"), audio(id="same")]))
    assert detail == "duplicate attachment id: same"


def test_duplicate_tool_names_rejected():
    tool = {"name": "get_weather", "description": "d", "input_schema": {}}
    assert resolve_error(request_json(tools=[tool, tool])) == "duplicate tool name: get_weather"


def test_empty_content_rejected_naming_the_message():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}]}, {"role": "user", "content": []}]
    assert resolve_error(request_json(messages=messages)) == "messages[1].content must not be empty"


def test_dangling_attachment_id_rejected_naming_the_id():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "attachment_id": "missing"}]}]
    detail = resolve_error(request_json(messages=messages))
    assert detail == 'messages[0].content[1] references unknown attachment_id "missing"'


def test_wrong_attachment_kind_rejected():
    messages = [{"role": "user", "content": [{"type": "audio", "attachment_id": "img-1"}]}]
    detail = resolve_error(request_json(messages=messages, attachments=[image()]))
    assert detail == 'messages[0].content[0] block expects audio attachment but "img-1" is a different kind'


def test_attachment_inside_tool_result_resolves():
    nested = [{"type": "text", "text": "see"}, {"type": "image", "attachment_id": "img-1"}]
    messages = [
        {"role": "assistant", "content": [{"type": "tool_use", "tool_call_id": "tc", "name": "look", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_call_id": "tc", "content": nested}]},
    ]
    resolved = v2.parse_request(request_json(messages=messages, attachments=[image()])).resolve()
    assert isinstance(resolved.messages[1].content[0], v2.ToolResultBlock)


def test_unpaired_tool_result_is_refused():
    messages = [{"role": "user", "content": [{"type": "tool_result", "tool_call_id": "X",
                                              "content": [{"type": "text", "text": "42"}]}]}]
    assert resolve_error(request_json(messages=messages)) == (
        'messages[0].content[0]: tool_result references tool_call_id "X", which matches no tool_use in this request')


def test_tool_result_blocks_are_validated_recursively():
    nested = [{"type": "text", "text": "x"}, {"type": "video", "attachment_id": "nope"}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "tool_result", "tool_call_id": "t", "content": nested}]},
    ]
    # Upstream reports the nested block's own index under the outer message.
    assert resolve_error(request_json(messages=messages)) == 'messages[1].content[1] references unknown attachment_id "nope"'


def test_tool_use_name_is_not_checked_against_tools():
    messages = [{"role": "assistant", "content": [{"type": "tool_use", "tool_call_id": "t", "name": "undeclared", "input": {}}]}]
    v2.parse_request(request_json(messages=messages)).resolve()


def test_checks_run_in_upstream_order():
    # Unknown kind is reported before a duplicate tool name and an empty content.
    tool = {"name": "t", "description": "d", "input_schema": {}}
    line = request_json(messages=[{"role": "user", "content": []}], attachments=[{"kind": "x"}], tools=[tool, tool])
    assert resolve_error(line) == "attachments contain an unknown kind"
    line = request_json(messages=[{"role": "user", "content": []}], tools=[tool, tool])
    assert resolve_error(line) == "duplicate tool name: t"


# ---- item 23: unknown content block ----------------------------------------------------


def test_unknown_block_type_parses_as_unknown_and_resolve_rejects_it():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "document", "uri": "x"}]}]
    req = v2.parse_request(request_json(messages=messages))
    block = req.messages[0].content[1]
    assert isinstance(block, v2.UnknownBlock) and block.type == "document"
    assert resolve_error(request_json(messages=messages)) == "messages[0].content[1] uses unknown content-block type"


def test_thinking_is_not_a_request_block():
    messages = [{"role": "assistant", "content": [{"type": "thinking", "delta": "hm"}]}]
    assert isinstance(v2.parse_request(request_json(messages=messages)).messages[0].content[0], v2.UnknownBlock)


# ---- item 24: response frames ------------------------------------------------------------


@pytest.mark.parametrize(
    "block, expected",
    [
        (v2.TextDeltaBlock(delta="Hello "), {"type": "text", "delta": "Hello "}),
        (v2.ThinkingDeltaBlock(delta="..."), {"type": "thinking", "delta": "..."}),
        (
            v2.ToolUseBlock(tool_call_id="tc-1", name="get_weather", input={"city": "London"}),
            {"type": "tool_use", "tool_call_id": "tc-1", "name": "get_weather", "input": {"city": "London"}},
        ),
        (v2.ToolUseBlock(tool_call_id="tc-2", name="noop", input=None), {"type": "tool_use", "tool_call_id": "tc-2", "name": "noop", "input": None}),
        (
            v2.ToolUseDeltaBlock(tool_call_id="tc-3", name="get_weather", delta='{"city": "Lon'),
            {"type": "tool_use_delta", "tool_call_id": "tc-3", "name": "get_weather", "delta": '{"city": "Lon'},
        ),
    ],
)
def test_block_frames_round_trip(block, expected):
    frame = v2.FrameV2(id="req-001", block=block)
    line = encode_frame(frame)
    assert json.loads(line) == {"type": "frame", "id": "req-001", "block": expected}
    back = v2.parse_response(line)
    assert back == frame and not back.is_terminal


def test_done_frame_round_trips_without_content():
    done = v2.DoneFrameV2(id="r", usage=v2.UsageV2(input_tokens=5, output_tokens=3), stop_reason="end_turn", backend="llamacpp")
    line = encode_frame(done)
    assert line == (
        b'{"type":"done","id":"r","usage":{"input_tokens":5,"output_tokens":3},'
        b'"stop_reason":"end_turn","backend":"llamacpp"}\n'
    )
    back = v2.parse_response(line)
    assert back == done and back.is_terminal


def test_tool_use_stop_reason_serialises_as_that_string():
    done = v2.DoneFrameV2(id="r", usage=v2.UsageV2(input_tokens=0, output_tokens=0), stop_reason=v2.StopReasonV2.TOOL_USE, backend="mock")
    assert json.loads(encode_frame(done))["stop_reason"] == "tool_use"
    assert {s.value for s in v2.StopReasonV2} == {"end_turn", "max_tokens", "tool_use", "stop_sequence", "cancelled", "error"}


@pytest.mark.parametrize("code", ["queue_full", "attachment_unsupported", "tool_call_malformed"])
def test_error_codes_round_trip(code):
    frame = v2.error_frame("r", v2.ErrorCodeV2(code), "nope")
    line = encode_frame(frame)
    assert json.loads(line) == {"type": "error", "id": "r", "code": code, "message": "nope"}
    back = v2.parse_response(line)
    assert back == frame and back.is_terminal


def test_error_code_set():
    assert {c.value for c in v2.ErrorCodeV2} == {
        "queue_full", "backend_unavailable", "invalid_request", "frame_too_large", "internal",
        "attachment_unsupported", "tool_call_malformed", "model_not_found", "insufficient_memory",
    }


def test_unknown_error_code_from_a_newer_daemon_still_parses():
    assert v2.parse_response('{"type":"error","id":"r","code":"wire_version_unsupported","message":"m"}').code == "wire_version_unsupported"


def test_bad_response_is_a_decode_error():
    with pytest.raises(DecodeError):
        v2.parse_response('{"type":"token","id":"r","content":"v1 frame"}')


# ---- item 25: the upstream ADR 0015 examples, with the upstream ADR 0016 attachment shape ---------------------

ADR_REQUEST = {
    "id": "req-001",
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "You are helpful."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What's in this image?"}, {"type": "image", "attachment_id": "img-1"}],
        },
    ],
    "attachments": [
        {"kind": "image", "id": "img-1", "width": 256, "height": 256, "bytes": base64.b64encode(bytes(256 * 256 * 3)).decode()}
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Returns the current weather for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ],
    "temperature": 0.7,
    "max_tokens": 1024,
    "stream": True,
}

ADR_RESPONSES = [
    '{"type":"frame","id":"req-001","block":{"type":"text","delta":"Hello "}}',
    '{"type":"frame","id":"req-001","block":{"type":"text","delta":"there"}}',
    '{"type":"frame","id":"req-001","block":{"type":"tool_use","tool_call_id":"tc-1","name":"get_weather","input":{"city":"London"}}}',
    '{"type":"done","id":"req-001","stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":3},"backend":"llamacpp"}',
    '{"type":"error","id":"req-001","code":"invalid_request","message":"image attachment exceeds engine input size"}',
]


def test_adr_0015_example_request_parses_and_resolves():
    req = v2.parse_request(json.dumps(ADR_REQUEST))
    resolved = req.resolve()
    assert resolved.id == "req-001"
    att = resolved.attachments[0]
    assert isinstance(att, v2.ImageAttachment) and len(att.bytes) == att.width * att.height * 3
    assert resolved.tools[0].input_schema["required"] == ["city"]
    assert resolved.temperature == 0.7 and resolved.max_tokens == 1024 and resolved.stream is True
    assert json.loads(encode_frame(req)) == ADR_REQUEST


def test_adr_0015_example_responses_parse():
    frames = [v2.parse_response(line) for line in ADR_RESPONSES]
    assert [type(f) for f in frames] == [v2.FrameV2, v2.FrameV2, v2.FrameV2, v2.DoneFrameV2, v2.ErrorFrameV2]
    assert all(f.id == "req-001" for f in frames)
    assert frames[2].block.input == {"city": "London"}
    assert frames[3].usage.output_tokens == 3 and frames[3].stop_reason is v2.StopReasonV2.END_TURN
    assert [f.is_terminal for f in frames] == [False, False, False, True, True]


def test_stream_tool_input_is_asked_for_and_strict():
    base = {"id": "r", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert v2.parse_request(json.dumps(base)).resolve().stream_tool_input is False
    assert v2.parse_request(json.dumps({**base, "stream_tool_input": True})).resolve().stream_tool_input is True
    with pytest.raises(DecodeError):
        v2.parse_request(json.dumps({**base, "stream_tool_input": "yes"}))
