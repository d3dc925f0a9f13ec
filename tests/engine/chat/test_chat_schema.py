"""response_format grammars, schema checking and limits, and the GBNF text helpers."""

from __future__ import annotations

import json

import pytest

from chat_testlib import GbnfMatcher, grammar_parses
from inferd.engine.chat import schema as sch
from inferd.engine.chat.schema import (
    MAX_REPEAT,
    SchemaError,
    check_schema,
    gbnf_class_char,
    gbnf_literal,
    response_format_grammar,
    schema_rules,
)
from inferd.engine.request import ResponseFormat


def grammar(schema):
    g = response_format_grammar(ResponseFormat("json_schema", schema))
    assert grammar_parses(g), g
    return GbnfMatcher(g)


def test_json_object_admits_any_object_and_nothing_else():
    g = response_format_grammar(ResponseFormat("json_object"))
    assert g.startswith("root ::= ")
    assert grammar_parses(g)
    m = GbnfMatcher(g)
    assert m.accepts('{"a": [1, 2.5, {"b": null}], "c": "d\\n"}')
    assert m.accepts("{}")
    assert not m.accepts("[1]")
    assert not m.accepts('"text"')
    assert not m.accepts('{"a": }')


def test_json_schema_is_enforced():
    m = grammar({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "kind": {"enum": ["a", "b"]},
            "ref": {"$ref": "#/$defs/point"},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
    })
    assert m.accepts('{"name": "Ann", "age": 3}')
    assert m.accepts('{"name": "Ann", "age": 3, "tags": ["x", "y"], "kind": "b", "ref": {"x": 1.5}}')
    assert not m.accepts('{"name": "Ann"}')
    assert not m.accepts('{"name": "Ann", "age": 3.5}')
    assert not m.accepts('{"name": "Ann", "age": 3, "tags": ["x", "y", "z"]}')
    assert not m.accepts('{"name": "Ann", "age": 3, "kind": "c"}')
    assert not m.accepts('{"name": "Ann", "age": 3, "ref": {}}')
    assert not m.accepts('{"name": "Ann", "age": 3, "extra": 1}')


def test_literals_with_quotes_and_backslashes_are_escaped_correctly():
    # llama-cpp-python's own literal escaping drops backslashes; ours must not.
    # Non-ASCII is admitted as itself, not only as \u escapes. This is the test of the
    # `_format_literal` override (ADR 0024): if an upgrade renames or stops calling the
    # method, enum values, consts and property names come out wrong here.
    values = ['say "hi"', "back\\slash", "tab\there", "new\nline", "ünï"]
    key = 'k"\\ü'
    m = grammar({"type": "object", "properties": {key: {"enum": values}}, "required": [key]})
    for v in values:
        assert m.accepts(json.dumps({key: v}, ensure_ascii=False)), v
    assert not m.accepts(json.dumps({key: "other"}, ensure_ascii=False))


def test_recursive_ref_and_anchored_pattern():
    m = grammar({"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "properties": {"v": {"type": "string", "pattern": "^[a-z]{1,3}$"},
                                          "next": {"$ref": "#/$defs/node"}}, "required": ["v"]}}})
    assert m.accepts('{"v": "ab", "next": {"v": "c", "next": {"v": "xyz"}}}')
    assert not m.accepts('{"v": "abcd"}')
    assert not m.accepts('{"v": "AB"}')


@pytest.mark.parametrize("schema, match", [
    ([{"type": "object"}], "must be a JSON object, got list"),
    ("string", "must be a JSON object, got str"),
    ({"properties": {"a": 5}}, r"schema at \$.properties.a must be an object, got int"),
    ({"properties": {"a": False}}, r"'false' schema at \$.properties.a"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, r"keyword 'not' at \$.properties.a"),
    ({"if": {}, "then": {}}, "keyword 'if'"),
    ({"patternProperties": {"^x": {}}}, "keyword 'patternProperties'"),
    ({"$ref": "#/$defs/missing"}, "unresolvable \\$ref '#/\\$defs/missing'"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"$ref": "other.json#/a"}, "only local references"),
    ({"$ref": "#/$defs/x", "$defs": {"x": 3}}, "does not point to a schema object"),
    ({"type": "date"}, "unknown type 'date'"),
    ({"type": ["string", 1]}, "unknown type 1"),
    ({"type": "string", "pattern": "[a-z]+"}, "not anchored"),
    ({"type": "string", "pattern": "^(?:a)$"}, r"\(\?\.\.\.\) group"),
    ({"type": "string", "pattern": "^a{1,5000}$"}, "repeats more than"),
    ({"type": "string", "maxLength": -1}, "non-negative integer"),
    ({"required": "a"}, "list of strings"),
    ({"enum": []}, "non-empty list"),
    ({"anyOf": []}, "non-empty list"),
    ({"properties": []}, "'properties' at \\$ \\(the root\\) must be an object"),
    ({"x": {1, 2}}, "not JSON"),
])
def test_schema_errors_name_the_construct(schema, match):
    with pytest.raises(SchemaError, match=match):
        response_format_grammar(ResponseFormat("json_schema", schema))


