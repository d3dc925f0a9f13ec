"""Gemma 4: `<|tool_call>call:NAME{gemma value pairs}<tool_call|>` (values: ../gemma.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ...backend import ToolCallMalformed
from ...request import ToolCallSpec, ToolSpec
from .. import gemma
from ..schema import format_rules, gbnf_literal
from .base import ToolCallFormat, _check_parameters
from .readers import _coerce_arguments, _Delimited, _Reader


class Gemma4Format(ToolCallFormat):
    """Gemma 4: `<|tool_call>call:NAME{gemma value pairs}<tool_call|>`; declarations in the
    `<|tool>declaration:...<tool|>` form upstream-engine.md §4.1 describes; call history in
    the template's form (keys sorted like its `dictsort`)."""

    name = "gemma4"
    call_start = "<|tool_call>"
    openers = ("<|tool_call>",)
    closer = "<tool_call|>"

    def _parse_body(self, body: str) -> list[tuple[str, dict[str, Any]]]:
        text = body.strip()
        if not text.startswith("call:"):
            raise ToolCallMalformed("a gemma4 tool call must start with 'call:'")
        brace = text.find("{")
        if brace < 0:
            raise ToolCallMalformed("the gemma4 tool call has no {arguments}")
        name = text[len("call:"):brace].strip()
        if not name or re.search(r"[\s{}\[\]:,]", name):
            raise ToolCallMalformed(f"bad gemma4 tool name {name!r}")
        try:
            args = gemma.parse_gemma_value(text[brace:])
        except gemma.GemmaSyntaxError as e:
            raise ToolCallMalformed(f"the arguments of {name!r} are not a gemma value: {e}") from None
        if not isinstance(args, dict):
            raise ToolCallMalformed(f"the arguments of {name!r} must be an object")
        return [(name, args)]

    def _reader(self, opener: str) -> _Reader:
        return _Delimited(self.closer, self._parse_body, self.name)

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        return "".join(
            "<|tool>declaration:" + t.name + "{description:" + gemma.render_gemma_value(t.description)
            + ",parameters:" + gemma.render_gemma_value(t.parameters) + "}<tool|>"
            for t in tools
        )

    def render_call(self, call: ToolCallSpec) -> str:
        args = _coerce_arguments(call.arguments)
        inner = gemma.render_gemma_pairs(args) if isinstance(args, dict) else f"value:{gemma.render_gemma_value(args)}"
        return f"<|tool_call>call:{call.name}{{{inner}}}<tool_call|>"

    def render_result(self, name: str, call_id: str, content: str) -> str:
        value = _coerce_arguments(content)
        if isinstance(value, dict):
            inner = gemma.render_gemma_pairs(value)
        else:
            inner = "value:" + gemma.render_gemma_value(content)
        return f"<|tool_response>response:{name}{{{inner}}}<tool_response|>"

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        g = gemma.GemmaGrammar()
        options = []
        for i, tool in enumerate(tools):
            _check_parameters(tool)
            args = g.args_rule(tool.parameters, f"tool{i}-", what=f"parameters schema of tool {tool.name!r}")
            options.append(f"{gbnf_literal(tool.name)} {args}")
        rules = dict(g.rules)
        opener, closer = gbnf_literal(self.call_start + "call:"), gbnf_literal(self.closer)
        rules["root"] = f"{opener} ( {' | '.join(options)} ) {closer}"
        return format_rules(rules)
