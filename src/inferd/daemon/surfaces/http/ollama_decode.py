"""Ollama request bodies -> the OpenAI request models of decode.py -> the engine's request.

Ollama's chat and generate bodies are translated into decode.py's ChatRequest /
CompletionRequest and decoded there, so every check (limits, tool names, seeds, the
request policy's rules between fields) is made once, whatever API a client speaks
(ADR 0027). What only Ollama has is settled here:

- `options`: temperature, top_p, top_k, seed, num_predict (-1/-2: to the end of the
  context), stop; `num_ctx` and the other load or penalty knobs are accepted and
  ignored (the context is the loaded model's; ADR 0027), as Ollama ignores options a
  runner does not know;
- `format`: "json" or a JSON schema; `think`: a bool or a level ("low"/"medium"/"high"
  all mean on); `keep_alive` through pipeline/keepalive.py;
- `images`: refused with a clear 400 (no backend takes images through HTTP yet);
- generate's `suffix`, `template` and `context` change the answer in ways this daemon
  cannot honour: refused when non-empty, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ....engine.request import GenerationRequest
from ....proto.embed import EmbedResolved
from ...pipeline.keepalive import KeepAliveError, parse_keep_alive
from . import decode
from .errors import invalid

_Body = decode._Body  # one pydantic configuration for every HTTP body


class Options(_Body):
    temperature: StrictFloat | StrictInt | None = None
    top_p: StrictFloat | StrictInt | None = None
    top_k: StrictInt | None = None
    seed: StrictInt | None = None
    num_predict: StrictInt | None = None
    stop: list[StrictStr] | StrictStr | None = None
    num_ctx: StrictInt | None = None  # accepted, not applied: the context is the loaded model's


class _OllamaBody(_Body):
    model: StrictStr | None = None
    keep_alive: StrictStr | StrictInt | StrictFloat | None = None


class _Generating(_OllamaBody):
    stream: StrictBool = True  # Ollama streams unless told not to
    format: StrictStr | dict[str, Any] | None = None
    options: Options | None = None
    think: StrictBool | StrictStr | None = None


class ToolFunctionCall(_Body):
    name: StrictStr
    arguments: dict[str, Any] | StrictStr = Field(default_factory=dict)


class ToolCallIn(_Body):
    id: StrictStr | None = None
    function: ToolFunctionCall


class Message(_Body):
    role: StrictStr
    content: StrictStr | None = ""
    thinking: StrictStr | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: StrictStr | None = None
    tool_call_id: StrictStr | None = None


class ChatRequest(_Generating):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Generating):
    prompt: StrictStr | None = None
    system: StrictStr | None = None
    suffix: StrictStr | None = None
    template: StrictStr | None = None
    context: list[Any] | None = None
    raw: StrictBool = False
    images: list[Any] | None = None


class EmbedRequest(_OllamaBody):
    input: StrictStr | list[StrictStr] = ""
    truncate: StrictBool = True
    dimensions: StrictInt | None = None
    options: Options | None = None


class EmbeddingsRequest(_OllamaBody):
    """The old /api/embeddings: one `prompt`, one `embedding` back."""

    prompt: StrictStr = ""
    options: Options | None = None


class ShowRequest(_Body):
    model: StrictStr | None = None
    name: StrictStr | None = None  # the older field name


def keep_alive(body: _OllamaBody) -> float | None:
    """Seconds the model stays loaded after this request (pipeline/keepalive.py); a 400."""
    try:
        return parse_keep_alive(body.keep_alive)
    except KeepAliveError as exc:
        raise invalid(str(exc), "keep_alive") from None


def requested_model(body: _OllamaBody) -> str:
    """Ollama requires `model`; an empty one is its 400 "model is required"."""
    if not body.model:
        raise invalid("model is required", "model")
    return body.model


def sized_by_context(body: _Generating) -> bool:
    """True when no num_predict bounds the answer (Ollama's -1, -2 and 0 included): it may
    run to the end of the context."""
    n = body.options.num_predict if body.options else None
    return n is None or n <= 0


def _sampling(body: _Generating) -> dict[str, Any]:
    """Ollama's options as decode.py's OpenAI fields (None: left to the request policy)."""
    o = body.options or Options()
    said: dict[str, Any] = {"temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "seed": o.seed,
                            "stop": o.stop, "max_tokens": None if sized_by_context(body) else o.num_predict}
    if o.top_k is not None and o.top_k <= 0:
        said["top_k"] = None  # Ollama's 0: no top-k cut; ours is the policy's default
    return {k: v for k, v in said.items() if v is not None}


def _format(body: _Generating) -> dict[str, Any] | None:
    fmt = body.format
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_object", "schema": fmt}
    raise invalid(f'format must be "json" or a JSON schema object, not {fmt[:40]!r}', "format")


def _think(body: _Generating) -> bool | None:
    think = body.think
    if think is None or isinstance(think, bool):
        return think
    if think in ("low", "medium", "high"):
        return True
    raise invalid(f'think must be true, false, "low", "medium" or "high", not {think[:20]!r}', "think")


def _no_images(images: list[Any] | None, param: str) -> None:
    if images:
        raise invalid("images are not supported here: no backend on this HTTP surface takes images "
                      "(inferd's v2 socket carries media to a backend with a projector)", param)


def _call_id(i: int, j: int) -> str:
    return f"call_{i}_{j}"


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's: a call without an id gets one, and a tool result is
    tied to the latest call of the tool it names (Ollama's `tool_name`)."""
    out: list[dict[str, Any]] = []
    last_call: dict[str, str] = {}
    pending: list[str] = []
    for i, m in enumerate(messages):
        _no_images(m.images, f"messages.{i}.images")
        msg: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            msg["tool_calls"] = []
            for j, call in enumerate(m.tool_calls):
                cid = call.id or _call_id(i, j)
                last_call[call.function.name] = cid
                pending.append(cid)
                msg["tool_calls"].append({"id": cid, "type": "function", "function": {
                    "name": call.function.name, "arguments": call.function.arguments}})
        if m.role == "tool":
            cid = m.tool_call_id or last_call.get(m.tool_name or "") or (pending[0] if pending else f"call_{i}")
            if cid in pending:
                pending.remove(cid)
            msg["tool_call_id"] = cid
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def _openai(model: type[decode.B], fields: dict[str, Any]) -> decode.B:
    """Validate the translated body with decode.py's model (its errors are 400s)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise decode._validation_error(exc) from None


def chat_request(body: ChatRequest, rid: str) -> GenerationRequest:
    fields: dict[str, Any] = {"messages": _messages(body.messages or []), **_sampling(body)}
    if body.tools:
        fields["tools"] = [{"type": "function", **t} if "type" not in t else t for t in body.tools]
    if (rf := _format(body)) is not None:
        fields["response_format"] = rf
    if (think := _think(body)) is not None:
        fields["thinking"] = think
    return decode.chat_request(_openai(decode.ChatRequest, fields), rid)


def generate_request(body: GenerateRequest, rid: str) -> GenerationRequest:
    """The prompt through the chat template (with `system`), or as is with `raw`."""
    _no_images(body.images, "images")
    for name in ("suffix", "template"):
        if getattr(body, name):
            raise invalid(f"{name} is not supported by this server", name)
    if body.context:
        raise invalid("context (the deprecated token history) is not supported: send the conversation "
                      "to /api/chat", "context")
    sampling = _sampling(body)
    rf = _format(body)
    if body.raw:
        fields: dict[str, Any] = {"prompt": body.prompt or "", **sampling}
        if rf is not None:
            fields["response_format"] = rf
        return decode.completion_request(_openai(decode.CompletionRequest, fields), rid)
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt or ""})
    chat: dict[str, Any] = {"messages": messages, **sampling}
    if rf is not None:
        chat["response_format"] = rf
    if (think := _think(body)) is not None:
        chat["thinking"] = think
    return decode.chat_request(_openai(decode.ChatRequest, chat), rid)


def embed_request(texts: str | list[str], dimensions: int | None, rid: str) -> EmbedResolved:
    return decode.embed_request(_openai(decode.EmbeddingsRequest, {"input": texts, "dimensions": dimensions}), rid)
