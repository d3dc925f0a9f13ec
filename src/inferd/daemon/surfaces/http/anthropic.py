"""Anthropic's Messages API (`POST /v1/messages`): the request -> GenerationRequest, and
Anthropic's error shape.

`system` (a string or text blocks) is the system turn; a message's content is a string
or blocks: `text`, `tool_use` (an assistant's call), `tool_result` (a user turn's answer
to one, by `tool_use_id`; it becomes a tool message), `thinking` / `redacted_thinking`
(dropped: templates render no earlier reasoning); images and documents are refused as
attachments. `tools` are custom tools (`input_schema`); `tool_choice` auto / any (a
call is forced) / tool (that one) / none; `thinking` enabled or disabled switches
reasoning (`budget_tokens` is not enforced: max_tokens bounds the whole answer);
`stop_sequences`; `max_tokens` is required, as Anthropic requires it. Function tools,
JSON schema sizes, sampling and the request policy are decode.py's, shared with chat.

Errors are `{"type":"error","error":{"type","message"}}` with Anthropic's statuses: a
fault's are its row in surfaces/faults.py; other refusals keep their status, named by
Anthropic's type for it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from ....engine.request import ChatMessage, GenerationRequest, ToolCallSpec
from ....proto.v1 import U32, Number
from ..faults import FAULTS
from . import decode
from .decode import FunctionDef, _Body
from .errors import HttpError, invalid

_TYPES_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 529: "overloaded_error"}


def error_shape(err: HttpError) -> tuple[int, bytes]:
    """An error in Anthropic's shape and status (Responder.shape for this route)."""
    if err.kind is not None:
        wire = FAULTS[err.kind]
        status, kind = wire.anthropic_status, wire.anthropic_type
    else:
        status = err.status
        kind = _TYPES_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "api_error")
    return status, error_body(kind, err.message)


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}},
                      ensure_ascii=False, separators=(",", ":")).encode()


class Tool(_Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    description: StrictStr = ""
    input_schema: dict[str, Any]
    type: StrictStr | None = None


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class Thinking(_Body):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: U32 | None = None


class Message(_Body):
    role: Literal["user", "assistant"]
    content: StrictStr | list[dict[str, Any]]


class ToolUseBlock(_Body):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class ToolResultBlock(_Body):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[dict[str, Any]] = ""
    is_error: StrictBool | None = None


class MessagesRequest(_Body):
    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1)]
    messages: list[Message]
    system: StrictStr | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: U32 | None = None
    stream: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: StrictStr | None = None


def messages_request(req: MessagesRequest, rid: str) -> GenerationRequest:
    if not req.messages:
        raise invalid("messages: at least one message is required", "messages")
    decode.message_count(len(req.messages), "messages")
    if req.temperature is not None and req.temperature > 1:
        raise invalid("temperature: must be between 0 and 1", "temperature")
    for i, tool in enumerate(req.tools or ()):
        if tool.type not in (None, "custom"):
            raise invalid(f"tools.{i}: tool type {tool.type!r} is not supported: this server runs no server tools",
                          f"tools.{i}.type")
    tools = decode.tool_specs([FunctionDef(name=t.name, description=t.description, parameters=t.input_schema)
                               for t in req.tools or ()], "tools.{}.input_schema")
    tool_choice: str | None = None
    tool_name: str | None = None
    if req.tool_choice is not None:
        kind = req.tool_choice.type
        if kind == "tool":
            if not req.tool_choice.name:
                raise invalid('tool_choice: type "tool" needs a name', "tool_choice.name")
            tool_choice, tool_name = decode.named_tool(req.tool_choice.name, tools, "tool_choice.name")
        else:
            tool_choice = {"any": "required"}.get(kind, kind)
    thinking = None if req.thinking is None else req.thinking.type != "disabled"
    return decode.generation_request(
        rid,
        messages=_messages(req),
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        thinking=thinking,
        max_tokens=req.max_tokens,
        **decode.sampling(req.temperature, req.top_p, top_k=req.top_k, stop=list(req.stop_sequences or ()),
                          stop_param="stop_sequences"),
    )


def _messages(req: MessagesRequest) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if req.system:
        out.append(ChatMessage(role="system", content=decode.text_of(req.system, "system", ("text",))))
    called: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        param = f"messages.{i}.content"
        if isinstance(m.content, str):
            out.append(ChatMessage(role=m.role, content=m.content))
            continue
        texts: list[dict[str, Any]] = []
        calls: list[ToolCallSpec] = []
        for k, block in enumerate(m.content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_use":
                if m.role != "assistant":
                    raise invalid("tool_use blocks belong in assistant messages", f"{param}.{k}")
                use = decode.parse_part(ToolUseBlock, block, f"{param}.{k}")
                calls.append(ToolCallSpec(id=use.id, name=use.name, arguments=use.input))
                called[use.id] = use.name
            elif kind == "tool_result":
                if m.role != "user":
                    raise invalid("tool_result blocks belong in user messages", f"{param}.{k}")
                if texts:  # text before a result keeps its place
                    out.append(ChatMessage(role="user", content=decode.text_of(texts, param, ("text",))))
                    texts = []
                result = decode.parse_part(ToolResultBlock, block, f"{param}.{k}")
                content = decode.text_of(result.content, f"{param}.{k}.content", ("text",))
                out.append(ChatMessage(role="tool", content=content, tool_call_id=result.tool_use_id,
                                       name=called.get(result.tool_use_id)))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                texts.append(block)
        if texts or calls or not m.content:
            out.append(ChatMessage(role=m.role, content=decode.text_of(texts, param, ("text",)), tool_calls=calls))
    return out
