"""JSON Schema → GBNF, for `response_format` and for tool-call argument grammars.

Why this module exists: llama.cpp constrains sampling with a GBNF grammar, and clients
describe structure with JSON Schema. llama-cpp-python ships a converter
(`llama_cpp.llama_grammar.SchemaConverter`); we use it, but never hand it a schema
unchecked, because it fails in unhelpful ways (AssertionError, AttributeError on a
non-dict node, silently wrong grammars for literals holding `"` or a backslash) and
because a hostile schema can make it build an enormous grammar. So every schema first
passes `check_schema()`, which:

- bounds the input: at most `MAX_SCHEMA_BYTES` serialized and `MAX_SCHEMA_DEPTH` nested;
- rejects, naming the construct and where it is, what a grammar cannot express or the
  converter does not support: non-object schema nodes, `false` schemas, unknown `type`s,
  local `$ref`s that do not resolve, remote `$ref`s, and the keywords in `UNSUPPORTED`
  (`not`, `if`/`then`/`else`, `patternProperties`, ...);
- treats as advisory (accepted, not enforced by the grammar) the keywords the converter
  ignores (`minimum`, `maximum`, `multipleOf`, `uniqueItems`, unknown `format`s, ...) and
  length/count bounds above `MAX_REPEAT` (enforcing those would need grammars nested
  thousands of levels deep); they are dropped from the copy that gets converted.

Whatever the converter still raises becomes `SchemaError`, and the produced grammar is
bounded by `MAX_SCHEMA_GRAMMAR_BYTES`. Conversion imports `llama_cpp` lazily, so importing this
module never loads the native library.

Public: `SchemaError`, `response_format_grammar()`, and the helpers the tool-call grammars
share (`check_schema`, `schema_rules`, `gbnf_literal`, `gbnf_class_char`,
`format_rules`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from ...proto.errors import InvalidRequest
from ...proto.limits import check_grammar_stacks
from ..request import ResponseFormat

#: Largest accepted schema, serialized as compact UTF-8 JSON.
MAX_SCHEMA_BYTES = 64 * 1024
#: Deepest accepted nesting of JSON containers inside a schema.
MAX_SCHEMA_DEPTH = 32
#: Largest grammar we hand to llama.cpp.
#: A grammar *converted* from a JSON schema or tool schemas: the converter's GBNF is far
#: more verbose than what a client writes, so its bound is not proto.limits'
#: MAX_GRAMMAR_BYTES (64 KiB, a client-sent `grammar`).
MAX_SCHEMA_GRAMMAR_BYTES = 256 * 1024
#: Length/count bounds above this are not enforced (see the module docstring), and regex
#: quantifiers above it are refused.
MAX_REPEAT = 1000

_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})

#: Keywords that restrict values in ways the grammar cannot follow: refused.
UNSUPPORTED = frozenset({
    "not", "if", "then", "else",
    "patternProperties", "propertyNames",
    "dependentSchemas", "dependentRequired", "dependencies",
    "unevaluatedProperties", "unevaluatedItems",
    "contains", "minContains", "maxContains",
    "$dynamicRef", "$recursiveRef",
})

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")

# Keywords whose value is one schema / a map of schemas / a list of schemas.
_ONE_SCHEMA = ("additionalProperties", "items")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class SchemaError(ValueError):
    """A JSON Schema that cannot become a grammar; the message names the construct."""


# ---- GBNF text helpers ---------------------------------------------------------------

def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal, every character escaped the way llama.cpp parses."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def gbnf_class_char(ch: str) -> str:
    """One character for use inside a GBNF `[...]` class (never special there)."""
    if ch.isascii() and ch.isalnum():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def format_rules(rules: dict[str, str], root: str = "root") -> str:
    """Rules as GBNF text, `root` first then the rest sorted (stable output)."""
    lines = [f"{root} ::= {rules[root]}"]
    lines += [f"{name} ::= {body}" for name, body in sorted(rules.items()) if name != root]
    return "\n".join(lines) + "\n"


def check_grammar_size(grammar: str) -> str:
    size = len(grammar.encode("utf-8"))
    if size > MAX_SCHEMA_GRAMMAR_BYTES:
        raise SchemaError(f"the grammar for this schema would be {size} bytes, over the {MAX_SCHEMA_GRAMMAR_BYTES}-byte limit")
    try:
        # THREAT_MODEL F-11: the same stack limit as a client's grammar (proto/limits.py).
        check_grammar_stacks(grammar, "the grammar for this schema")
    except InvalidRequest as exc:
        raise SchemaError(str(exc)) from None
    return grammar


def _rename_refs(body: str, mapping: dict[str, str]) -> str:
    """Rewrite the rule references in one GBNF rule body, leaving literals alone."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch in "\"[":
            close = '"' if ch == '"' else "]"
            j = i + 1
            while j < n and body[j] != close:
                j += 2 if body[j] == "\\" else 1
            out.append(body[i:j + 1])
            i = j + 1
        elif ch == "{":  # repetition bounds {m,n}
            j = body.find("}", i)
            j = n - 1 if j < 0 else j
            out.append(body[i:j + 1])
            i = j + 1
        elif ch.isascii() and (ch.isalnum() or ch in "-_"):
            j = i
            while j < n and body[j].isascii() and (body[j].isalnum() or body[j] in "-_"):
                j += 1
            word = body[i:j]
            out.append(mapping.get(word, word))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---- schema checking -----------------------------------------------------------------