def test_json_schema_without_a_schema_and_unknown_type():
    with pytest.raises(SchemaError, match="needs a schema"):
        response_format_grammar(ResponseFormat("json_schema", None))
    with pytest.raises(SchemaError, match="unknown response_format type"):
        response_format_grammar(ResponseFormat("xml"))  # type: ignore[arg-type]


def test_converter_failures_become_schema_errors():
    # Passes our checks, but the converter cannot build it (unbalanced group).
    with pytest.raises(SchemaError, match="cannot be converted.*Unbalanced parentheses"):
        response_format_grammar(ResponseFormat("json_schema", {"type": "string", "pattern": "^a)b$"}))


def test_size_and_depth_limits():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                            for i in range(700)}}
    with pytest.raises(SchemaError, match="over the 65536-byte limit"):
        check_schema(big)
    deep: dict = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(SchemaError, match="nests deeper than 32"):
        check_schema(deep)
    # A small schema whose grammar is over the output limit (each bounded string expands).
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": MAX_REPEAT}
                                             for i in range(40)}}
    assert len(json.dumps(wide)) < sch.MAX_SCHEMA_BYTES
    with pytest.raises(SchemaError, match="over the 262144-byte limit"):
        response_format_grammar(ResponseFormat("json_schema", wide))


def test_grammar_size_check():
    small = "root ::= \"x\"\n"
    assert sch.check_grammar_size(small) is small
    with pytest.raises(SchemaError, match="over the 262144-byte limit"):
        sch.check_grammar_size("x" * (sch.MAX_SCHEMA_GRAMMAR_BYTES + 1))


def test_huge_bounds_are_advisory_not_expanded():
    checked = check_schema({"type": "array", "items": {"type": "string", "maxLength": 10**9},
                            "minItems": 1, "maxItems": MAX_REPEAT + 1})
    assert "maxItems" not in checked and checked["minItems"] == 1
    assert "maxLength" not in checked["items"]
    g = response_format_grammar(ResponseFormat("json_schema", {"type": "string", "maxLength": 10**9}))
    assert len(g) < 2000 and grammar_parses(g)


def test_check_schema_copies_and_normalizes():
    original = {"properties": {"a": True}, "maxLength": 10**6}
    checked = check_schema(original)
    assert checked == {"properties": {"a": {}}}
    assert original == {"properties": {"a": True}, "maxLength": 10**6}


def test_schema_rules_prefixes_every_rule_and_reference():
    root, rules = schema_rules({"type": "object", "properties": {"s": {"type": "string"}}}, "p-")
    assert root == "p-root"
    assert all(name.startswith("p-") for name in rules)
    text = "root ::= " + root + "\n" + "\n".join(f"{k} ::= {v}" for k, v in rules.items())
    assert grammar_parses(text)
    assert GbnfMatcher(text).accepts('{"s": "x"}')


def test_rename_leaves_literals_and_classes_alone():
    body = '"space string" [a-z\\]] space{0,3} ( string | "x\\"space" )'
    assert sch._rename_refs(body, {"space": "p-space", "string": "p-string"}) == (
        '"space string" [a-z\\]] p-space{0,3} ( p-string | "x\\"space" )')


def test_gbnf_text_helpers():
    assert gbnf_literal('a"b\\c\nd\te\r\x01') == '"a\\"b\\\\c\\nd\\te\\r\\x01"'
    assert gbnf_class_char("a") == "a" and gbnf_class_char("]") == "\\x5D"
    assert gbnf_class_char("é") == "\\xE9" and gbnf_class_char("€") == "\\u20AC"
    assert gbnf_class_char("😀") == "\\U0001F600"
    g = f"root ::= {gbnf_literal(chr(1) + 'é😀')} [{gbnf_class_char(']')}{gbnf_class_char('€')}]"
    assert grammar_parses(g)
    m = GbnfMatcher(g)
    assert m.accepts("\x01é😀]") and m.accepts("\x01é😀€") and not m.accepts("\x01é😀x")


def test_json_string_characters_exclude_control_characters():
    # Issue 21: a raw newline inside a JSON string is not JSON (RFC 8259 §7).
    from inferd.engine.chat.schema import JSON_STRING_CHAR, schema_rules

    _, rules = schema_rules({"type": "object", "properties": {"s": {"type": "string"}}}, "p-")
    assert rules["p-char"] == JSON_STRING_CHAR
    assert r"\x00-\x1F" in JSON_STRING_CHAR and r"\x7F" in JSON_STRING_CHAR
