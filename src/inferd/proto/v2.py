"""Protocol v2 (upstream ADR 0015, attachments as reshaped by upstream ADR 0016): typed content blocks.

NDJSON on its own socket (`infer.v2.sock`), same framing and cap as v1. Media travel
already decoded (raw RGB for images, little-endian f32 PCM for audio) as standard
padded base64 inside the JSON; the daemon links no codecs.

Forward compatibility: a content block with an unrecognised `type` or an attachment
with an unrecognised `kind` still parses (as UnknownBlock / UnknownAttachment), so a
newer client's request is answered with `invalid_request` on its own id instead of
a decode error that closes the connection. `resolve()` is where they are rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, JsonValue, PlainSerializer, PlainValidator,
                      SerializerFunctionWrapHandler, StrictBool, StrictFloat, StrictInt, StrictStr, Tag, TypeAdapter, ValidationError,
                      model_serializer)

from .errors import DecodeError, ErrorFrame, InvalidRequest
from . import limits
from .v1 import DEFAULT_MAX_TOKENS, U32, ContextInfo, CountFrame, Number, ProgressFrame, ResponseFormat, Timings, _summarise, error_frame, json_size

TOOL_CHOICES = ("auto", "none", "required")

# Applied by the daemon when a request has no max_tokens (upstream lib.rs): v1's.
DEFAULT_V2_MAX_TOKENS = DEFAULT_MAX_TOKENS




def _finite_json(value: JsonValue) -> JsonValue:
    """NaN and Infinity are not JSON; allow_inf_nan does not reach free-form values."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and Infinity are not JSON")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


FiniteJson = Annotated[JsonValue, AfterValidator(_finite_json)]

class RoleV2(StrEnum):
    # Kept apart from v1's Role so the two wires can evolve independently.
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class StopReasonV2(StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    STOP_SEQUENCE = "stop_sequence"  # reserved: no backend emits it
    CANCELLED = "cancelled"
    ERROR = "error"


class ErrorCodeV2(StrEnum):
    QUEUE_FULL = "queue_full"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INVALID_REQUEST = "invalid_request"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL = "internal"
    ATTACHMENT_UNSUPPORTED = "attachment_unsupported"
    TOOL_CALL_MALFORMED = "tool_call_malformed"
    MODEL_NOT_FOUND = "model_not_found"
    INSUFFICIENT_MEMORY = "insufficient_memory"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, cache_strings="keys")


# ---- base64 media ------------------------------------------------------------------

def _decode_b64(value: object) -> bytes:
    # Python callers may hand over raw bytes; on the wire it is always a string.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("bytes must be standard padded base64") from None
    raise ValueError("bytes must be a base64 string")


def _encode_b64(raw: bytes) -> str:
    # b64encode, not encodebytes: a newline inside a JSON string is legal but
    # needless, and every byte counts against the 64 MiB frame cap.
    return base64.b64encode(raw).decode("ascii")


B64Bytes = Annotated[
    bytes,
    PlainValidator(_decode_b64),
    PlainSerializer(_encode_b64, return_type=str, when_used="json"),
]


def _tagged(key: str, known: frozenset[str], unknown_cls: type[BaseModel]) -> Callable[[Any], str | None]:
    """Discriminator that sends any unrecognised tag value to the Unknown variant.

    A missing or non-string tag yields None, which pydantic reports as a
    validation error: the tag itself is still mandatory, as upstream.
    """

    def pick(value: Any) -> str | None:
        if isinstance(value, unknown_cls):
            return "unknown"
        tag = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if not isinstance(tag, str):
            return None
        return tag if tag in known else "unknown"

    return pick


# ---- attachments (upstream ADR 0016) ----------------------------------------------------------

class ImageAttachment(_Wire):
    kind: Literal["image"] = "image"
    id: StrictStr
    width: U32
    height: U32
    bytes: B64Bytes = Field(repr=False)  # width * height * 3 interleaved RGB


class AudioAttachment(_Wire):
    kind: Literal["audio"] = "audio"
    id: StrictStr
    sample_rate: U32
    bytes: B64Bytes = Field(repr=False)  # little-endian f32 PCM samples


class VideoAttachment(_Wire):
    """Reserved: no backend decodes video yet; they answer `attachment_unsupported`."""

    kind: Literal["video"] = "video"
    id: StrictStr
    bytes: B64Bytes = Field(repr=False)


