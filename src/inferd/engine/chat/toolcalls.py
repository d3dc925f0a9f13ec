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

import json
import re
import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ..backend import ToolCallMalformed  # the model wrote a call we cannot parse
from ..events import TextDelta, ToolCall
from ..request import ToolCallSpec, ToolSpec
from . import gemma
from .schema import SchemaError, check_grammar_size, format_rules, gbnf_literal, schema_rules

IdFactory = Callable[[], str]
ToolEvent = TextDelta | ToolCall

_WS = " \t\r\n"

#: Longest tool name we wait for after `[TOOL_CALLS]` before calling the text malformed.
_MAX_NAME = 256


def random_call_id() -> str:
    """`call_` + 8 random hex digits."""
    return "call_" + secrets.token_hex(4)


_ALNUM = string.ascii_letters + string.digits


def random_mistral_id() -> str:
    """9 random alphanumerics: the only id shape Mistral chat templates accept."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


# ---- call objects ----------------------------------------------------------------------

def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise ToolCallMalformed(f"{what} is not valid JSON: {e.msg} at offset {e.pos}") from None


def _arguments(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = _loads(value, f"the arguments of {name!r}") if value.strip() else {}
    if not isinstance(value, dict):
        raise ToolCallMalformed(f"the arguments of {name!r} must be a JSON object")
    return value


def _call_from_object(obj: Any, arg_keys: Sequence[str] = ("arguments", "parameters")) -> tuple[str, dict[str, Any]]:
    """(name, arguments) from a decoded call object; accepts OpenAI's nested shape."""
    if not isinstance(obj, dict):
        raise ToolCallMalformed("a tool call must be a JSON object")
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallMalformed("the tool call has no name")
    args: Any = None
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    return name.strip(), _arguments(args, name)


def _looks_like_call(obj: Any) -> bool:
    if isinstance(obj, dict) and "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    return (isinstance(obj, dict) and isinstance(obj.get("name"), str)
            and ("parameters" in obj or "arguments" in obj))


def _coerce_arguments(arguments: Any) -> Any:
    """History arguments as an object when they are JSON text (HF allows either)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- incremental readers (one call region each) --------------------------------------

class _JsonEnd:
    """Finds where one JSON object/array ends in a stream, without parsing it."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = False
        self.escape = False
        self.started = False

    def feed(self, text: str) -> int | None:
        """Index in `text` just past the value's end, None if not there yet.

        Raises ValueError if the first non-space character does not open a container.
        """
        for i, ch in enumerate(text):
            if not self.started:
                if ch in " \t\r\n":
                    continue
                if ch not in "{[":
                    raise ValueError(ch)
                self.started = True
                self.depth = 1
                continue
            if self.in_str:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_str = False
            elif ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


