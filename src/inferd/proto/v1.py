"""Protocol v1: the NDJSON generation wire (upstream-protocol §3) plus our additive fields.

Additive extensions (old clients ignore them, old daemons ignore the request fields):
request `stop` and `seed`, `done.timings`; `stream: false` is honoured by the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]
import math
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError, model_validator

from .errors import DecodeError, ErrorCode, ErrorFrame, FrameTooLarge, InvalidRequest
from . import limits
from .framing import MAX_FRAME_BYTES

VALID_IMAGE_TOKEN_BUDGETS: tuple[int, ...] = (70, 140, 280, 560, 1120)

# What the daemon samples with when a request leaves these out (protocol-v1 §4.1), on
# every wire; applied in one place, daemon/pipeline/policy.py.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 64
DEFAULT_MAX_TOKENS = 1000

U32_MAX = 4_294_967_295
U32 = Annotated[StrictInt, Field(ge=0, le=U32_MAX)]


def _finite(value: float | int) -> float | int:
    # An integer literal of 400 digits is valid JSON but no float: upstream's parser
    # refused it as a decode error, and float() would raise OverflowError later.
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError("number out of range") from None
    if not math.isfinite(as_float):
        raise ValueError("number out of range")
    return value


# JSON numbers: integers are acceptable where a float is expected, strings are not.
Number = Annotated[Union[StrictFloat, StrictInt], AfterValidator(_finite)]


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class _Wire(BaseModel):
    # Unknown fields are ignored on parse (forward compatibility, upstream §3.1).
    # allow_inf_nan=False: NaN/Infinity (and 1e400 -> inf) are not JSON; upstream's
    # parser refused them and a non-finite temperature must never reach a sampler.
    # cache_strings="keys": ids and prompts are unique per request; caching them only
    # grew the daemon's memory (bench/soak.py: +608 KiB per 10k requests, now +12 KiB).
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False, cache_strings="keys")


class Message(_Wire):
    role: Role
    content: StrictStr


class ResponseFormat(_Wire):
    """Constrain the output: any JSON object, or JSON valid against `schema`."""

    type: Literal["json_object", "json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, cache_strings="keys", populate_by_name=True)

    def check(self) -> None:
        if self.type == "json_schema" and self.schema_ is None:
            raise InvalidRequest('response_format json_schema needs a "schema" object')
        if self.type == "json_object" and self.schema_ is not None:
            raise InvalidRequest('response_format json_object takes no "schema"; use json_schema')
        if self.schema_ is not None:
            size = json_size(self.schema_)
            if size > limits.MAX_SCHEMA_BYTES:
                raise InvalidRequest(f"response_format schema is {size} bytes of JSON; "
                                     f"at most {limits.MAX_SCHEMA_BYTES} (MAX_SCHEMA_BYTES)")


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (how the limits measure a free-form schema)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


class Request(_Wire):
    id: StrictStr = ""
    # One of the two is required (a request with neither is a decode error, as upstream's).
    messages: list[Message] | None = None
    # inferd extension: a raw prompt fed to the model as is, no chat template (`inferd run --raw`).
    prompt: StrictStr | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: U32 | None = None
    max_tokens: U32 | None = None
    stream: StrictBool | None = None
    image_token_budget: U32 | None = None
    grammar: StrictStr = ""
    # inferd extensions
    stop: list[StrictStr] | None = None
    seed: U32 | None = None
    response_format: ResponseFormat | None = None
    # inferd extension: answer with one `count` frame (the prompt's tokens), generate nothing.
    count_only: StrictBool | None = None
    # inferd extension (issue 22): `progress` frames before the first token.
    progress: StrictBool | None = None
    # inferd extension (issue 20): the model by name; absent = the default model.
    model: StrictStr | None = None
    # inferd extension (issue 20): how long the model stays loaded after this request,
    # Ollama's keep_alive (seconds or "5m"; 0 = unload after it; negative = for ever).
    keep_alive: StrictInt | StrictFloat | StrictStr | None = None

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> "Request":
        if self.messages is None and self.prompt is None:
            raise ValueError("messages: Field required")
        return self

    def resolve(self) -> "Resolved":
        """The semantic checks, in upstream order, then our limits (proto/limits.py).
        Defaults and the rules between fields are the daemon's request policy
        (daemon/pipeline/policy.py), the same for every wire."""
        limits.check_id(self.id)
        if self.prompt is not None:
            if self.messages is not None:
                raise InvalidRequest("give messages or prompt, not both")
        elif not self.messages:
            raise InvalidRequest("messages must not be empty")
        limits.check_count("messages", len(self.messages or ()), limits.MAX_MESSAGES, "MAX_MESSAGES")
        if self.image_token_budget is not None and self.image_token_budget not in VALID_IMAGE_TOKEN_BUDGETS:
            raise InvalidRequest(
                f"image_token_budget {self.image_token_budget} not in [70, 140, 280, 560, 1120]"
            )
        limits.check_stops(self.stop)
        limits.check_grammar(self.grammar)
        if self.response_format is not None:
            self.response_format.check()
        return Resolved(
            id=self.id,
            messages=list(self.messages or ()),
            prompt=self.prompt,
            temperature=None if self.temperature is None else float(self.temperature),
            top_p=None if self.top_p is None else float(self.top_p),
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stream=True if self.stream is None else self.stream,
            image_token_budget=self.image_token_budget,
            grammar=self.grammar,
            stop=list(self.stop or ()),
            seed=self.seed,
            response_format=self.response_format,
            count_only=bool(self.count_only),
            progress=bool(self.progress),
            model=self.model,
            keep_alive=self.keep_alive,
        )


@dataclass(slots=True)
class Resolved:
    """A validated request, from which a surface builds the engine's request; a
    sampling value the client left out is None (the request policy defaults it). A
    plain dataclass: `Request.resolve` fills it from fields the model already
    validated, on every request (validating again cost more than the rest of resolve)."""

    id: str
    messages: list[Message]
    prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stream: bool = True
    image_token_budget: int | None = None
    grammar: str = ""
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    response_format: ResponseFormat | None = None
    count_only: bool = False
    progress: bool = False
    model: str | None = None
    keep_alive: int | float | str | None = None


class StopReason(StrEnum):
    END = "end"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    # inferd extensions (omitted when unknown): prompt tokens served from the KV
    # prefix cache, and completion tokens that were reasoning.
    cached_tokens: int | None = None
    thinking_tokens: int | None = None


class ContextInfo(BaseModel):
    """inferd extension on `done`: tokens in the context after this turn, and its size."""

    used: int
    max: int


class Timings(BaseModel):
    """inferd extension on `done`: where the time went."""

    prompt_ms: float
    generate_ms: float
    tokens_per_second: float


class TokenFrame(BaseModel):
    type: Literal["token"] = "token"
    id: str
    content: str

    @property
    def is_terminal(self) -> bool:
        return False


class DoneFrame(BaseModel):
    type: Literal["done"] = "done"
    id: str
    content: str
    usage: Usage
    stop_reason: StopReason
    backend: str
    timings: Timings | None = None
    context: ContextInfo | None = None

    @property
    def is_terminal(self) -> bool:
        return True


class CountFrame(BaseModel):
    """inferd extension: the answer to a `count_only` request (v1 and v2 alike)."""

    type: Literal["count"] = "count"
    id: str
    prompt_tokens: int
    context: ContextInfo | None = None

    @property
    def is_terminal(self) -> bool:
        return True


class ProgressFrame(BaseModel):
    """inferd extension (issue 22), sent only to a request that set `progress: true`
    (v1 and v2 alike): what it waits on before its first token. Never terminal.

    - `queued`: waiting for a slot; `position` 1 is next. Sent again when it changes.
    - `prefill`: reading the prompt; `done` of `total` prompt tokens (cached ones count
      as done), sent as chunks are read.
    - `context`: the context this request will use (`context.used` = prompt tokens,
      `context.max` = the context size), once, before the first token.
    """

    type: Literal["progress"] = "progress"
    id: str
    stage: Literal["queued", "prefill", "context"]
    position: int | None = None
    done: int | None = None
    total: int | None = None
    context: ContextInfo | None = None

    @property
    def is_terminal(self) -> bool:
        return False


class StatusFrame(BaseModel):
    type: Literal["status"] = "status"
    id: str
    status: str

    @property
    def is_terminal(self) -> bool:
        return False


class TokenLines:
    """Encodes the token frames of one request: the hot path of every generation.

    Produces the same JSON object as `TokenFrame(id=..., content=...)` (the test suite
    checks this for arbitrary text) but only serialises the changing `content`.
    """

    __slots__ = ("_head",)

    def __init__(self, id: str) -> None:
        self._head = b'{"type":"token","id":' + _json_str(id) + b',"content":'

    def __call__(self, content: str) -> bytes:
        return self._head + _json_str(content) + b"}\n"


class UsageCounts(Protocol):
    """What `encode_done` reads of a usage: the wire's Usage or the engine's."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int | None: ...
    @property
    def thinking_tokens(self) -> int | None: ...