class UnknownAttachment(_Wire):
    kind: StrictStr


Attachment = Annotated[
    Union[
        Annotated[ImageAttachment, Tag("image")],
        Annotated[AudioAttachment, Tag("audio")],
        Annotated[VideoAttachment, Tag("video")],
        Annotated[UnknownAttachment, Tag("unknown")],
    ],
    Discriminator(
        _tagged("kind", frozenset({"image", "audio", "video"}), UnknownAttachment),
        custom_error_type="missing_tag",
        custom_error_message="attachment needs a string `kind`",
    ),
]


# ---- tools -----------------------------------------------------------------------------

class Tool(_Wire):
    name: StrictStr
    description: StrictStr
    # Documentation for the model; the daemon never validates tool input against it.
    input_schema: FiniteJson

    @model_serializer(mode="wrap")
    def _keep_schema(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A JSON null schema is still a present key; exclude_none must not drop it.
        data = handler(self)
        data.setdefault("input_schema", None)
        return data


# ---- content blocks ----------------------------------------------------------------------

class TextBlock(_Wire):
    type: Literal["text"] = "text"
    text: StrictStr  # may be empty


class ImageBlock(_Wire):
    type: Literal["image"] = "image"
    attachment_id: StrictStr


class AudioBlock(_Wire):
    type: Literal["audio"] = "audio"
    attachment_id: StrictStr


class VideoBlock(_Wire):
    type: Literal["video"] = "video"
    attachment_id: StrictStr


class ToolUseBlock(_Wire):
    """A complete tool call: replayed by clients in assistant turns, emitted by the daemon."""

    type: Literal["tool_use"] = "tool_use"
    tool_call_id: StrictStr
    # Not checked against `tools`: a replayed turn may name a tool the model knew anyway.
    name: StrictStr
    input: FiniteJson

    @model_serializer(mode="wrap")
    def _keep_input(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        data.setdefault("input", None)
        return data


class ToolResultBlock(_Wire):
    type: Literal["tool_result"] = "tool_result"
    tool_call_id: StrictStr
    content: list[ContentBlock]


class UnknownBlock(_Wire):
    type: StrictStr


_BLOCK_TYPES = frozenset({"text", "image", "audio", "video", "tool_use", "tool_result"})

ContentBlock = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[AudioBlock, Tag("audio")],
        Annotated[VideoBlock, Tag("video")],
        Annotated[ToolUseBlock, Tag("tool_use")],
        Annotated[ToolResultBlock, Tag("tool_result")],
        Annotated[UnknownBlock, Tag("unknown")],
    ],
    Discriminator(
        _tagged("type", _BLOCK_TYPES, UnknownBlock),
        custom_error_type="missing_tag",
        custom_error_message="content block needs a string `type`",
    ),
]

ToolResultBlock.model_rebuild()

# Block class -> (kind named in messages, attachment class it must point at).
_MEDIA: dict[type[BaseModel], tuple[str, type[BaseModel]]] = {
    ImageBlock: ("image", ImageAttachment),
    AudioBlock: ("audio", AudioAttachment),
    VideoBlock: ("video", VideoAttachment),
}


# ---- request -------------------------------------------------------------------------------

class MessageV2(_Wire):
    role: RoleV2
    content: list[ContentBlock]


