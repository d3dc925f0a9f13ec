"""Mistral: `[TOOL_CALLS][{...}]` (v3 tokenizers) and `[TOOL_CALLS]NAME[ARGS]{...}` (v11+)."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

from ...backend import ToolCallMalformed
from ...request import ToolCallSpec, ToolSpec
from ..schema import format_rules, gbnf_literal
from .base import ToolCallFormat, _json_alternatives, _json_call_rules
from .readers import _arguments, _call_from_object, _coerce_arguments, _dumps, _Json, _Reader
from .streaming import CallStream

#: Longest tool name we wait for after `[TOOL_CALLS]` before calling the text malformed.
_MAX_NAME = 256

_ALNUM = string.ascii_letters + string.digits


def random_mistral_id() -> str:
    """9 random alphanumerics: the only id shape Mistral chat templates accept."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


class _MistralRegion(_Reader):
    """After `[TOOL_CALLS]`: a JSON array/object of calls, or `NAME[CALL_ID]id[ARGS]{...}`."""

    def __init__(self) -> None:
        super().__init__()
        self.head = ""
        self.inner: _Reader | None = None
        self.name = ""

    def _array(self, value: Any) -> list[tuple[str, dict[str, Any]]]:
        items = value if isinstance(value, list) else [value]
        if not items:
            return []  # names no tool: no call, as an empty <tool_call></tool_call> (ADR 0026)
        return [_call_from_object(item) for item in items]

    def _named(self, value: Any) -> list[tuple[str, dict[str, Any]]]:
        return [(self.name, _arguments(value, self.name))]

    def feed(self, text: str) -> str | None:
        if self.inner is None:
            self.head += text
            stripped = self.head.lstrip()
            if not stripped:
                return None
            if stripped[0] in "[{":
                self.inner = _Json(self._array, "mistral", CallStream())
                text, self.head = stripped, ""
            else:
                idx = stripped.find("[ARGS]")
                if idx < 0:
                    name, bracket, after = stripped.partition("[")
                    tail = bracket + after
                    if re.search(r"[\s{}\]\"]", name):
                        raise ToolCallMalformed(f"bad tool name {name.strip()!r} after [TOOL_CALLS]")
                    if len(stripped) > _MAX_NAME or (tail and not (
                            "[ARGS]".startswith(tail) or "[CALL_ID]".startswith(tail) or tail.startswith("[CALL_ID]"))):
                        raise ToolCallMalformed("[TOOL_CALLS] is not followed by NAME[ARGS]{...} or a JSON list")
                    return None
                head = stripped[:idx]
                name = head.partition("[CALL_ID]")[0]
                if not name or re.search(r"[\s\[\]{}\"]", name):
                    raise ToolCallMalformed(f"bad tool name {name.strip()!r} after [TOOL_CALLS]")
                self.name = name
                self.inner = _Json(self._named, "mistral", CallStream(name))
                text, self.head = stripped[idx + len("[ARGS]"):], ""
        rest = self.inner.feed(text)
        if rest is not None:
            self.calls = self.inner.calls
        return rest

    def pieces(self) -> list[tuple[int, str, str]]:
        return self.inner.pieces() if self.inner is not None else []

    def finish(self) -> None:
        if self.inner is None:
            raise ToolCallMalformed("the output ended right after [TOOL_CALLS]")
        self.inner.finish()


class MistralFormat(ToolCallFormat):
    """`[TOOL_CALLS][{...}]` (v3). Parses the `[ARGS]` syntax too."""

    name = "mistral"
    call_start = "[TOOL_CALLS]"
    openers = ("[TOOL_CALLS]",)

    def new_call_id(self) -> str:
        return random_mistral_id()

    def _reader(self, opener: str) -> _Reader:
        return _MistralRegion()

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        listed = _dumps([t.as_openai() for t in tools])
        return (
            "You can call the following tools (JSON list of function signatures):\n"
            f"{listed}\n\n"
            "To call tools, reply with [TOOL_CALLS] followed by a JSON list of calls, each an object "
            "with the tool's \"name\" and its \"arguments\", for example:\n"
            "[TOOL_CALLS][{\"name\": \"tool_name\", \"arguments\": {\"argument\": \"value\"}}]"
        )

    def render_call(self, call: ToolCallSpec) -> str:
        return "[TOOL_CALLS]" + _dumps([{"name": call.name, "arguments": _coerce_arguments(call.arguments),
                                          "id": call.id}])

    def render_result(self, name: str, call_id: str, content: str) -> str:
        return "[TOOL_RESULTS]" + _dumps({"content": content, "call_id": call_id}) + "[/TOOL_RESULTS]"

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        rules, entry = _json_call_rules(tools, "arguments")
        rules["root"] = f"{gbnf_literal(self.call_start)} tc-sp \"[\" tc-sp {entry} tc-sp \"]\""
        return format_rules(rules)


class MistralArgsFormat(MistralFormat):
    """`[TOOL_CALLS]NAME[ARGS]{...}` (v11+ tokenizers: Small 3.2, Devstral, Magistral)."""

    name = "mistral-args"

    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        listed = _dumps([t.as_openai() for t in tools])
        return (
            "You can call the following tools (JSON list of function signatures):\n"
            f"{listed}\n\n"
            "To call a tool, write [TOOL_CALLS], the tool's name, [ARGS] and the arguments as a JSON "
            "object, for example:\n"
            "[TOOL_CALLS]tool_name[ARGS]{\"argument\": \"value\"}\n"
            "Repeat this for each call."
        )

    def render_call(self, call: ToolCallSpec) -> str:
        return f"[TOOL_CALLS]{call.name}[ARGS]{_dumps(_coerce_arguments(call.arguments))}"

    def render_result(self, name: str, call_id: str, content: str) -> str:
        return f"[TOOL_RESULTS]{call_id}[TOOL_CONTENT]{content}[/TOOL_RESULTS]"

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        alts, rules = _json_alternatives(tools)
        # Small 3.2 writes the call id between the name and the arguments.
        rules["tc-call-id"] = '( "[CALL_ID]" [a-zA-Z0-9]{9} )?'
        options = " | ".join(f"{gbnf_literal(name)} tc-call-id \"[ARGS]\" {args}" for name, args in alts)
        rules["root"] = f"{gbnf_literal(self.call_start)} ( {options} )"
        return format_rules(rules)
