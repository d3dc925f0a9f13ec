"""Gemma 4's "gemma value" syntax: parse it, render it, and constrain it with GBNF.

Why: Gemma 4 does not write JSON in its tool calls and declarations. It writes
`call:get_weather{city:<|"|>Paris<|"|>,days:3}`: objects with bare keys, strings wrapped
in the `<|"|>` token (their content is raw, never escaped), arrays, and numbers, booleans
and null as in JSON (upstream-engine.md §4.1, §5.1, and Gemma 4's own chat template).

- `parse_gemma_value()` is a real recursive-descent parser (not the upstream
  replace-and-`json.loads` trick, which breaks on strings holding `"`, `:` or a comma).
  It is lenient where models are: whitespace between tokens, JSON-quoted strings and
  keys, `<|"|>`-quoted keys, and `None` for null (the template prints a null that way).
- `render_gemma_value()` writes what the chat template writes; `sort_keys=True` follows
  the template's `dictsort` for call arguments (case-insensitive key order).
- `GemmaGrammar` turns a tool's JSON Schema into GBNF over gemma values. It enforces
  types, `enum`/`const`, `anyOf`/`oneOf`, type lists, local `$ref`s (also recursive),
  arrays (`items`, `prefixItems`) and objects with declared `properties`, keys in the
  template's sorted order, `required` ones mandatory. Not enforced: extra keys when
  `properties` is declared (never admitted), `additionalProperties` value schemas,
  string `pattern`/`format`/length bounds, numeric ranges, item counts. A node without
  a usable type admits any gemma value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .schema import check_schema, gbnf_class_char, gbnf_literal

QUOTE = '<|"|>'

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_BARE_KEY_OK = re.compile(r"[^\s:,{}\[\]<>\"]+")
_MAX_DEPTH = 64


class GemmaSyntaxError(ValueError):
    """Text that is not a gemma value; the message says where."""


# ---- parsing ---------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, what: str) -> GemmaSyntaxError:
        near = self.s[self.i:self.i + 20]
        return GemmaSyntaxError(f"{what} at offset {self.i} (near {near!r})")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def string(self) -> str:
        s, i = self.s, self.i
        if s.startswith(QUOTE, i):
            end = s.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise self.fail("unterminated <|\"|> string")
            self.i = end + len(QUOTE)
            return s[i + len(QUOTE):end]
        # A JSON-quoted string, with JSON escapes.
        try:
            value, end = json.JSONDecoder(strict=False).raw_decode(s, i)
        except json.JSONDecodeError:
            raise self.fail("bad string") from None
        self.i = end
        return value

    def key(self) -> str:
        self.ws()
        s = self.s
        if s.startswith(QUOTE, self.i) or s.startswith('"', self.i):
            return self.string()
        m = _BARE_KEY_OK.match(s, self.i)
        if not m:
            raise self.fail("expected a key")
        self.i = m.end()
        return m.group(0)

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail("nested too deeply")
        self.ws()
        s, i = self.s, self.i
        if i >= len(s):
            raise self.fail("expected a value")
        ch = s[i]
        if ch == "{":
            self.i += 1
            out: dict[str, Any] = {}
            self.ws()
            if s.startswith("}", self.i):
                self.i += 1
                return out
            while True:
                k = self.key()
                self.ws()
                if not s.startswith(":", self.i):
                    raise self.fail("expected ':' after a key")
                self.i += 1
                out[k] = self.value(depth + 1)
                self.ws()
                if s.startswith(",", self.i):
                    self.i += 1
                    continue
                if s.startswith("}", self.i):
                    self.i += 1
                    return out
                raise self.fail("expected ',' or '}'")
        if ch == "[":
            self.i += 1
            items: list[Any] = []
            self.ws()
            if s.startswith("]", self.i):
                self.i += 1
                return items
            while True:
                items.append(self.value(depth + 1))
                self.ws()
                if s.startswith(",", self.i):
                    self.i += 1
                    continue
                if s.startswith("]", self.i):
                    self.i += 1
                    return items
                raise self.fail("expected ',' or ']'")
        if s.startswith(QUOTE, i) or ch == '"':
            return self.string()
        # "None": Gemma 4's template prints a null argument with Jinja's default str().
        for word, val in (("true", True), ("false", False), ("null", None), ("None", None)):
            if s.startswith(word, i):
                self.i += len(word)
                return val
        m = _NUMBER.match(s, i)
        if m:
            self.i = m.end()
            text = m.group(0)
            return float(text) if any(c in text for c in ".eE") else int(text)
        raise self.fail("expected a value")


def parse_gemma_value(text: str) -> Any:
    """The one gemma value that `text` holds (surrounding whitespace allowed)."""
    p = _Parser(text)
    value = p.value()
    p.ws()
    if p.i != len(text):
        raise p.fail("unexpected text after the value")
    return value


def parse_gemma_value_prefix(text: str, start: int = 0) -> tuple[Any, int]:
    """Parse one gemma value at `start`; return it and the offset just past it."""
    p = _Parser(text)
    p.i = start
    value = p.value()
    return value, p.i


# ---- rendering -------------------------------------------------------------------------

def _sorted_items(d: dict[str, Any]) -> list[tuple[str, Any]]:
    # Jinja's dictsort default: case-insensitive on the key.
    return sorted(d.items(), key=lambda kv: str(kv[0]).lower())


def render_key(key: str) -> str:
    """A key as the template writes it (bare); quoted only when bare would not parse back."""
    return key if _BARE_KEY_OK.fullmatch(key) else QUOTE + key + QUOTE


def render_gemma_value(value: Any, *, sort_keys: bool = False) -> str:
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, dict):
        items = _sorted_items(value) if sort_keys else list(value.items())
        return "{" + ",".join(f"{render_key(str(k))}:{render_gemma_value(v, sort_keys=sort_keys)}"
                              for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_gemma_value(v, sort_keys=sort_keys) for v in value) + "]"
    return QUOTE + str(value) + QUOTE


def render_gemma_pairs(obj: dict[str, Any], *, sort_keys: bool = True) -> str:
    """An object's `k:v` pairs without the outer braces (how call args are written)."""
    return render_gemma_value(obj, sort_keys=sort_keys)[1:-1]