def _where(path: list[str]) -> str:
    return "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path) if path else "$ (the root)"


def _container_depth(value: Any, limit: int) -> int:
    """Nesting depth of JSON containers, stopping early once past `limit`."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _resolve_pointer(root: dict[str, Any], ref: str) -> Any:
    """Resolve a local `#/a/b` reference the way the llama-cpp-python converter does."""
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def _check_pattern(pattern: Any, path: list[str]) -> None:
    if not isinstance(pattern, str):
        raise SchemaError(f"'pattern' at {_where(path)} must be a string")
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise SchemaError(
            f"pattern {pattern!r} at {_where(path)} is not anchored with ^...$; only anchored patterns can be enforced")
    if "(?" in pattern:
        raise SchemaError(f"pattern {pattern!r} at {_where(path)} uses a (?...) group, which is not supported")
    for m in _QUANTIFIER.finditer(pattern):
        for num in m.groups():
            if num and int(num) > MAX_REPEAT:
                raise SchemaError(f"pattern {pattern!r} at {_where(path)} repeats more than {MAX_REPEAT} times")


def _check_node(node: Any, root: dict[str, Any], path: list[str], seen: set[str]) -> dict[str, Any]:
    """Validate one schema node in place (the caller owns the copy); return it.

    `seen` holds the `$ref`s already followed, so reference cycles end.
    """
    if node is True:
        return {}
    if node is False:
        raise SchemaError(f"the 'false' schema at {_where(path)} is not supported")
    if not isinstance(node, dict):
        raise SchemaError(f"the schema at {_where(path)} must be an object, got {type(node).__name__}")
    for key in node:
        if key in UNSUPPORTED:
            raise SchemaError(f"unsupported JSON Schema keyword '{key}' at {_where(path)}")

    ref = node.get("$ref")
    if ref is not None:
        if not isinstance(ref, str):
            raise SchemaError(f"'$ref' at {_where(path)} must be a string")
        if ref.startswith(("http://", "https://")) or not ref.startswith("#"):
            raise SchemaError(f"$ref {ref!r} at {_where(path)}: only local references (#/...) are allowed")
        target = _resolve_pointer(root, ref) if ref.startswith("#/") else None
        if target is None:
            raise SchemaError(f"unresolvable $ref {ref!r} at {_where(path)}")
        if not isinstance(target, dict):
            raise SchemaError(f"$ref {ref!r} at {_where(path)} does not point to a schema object")
        if ref not in seen:
            seen.add(ref)
            _check_node(target, root, ref[2:].split("/"), seen)

    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if not isinstance(k, str) or k not in _TYPES:
            raise SchemaError(f"unknown type {k!r} at {_where(path)}")

    if "pattern" in node:
        _check_pattern(node["pattern"], [*path, "pattern"])
    for bound in _BOUNDS:
        if bound in node:
            value = node[bound]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SchemaError(f"'{bound}' at {_where(path)} must be a non-negative integer")
            if value > MAX_REPEAT:
                del node[bound]  # advisory beyond the limit
    if "required" in node:
        req = node["required"]
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            raise SchemaError(f"'required' at {_where(path)} must be a list of strings")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise SchemaError(f"'enum' at {_where(path)} must be a non-empty list")

    for key in _ONE_SCHEMA:
        if key not in node:
            continue
        sub = node[key]
        if isinstance(sub, bool):  # additionalProperties: false / items: false are keywords here
            continue
        if key == "items" and isinstance(sub, list):  # draft-7 tuple form
            node[key] = [_check_node(s, root, [*path, key, str(i)], seen) for i, s in enumerate(sub)]
        else:
            node[key] = _check_node(sub, root, [*path, key], seen)
    for key in _SCHEMA_MAPS:
        if key not in node:
            continue
        sub = node[key]
        if not isinstance(sub, dict):
            raise SchemaError(f"'{key}' at {_where(path)} must be an object")
        for name in list(sub):
            sub[name] = _check_node(sub[name], root, [*path, key, name], seen)
    for key in _SCHEMA_LISTS:
        if key not in node:
            continue
        sub = node[key]
        if not isinstance(sub, list) or not sub:
            raise SchemaError(f"'{key}' at {_where(path)} must be a non-empty list")
        node[key] = [_check_node(s, root, [*path, key, str(i)], seen) for i, s in enumerate(sub)]
    return node


def check_schema(schema: Any, *, what: str = "schema") -> dict[str, Any]:
    """A validated deep copy of `schema`, ready for conversion; SchemaError otherwise."""
    if not isinstance(schema, dict):
        raise SchemaError(f"the {what} must be a JSON object, got {type(schema).__name__}")
    try:
        size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError) as e:
        raise SchemaError(f"the {what} is not JSON: {e}") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"the {what} is {size} bytes, over the {MAX_SCHEMA_BYTES}-byte limit")
    if _container_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the {what} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    root = copy.deepcopy(schema)
    try:
        return _check_node(root, root, [], set())
    except RecursionError:
        raise SchemaError(f"the {what} chains too many $refs") from None


# ---- conversion (llama-cpp-python's converter) ----------------------------------------

#: One character of a JSON string: anything but `"`, `\`, DEL and the C0 controls, or
#: an escape (RFC 8259 §7).
JSON_STRING_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def _converter():
    from llama_cpp.llama_grammar import SchemaConverter

    class _Converter(SchemaConverter):
        # The stock literal escaping skips backslashes, which breaks enum/const values
        # and property names holding `\` or `"`. And those literals arrive as
        # `json.dumps()` text with non-ASCII escaped (`"\u00fc"`), which would force the
        # model to write escapes; admit the characters themselves instead.
        # The converter has no public hook for this: the override is a pinned seam
        # (ADR 0024); tests/engine/chat/test_chat_schema.py fails if it moves.
        def _format_literal(self, literal: str) -> str:
            try:
                value = json.loads(literal)
            except ValueError:
                return gbnf_literal(literal)
            if json.dumps(value) == literal:
                literal = json.dumps(value, ensure_ascii=False)
            return gbnf_literal(literal)

    return _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def schema_rules(schema: Any, prefix: str, *, what: str = "schema") -> tuple[str, dict[str, str]]:
    """Convert one schema; every rule name gets `prefix`. Returns (root rule name, rules).

    Two schemas converted with different prefixes never share or clash on a rule name,
    so their rules can be merged into one grammar.
    """
    checked = check_schema(schema, what=what)
    conv = _converter()
    try:
        if "$ref" in checked and len(checked) > 1:
            # The converter does not look past a node's own $ref, so references inside
            # a root that is itself a $ref (next to its $defs) would stay unresolved.
            conv.resolve_refs({k: v for k, v in checked.items() if k != "$ref"}, "schema")
        resolved = conv.resolve_refs(checked, "schema")
        conv.visit(resolved, "")
        text = conv.format_grammar()
    except RecursionError:
        raise SchemaError(f"the {what} is too deeply recursive to convert") from None
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise SchemaError(f"the {what} cannot be converted to a grammar: {e}") from None
    rules: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, body = line.partition(" ::= ")
        if sep:
            rules[name] = body
    if "char" in rules:
        # The converter's string character is any byte but `"` and `\`, control
        # characters included: a raw newline inside a string is not JSON (RFC 8259 §7)
        # and strict parsers refuse the whole answer (issue 21). llama.cpp's own
        # converter excludes them, as here; escapes (`\n`) stay allowed.
        rules["char"] = JSON_STRING_CHAR
    if "root" not in rules:
        raise SchemaError(f"the {what} produced no grammar")
    mapping = {name: prefix + name for name in rules}
    renamed = {mapping[name]: _rename_refs(body, mapping) for name, body in rules.items()}
    total = sum(len(k) + len(v) + 6 for k, v in renamed.items())
    if total > MAX_SCHEMA_GRAMMAR_BYTES:
        raise SchemaError(f"the grammar for the {what} would be {total} bytes, over the {MAX_SCHEMA_GRAMMAR_BYTES}-byte limit")
    return mapping["root"], renamed


def response_format_grammar(rf: ResponseFormat) -> str:
    """GBNF (root rule `root`) for a `response_format`.

    `json_object`: any JSON object. `json_schema`: the schema, converted; SchemaError when
    it cannot be (see the module docstring).
    """
    if rf.type == "json_object":
        schema: Any = {"type": "object"}
    elif rf.type == "json_schema":
        if rf.schema is None:
            raise SchemaError("response_format json_schema needs a schema")
        schema = rf.schema
    else:
        raise SchemaError(f"unknown response_format type {rf.type!r}")
    root, rules = schema_rules(schema, "", what="response_format schema")
    return check_grammar_size(format_rules(rules, root))