class RequestV2(_Wire):
    id: StrictStr = ""
    messages: list[MessageV2]
    attachments: list[Attachment] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)
    # No proto-level defaults: each backend picks its own (unlike v1).
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: U32 | None = None
    max_tokens: U32 | None = None
    stream: StrictBool | None = None
    # Later upstream protocol (v0.5-v0.8) and inferd parity with v1:
    tool_choice: StrictStr | None = None
    thinking: StrictBool | None = None
    response_format: ResponseFormat | None = None
    stop: list[StrictStr] | None = None
    seed: U32 | None = None
    grammar: StrictStr = ""
    # inferd extension, as on v1: answer with one `count` frame, generate nothing.
    count_only: StrictBool | None = None
    # inferd extension: `tool_use_delta` blocks before each whole tool_use block. Asked
    # for, because upstream clients know only whole blocks (a new block type is not
    # one they can ignore).
    stream_tool_input: StrictBool | None = None
    # inferd extensions, as on v1: `progress` frames (issue 22); the model by name (issue 20).
    progress: StrictBool | None = None
    model: StrictStr | None = None
    # inferd extension (issue 20): how long the model stays loaded after this request,
    # Ollama's keep_alive (seconds or "5m"; 0 = unload after it; negative = for ever).
    keep_alive: StrictInt | StrictFloat | StrictStr | None = None

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Text-only requests stay as small as upstream clients make them.
        data = handler(self)
        if data.get("id") == "":
            del data["id"]
        for key in ("attachments", "tools", "grammar"):
            if key in data and not data[key]:
                del data[key]
        return data

    def resolve(self) -> ResolvedV2:
        """The semantic checks, in upstream order, then our limits (proto/limits.py);
        the first failure wins."""
        limits.check_id(self.id)
        if not self.messages:
            raise InvalidRequest("messages must not be empty")
        limits.check_count("messages", len(self.messages), limits.MAX_MESSAGES, "MAX_MESSAGES")
        limits.check_count("attachments", len(self.attachments), limits.MAX_ATTACHMENTS, "MAX_ATTACHMENTS")
        limits.check_count("tools", len(self.tools), limits.MAX_TOOLS, "MAX_TOOLS")
        for ti, tool in enumerate(self.tools):
            size = json_size(tool.input_schema)
            if size > limits.MAX_SCHEMA_BYTES:
                raise InvalidRequest(f"tools[{ti}].input_schema is {size} bytes of JSON; "
                                     f"at most {limits.MAX_SCHEMA_BYTES} (MAX_SCHEMA_BYTES)")
        by_id: dict[str, BaseModel] = {}
        for att in self.attachments:
            if isinstance(att, UnknownAttachment):
                raise InvalidRequest("attachments contain an unknown kind")
            if not att.id:
                raise InvalidRequest("attachments must have non-empty id")
            if att.id in by_id:
                raise InvalidRequest(f"duplicate attachment id: {att.id}")
            by_id[att.id] = att
        names: set[str] = set()
        for tool in self.tools:
            if tool.name in names:
                raise InvalidRequest(f"duplicate tool name: {tool.name}")
            names.add(tool.name)
        for mi, message in enumerate(self.messages):
            if not message.content:
                raise InvalidRequest(f"messages[{mi}].content must not be empty")
            _check_blocks(message.content, mi, by_id)
        if self.tool_choice is not None and self.tool_choice not in TOOL_CHOICES:
            raise InvalidRequest(f"tool_choice must be one of auto, none, required; got {_quote(self.tool_choice)}")
        if self.response_format is not None:
            self.response_format.check()
        # The rules between fields (a forced call needs tools, one grammar at most) are
        # the daemon's request policy, the same on every wire (daemon/pipeline/policy.py).
        limits.check_stops(self.stop)
        limits.check_grammar(self.grammar)
        _check_tool_pairs(self.messages)
        return ResolvedV2(
            id=self.id,
            messages=list(self.messages),
            attachments=list(self.attachments),
            tools=list(self.tools),
            temperature=None if self.temperature is None else float(self.temperature),
            top_p=None if self.top_p is None else float(self.top_p),
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stream=self.stream,
            tool_choice=self.tool_choice,
            thinking=self.thinking,
            response_format=self.response_format,
            stop=list(self.stop or ()),
            seed=self.seed,
            grammar=self.grammar,
            count_only=bool(self.count_only),
            stream_tool_input=bool(self.stream_tool_input),
            progress=bool(self.progress),
            model=self.model,
            keep_alive=self.keep_alive,
        )


def _check_tool_pairs(messages: list[MessageV2]) -> None:
    """Every tool_result must answer a tool_use of this request (upstream v0.8: never guessed)."""
    called = {b.tool_call_id for m in messages for b in m.content if isinstance(b, ToolUseBlock)}
    for mi, message in enumerate(messages):
        for bi, block in enumerate(message.content):
            if isinstance(block, ToolResultBlock) and block.tool_call_id not in called:
                raise InvalidRequest(
                    f"messages[{mi}].content[{bi}]: tool_result references tool_call_id "
                    f"{_quote(block.tool_call_id)}, which matches no tool_use in this request"
                )


def _quote(text: str) -> str:
    # Upstream formats ids with Rust's Debug for str: double-quoted, escaped.
    return json.dumps(text, ensure_ascii=False)