# ---- grammar ---------------------------------------------------------------------------

def exclusion_rules(name: str, forbidden: str) -> dict[str, str]:
    """Rules `name-0..` matching any text that does not contain `forbidden`.

    A KMP automaton: state k = the longest suffix so far that is a prefix of `forbidden`;
    every state may end the text; the transition that would complete `forbidden` is
    missing. Right-recursive, so llama.cpp's grammar stacks stay flat.
    """
    m = len(forbidden)
    fail = [0] * m
    k = 0
    for q in range(1, m):
        while k and forbidden[q] != forbidden[k]:
            k = fail[k - 1]
        if forbidden[q] == forbidden[k]:
            k += 1
        fail[q] = k

    def step(state: int, ch: str) -> int:
        while state and forbidden[state] != ch:
            state = fail[state - 1]
        return state + 1 if forbidden[state] == ch else state

    alphabet = sorted(set(forbidden))
    rules: dict[str, str] = {}
    for state in range(m):
        alts = []
        for ch in alphabet:
            nxt = step(state, ch)
            if nxt < m:
                alts.append(f"{gbnf_literal(ch)} {name}-{nxt}")
        others = "".join(gbnf_class_char(c) for c in alphabet)
        alts.append(f"[^{others}] {name}-0")
        rules[f"{name}-{state}"] = "( " + " | ".join(alts) + " )?"
    return rules


def generic_rules(p: str) -> dict[str, str]:
    """Rules for any gemma value, named with prefix `p` (`{p}value` is the entry)."""
    rules = {
        f"{p}value": f"{p}dict | {p}list | {p}str | {p}num | {p}bool | \"null\"",
        f"{p}dict": f"\"{{\" ( {p}pair ( \",\" {p}pair )* )? \"}}\"",
        f"{p}pair": f"{p}key \":\" {p}value",
        f"{p}key": "[a-zA-Z_] [a-zA-Z0-9_]*",
        f"{p}list": f"\"[\" ( {p}value ( \",\" {p}value )* )? \"]\"",
        f"{p}str": f"{gbnf_literal(QUOTE)} {p}chars-0 {gbnf_literal(QUOTE)}",
        f"{p}int": "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} )",
        f"{p}num": f"{p}int ( \".\" [0-9]{{1,15}} )? ( [eE] [-+]? [0-9]{{1,3}} )?",
        f"{p}bool": "\"true\" | \"false\"",
    }
    rules.update(exclusion_rules(f"{p}chars", QUOTE))
    return rules


class GemmaGrammar:
    """Builds GBNF for gemma-value call arguments from JSON Schemas (see module doc).

    One instance per grammar: `args_rule(schema, prefix)` per tool, then `rules`.
    """

    def __init__(self, generic_prefix: str = "gv-") -> None:
        self.g = generic_prefix
        self.rules: dict[str, str] = generic_rules(generic_prefix)

    def args_rule(self, schema: dict[str, Any], prefix: str, *, what: str = "schema") -> str:
        """Entry rule for an arguments object matching `schema` (a gemma `{...}`)."""
        root = check_schema(schema, what=what)
        ctx = _Ctx(self, root, prefix)
        body = ctx.visit(root)
        if body == f"{self.g}value":  # arguments are always an object
            body = f"{self.g}dict"
        name = f"{prefix}args"
        self.rules[name] = body
        return name