def encode_done(id: str, content: str, usage: UsageCounts, stop_reason: StopReason, backend: str,
                timings: Timings | None = None, context: ContextInfo | None = None) -> bytes:
    """The `done` line, as `encode_frame(DoneFrame(...))` writes it (the fuzz tests
    check this) without validating what the daemon itself just built: it ends every
    request, and the model round trip was a tenth of a 1-token request's cost.
    Raises FrameTooLarge past the frame cap, like encode_frame."""
    parts = [b'{"type":"done","id":', _json_str(id), b',"content":', _json_str(content),
             b',"usage":{"prompt_tokens":', b"%d" % usage.prompt_tokens,
             b',"completion_tokens":', b"%d" % usage.completion_tokens]
    if usage.cached_tokens is not None:
        parts += (b',"cached_tokens":', b"%d" % usage.cached_tokens)
    if usage.thinking_tokens is not None:
        parts += (b',"thinking_tokens":', b"%d" % usage.thinking_tokens)
    parts += (b'},"stop_reason":', _json_str(stop_reason.value), b',"backend":', _json_str(backend))
    if timings is not None:
        parts += (b',"timings":', timings.__pydantic_serializer__.to_json(timings))
    if context is not None:
        parts += (b',"context":{"used":', b"%d" % context.used, b',"max":', b"%d" % context.max, b"}")
    parts.append(b"}\n")
    line = b"".join(parts)
    if len(line) > MAX_FRAME_BYTES:  # the payload (without the newline) must stay under the cap
        raise FrameTooLarge(MAX_FRAME_BYTES)
    return line