def _check_blocks(blocks: list[Any], mi: int, by_id: dict[str, BaseModel]) -> None:
    # Nested tool_result blocks are reported with their own index under the same
    # message, exactly as upstream words it.
    for bi, block in enumerate(blocks):
        if isinstance(block, UnknownBlock):
            raise InvalidRequest(f"messages[{mi}].content[{bi}] uses unknown content-block type")
        if isinstance(block, ToolResultBlock):
            _check_blocks(block.content, mi, by_id)
            continue
        media = _MEDIA.get(type(block))
        if media is None:
            continue
        kind, expected = media
        ref = block.attachment_id
        att = by_id.get(ref)
        if att is None:
            raise InvalidRequest(f"messages[{mi}].content[{bi}] references unknown attachment_id {_quote(ref)}")
        if not isinstance(att, expected):
            raise InvalidRequest(
                f"messages[{mi}].content[{bi}] block expects {kind} attachment but {_quote(ref)} is a different kind"
            )


class ResolvedV2(BaseModel):
    """A validated v2 request: every attachment reference points at the right kind."""

    id: str
    messages: list[MessageV2]
    attachments: list[Attachment] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stream: bool | None = None
    tool_choice: str | None = None
    thinking: bool | None = None
    response_format: ResponseFormat | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    grammar: str = ""
    count_only: bool = False
    stream_tool_input: bool = False
    progress: bool = False
    model: str | None = None
    keep_alive: int | float | str | None = None

    def attachment(self, attachment_id: str) -> ImageAttachment | AudioAttachment | VideoAttachment | None:
        for att in self.attachments:
            if getattr(att, "id", None) == attachment_id:
                return att  # type: ignore[return-value]
        return None


# ---- responses -------------------------------------------------------------------------------

class TextDeltaBlock(BaseModel):
    type: Literal["text"] = "text"
    delta: str


class ThinkingDeltaBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    delta: str


class ToolUseDeltaBlock(BaseModel):
    """A piece of a tool call's `input` as JSON text, while the model writes it (when the
    request set `stream_tool_input`). The pieces of one `tool_call_id` concatenate to
    the JSON of the whole `tool_use` block's input that follows them, which is the
    call: a call whose text turns out malformed ends in `tool_call_malformed` instead."""

    type: Literal["tool_use_delta"] = "tool_use_delta"
    tool_call_id: str
    name: str
    delta: str


ResponseBlock = Annotated[Union[TextDeltaBlock, ThinkingDeltaBlock, ToolUseDeltaBlock, ToolUseBlock],
                          Field(discriminator="type")]


class UsageV2(BaseModel):
    input_tokens: int
    output_tokens: int
    # inferd extensions, as on v1's usage (omitted when unknown).
    cached_tokens: int | None = None
    thinking_tokens: int | None = None


class FrameV2(BaseModel):
    type: Literal["frame"] = "frame"
    id: str
    block: ResponseBlock

    @property
    def is_terminal(self) -> bool:
        return False


class DoneFrameV2(BaseModel):
    """Terminal success. Unlike v1 there is no `content`: the deltas are the text."""

    type: Literal["done"] = "done"
    id: str
    usage: UsageV2
    stop_reason: StopReasonV2
    backend: str
    #: Present (true) only when tool_choice "required" produced no call.
    tool_choice_unsatisfied: bool | None = None
    timings: Timings | None = None
    context: ContextInfo | None = None

    @property
    def is_terminal(self) -> bool:
        return True


ErrorFrameV2 = ErrorFrame  # the one error frame shape (errors.py)


ResponseV2 = Annotated[Union[FrameV2, DoneFrameV2, ErrorFrameV2, CountFrame, ProgressFrame], Field(discriminator="type")]
_RESPONSE = TypeAdapter(ResponseV2)


def parse_request(line: bytes | str) -> RequestV2:
    """Decode one v2 request line; a JSON or type error is a DecodeError (connection closes).
    Too many JSON values: InvalidRequest before parsing (limits.check_json_budget)."""
    limits.check_json_budget(line)
    try:
        return RequestV2.model_validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None


def parse_response(line: bytes | str) -> FrameV2 | DoneFrameV2 | ErrorFrameV2 | CountFrame | ProgressFrame:
    try:
        return _RESPONSE.validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None
