"""Tool-call formats: find calls in a model's streamed output, describe tools in a
prompt, render call history, and constrain a call with a grammar.

Why: every model family was trained on its own way of writing a tool call, and the
engine contract (engine/events.py) only speaks whole `ToolCall(id, name, input)`
events. Each family is a `ToolCallFormat`; `detect()` picks one from the model's Jinja
chat template, and `fmt.parser()` turns the raw stream into TextDelta and ToolCall
events as it arrives.

Formats (`FORMATS` by name):

- `hermes` (Qwen 2.5/3, Hermes 2/3): `<tool_call>{"name": N, "arguments": {...}}</tool_call>`.
- `llama3` (Llama 3.1-3.3): the whole reply is `{"name": N, "parameters": {...}}`
  ("arguments" also accepted), optionally after `<|python_tag|>`; several calls may be
  separated by `;` or whitespace. A reply that merely *looks* like JSON (it does not
  start with `{"name"`/`{"type"`/`{"function"`, or does not complete as a call-shaped
  object) is passed through as text, since a Llama answer may legitimately be JSON.
  After `<|python_tag|>` anything but a call is malformed.
- `mistral` (Nemo, v3 tokenizers): `[TOOL_CALLS][{"name": N, "arguments": {...}}, ...]`.
- `mistral-args` (Small 3.2, Devstral, v11+ tokenizers):
  `[TOOL_CALLS]N[ARGS]{...}`, optionally `[TOOL_CALLS]N[CALL_ID]id[ARGS]{...}`.
  Both Mistral formats parse both syntaxes; they differ in what they render. Their ids
  are 9 alphanumeric characters, because Mistral templates refuse any other id.
- `gemma4`: `<|tool_call>call:N{key:<|"|>str<|"|>,n:1}<tool_call|>` (gemma values, see
  gemma.py).
- `builtin` (ours, for templates that show no tool syntax, or no template): the Hermes
  syntax, because it is the most widely trained one - `<tool_call>` + a JSON object
  with "name" and "arguments" + `</tool_call>`, one block per call; results go back as
  `<tool_response name="N" id="ID">content</tool_response>`. `declare_tools()` spells
  this out for the model.

Parsing rules shared by all formats: text streams out as soon as it cannot be the start
of a call marker (only a possible marker prefix is held back); a call is emitted only
whole; whitespace between, before or after calls is dropped (it is layout, not
content); ids are unique per parser (request). Markers must reach the parser as text,
so special tokens have to be detokenized with their text (`special=True`). Malformed
call text raises `ToolCallMalformed`, which the daemon reports as `tool_call_malformed`.

`tool_call_grammar()` builds GBNF admitting exactly one call, in the format's syntax,
to one of the given tools, arguments constrained by the tool's JSON Schema (converted
by llama-cpp-python's converter, per tool, rule names prefixed per tool). For `gemma4`
the arguments are gemma values, so gemma.py converts the schema itself (its docstring
lists what is enforced). Call markers are matched as text in the grammar.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...backend import ToolCallMalformed
from ...request import ToolSpec
from ..schema import check_grammar_size
from .base import ToolCallFormat, random_call_id
from .gemma4 import Gemma4Format
from .hermes import BuiltinFormat, HermesFormat
from .llama3 import Llama3Format
from .mistral import MistralArgsFormat, MistralFormat, random_mistral_id
from .parser import ToolCallParser

BUILTIN = BuiltinFormat()
HERMES = HermesFormat()
LLAMA3 = Llama3Format()
MISTRAL = MistralFormat()
MISTRAL_ARGS = MistralArgsFormat()
GEMMA4 = Gemma4Format()

FORMATS: dict[str, ToolCallFormat] = {f.name: f for f in (BUILTIN, HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GEMMA4)}


def get_format(name: str) -> ToolCallFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call format {name!r}; known: {', '.join(FORMATS)}") from None


def detect(template_source: str | None) -> ToolCallFormat:
    """The format a chat template's source text shows; `BUILTIN` when it shows none."""
    src = template_source or ""
    if "<|tool_call>" in src:
        return GEMMA4
    if "[TOOL_CALLS]" in src:
        return MISTRAL_ARGS if "[ARGS]" in src else MISTRAL
    if "<tool_call>" in src:
        return HERMES
    if "<|python_tag|>" in src or ("ipython" in src and "<|start_header_id|>" in src):
        return LLAMA3
    if "<|start_header_id|>" in src and '"parameters"' in src:
        return LLAMA3
    return BUILTIN


# ---- grammar ---------------------------------------------------------------------------

def tool_call_grammar(fmt: ToolCallFormat, tools: Sequence[ToolSpec], forced_name: str | None = None) -> str:
    """GBNF (root `root`) admitting exactly one call, in `fmt`, to one of `tools` (or to
    `forced_name` only), its arguments matching that tool's `parameters` schema.

    ValueError: no tools, duplicate names, or `forced_name` not among them.
    SchemaError: a tool's parameters cannot be converted (see schema.py).
    """
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ValueError("tool names must be unique")
    for name in names:
        if not name or any(c in name for c in " \t\r\n{}[]:,\""):
            raise ValueError(f"tool name {name!r} cannot be written in a call")
    selected = list(tools)
    if forced_name is not None:
        selected = [t for t in tools if t.name == forced_name]
        if not selected:
            raise ValueError(f"tool {forced_name!r} is not among the declared tools")
    return check_grammar_size(fmt._grammar(selected))


__all__ = ["BUILTIN", "FORMATS", "GEMMA4", "HERMES", "LLAMA3", "MISTRAL", "MISTRAL_ARGS", "BuiltinFormat",
           "Gemma4Format", "HermesFormat", "Llama3Format", "MistralArgsFormat", "MistralFormat", "ToolCallFormat",
           "ToolCallMalformed", "ToolCallParser", "detect", "get_format", "random_call_id", "random_mistral_id",
           "tool_call_grammar"]
