"""OpenAI request bodies -> the engine's GenerationRequest and the embed request.

Decoding only: every check that needs no backend happens here, and each failure is
a 400 naming the offending field as `param` (docs/http.md has the full table).
Fields OpenAI defines that this daemon cannot honour change the answer a client
would get (`n` > 1, `logprobs`, `suffix`, token-array inputs): those are refused,
never silently dropped. Fields that only tune sampling in ways our engine has no
knob for (`presence_penalty`, `frequency_penalty`, `logit_bias`) and bookkeeping
fields (`user`, `metadata`, `store`, `parallel_tool_calls`) are accepted and
ignored, as llama-server does. Unknown fields are ignored (newer SDKs send more).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ....engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec, ToolSpec
from ....proto.embed import EmbedRequest, EmbedResolved
from ....proto import limits
from ....proto.errors import InvalidRequest
from ....proto.v1 import U32, Number, json_size
from ...pipeline import policy
from .errors import HttpError, invalid

#: OpenAI's own default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_SEED_MASK = 0xFFFFFFFF


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, cache_strings="keys")


# ---- chat ---------------------------------------------------------------------------

class FunctionCall(_Body):
    name: StrictStr
    # OpenAI sends the arguments as a JSON text; some clients send the object itself.
    arguments: StrictStr | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: StrictStr | None = None


class FunctionDef(_Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    description: StrictStr = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Body):
    name: StrictStr = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormatIn(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None
    # llama-server's shorthand: {"type": "json_object", "schema": {...}}
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr | None = None
    # inferd extension (issue 20), Ollama's: seconds or "5m"; 0 = unload after this request.
    keep_alive: StrictInt | float | StrictStr | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: U32 | None = None  # llama-server and vLLM extension
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    grammar: StrictStr | None = None  # llama-server extension (GBNF)
    # llama-server extension (issue 22): progress chunks before the first token, when streamed.
    return_progress: StrictBool = False


class ChatRequest(_Sampling):
    messages: list[Message]
    max_tokens: U32 | None = None
    max_completion_tokens: U32 | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormatIn | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    # Reasoning switches, first one present wins: ours, llama-server's, OpenAI's.
    thinking: StrictBool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: StrictStr | None = None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: U32 | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    logprobs: StrictInt | None = None
    response_format: ResponseFormatIn | None = None


class EmbeddingsRequest(_Body):
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    keep_alive: StrictInt | float | StrictStr | None = None  # as on chat (issue 20)
    dimensions: U32 | None = None
    encoding_format: Literal["float", "base64"] = "float"
    task: StrictStr | None = None  # inferd extension (the embed socket's task prefixes)


B = TypeVar("B", bound=_Body)


def parse(model: type[B], body: bytes) -> B:
    """Validate a request body; malformed JSON and wrong fields are 400s. The NDJSON
    wire's limits apply here too (proto/limits.py): first the value budget, so a
    64 MiB body of tiny values never blocks the loop parsing it (F-1)."""
    _checked(limits.check_json_budget, body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_part(model: type[B], data: Any, param: str) -> B:
    """Validate one piece of an already parsed body (an input item, a content block);
    a failure is a 400 whose `param` starts at `param`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, param) from None


