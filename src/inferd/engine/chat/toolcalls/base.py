"""What every tool-call format is: `ToolCallFormat`, call ids, and the grammar pieces
the JSON formats share."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence

from ...request import ToolCallSpec, ToolSpec
from ..schema import SchemaError, gbnf_literal, schema_rules
from .parser import IdFactory, ToolCallParser
from .readers import _dumps, _Reader


def random_call_id() -> str:
    """`call_` + 8 random hex digits."""
    return "call_" + secrets.token_hex(4)


# ---- the formats -----------------------------------------------------------------------

class ToolCallFormat(ABC):
    """One family's tool-call syntax: parse, declare, render, constrain."""

    #: Registry name ("hermes", "llama3", ...).
    name: str = ""
    #: The text that opens a call (what a lazy grammar should trigger on).
    call_start: str = ""
    #: Markers that open a call region anywhere in the text.
    openers: tuple[str, ...] = ()
    #: Llama 3 style: a reply (or what follows a call) starting with "{" may be a call.
    bare_json: bool = False
    #: Characters dropped between calls.
    separators: str = " \t\r\n"

    def new_call_id(self) -> str:
        return random_call_id()

    def parser(self, *, id_factory: IdFactory | None = None,
               known_names: Collection[str] | None = None) -> ToolCallParser:
        return ToolCallParser(self, id_factory=id_factory, known_names=known_names)

    @abstractmethod
    def _reader(self, opener: str) -> _Reader: ...

    @abstractmethod
    def declare_tools(self, tools: Sequence[ToolSpec]) -> str:
        """System-prompt text describing `tools` and the exact call syntax."""

    @abstractmethod
    def render_call(self, call: ToolCallSpec) -> str:
        """An earlier assistant call, as the model would have written it."""

    @abstractmethod
    def render_result(self, name: str, call_id: str, content: str) -> str:
        """A tool's result, as plain text for the prompt."""

    @abstractmethod
    def _grammar(self, tools: Sequence[ToolSpec]) -> str: ...

    def __repr__(self) -> str:
        return f"<ToolCallFormat {self.name}>"


def _tool_lines(tools: Sequence[ToolSpec]) -> str:
    return "\n".join(_dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
                     for t in tools)


def _json_alternatives(tools: Sequence[ToolSpec]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Per tool: (name, entry rule of its arguments grammar); plus all rules."""
    alts: list[tuple[str, str]] = []
    rules: dict[str, str] = {}
    for i, tool in enumerate(tools):
        _check_parameters(tool)
        root, tool_rules = schema_rules(tool.parameters, f"tool{i}-", what=f"parameters schema of tool {tool.name!r}")
        rules.update(tool_rules)
        alts.append((tool.name, root))
    return alts, rules


def _check_parameters(tool: ToolSpec) -> None:
    params = tool.parameters
    if not isinstance(params, dict):
        raise SchemaError(f"the parameters of tool {tool.name!r} must be a JSON Schema object")
    kind = params.get("type")
    if kind is not None and kind != "object":
        raise SchemaError(f"the parameters of tool {tool.name!r} must describe an object (type {kind!r})")


_SP = '" "?'
_GWS = "( [ \\t\\n] [ \\t\\n]? )?"


def _json_call_rules(tools: Sequence[ToolSpec], args_key: str) -> tuple[dict[str, str], str]:
    """Rules for `{"name": "N", "<args_key>": ARGS}` over the tools; returns (rules, entry)."""
    alts, rules = _json_alternatives(tools)
    rules["tc-sp"] = _SP
    options = []
    for i, (name, args_rule) in enumerate(alts):
        rules[f"tc-call-{i}"] = (f"{gbnf_literal(_dumps(name))} tc-sp \",\" tc-sp "
                                 f"{gbnf_literal(_dumps(args_key))} tc-sp \":\" tc-sp {args_rule}")
        options.append(f"tc-call-{i}")
    rules["tc-object"] = (f"\"{{\" tc-sp {gbnf_literal(_dumps('name'))} tc-sp \":\" tc-sp "
                          f"( {' | '.join(options)} ) tc-sp \"}}\"")
    return rules, "tc-object"
