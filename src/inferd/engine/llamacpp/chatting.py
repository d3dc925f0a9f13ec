"""From a GenerationRequest to what the decode loop needs: prompt text, grammar, output parser.

Decided once per loaded model (`ChatStyle`): which tool-call format the model writes
(detected from its own Jinja template; our built-in format when the template cannot
declare tools), and which reasoning markers it uses. Decided per request
(`ChatStyle.plan`):

- **Tools in the prompt.** A template that takes `tools` gets them in the Hugging
  Face shape and renders them, its own way, with the conversation's tool calls and
  results. Otherwise the tools are declared in the system turn in the format's own
  words, earlier calls are written out as the model would have written them, and tool
  results become user turns: every model can be offered tools.
- **Grammar.** `tool_choice: required` (or a named tool) installs a grammar that only
  admits one well-formed call to a declared tool whose input matches its schema;
  `response_format` installs one compiled from the JSON Schema; a raw `grammar` is
  used as is. At most one grammar: the wire refuses the combinations.
- **Output.** Reasoning markers are split off first (never shown as text, even
  across token boundaries), then tool calls are parsed from what remains. With
  `tool_choice: none` the tools are not declared and a call the model writes anyway
  is dropped, never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backend import BackendInvalidRequest
from ..chat import (
    THINK_TAGS,
    OutputParser,
    SchemaError,
    ThinkingSplitter,
    ToolCallFormat,
    detect,
    detect_thinking,
    get_format,
    prompt_opens_thinking,
    response_format_grammar,
    tool_call_grammar,
)
from ..events import TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ..request import ChatMessage, GenerationRequest
from .templates import ChatRenderer, RenderError


class NoToolCalls:
    """Wraps a parser for tool_choice "none": calls are parsed (so their text never shows)
    and then dropped."""

    def __init__(self, inner: OutputParser) -> None:
        self._inner = inner

    @property
    def saw_tool_call(self) -> bool:
        return False

    @property
    def last_was_thinking(self) -> bool:
        return self._inner.last_was_thinking

    def push(self, text: str) -> list[TextDelta | ThinkingDelta]:
        return [e for e in self._inner.push(text) if type(e) is not ToolCall and type(e) is not ToolCallDelta]

    def finish(self, cut: bool = False) -> list[TextDelta | ThinkingDelta]:
        return [e for e in self._inner.finish(cut) if type(e) is not ToolCall and type(e) is not ToolCallDelta]


ParserFactory = Callable[[], "OutputParser | NoToolCalls"]


@dataclass(slots=True)
class ChatPlan:
    prompt: str
    grammar: str
    new_parser: ParserFactory


def output_grammar(request: GenerationRequest) -> str:
    """The grammar a request's own fields ask for: its `response_format` compiled from
    the schema, else its raw `grammar` ("" for none). Chat and raw prompts alike
    (issue 21: /v1/completions honours response_format as chat does)."""
    if request.response_format is None:
        return request.grammar
    try:
        return response_format_grammar(request.response_format)
    except SchemaError as exc:
        raise BackendInvalidRequest(f"response_format: {exc}") from None


class ChatStyle:
    """How one loaded model is prompted and how its output is read."""

    @staticmethod
    def raw_parser() -> OutputParser:
        """A raw completion's: no template, so no markers to read - the text is the text."""
        return OutputParser()

    def __init__(self, renderer: ChatRenderer) -> None:
        self.renderer = renderer
        source = renderer.source
        self.tools_native = renderer.takes_tools
        # A template that cannot declare tools gets our built-in declaration format.
        self.tool_format: ToolCallFormat = detect(source) if self.tools_native else get_format("builtin")
        detected = detect_thinking(source)
        #: True when the model's template shows a reasoning format (advertised as `thinking`).
        self.thinks = detected is not None
        # Split <think> even for a model that was not announced as a thinker: reasoning
        # must never reach a client as text.
        self.markers = detected or THINK_TAGS

    def plan(self, request: GenerationRequest) -> ChatPlan:
        tools = request.tools if request.tool_choice != "none" else []
        prompt = self._render(request, tools)
        grammar = output_grammar(request)
        if request.response_format is None and request.tools and (
                request.tool_choice == "required" or request.tool_name):
            try:
                grammar = tool_call_grammar(self.tool_format, request.tools, request.tool_name)
            except (SchemaError, ValueError) as exc:
                raise BackendInvalidRequest(f"tool_choice: {exc}") from None
        return ChatPlan(prompt, grammar, self._parser_factory(request, prompt))

    # ---- prompt ------------------------------------------------------------------------

    def _render(self, request: GenerationRequest, tools: list[Any]) -> str:
        if request.prompt is not None:
            return request.prompt
        if not request.messages:
            raise BackendInvalidRequest("messages must not be empty")
        if self.tools_native:
            messages = [m.as_template_dict() for m in request.messages]
            declared = [t.as_openai() for t in tools] or None
        else:
            messages = self._spelled_out(request.messages, tools)
            declared = None
        try:
            return self.renderer.render(messages, tools=declared, enable_thinking=request.thinking)
        except RenderError as exc:
            raise BackendInvalidRequest(f"render: {exc}") from None

    def _spelled_out(self, messages: list[ChatMessage], tools: list[Any]) -> list[dict[str, Any]]:
        """The conversation for a template that knows nothing of tools: declarations in
        the system turn, calls and results written out as text."""
        fmt = self.tool_format
        out: list[dict[str, Any]] = []
        for m in messages:
            if m.role == "tool":
                text = fmt.render_result(m.name or "", m.tool_call_id or "", m.content)
                if out and out[-1]["role"] == "user":
                    out[-1]["content"] += "\n" + text  # several results answer one turn
                else:
                    out.append({"role": "user", "content": text})
            elif m.tool_calls:
                calls = "\n".join(fmt.render_call(c) for c in m.tool_calls)
                out.append({"role": m.role, "content": (m.content + "\n" if m.content else "") + calls})
            else:
                out.append({"role": m.role, "content": m.content})
        if tools:
            declaration = fmt.declare_tools(tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + declaration}
            else:
                out.insert(0, {"role": "system", "content": declaration})
        return out

    # ---- output ------------------------------------------------------------------------

    def _parser_factory(self, request: GenerationRequest, prompt: str) -> ParserFactory:
        open_marker, close_marker = self.markers
        inside = prompt_opens_thinking(prompt, self.markers)
        fmt = self.tool_format
        names = [t.name for t in request.tools] or None
        none = request.tool_choice == "none"

        def new() -> OutputParser | NoToolCalls:
            parser = OutputParser(
                thinking=ThinkingSplitter(open_marker, close_marker, starts_inside=inside),
                tools=fmt.parser(known_names=names) if request.tools else None,
            )
            return NoToolCalls(parser) if none else parser

        return new
