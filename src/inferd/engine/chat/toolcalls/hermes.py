"""Hermes / Qwen `<tool_call>{json}</tool_call>`, and our built-in format in the same syntax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...backend import ToolCallMalformed
from ...request import ToolCallSpec, ToolSpec
from ..schema import format_rules, gbnf_literal
from .base import _GWS, ToolCallFormat, _json_call_rules, _tool_lines
from .readers import _call_from_object, _coerce_arguments, _Delimited, _dumps, _loads, _Reader
from .streaming import CallStream


class HermesFormat(ToolCallFormat):
    """Qwen 2.5/3 and Hermes: one `<tool_call>{json}</tool_call>` block per call."""

    name = "hermes"
    call_start = "<tool_call>"
    openers = ("<tool_call>",)
    closer = "</tool_call>"

    def _parse_body(self, body: str) -> list[tuple[str, dict[str, Any]]]:
        if not body.strip():
            raise ToolCallMalformed(f"empty {self.call_start} block")
        return [_call_from_object(_loads(body.strip(), f"the {self.name} tool call"))]

    def _reader(self, opener: str) -> _Reader:
        return _Delimited(self.closer, self._parse_body, self.name, CallStream())

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        return (
            "# Tools\n\n"
            "You may call one or more functions to help with the user's request.\n\n"
            "The function signatures are inside <tools></tools> XML tags:\n"
            f"<tools>\n{_tool_lines(tools)}\n</tools>\n\n"
            "For each function call, return a JSON object with the function name and arguments "
            "inside <tool_call></tool_call> XML tags:\n"
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
        )

    def render_call(self, call: ToolCallSpec) -> str:
        body = {"name": call.name, "arguments": _coerce_arguments(call.arguments)}
        return f"<tool_call>\n{_dumps(body)}\n</tool_call>"

    def render_result(self, name: str, call_id: str, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        rules, entry = _json_call_rules(tools, "arguments")
        rules["tc-ws"] = _GWS
        rules["root"] = f"{gbnf_literal(self.call_start)} tc-ws {entry} tc-ws {gbnf_literal(self.closer)}"
        return format_rules(rules)


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


class BuiltinFormat(HermesFormat):
    """Ours: Hermes syntax, and results that say which call they answer."""

    name = "builtin"

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        return (
            "You can call tools. Each available tool is listed below as a JSON object with its "
            "name, a description and a JSON Schema of its arguments, one per line, inside "
            "<tools></tools> tags:\n"
            f"<tools>\n{_tool_lines(tools)}\n</tools>\n\n"
            "To call a tool, write a JSON object with the tool's \"name\" and its \"arguments\" "
            "(an object that matches the tool's schema) inside <tool_call></tool_call> tags, "
            "exactly like this:\n"
            "<tool_call>\n{\"name\": \"tool_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>\n"
            "Write one <tool_call> block per call; you may make several calls. Each result comes "
            "back as <tool_response name=\"tool_name\" id=\"call id\">...</tool_response>. "
            "If no tool is needed, answer directly without any <tool_call> block."
        )

    def render_result(self, name: str, call_id: str, content: str) -> str:
        return f'<tool_response name="{_xml_attr(name)}" id="{_xml_attr(call_id)}">\n{content}\n</tool_response>'
