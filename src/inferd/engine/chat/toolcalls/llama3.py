"""Llama 3.x custom tools: the reply is the call's JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ...request import ToolCallSpec, ToolSpec
from ..schema import format_rules
from .base import ToolCallFormat, _json_call_rules
from .readers import _call_from_object, _coerce_arguments, _dumps, _Json, _Reader
from .streaming import CallStream


class Llama3Format(ToolCallFormat):
    """Llama 3.x custom tools: the reply is the call's JSON. The grammar admits the bare
    JSON only (no `<|python_tag|>`, which these models use for their built-in tools)."""

    name = "llama3"
    call_start = "{"  # a weak trigger: a lazy grammar should start at the reply instead
    openers = ("<|python_tag|>",)
    bare_json = True
    separators = " \t\r\n;"

    def _reader(self, opener: str) -> _Reader:
        return _Json(lambda obj: [_call_from_object(obj)], self.name, CallStream())

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        listed = "\n\n".join(json.dumps(t.as_openai(), ensure_ascii=False, indent=4) for t in tools)
        return (
            "You have access to the following functions. To call a function, reply with only a "
            "JSON object of the form {\"name\": function name, \"parameters\": dictionary of "
            "argument names and their values}, and nothing else. Do not use variables.\n\n"
            f"{listed}"
        )

    def render_call(self, call: ToolCallSpec) -> str:
        return _dumps({"name": call.name, "parameters": _coerce_arguments(call.arguments)})

    def render_result(self, name: str, call_id: str, content: str) -> str:
        return _dumps({"name": name, "tool_call_id": call_id, "output": _coerce_arguments(content)})

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        rules, entry = _json_call_rules(tools, "parameters")
        rules["root"] = entry
        return format_rules(rules)