class _Ctx:
    def __init__(self, owner: GemmaGrammar, root: dict[str, Any], prefix: str) -> None:
        self.o = owner
        self.root = root
        self.p = prefix
        self.n = 0
        self.refs: dict[str, str] = {}

    def new_rule(self, body: str) -> str:
        name = f"{self.p}n{self.n}"
        self.n += 1
        self.o.rules[name] = body
        return name

    def reserve(self) -> str:
        name = f"{self.p}n{self.n}"
        self.n += 1
        return name

    def visit(self, s: dict[str, Any]) -> str:
        g = self.o.g
        ref = s.get("$ref")
        if isinstance(ref, str):
            if ref not in self.refs:
                name = self.reserve()
                self.refs[ref] = name
                target = self.root
                for part in ref[2:].split("/"):
                    target = target[part]
                self.o.rules[name] = self.visit(target)
            return self.refs[ref]
        for key in ("anyOf", "oneOf"):
            if key in s:
                return "( " + " | ".join(self.visit(alt) for alt in s[key]) + " )"
        if "const" in s:
            return gbnf_literal(render_gemma_value(s["const"], sort_keys=True))
        if "enum" in s:
            return "( " + " | ".join(gbnf_literal(render_gemma_value(v, sort_keys=True)) for v in s["enum"]) + " )"
        kind = s.get("type")
        if isinstance(kind, list):
            return "( " + " | ".join(self.visit({**s, "type": k}) for k in kind) + " )"
        if kind == "string":
            return f"{g}str"
        if kind == "integer":
            return f"{g}int"
        if kind == "number":
            return f"{g}num"
        if kind == "boolean":
            return f"{g}bool"
        if kind == "null":
            return '"null"'
        if kind == "array" or (kind is None and ("items" in s or "prefixItems" in s)):
            return self.array(s)
        if kind == "object" or (kind is None and ("properties" in s or "allOf" in s)):
            return self.obj(s)
        return f"{g}value"

    def array(self, s: dict[str, Any]) -> str:
        g = self.o.g
        tuple_items = s.get("prefixItems") or (s["items"] if isinstance(s.get("items"), list) else None)
        if tuple_items:
            parts = ' "," '.join(self.visit(item) for item in tuple_items)
            return self.new_rule(f'"[" {parts} "]"')
        items = s.get("items")
        item = self.visit(items) if isinstance(items, dict) else f"{g}value"
        return self.new_rule(f'"[" ( {item} ( "," {item} )* )? "]"')

    def obj(self, s: dict[str, Any]) -> str:
        props: dict[str, Any] = dict(s.get("properties") or {})
        required = set(s.get("required") or [])
        for part in s.get("allOf") or []:
            target = part
            if isinstance(part.get("$ref"), str):
                target = self.root
                for seg in part["$ref"][2:].split("/"):
                    target = target[seg]
            props.update(target.get("properties") or {})
            required.update(target.get("required") or [])
        if not props:
            return f"{self.o.g}dict"
        ordered = sorted(props, key=lambda k: k.lower())
        kvs = [f"{gbnf_literal(render_key(k) + ':')} {self.visit(props[k])}" for k in ordered]
        # rest[i]: keys i.. after at least one key was written (each needs a comma);
        # first[i]: keys i.. when none was written yet (no leading comma).
        rest: list[str | None] = [None] * (len(ordered) + 1)
        first: list[str | None] = [None] * (len(ordered) + 1)
        # (rest[0] would never be used: the first key has no comma before it.)
        for i in range(len(ordered) - 1, -1, -1):
            tail = f" {rest[i + 1]}" if rest[i + 1] else ""
            if ordered[i] in required:
                if i:
                    rest[i] = self.new_rule(f'"," {kvs[i]}{tail}')
                first[i] = self.new_rule(f"{kvs[i]}{tail}")
            else:
                if i:
                    rest[i] = self.new_rule(f'( "," {kvs[i]} )?{tail}')
                alt = f" | {first[i + 1]}" if first[i + 1] else ""
                first[i] = self.new_rule(f"( {kvs[i]}{tail}{alt} )" + ("" if alt else "?"))
        return self.new_rule(f'"{{" {first[0]} "}}"')