def _validation_error(exc: ValidationError, prefix: str = "") -> HttpError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"type": "json_invalid", "msg": "invalid JSON", "loc": ()}
    if first.get("type") == "json_invalid":
        return invalid(f"the body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    param = ".".join([prefix] * bool(prefix) + [str(p) for p in first.get("loc", ()) if not _type_tag(p)]) or None
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return invalid(f"{where}{first.get('msg', 'invalid')}{more}", param)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _type_tag(part: object) -> bool:
    """pydantic puts the union member it tried into `loc` ("float", "list[str]", ...)."""
    if not isinstance(part, str):
        return False
    return part in _TYPE_TAGS or "[" in part or part.startswith(("function-", "json-or-python", "constrained-"))


def _checked(check: Any, *args: Any, param: str | None = None) -> None:
    try:
        check(*args)
    except InvalidRequest as exc:
        raise invalid(exc.detail, param) from None


def _schema_size(schema: dict[str, Any] | None, param: str) -> None:
    if schema is not None and (size := json_size(schema)) > limits.MAX_SCHEMA_BYTES:
        raise invalid(f"{param} is {size} bytes of JSON; at most {limits.MAX_SCHEMA_BYTES} (MAX_SCHEMA_BYTES)", param)


# ---- shared sampling ----------------------------------------------------------------

def _sampling(req: _Sampling) -> dict[str, Any]:
    """What the body says of sampling, None where it says nothing (the request policy
    defaults it); OpenAI's value ranges are this wire's own."""
    if req.n is not None and req.n != 1:
        raise invalid("n must be 1: this server generates one choice per request", "n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    _checked(limits.check_grammar, req.grammar or "", param="grammar")
    # OpenAI's seed is any integer; llama-server's -1 means "no particular seed".
    seed = None if req.seed is None or req.seed == -1 else req.seed & _SEED_MASK
    return sampling(req.temperature, req.top_p, top_k=req.top_k, seed=seed, stop=stop, grammar=req.grammar or "")


def sampling(temperature: float | None, top_p: float | None, *, top_k: int | None = None, seed: int | None = None,
             stop: list[str] | None = None, grammar: str = "", stop_param: str = "stop") -> dict[str, Any]:
    """The sampling fields every OpenAI-like wire shares, checked; None where the body said nothing."""
    if temperature is not None and temperature < 0:
        raise invalid("temperature must not be negative", "temperature")
    if top_p is not None and not 0 <= top_p <= 1:
        raise invalid("top_p must be between 0 and 1", "top_p")
    stop = stop or []
    _checked(limits.check_stops, stop, param=stop_param)
    return dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, grammar=grammar)


def generation_request(rid: str, **said: Any) -> GenerationRequest:
    """policy.generation_request, its refusals as 400s naming the field."""
    try:
        return policy.generation_request(rid, **said)
    except policy.InvalidCombination as exc:
        raise invalid(exc.detail, exc.param) from None


def _response_format(rf: ResponseFormatIn | None) -> ResponseFormat | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_schema" and rf.json_schema is None:
        raise invalid('response_format json_schema needs a "json_schema" object', "response_format.json_schema")
    return json_format(rf.json_schema.schema_ if rf.json_schema is not None else rf.schema_, "response_format")


def json_format(schema: dict[str, Any] | None, param: str) -> ResponseFormat:
    """JSON output, in `schema` when there is one (a bounded one)."""
    _schema_size(schema, param)
    if schema is None:
        return ResponseFormat("json_object")
    return ResponseFormat("json_schema", schema)


# ---- chat ---------------------------------------------------------------------------

def max_tokens_asked(req: ChatRequest) -> int | None:
    """`max_completion_tokens`, else `max_tokens`: OpenAI's newer name wins."""
    return req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens


def chat_request(req: ChatRequest, rid: str) -> GenerationRequest:
    """Without max_tokens the request asks for DEFAULT_MAX_TOKENS; the route sizes it
    by the serving backend's context once the pipeline names that backend."""
    if not req.messages:
        raise invalid("messages must not be empty", "messages")
    if req.logprobs or req.top_logprobs:
        raise invalid("logprobs are not supported by this server", "logprobs")
    message_count(len(req.messages), "messages")
    tools = tool_specs([t.function for t in req.tools or ()], "tools.{}.function.parameters")
    if isinstance(req.tool_choice, NamedToolChoice):
        tool_choice, tool_name = named_tool(req.tool_choice.function.name, tools)
    else:
        tool_choice, tool_name = req.tool_choice, None
    return generation_request(
        rid,
        messages=chat_messages(req.messages),
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        thinking=_thinking(req),
        response_format=_response_format(req.response_format),
        max_tokens=max_tokens_asked(req),
        **_sampling(req),
    )


def message_count(n: int, param: str) -> None:
    _checked(limits.check_count, "messages", n, limits.MAX_MESSAGES, "MAX_MESSAGES", param=param)


def tool_specs(defs: list[FunctionDef], schema_param: str) -> list[ToolSpec]:
    """Function tools, bounded (count, schema sizes) and uniquely named. `schema_param`
    names tool i's schema field in the wire, as a format string ("tools.{}.parameters")."""
    _checked(limits.check_count, "tools", len(defs), limits.MAX_TOOLS, "MAX_TOOLS", param="tools")
    for i, fn in enumerate(defs):
        _schema_size(fn.parameters, schema_param.format(i))
    tools = [ToolSpec(name=fn.name, description=fn.description, parameters=fn.parameters) for fn in defs]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise invalid("tool names must be unique", "tools")
    return tools


def named_tool(name: str, tools: list[ToolSpec], param: str = "tool_choice") -> tuple[str, str]:
    """A forced call of one tool: (tool_choice, tool_name) for the request policy."""
    if name not in [t.name for t in tools]:
        raise invalid(f"{param} names {name!r}, which is not among the tools", param)
    return "required", name




def _thinking(req: ChatRequest) -> bool | None:
    if req.thinking is not None:
        return req.thinking
    kwargs = req.chat_template_kwargs or {}
    if isinstance(kwargs.get("enable_thinking"), bool):
        return kwargs["enable_thinking"]
    if req.reasoning_effort is not None:
        return req.reasoning_effort != "none"
    return None


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """OpenAI messages in the HF convention: `developer` is a system turn, an
    assistant's `tool_calls` keep their ids, a `tool` message names the call it
    answers (and that call's function, which some templates print)."""
    out: list[ChatMessage] = []
    called: dict[str, str] = {}
    for i, m in enumerate(messages):
        text = _text(m.content, f"messages.{i}.content")
        if m.role == "tool":
            if not m.tool_call_id:
                raise invalid("a tool message needs tool_call_id", f"messages.{i}.tool_call_id")
            out.append(ChatMessage(role="tool", content=text, tool_call_id=m.tool_call_id,
                                   name=m.name or called.get(m.tool_call_id)))
            continue
        calls: list[ToolCallSpec] = []
        if m.tool_calls:
            if m.role != "assistant":
                raise invalid("only assistant messages carry tool_calls", f"messages.{i}.tool_calls")
            for j, call in enumerate(m.tool_calls):
                calls.append(ToolCallSpec(id=call.id, name=call.function.name,
                                          arguments=arguments(call.function.arguments,
                                                               f"messages.{i}.tool_calls.{j}.function.arguments")))
                called[call.id] = call.function.name
        role = "system" if m.role == "developer" else m.role
        out.append(ChatMessage(role=role, content=text, tool_calls=calls))  # type: ignore[arg-type]
    return out


#: Content part types that carry media: refused as attachments, on every wire.
MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "image", "audio", "input_image", "input_file",
                         "document"})


