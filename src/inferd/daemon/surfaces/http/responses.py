"""OpenAI's Responses API request (`POST /v1/responses`) -> the engine's GenerationRequest.

Stateless (ADR 0028): every request carries its whole conversation in `input`. `store`
is accepted whatever it says and answered `false` (nothing is kept); a request that
points at kept state (`previous_response_id`, `conversation`, an `item_reference`
input item, `background`) is a 400 saying so. What overlaps with chat completions is
decoded by the same helpers (decode.py): function tools -> ToolSpec, JSON output,
sampling, tool-call arguments, the request policy.

`input` is a string (one user message) or items: messages (role user, system,
developer, assistant; content a string or input_text / output_text / refusal parts),
`function_call` (a call the model made: it joins the assistant turn before it) and
`function_call_output` (a tool message answering it by `call_id`). `reasoning` items
a client sends back are dropped: templates render no earlier reasoning.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictStr

from ....engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolCallSpec
from ....proto.v1 import U32, Number
from . import decode
from .decode import FunctionDef, _Body
from .errors import HttpError, invalid

#: Item types that only mean something to a server that keeps state, or runs the tool itself.
_HOSTED = ("file_search_call", "web_search_call", "computer_call", "computer_call_output", "code_interpreter_call",
           "image_generation_call", "local_shell_call", "local_shell_call_output", "mcp_call", "mcp_list_tools",
           "mcp_approval_request", "mcp_approval_response", "custom_tool_call", "custom_tool_call_output")
_TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesTool(FunctionDef):
    type: StrictStr
    strict: StrictBool | None = None


class NamedFunctionChoice(_Body):
    type: Literal["function"]
    name: StrictStr


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: StrictStr | None = None


class Reasoning(_Body):
    effort: StrictStr | None = None
    summary: StrictStr | None = None


class ResponsesRequest(_Body):
    model: StrictStr | None = None
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    text: TextConfig | None = None
    max_output_tokens: U32 | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    conversation: StrictStr | dict[str, Any] | None = None
    background: StrictBool | None = None
    reasoning: Reasoning | None = None
    top_logprobs: Annotated[int, Field(ge=0)] | None = None
    # Accepted and ignored: bookkeeping, or knobs with no effect on a local model.
    parallel_tool_calls: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    user: StrictStr | None = None
    truncation: StrictStr | None = None


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: StrictStr | list[dict[str, Any]]


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr = "{}"


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr | list[dict[str, Any]]


def _stateless(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise HttpError(400, "previous_response_id is not supported: this server keeps no responses (it is "
                        "stateless); send the whole conversation in input", code="previous_response_not_found",
                        param="previous_response_id")
    if req.conversation is not None:
        raise invalid("conversation is not supported: this server keeps no conversations (it is stateless); "
                      "send the whole conversation in input", "conversation", code="conversation_unsupported")
    if req.background:
        raise invalid("background responses are not supported: this server keeps no responses to poll",
                      "background", code="background_unsupported")
    if req.top_logprobs:
        raise invalid("logprobs are not supported by this server", "top_logprobs")


def responses_request(req: ResponsesRequest, rid: str) -> GenerationRequest:
    """Without max_output_tokens the route sizes the answer by the serving backend's
    context, as chat completions does."""
    _stateless(req)
    messages = _messages(req)
    decode.message_count(len(messages), "input")
    tools = decode.tool_specs(_function_tools(req.tools or []), "tools.{}.parameters")
    tool_choice: str | None = None
    tool_name: str | None = None
    if isinstance(req.tool_choice, dict):
        named = decode.parse_part(NamedFunctionChoice, req.tool_choice, "tool_choice")
        tool_choice, tool_name = decode.named_tool(named.name, tools)
    else:
        tool_choice = req.tool_choice
    response_format = _text_format(req.text)
    if tool_name is not None or tool_choice == "required":
        # text.format shapes the text a turn writes; a forced call writes none (agents send
        # their output type on every turn, the tool-forcing one too), so it is set aside.
        response_format = None
    return decode.generation_request(
        rid,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        thinking=_thinking(req.reasoning),
        response_format=response_format,
        max_tokens=req.max_output_tokens,
        **decode.sampling(req.temperature, req.top_p),
    )


def _function_tools(tools: list[dict[str, Any]]) -> list[FunctionDef]:
    out: list[FunctionDef] = []
    for i, raw in enumerate(tools):
        kind = raw.get("type")
        if kind != "function":
            raise invalid(f"tool type {kind!r} is not supported: this server runs no hosted tools; "
                          "declare function tools", f"tools.{i}.type", code="tool_unsupported")
        out.append(decode.parse_part(ResponsesTool, raw, f"tools.{i}"))
    return out


def _thinking(reasoning: Reasoning | None) -> bool | None:
    if reasoning is None or reasoning.effort is None:
        return None
    return reasoning.effort != "none"


def _text_format(text: TextConfig | None) -> ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema_ is None:
        raise invalid('text.format json_schema needs a "schema"', "text.format.schema")
    return decode.json_format(fmt.schema_ if fmt.type == "json_schema" else None, "text.format")


def _messages(req: ResponsesRequest) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if req.instructions:
        out.append(ChatMessage(role="system", content=req.instructions))
    if isinstance(req.input, str):
        out.append(ChatMessage(role="user", content=req.input))
        return out
    if not req.input:
        raise invalid("input must not be empty", "input")
    called: dict[str, str] = {}
    for i, raw in enumerate(req.input):
        param = f"input.{i}"
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            m = decode.parse_part(MessageItem, raw, param)
            role = "system" if m.role == "developer" else m.role
            out.append(ChatMessage(role=role, content=decode.text_of(m.content, f"{param}.content", _TEXT_PARTS)))
        elif kind == "function_call":
            call = decode.parse_part(FunctionCallItem, raw, param)
            spec = ToolCallSpec(id=call.call_id, name=call.name,
                                arguments=decode.arguments(call.arguments, f"{param}.arguments"))
            called[call.call_id] = call.name
            if out and out[-1].role == "assistant":
                out[-1].tool_calls.append(spec)  # the calls of one turn, after its text
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[spec]))
        elif kind == "function_call_output":
            result = decode.parse_part(FunctionCallOutputItem, raw, param)
            out.append(ChatMessage(role="tool", content=decode.text_of(result.output, f"{param}.output", _TEXT_PARTS),
                                   tool_call_id=result.call_id, name=called.get(result.call_id)))
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise invalid("item_reference is not supported: this server keeps no items (it is stateless); send "
                          "the item itself", f"{param}.type", code="item_reference_unsupported")
        elif kind in _HOSTED:
            raise invalid(f"input item type {kind!r} is not supported: this server runs no hosted tools",
                          f"{param}.type", code="tool_unsupported")
        else:
            raise invalid(f"input item {i} must be a message, function_call or function_call_output",
                          f"{param}.type")
    return out


def echo(req: ResponsesRequest, greq: GenerationRequest) -> dict[str, Any]:
    """What the response object repeats of the request (with the values used)."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    return {"instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": greq.temperature, "top_p": greq.top_p, "tools": req.tools or [],
            "tool_choice": req.tool_choice or "auto",
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                          "summary": req.reasoning.summary if req.reasoning else None},
            "metadata": req.metadata or {}, "user": req.user, "truncation": "disabled", "background": False}
