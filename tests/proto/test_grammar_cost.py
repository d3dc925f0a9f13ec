"""THREAT_MODEL F-11 (ADR 0032): the estimate of a grammar's parse stacks, and the one
limit on it for a client's grammar and for grammars converted from schemas."""

from __future__ import annotations

import pytest

from inferd.engine.chat.schema import SchemaError, response_format_grammar
from inferd.engine.request import ResponseFormat
from inferd.proto import limits
from inferd.proto.errors import InvalidRequest
from inferd.proto.grammar_cost import stack_bound


def optionals(k: int) -> str:
    return "root ::= " + " ".join(['"zq"?'] * k) + ' "\\x01"\n'


def test_a_run_of_optionals_counts_one_stack_each():
    assert stack_bound(optionals(800)) == 801
    assert stack_bound('root ::= "a"* [b-c]* "d"{0,3} "e"\n') == 4
    assert stack_bound('root ::= "a"* [b-c]+ "d"{0,3} "e"\n') == 2  # + must match once
    assert stack_bound('root ::= "a" "b" "c"\n') == 1


def test_alternatives_add_up_and_nested_rules_multiply():
    assert stack_bound('root ::= "a" | "b" | "c"\n') == 3
    # An optional rule used K times is K stacks even with one `?` in the text.
    assert stack_bound("root ::= " + "e " * 300 + '"x"\ne ::= "zq"?\n') == 301
    # Nesting: 30 uses of a rule that itself is 30 optionals in a row.
    nested = "root ::= " + "e " * 30 + '"x"\ne ::= ' + '"zq"? ' * 30 + "\n"
    assert stack_bound(nested) == 901
    # Empty alternatives and empty strings make an item optional too.
    assert stack_bound('root ::= e e e "x"\ne ::= "a" | ""\n') == 7
    # Emptiness found through a cycle of rules (b can be empty only through a).
    assert stack_bound('root ::= b b b "x"\nb ::= a\na ::= b "y" | d\nd ::= ""\n') >= 4


def test_deep_nesting_that_does_not_multiply_stays_small():
    # The converter's number rule: 15 optional digits nested, one stack deep.
    digits = "[0-9] " + "([0-9] " * 15 + ")?" * 15
    assert stack_bound(f"root ::= {digits}\n") <= 2
    assert stack_bound('root ::= "[" (item ("," item)*)? "]"\nitem ::= "{" item? "}"\n') <= 3


def test_one_limit_for_client_and_converted_grammars():
    limits.check_grammar(optionals(limits.MAX_GRAMMAR_STACKS - 1))
    with pytest.raises(InvalidRequest, match=r"about 1101 parse stacks.*MAX_GRAMMAR_STACKS"):
        limits.check_grammar(optionals(1100))
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^" + "a?" * 1100 + "$"}}}
    with pytest.raises(SchemaError, match="MAX_GRAMMAR_STACKS"):
        response_format_grammar(ResponseFormat(type="json_schema", schema=schema))


def test_legitimate_schemas_stay_far_below_the_limit():
    nested = {"type": "object", "properties": {
        f"p{i}": {"type": "object", "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "object", "properties": {
                "x": {"type": "integer"}, "y": {"enum": ["a", "b", "c"]}}}}}} for i in range(30)}}
    grammar = response_format_grammar(ResponseFormat(type="json_schema", schema=nested))
    assert len(grammar) > 15_000 and stack_bound(grammar) < 64
    countries = {"type": "object", "properties": {"c": {"enum": [f"country {i}" for i in range(250)]}}}
    assert stack_bound(response_format_grammar(ResponseFormat(type="json_schema", schema=countries))) < 300


def test_text_that_is_not_gbnf_is_left_to_libllama():
    limits.check_grammar("x" * 100)  # libllama's parser refuses it with its own message
    limits.check_grammar("root ::= (\n")


def test_nesting_too_deep_to_measure_is_refused_not_a_crash():
    deep = "root ::= " + "(" * 5000 + '"a"' + ")" * 5000 + "\n"
    with pytest.raises(InvalidRequest, match="too deeply"):
        limits.check_grammar(deep)
    chain = "".join(f"r{i} ::= r{i + 1}\n" for i in range(3000)) + 'r3000 ::= "a"\n'
    with pytest.raises(InvalidRequest, match="too deeply"):
        limits.check_grammar("root ::= r0\n" + chain)