class _Reader(ABC):
    """Consumes the text of one call region, after its opening marker."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Set instead of `calls` when the region turned out to be ordinary text.
        self.text: str | None = None

    @abstractmethod
    def feed(self, text: str) -> str | None:
        """Consume `text`; when the region ends, return the text after it (maybe "")."""

    @abstractmethod
    def finish(self) -> None:
        """The stream ended inside the region: complete it or raise ToolCallMalformed."""


class _Delimited(_Reader):
    """`opener` BODY `closer`; BODY is parsed whole once the closer arrives."""

    def __init__(self, closer: str, parse: Callable[[str], list[tuple[str, dict[str, Any]]]], label: str) -> None:
        super().__init__()
        self.closer = closer
        self.parse = parse
        self.label = label
        self.buf = ""

    def feed(self, text: str) -> str | None:
        start = max(0, len(self.buf) - len(self.closer) + 1)
        self.buf += text
        idx = self.buf.find(self.closer, start)
        if idx < 0:
            return None
        body, rest = self.buf[:idx], self.buf[idx + len(self.closer):]
        self.calls = self.parse(body)
        return rest

    def finish(self) -> None:
        raise ToolCallMalformed(f"the output ended inside a {self.label} tool call (no {self.closer})")


class _Json(_Reader):
    """One JSON value, ended by its own closing bracket; `post` turns it into calls."""

    def __init__(self, post: Callable[[Any], list[tuple[str, dict[str, Any]]]], label: str) -> None:
        super().__init__()
        self.post = post
        self.label = label
        self.scan = _JsonEnd()
        self.buf = ""

    def feed(self, text: str) -> str | None:
        try:
            end = self.scan.feed(text)
        except ValueError:
            raise ToolCallMalformed(f"the {self.label} tool call is not a JSON object or array") from None
        if end is None:
            self.buf += text
            return None
        value_text = self.buf + text[:end]
        self.calls = self.post(_loads(value_text, f"the {self.label} tool call"))
        return text[end:]

    def finish(self) -> None:
        raise ToolCallMalformed(f"the output ended inside a {self.label} tool call (unterminated JSON)")


_CALL_HEADS = ('{"name"', '{"type"', '{"function"')


class _BareJson(_Reader):
    """Llama 3: a reply that starts with `{` may be a call, or may just be JSON text."""

    def __init__(self) -> None:
        super().__init__()
        self.scan = _JsonEnd()
        self.buf = ""
        self.confirmed = False

    def _head_state(self) -> bool | None:
        """True: starts like a call; False: cannot be one; None: not known yet."""
        head = self.buf.lstrip()
        compact = "{" + head[1:].lstrip()
        if any(compact.startswith(h) for h in _CALL_HEADS):
            return True
        if any(h.startswith(compact) for h in _CALL_HEADS):
            return None
        return False

    def feed(self, text: str) -> str | None:
        end = self.scan.feed(text)  # the parser starts this reader only on "{"
        self.buf += text if end is None else text[:end]
        rest = "" if end is None else text[end:]
        if not self.confirmed:
            state = self._head_state()
            if state is False:
                self.text = self.buf
                return rest
            self.confirmed = state is True
        if end is None:
            return None
        try:
            obj = json.loads(self.buf, strict=False)
        except json.JSONDecodeError as e:
            if self.confirmed:
                raise ToolCallMalformed(f"the llama3 tool call is not valid JSON: {e.msg} at offset {e.pos}") from None
            obj = None
        if _looks_like_call(obj):
            self.calls = [_call_from_object(obj)]
        else:
            self.text = self.buf
        return rest

    def finish(self) -> None:
        if self.confirmed:
            raise ToolCallMalformed("the output ended inside a llama3 tool call (unterminated JSON)")
        self.text = self.buf


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
            raise ToolCallMalformed("[TOOL_CALLS] holds an empty list")
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
                self.inner = _Json(self._array, "mistral")
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
                self.inner = _Json(self._named, "mistral")
                text, self.head = stripped[idx + len("[ARGS]"):], ""
        rest = self.inner.feed(text)
        if rest is not None:
            self.calls = self.inner.calls
        return rest

    def finish(self) -> None:
        if self.inner is None:
            raise ToolCallMalformed("the output ended right after [TOOL_CALLS]")
        self.inner.finish()


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
        return _Delimited(self.closer, self._parse_body, self.name)

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


class Llama3Format(ToolCallFormat):
    """Llama 3.x custom tools: the reply is the call's JSON. The grammar admits the bare
    JSON only (no `<|python_tag|>`, which these models use for their built-in tools)."""

    name = "llama3"
    call_start = "{"  # a weak trigger: a lazy grammar should start at the reply instead
    openers = ("<|python_tag|>",)
    bare_json = True
    separators = " \t\r\n;"

    def _reader(self, opener: str) -> _Reader:
        return _Json(lambda obj: [_call_from_object(obj)], self.name)

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


# ---- the streaming parser --------------------------------------------------------------

class ToolCallParser:
    """Incremental: `push(piece)` per decoded piece, `finish()` once at the end.

    Returns TextDelta/ToolCall events; raises ToolCallMalformed on a bad call (the
    parser is then unusable). `known_names`, when given, makes a call to any other
    name malformed too.
    """

    def __init__(self, fmt: ToolCallFormat, *, id_factory: IdFactory | None = None,
                 known_names: Collection[str] | None = None) -> None:
        self.fmt = fmt
        self._new_id = id_factory or fmt.new_call_id
        self._known = frozenset(known_names) if known_names is not None else None
        self._buf = ""
        self._reader: _Reader | None = None
        self._at_start = True
        self._after_call = False
        self._ids: set[str] = set()
        self._finished = False
        #: How many calls were emitted so far.
        self.calls = 0

    @property
    def saw_tool_call(self) -> bool:
        return self.calls > 0

    def push(self, text: str) -> list[ToolEvent]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        out: list[ToolEvent] = []
        if text:
            self._buf += text
            self._drain(out)
        return out

    def finish(self) -> list[ToolEvent]:
        if self._finished:
            return []
        self._finished = True
        out: list[ToolEvent] = []
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.finish()
            self._complete(reader, out)
        rest, self._buf = self._buf, ""
        if rest and not (self._after_call and not rest.strip(self.fmt.separators)):
            self._text(out, rest)
        return out

    # -- internals --

    def _text(self, out: list[ToolEvent], text: str) -> None:
        if not text:
            return
        if out and isinstance(out[-1], TextDelta):
            out[-1].text += text
        else:
            out.append(TextDelta(text))

    def _id(self) -> str:
        for _ in range(16):
            new = self._new_id()
            if new not in self._ids:
                break
        n = 2
        base = new
        while new in self._ids:
            new = f"{base}_{n}"
            n += 1
        self._ids.add(new)
        return new

    def _complete(self, reader: _Reader, out: list[ToolEvent]) -> None:
        if reader.text is not None:
            self._text(out, reader.text)
            self._at_start = self._after_call = False
            return
        for name, args in reader.calls:
            if self._known is not None and name not in self._known:
                raise ToolCallMalformed(f"the model called {name!r}, which is not a declared tool")
            out.append(ToolCall(id=self._id(), name=name, input=args))
            self.calls += 1
        self._after_call = True

    def _start(self, reader: _Reader, text: str, out: list[ToolEvent]) -> bool:
        """Feed `text` to a new reader; True when it completed (buffer holds the rest)."""
        self._reader = reader
        self._at_start = False
        rest = reader.feed(text)
        if rest is None:
            self._buf = ""
            return False
        self._reader = None
        self._complete(reader, out)
        self._buf = rest
        return True

    def _drain(self, out: list[ToolEvent]) -> None:
        fmt = self.fmt
        while self._buf:
            if self._reader is not None:
                text, self._buf = self._buf, ""
                rest = self._reader.feed(text)
                if rest is None:
                    return
                reader, self._reader = self._reader, None
                self._complete(reader, out)
                self._buf = rest
                continue

            holding = self._at_start or self._after_call
            lead = len(self._buf) - len(self._buf.lstrip(fmt.separators if self._after_call else " \t\r\n")) \
                if holding else 0
            body = self._buf[lead:]
            if holding and not body:
                return  # only whitespace so far: it may precede a call
            if holding and fmt.bare_json and body[0] == "{":
                if not self._start(_BareJson(), body, out):
                    return
                continue

            idx, opener = -1, ""
            for op in fmt.openers:
                j = body.find(op)
                if j >= 0 and (idx < 0 or j < idx):
                    idx, opener = j, op
            # Whitespace right after a call is layout, like whitespace right before one.
            skip = lead if self._after_call else 0
            if idx >= 0:
                self._text(out, self._buf[skip:lead + idx].rstrip(_WS))
                self._after_call = False
                if not self._start(fmt._reader(opener), body[idx + len(opener):], out):
                    return
                continue

            hold = _held_prefix(body, fmt.openers)
            if holding and hold == len(body):
                return  # whitespace then a possible marker start: undecided
            # Emit all but a possible marker start and the whitespace before it (which
            # is dropped if a call follows).
            cut = len(self._buf) - hold
            cut = len(self._buf[:cut].rstrip(_WS))
            if cut <= skip:
                return
            self._text(out, self._buf[skip:cut])
            self._buf = self._buf[cut:]
            self._at_start = self._after_call = False
            return


def _held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that could begin one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


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
