"""Gemma 4 value syntax: parser, renderer, exclusion automaton and schema grammar."""

from __future__ import annotations

import pytest

from chat_testlib import GbnfMatcher, grammar_parses
from inferd.engine.chat.gemma import (
    QUOTE,
    GemmaGrammar,
    GemmaSyntaxError,
    exclusion_rules,
    generic_rules,
    parse_gemma_value,
    parse_gemma_value_prefix,
    render_gemma_pairs,
    render_gemma_value,
    render_key,
)
from inferd.engine.chat.schema import SchemaError, format_rules, gbnf_literal

Q = QUOTE


def test_parse_values():
    assert parse_gemma_value(f'{{a:{Q}x, "y": z{Q},b:[1,-2.5e3,true,false,null,None],c:{{d:{{}}}},e:[]}}') == {
        "a": 'x, "y": z', "b": [1, -2500.0, True, False, None, None], "c": {"d": {}}, "e": []}
    assert parse_gemma_value(f' {{ {Q}quoted key{Q} : 1 , "json key" : "s\\n" }} ') == {
        "quoted key": 1, "json key": "s\n"}
    assert parse_gemma_value(f"{Q}{Q}") == ""
    assert parse_gemma_value("0") == 0 and isinstance(parse_gemma_value("1.0"), float)
    assert parse_gemma_value_prefix("[1]tail", 0) == ([1], 3)


@pytest.mark.parametrize("text", [
    "", "{", "{a}", "{a:1,}", "{a:1 b:2}", "[1,]", f"{Q}open", "01x", "{:1}", "[1] 2", "nul", '"bad',
    "[" * 100 + "]" * 100,
])
def test_parse_errors(text):
    with pytest.raises(GemmaSyntaxError):
        parse_gemma_value(text)


VALUES = [
    {"city": "Paris, \"FR\" <b>: {x}", "n": 3, "f": -0.25, "ok": True, "no": False, "nil": None,
     "list": [1, "a", [], {}], "obj": {"Zed": 1, "alpha": {"deep": ["x"]}}, "key with space": 1, "ü": "ü"},
    [],
    "plain",
]


@pytest.mark.parametrize("value", VALUES)
def test_render_parses_back(value):
    assert parse_gemma_value(render_gemma_value(value)) == value
    assert parse_gemma_value(render_gemma_value(value, sort_keys=True)) == value


def test_render_matches_the_template_style():
    # Bare keys, <|"|> strings, no spaces; sorted like Jinja's dictsort (case-insensitive).
    assert render_gemma_value({"b": 1, "A": "x", "c": [True, None]}, sort_keys=True) == (
        f"{{A:{Q}x{Q},b:1,c:[true,null]}}")
    assert render_gemma_pairs({"b": 1, "a": 2}) == "a:2,b:1"
    assert render_key("city") == "city" and render_key("a b") == f"{Q}a b{Q}" and render_key("x:y") == f"{Q}x:y{Q}"


def _matcher(rules: dict[str, str], entry: str) -> GbnfMatcher:
    text = format_rules({**rules, "root": entry})
    assert grammar_parses(text), text
    return GbnfMatcher(text)


@pytest.mark.parametrize("forbidden", [QUOTE, "aab", "abab", "x"])
def test_exclusion_automaton_is_exact(forbidden):
    import itertools

    rules = exclusion_rules("ex", forbidden)
    m = _matcher(rules, "ex-0")
    alphabet = sorted(set(forbidden) | {"z"})
    for n in range(0, 6):
        for chars in itertools.product(alphabet, repeat=n):
            s = "".join(chars)
            assert m.accepts(s) == (forbidden not in s), s


def test_generic_value_grammar():
    m = _matcher(generic_rules("gv-"), "gv-value")
    for ok in [f"{{a:{Q}x{Q},b:[1,2.5,-3e2,true,null],c:{{}}}}", "[]", f"{Q}<|\"|{Q}", "0", "-12.5"]:
        assert m.accepts(ok), ok
    for bad in [f"{{a:{Q}x{Q}{Q}}}", "{a:1,}", "[01]", '{"a":1}', "{a :1}", "1.", f"{Q}a"]:
        assert not m.accepts(bad), bad


def test_schema_grammar_types_enums_and_refs():
    g = GemmaGrammar()
    entry = g.args_rule({
        "type": "object",
        "properties": {
            "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
            "z": {"type": "null"}, "e": {"enum": ["red", 2, None]}, "k": {"const": {"q": "v"}},
            "t": {"type": ["string", "integer"]}, "p": {"prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "r": {"$ref": "#/$defs/tree"}, "m": {"allOf": [{"properties": {"x": {"type": "integer"}},
                                                              "required": ["x"]}]},
            "o": {"type": "object"}, "a": {},
        },
        "$defs": {"tree": {"type": "object", "properties": {"kids": {"type": "array",
                                                                   "items": {"$ref": "#/$defs/tree"}}}}},
    }, "t0-")
    m = _matcher(g.rules, entry)
    ok = {"s": "x", "i": -3, "n": 1.5, "b": False, "z": None, "e": "red", "k": {"q": "v"}, "t": 7,
          "p": ["a", 1], "r": {"kids": [{"kids": []}, {}]}, "m": {"x": 1}, "o": {"any": [1]}, "a": [None]}
    assert m.accepts(render_gemma_value(ok, sort_keys=True))
    assert m.accepts("{}")  # nothing is required
    for key, bad in [("i", 1.5), ("s", 3), ("e", "blue"), ("e", 3), ("k", {"q": "w"}), ("t", True),
                     ("p", [1, "a"]), ("r", {"kids": [1]}), ("m", {}), ("z", 0), ("b", "true")]:
        assert not m.accepts(render_gemma_value({key: bad}, sort_keys=True)), (key, bad)


def test_schema_grammar_rejects_unsupported_schemas():
    with pytest.raises(SchemaError, match="'if'"):
        GemmaGrammar().args_rule({"type": "object", "if": {}}, "t-")
    with pytest.raises(SchemaError, match="unresolvable"):
        GemmaGrammar().args_rule({"$ref": "#/nope"}, "t-")


def test_schema_grammar_without_properties_is_any_object():
    g = GemmaGrammar()
    entry = g.args_rule({}, "t-")
    m = _matcher(g.rules, entry)
    assert m.accepts("{a:1}") and not m.accepts("[1]") and not m.accepts(gbnf_literal("x"))
