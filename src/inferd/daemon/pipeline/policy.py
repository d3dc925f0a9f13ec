"""What a request may ask for, whichever wire it came on: the one place that turns what
a client said into the engine's `GenerationRequest` (ADR 0020).

A surface decodes its wire (field names, shapes, the wire's own value ranges) and
passes here what the client said, `None` for what it left out. Here, once for every
wire: the defaults of what was left out (upstream's v1 defaults, proto/v1.py) and the
rules that tie one field to another. A surface chooses only its default `max_tokens`
(OpenAI's differs by route and may be the serving backend's context), never a rule.

The rules, each refused with the field to blame (`InvalidCombination.param`):

- a forced call (`tool_choice` "required" or a named tool) needs tools;
- `response_format` and `grammar` are mutually exclusive (one grammar per generation);
- a forced call excludes `response_format` and `grammar`: the output is the call.

`tool_choice` "auto" or "none" with a `response_format` is accepted, as OpenAI accepts
it: the answer may be a call or JSON in the schema ("none": JSON in the schema).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...engine.request import ChatMessage, GenerationRequest, ResponseFormat, ToolSpec
from ...proto.errors import InvalidRequest
from ...proto.v1 import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P
from .keepalive import KeepAliveError, parse_keep_alive
from .router import Needs


class InvalidCombination(InvalidRequest):
    """Fields that each decode fine but may not go together; `param` is the one blamed."""

    def __init__(self, detail: str, param: str) -> None:
        super().__init__(detail)
        self.param = param


def generation_request(
    id: str, *,
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    tools: list[ToolSpec] | None = None,
    tool_choice: str | None = None,
    tool_name: str | None = None,
    thinking: bool | None = None,
    response_format: ResponseFormat | None = None,
    grammar: str = "",
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    stop: Iterable[str] = (),
    attachments: dict[str, Any] | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> GenerationRequest:
    """The engine's request for what a client said (None: left out). Raises InvalidCombination."""
    tools = tools or []
    forced = tool_name is not None or tool_choice == "required"
    if forced and not tools:
        raise InvalidCombination('tool_choice "required" needs tools', "tool_choice")
    if response_format is not None and grammar:
        raise InvalidCombination("response_format and grammar are mutually exclusive", "response_format")
    if forced and (response_format is not None or grammar):
        excluded = "response_format" if response_format is not None else "grammar"
        raise InvalidCombination(f"a forced tool call and {excluded} are mutually exclusive: "
                                 "the output is the call", "tool_choice")
    return GenerationRequest(
        id=id,
        messages=messages or [],
        prompt=prompt,
        tools=tools,
        tool_choice="required" if forced else tool_choice or "auto",  # type: ignore[arg-type]
        tool_name=tool_name,
        thinking=thinking,
        response_format=response_format,
        grammar=grammar,
        temperature=DEFAULT_TEMPERATURE if temperature is None else float(temperature),
        top_p=DEFAULT_TOP_P if top_p is None else float(top_p),
        top_k=DEFAULT_TOP_K if top_k is None else top_k,
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        seed=seed,
        stop=list(stop),
        attachments=attachments or {},
    )


def model_needs(model: str | None, keep_alive: object, **needs: Any) -> Needs:
    """The routing needs of a request naming `model` with `keep_alive` (issue 20), for
    every wire: an unreadable keep_alive is an InvalidCombination blaming it."""
    try:
        seconds = parse_keep_alive(keep_alive)
    except KeepAliveError as exc:
        raise InvalidCombination(str(exc), "keep_alive") from None
    return Needs(model=model, keep_alive=seconds, **needs)