def _text(content: str | list[dict[str, Any]] | None, param: str) -> str:
    return text_of(content, param, ("text",))


def text_of(content: str | list[dict[str, Any]] | None, param: str, kinds: tuple[str, ...]) -> str:
    """The text of a message's content: a string, or parts whose type is one of `kinds`
    (each with a string `text`), joined; a media part is an attachment this surface refuses."""
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[str] = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in kinds and isinstance(part.get("text"), str):  # type: ignore[union-attr]
            parts.append(part["text"])  # type: ignore[index]
        elif kind in MEDIA_PARTS:
            raise HttpError(400, f"content part type {kind!r} is not supported: this surface takes text only",
                            code="attachment_unsupported", param=f"{param}.{k}")
        else:
            raise invalid(f"content part {k} must be {{\"type\": \"{kinds[0]}\", \"text\": ...}}", f"{param}.{k}")
    return "".join(parts)


def arguments(arguments: str | dict[str, Any], param: str) -> Any:
    """A tool call's arguments: the object, or the JSON text of it."""
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        raise invalid("tool call arguments must be a JSON text", param) from None


# ---- completions --------------------------------------------------------------------

def completion_request(req: CompletionRequest, rid: str) -> GenerationRequest:
    prompt = req.prompt
    if isinstance(prompt, list):
        if prompt and not isinstance(prompt[0], str):
            raise invalid("token-array prompts are not supported: send the prompt as text", "prompt")
        if len(prompt) != 1:
            raise invalid("send one prompt per request (a list of exactly one string)", "prompt")
        prompt = prompt[0]
    assert isinstance(prompt, str)
    if req.best_of is not None and req.best_of != 1:
        raise invalid("best_of must be 1", "best_of")
    if req.suffix:
        raise invalid("suffix (fill-in-the-middle) is not supported", "suffix")
    if req.logprobs:
        raise invalid("logprobs are not supported by this server", "logprobs")
    return generation_request(rid, prompt=prompt, response_format=_response_format(req.response_format),
                               max_tokens=req.max_tokens, default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS,
                               **_sampling(req))


# ---- embeddings ---------------------------------------------------------------------

def embed_request(req: EmbeddingsRequest, rid: str) -> EmbedResolved:
    texts: Union[str, list[Any]] = req.input
    if isinstance(texts, str):
        texts = [texts]
    if texts and not isinstance(texts[0], str):
        # Token ids are the client's tokenizer's (tiktoken for most SDKs), not this model's.
        raise invalid("token-array input is not supported: send the text (LangChain: "
                      "check_embedding_ctx_length=False)", "input", code="unsupported_input")
    if req.dimensions is not None and req.dimensions < 1:
        raise invalid("dimensions must be at least 1", "dimensions")
    try:
        return EmbedRequest(id=rid, input=texts, dimensions=req.dimensions, task=req.task, model=req.model).resolve()
    except InvalidRequest as exc:
        raise invalid(exc.detail, "input" if "input" in exc.detail else None) from None