def _json_str(value: str) -> bytes:
    # What json.dumps(value, ensure_ascii=False) returns, without building an encoder
    # per call (a third of a token frame's cost).
    return encode_basestring(value).encode()


Response = Annotated[Union[TokenFrame, DoneFrame, ErrorFrame, StatusFrame, CountFrame, ProgressFrame],
                     Field(discriminator="type")]
_RESPONSE = TypeAdapter(Response)


def parse_request(line: bytes | str) -> Request:
    """Decode one request line; any JSON or type error is a DecodeError (connection closes).

    A line holding more JSON values than limits.MAX_JSON_VALUES is refused before it is
    parsed, with InvalidRequest (the connection stays open).
    """
    limits.check_json_budget(line)
    try:
        return Request.model_validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None


def parse_response(line: bytes | str) -> TokenFrame | DoneFrame | ErrorFrame | StatusFrame | CountFrame | ProgressFrame:
    try:
        return _RESPONSE.validate_json(line)
    except ValidationError as exc:
        raise DecodeError(_summarise(exc)) from None


def error_frame(id: str, code: ErrorCode | str, message: str) -> ErrorFrame:
    return ErrorFrame(id=id, code=str(code), message=message)


def _summarise(exc: ValidationError) -> str:
    """A short, single-line description of the first validation problem."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid JSON"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg", "invalid")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
