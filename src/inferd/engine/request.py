"""What a surface asks an engine for, once its wire format is decoded and validated.

Every surface (v1, v2, the OpenAI HTTP routes) turns its request into one
`GenerationRequest`; every backend takes only this. Messages follow the Hugging Face
chat convention that Jinja chat templates and OpenAI-compatible servers expect:
an assistant turn may carry `tool_calls`, a tool result is a message with role
"tool" and the `tool_call_id` it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..proto.v1 import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

ToolChoiceMode = Literal["auto", "none", "required"]


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str = ""
    #: JSON Schema of the call's input object.
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})

    def as_openai(self) -> dict[str, Any]:
        """The `{"type":"function","function":{...}}` shape templates and servers take."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def openai_tool_call(id: str, name: str, arguments: Any) -> dict[str, Any]:
    """A call in OpenAI's shape, as servers, clients and chat templates take it.

    `arguments` goes in as given: JSON text on the wire, the object for a template.
    """
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass(slots=True)
class ToolCallSpec:
    """A call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: Any = field(default_factory=dict)


@dataclass(slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCallSpec] = field(default_factory=list)  # assistant only
    tool_call_id: str | None = None  # tool only
    name: str | None = None  # tool only: the called tool's name, when known
    #: v2 attachment ids this message refers to, in order (media backends only).
    media: list[str] = field(default_factory=list)

    def as_template_dict(self) -> dict[str, Any]:
        """The message as Jinja chat templates (HF convention) expect it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [openai_tool_call(c.id, c.name, c.arguments) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None  # json_schema only


@dataclass(slots=True)
class GenerationRequest:
    id: str
    messages: list[ChatMessage] = field(default_factory=list)
    #: A raw prompt fed to the model as is, with no chat template (/v1/completions).
    #: Exactly one of `messages` and `prompt` is used.
    prompt: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoiceMode = "auto"
    #: Force a call to this tool (OpenAI's named function choice); implies "required".
    tool_name: str | None = None
    #: None: the template's default; True/False reaches templates as enable_thinking.
    thinking: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: str = ""
    #: v2 attachments by id (opaque to the engine contract; media backends read them).
    attachments: dict[str, Any] = field(default_factory=dict)
    #: Yield PromptProgress events while the prompt is read (issue 22, ADR 0029).
    progress: bool = False
