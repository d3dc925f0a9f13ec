"""Tool-call parsing per format (every split point), malformed calls, ids, rendering,
tool declarations, and the one-call grammars."""

from __future__ import annotations

import json
import re

import pytest

from chat_testlib import (
    GbnfMatcher,
    calls,
    counter_ids,
    events_for_all_splits,
    grammar_parses,
    normalize,
    run,
    split_variants,
)
from inferd.engine.chat import toolcalls as tc
from inferd.engine.chat.schema import SchemaError
from inferd.engine.chat.toolcalls import (
    BUILTIN,
    FORMATS,
    GEMMA4,
    HERMES,
    LLAMA3,
    MISTRAL,
    MISTRAL_ARGS,
    ToolCallMalformed,
    detect,
    get_format,
    random_call_id,
    random_mistral_id,
    tool_call_grammar,
)
from inferd.engine.events import TextDelta, ToolCall
from inferd.engine.request import ToolCallSpec, ToolSpec

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"enum": ["c", "f"]},
        },
        "required": ["city"],
    },
)
CLOCK = ToolSpec(name="get_time", description="The time", parameters={"type": "object"})
TOOLS = [WEATHER, CLOCK]

ARGS = {"city": "Paris, \"FR\" <b>", "days": 2, "nested": {"ok": True, "tags": ["a", "b c"], "none": None},
        "ratio": 0.5}


def parser_for(fmt, **kw):
    return lambda: fmt.parser(id_factory=counter_ids(), **kw)


def parse(fmt, text, **kw):
    return events_for_all_splits(parser_for(fmt, **kw), text)


def expect_malformed(fmt, text, match=None, **kw):
    """Every split of `text` must raise ToolCallMalformed (at push or at finish)."""
    for pieces in split_variants(text, random_splits=5):
        with pytest.raises(ToolCallMalformed, match=match):
            run(parser_for(fmt, **kw), pieces)


def no_marker_text(events, markers):
    for ev in events:
        if isinstance(ev, TextDelta):
            for m in markers:
                assert m not in ev.text, f"marker {m!r} leaked into {ev.text!r}"


# ---- Hermes / builtin ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", [HERMES, BUILTIN], ids=lambda f: f.name)
def test_hermes_text_then_two_calls(fmt):
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
            + json.dumps(ARGS) + '}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n')
    events = parse(fmt, text)
    assert events == [TextDelta("Let me check."),
                      ToolCall("id0", "get_weather", ARGS),
                      ToolCall("id1", "get_time", {})]
    no_marker_text(events, ["<tool_call>", "</tool_call>"])


def test_hermes_plain_text_with_angle_brackets_is_untouched():
    text = "a < b, <tool>, <tool_ca and </tool_call> are text; x<<tool_cal"
    assert parse(HERMES, text) == [TextDelta(text)]


def test_hermes_text_after_a_call_and_argument_variants():
    text = ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
            '<tool_call>{"name": "g", "parameters": {"b": [1]}}</tool_call>'
            '<tool_call>{"name": " h ", "arguments": null}</tool_call>'
            '<tool_call>{"type": "function", "function": {"name": "k", "arguments": {"c": "d"}}}</tool_call>'
            "\n\nDone: it is sunny.")
    events = parse(HERMES, text)
    assert calls(events) == [("f", {"a": 1}), ("g", {"b": [1]}), ("h", {}), ("k", {"c": "d"})]
    assert events[-1] == TextDelta("Done: it is sunny.")


def test_hermes_raw_newline_in_a_string_is_accepted():
    # The JSON grammar's string rule admits raw control characters; the parser must too.
    events = parse(HERMES, '<tool_call>{"name": "note", "arguments": {"text": "line1\nline2"}}</tool_call>')
    assert calls(events) == [("note", {"text": "line1\nline2"})]


def test_text_streams_as_soon_as_it_cannot_be_a_marker():
    p = HERMES.parser()
    assert p.push("Hello wor") == [TextDelta("Hello wor")]
    assert p.push("ld <tool") == [TextDelta("ld")]  # " <tool" might open a call
    assert p.push("box>") == [TextDelta(" <toolbox>")]
    assert p.push(" <") == []
    assert p.push("tool_call>{\"name\": \"f\"") == []
    assert p.push("}</tool_call") == []
    out = p.push(">")
    assert [(e.name, e.input) for e in out] == [("f", {})]
    assert p.saw_tool_call and p.calls == 1
    assert p.finish() == []


def test_whitespace_only_reply_is_kept_but_whitespace_after_calls_is_dropped():
    assert parse(HERMES, "  \n") == [TextDelta("  \n")]
    assert parse(HERMES, '<tool_call>{"name": "f"}</tool_call>\n\n') == [ToolCall("id0", "f", {})]


@pytest.mark.parametrize("text, match", [
    ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', "no name"),
    ('<tool_call>{"name": "", "arguments": {}}</tool_call>', "no name"),
    ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>', "not valid JSON"),
    ('<tool_call>["f"]</tool_call>', "must be a JSON object"),
    ('ok <tool_call>{"name": "f", "arguments": {}}', "ended inside"),
])
def test_hermes_malformed(text, match):
    expect_malformed(HERMES, text, match)


def test_unknown_tool_name_is_malformed_when_names_are_known():
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    expect_malformed(HERMES, text, "not a declared tool", known_names={"get_weather"})
    assert calls(parse(HERMES, text, known_names={"rm_rf"})) == [("rm_rf", {})]


# ---- ids -----------------------------------------------------------------------------

def test_default_ids_are_unique_and_shaped():
    p = HERMES.parser()
    out = p.push('<tool_call>{"name": "f"}</tool_call>' * 50) + p.finish()
    ids = [e.id for e in out]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"call_[0-9a-f]{8}", i) for i in ids)
    assert re.fullmatch(r"call_[0-9a-f]{8}", random_call_id())


def test_mistral_ids_are_nine_alphanumerics():
    p = MISTRAL.parser()
    out = p.push('[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]') + p.finish()
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", e.id) for e in out)
    assert out[0].id != out[1].id
    assert re.fullmatch(r"[A-Za-z0-9]{9}", random_mistral_id())


def test_injected_id_factory_that_repeats_still_gives_unique_ids():
    p = HERMES.parser(id_factory=lambda: "same")
    out = p.push('<tool_call>{"name": "f"}</tool_call>' * 3) + p.finish()
    assert [e.id for e in out] == ["same", "same_2", "same_3"]


def test_push_after_finish_is_an_error():
    p = HERMES.parser()
    p.finish()
    with pytest.raises(RuntimeError):
        p.push("x")


# ---- Llama 3 -------------------------------------------------------------------------

def test_llama3_bare_json_call():
    text = '\n\n{"name": "get_weather", "parameters": ' + json.dumps(ARGS) + "}"
    assert parse(LLAMA3, text) == [ToolCall("id0", "get_weather", ARGS)]


def test_llama3_python_tag_and_text_before_it():
    text = 'Checking.<|python_tag|>{"name": "get_time", "arguments": {}}'
    events = parse(LLAMA3, text)
    assert events == [TextDelta("Checking."), ToolCall("id0", "get_time", {})]
    no_marker_text(events, ["<|python_tag|>"])


def test_llama3_several_calls_and_shapes():
    text = ('{"name": "a", "parameters": {}}; {"type": "function", "name": "b", "parameters": {"x": 1}}\n'
            '{"type": "function", "function": {"name": "c", "parameters": {"y": "z"}}}')
    assert calls(parse(LLAMA3, text)) == [("a", {}), ("b", {"x": 1}), ("c", {"y": "z"})]


@pytest.mark.parametrize("text", [
    '{"answer": 42, "name": "x"}',
    '{"name": "Bob", "age": 3}',
    "The set is {1, 2} and {\"name\": 1} is JSON.",
    "[1, 2, 3]",
    "{",
])
def test_llama3_json_that_is_not_a_call_is_text(text):
    assert parse(LLAMA3, text) == [TextDelta(text)]


def test_llama3_non_call_json_streams_before_it_completes():
    p = LLAMA3.parser()
    assert p.push('{"answ') == [TextDelta('{"answ')]
    assert p.push('er": 1}') == [TextDelta('er": 1}')]


@pytest.mark.parametrize("text, match", [
    ('{"name": "f", "parameters": {"a": ', "ended inside"),
    ('{"name": "f", "parameters": {"a": tru}}', "not valid JSON"),
    ('<|python_tag|>{"name": "f", "parameters": {}', "unterminated"),
    ("<|python_tag|>print(1)", "not a JSON object"),
    ('<|python_tag|>{"parameters": {}}', "no name"),
])
def test_llama3_malformed(text, match):
    expect_malformed(LLAMA3, text, match)


# ---- Mistral -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [MISTRAL, MISTRAL_ARGS], ids=lambda f: f.name)
def test_mistral_both_syntaxes(fmt):
    text = ('Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": ' + json.dumps(ARGS)
            + ', "id": "abcDEF123"}, {"name": "get_time", "arguments": "{}"}]'
            '[TOOL_CALLS]get_weather[CALL_ID]abcDEF124[ARGS]{"city": "Rome"}'
            "[TOOL_CALLS]get_time[ARGS]{}")
    events = parse(fmt, text)
    assert events[0] == TextDelta("Sure.")
    assert calls(events) == [("get_weather", ARGS), ("get_time", {}), ("get_weather", {"city": "Rome"}),
                             ("get_time", {})]
    no_marker_text(events, ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"])


def test_mistral_text_with_brackets_is_text():
    text = "Use [TOOL] or [TOOL_CALL] or a[b]."
    assert parse(MISTRAL, text) == [TextDelta(text)]


@pytest.mark.parametrize("text, match", [
    ("[TOOL_CALLS]", "ended right after"),
    ("[TOOL_CALLS]   ", "ended right after"),
    ('[TOOL_CALLS][{"name": "f", "arguments": {}}', "unterminated"),
    ('[TOOL_CALLS]get weather[ARGS]{}', "bad tool name"),
    ('[TOOL_CALLS]get_weather [ARGS]{}', "bad tool name"),
    ("[TOOL_CALLS][ARGS]{}", "not valid JSON"),
    ("[TOOL_CALLS]f[XYZ]{}", "not followed by"),
    ('[TOOL_CALLS]f[ARGS]{"a": }', "not valid JSON"),
    ("[TOOL_CALLS]f[ARGS]", "unterminated"),
    ("[TOOL_CALLS]f[ARGS]nope", "not a JSON object"),
    ('[TOOL_CALLS]f[ARGS][1]', "must be a JSON object"),
    ("[TOOL_CALLS]" + "x" * 300, "not followed by"),
])
def test_mistral_malformed(text, match):
    expect_malformed(MISTRAL, text, match)


# ---- Gemma 4 -------------------------------------------------------------------------

def test_gemma4_call_with_text_around():
    text = ('Looking it up. <|tool_call>call:get_weather{city:<|"|>Paris, "FR" <b><|"|>,days:2,'
            'nested:{none:null,ok:true,tags:[<|"|>a<|"|>,<|"|>b c<|"|>]},ratio:0.5}<tool_call|>'
            '<|tool_call>call:get_time{}<tool_call|> Then done.')
    events = parse(GEMMA4, text)
    assert events == [TextDelta("Looking it up."), ToolCall("id0", "get_weather", ARGS),
                      ToolCall("id1", "get_time", {}), TextDelta("Then done.")]
    no_marker_text(events, ["<|tool_call>", "<tool_call|>", '<|"|>'])


@pytest.mark.parametrize("text, match", [
    ("<|tool_call>get_weather{}<tool_call|>", "must start with 'call:'"),
    ("<|tool_call>call:{a:1}<tool_call|>", "bad gemma4 tool name"),
    ("<|tool_call>call:f<tool_call|>", "no {arguments}"),
    ("<|tool_call>call:f{a:<|\"|>x}<tool_call|>", "not a gemma value"),
    ("<|tool_call>call:f{a:1,}<tool_call|>", "not a gemma value"),
    ("<|tool_call>call:f{a:1} extra<tool_call|>", "not a gemma value"),
    ("<|tool_call>call:f{a:1}", "no <tool_call|>"),
])
def test_gemma4_malformed(text, match):
    expect_malformed(GEMMA4, text, match)


# ---- registry and detection ----------------------------------------------------------

def test_registry_and_detect_fallbacks():
    assert set(FORMATS) == {"builtin", "hermes", "llama3", "mistral", "mistral-args", "gemma4"}
    assert get_format("gemma4") is GEMMA4
    with pytest.raises(ValueError, match="unknown tool-call format"):
        get_format("nope")
    assert detect(None) is BUILTIN
    assert detect("") is BUILTIN
    assert detect("{% for m in messages %}{{ m.content }}{% endfor %}") is BUILTIN


# ---- rendering and declarations ------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_render_call_parses_back(fmt):
    spec = ToolCallSpec(id="abcDEF123", name="get_weather", arguments=ARGS)
    as_text = ToolCallSpec(id="abcDEF124", name="get_time", arguments=json.dumps({"tz": "UTC"}))
    text = fmt.render_call(spec) + fmt.render_call(as_text)
    events = parse(fmt, text)
    assert calls(events) == [("get_weather", ARGS), ("get_time", {"tz": "UTC"})]
    assert not [e for e in events if isinstance(e, TextDelta)]


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_declare_tools_names_every_tool_and_the_call_syntax(fmt):
    text = fmt.declare_tools(TOOLS)
    for tool in TOOLS:
        assert tool.name in text
        assert tool.description in text
    # Gemma 4 is trained on bare declarations (its template adds no prose); the others
    # spell out the call syntax.
    syntax = {GEMMA4: "<|tool>declaration:", LLAMA3: '{"name": function name, "parameters": '}
    assert syntax.get(fmt, fmt.call_start) in text


def _json_docs(text):
    """Every JSON value that starts a line or follows a tag in `text`."""
    dec = json.JSONDecoder()
    docs, i = [], 0
    while i < len(text):
        if text[i] in "[{":
            try:
                value, end = dec.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            docs.append(value)
            i = end
        else:
            i += 1
    return docs


@pytest.mark.parametrize("fmt", [BUILTIN, HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS], ids=lambda f: f.name)
def test_json_declarations_carry_the_schemas(fmt):
    docs = _json_docs(fmt.declare_tools(TOOLS))
    flat = []
    for d in docs:
        flat += d if isinstance(d, list) else [d]
    declared = {}
    for d in flat:
        if isinstance(d, dict):
            fn = d.get("function", d)
            if "parameters" in fn and fn.get("name") in {"get_weather", "get_time"}:
                declared[fn["name"]] = fn["parameters"]
    assert declared == {"get_weather": WEATHER.parameters, "get_time": CLOCK.parameters}


def test_gemma4_declaration_is_gemma_syntax_that_parses_back():
    from inferd.engine.chat.gemma import parse_gemma_value

    text = GEMMA4.declare_tools(TOOLS)
    found = re.findall(r"<\|tool>declaration:([a-z_]+)(\{.*?\})<tool\|>", text)
    assert [name for name, _ in found] == ["get_weather", "get_time"]
    decl = parse_gemma_value(found[0][1])
    assert decl == {"description": WEATHER.description, "parameters": WEATHER.parameters}


def test_render_result_per_format():
    assert HERMES.render_result("get_time", "c1", "12:00") == "<tool_response>\n12:00\n</tool_response>"
    assert BUILTIN.render_result("get_time", "c1", "12:00") == (
        '<tool_response name="get_time" id="c1">\n12:00\n</tool_response>')
    assert json.loads(LLAMA3.render_result("get_weather", "c2", '{"temp": 21}')) == {
        "name": "get_weather", "tool_call_id": "c2", "output": {"temp": 21}}
    mistral = MISTRAL.render_result("get_time", "abcDEF123", "12:00")
    assert mistral.startswith("[TOOL_RESULTS]") and mistral.endswith("[/TOOL_RESULTS]")
    assert json.loads(mistral[len("[TOOL_RESULTS]"):-len("[/TOOL_RESULTS]")]) == {
        "content": "12:00", "call_id": "abcDEF123"}
    assert MISTRAL_ARGS.render_result("get_time", "abcDEF123", "12:00") == (
        "[TOOL_RESULTS]abcDEF123[TOOL_CONTENT]12:00[/TOOL_RESULTS]")
    assert GEMMA4.render_result("get_weather", "c3", '{"temp": 21, "sky": "clear"}') == (
        '<|tool_response>response:get_weather{sky:<|"|>clear<|"|>,temp:21}<tool_response|>')
    assert GEMMA4.render_result("get_time", "c4", "12:00") == (
        '<|tool_response>response:get_time{value:<|"|>12:00<|"|>}<tool_response|>')


# ---- grammars ------------------------------------------------------------------------

GOOD = {"city": "Paris", "days": 2}


def _good_call(fmt, name="get_weather", args=GOOD):
    if fmt is MISTRAL:  # render_call adds the id, which the grammar leaves out
        return "[TOOL_CALLS][" + json.dumps({"name": name, "arguments": args}) + "]"
    return fmt.render_call(ToolCallSpec(id="x", name=name, arguments=args))


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_grammar_parses_in_llama_cpp_and_admits_exactly_one_valid_call(fmt):
    grammar = tool_call_grammar(fmt, TOOLS)
    assert grammar.startswith("root ::= ")
    assert grammar_parses(grammar)
    m = GbnfMatcher(grammar)
    assert m.accepts(_good_call(fmt))
    assert m.accepts(_good_call(fmt, args={"city": "Oslo", "unit": "f"}))
    assert m.accepts(_good_call(fmt, name="get_time", args={"any": [1, {"x": None}]}))
    assert not m.accepts(_good_call(fmt, args={"days": 2}))  # required "city" missing
    assert not m.accepts(_good_call(fmt, args={"city": 5}))  # wrong type
    assert not m.accepts(_good_call(fmt, args={"city": "Oslo", "unit": "k"}))  # not in enum
    assert not m.accepts(_good_call(fmt, name="rm_rf", args={}))  # undeclared tool
    assert not m.accepts(_good_call(fmt) + _good_call(fmt))  # only one call
    assert not m.accepts("I will not call a tool.")


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_forced_tool_grammar_admits_only_that_tool(fmt):
    grammar = tool_call_grammar(fmt, TOOLS, forced_name="get_time")
    assert grammar_parses(grammar)
    m = GbnfMatcher(grammar)
    assert m.accepts(_good_call(fmt, name="get_time", args={}))
    assert not m.accepts(_good_call(fmt))


def test_grammar_accepts_what_the_parser_reads_back():
    # Whatever the grammar lets the model write must parse into the same call.
    for fmt in FORMATS.values():
        text = _good_call(fmt)
        assert GbnfMatcher(tool_call_grammar(fmt, TOOLS)).accepts(text)
        assert calls(normalize(run(parser_for(fmt), [text]))) == [("get_weather", GOOD)]


def test_grammar_rule_names_of_different_tools_do_not_collide():
    # Both tools define "$defs/Item"; each must keep its own definition.
    a = ToolSpec("a", parameters={"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}},
                                  "required": ["x"], "$defs": {"Item": {"type": "string"}}})
    b = ToolSpec("b", parameters={"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}},
                                  "required": ["x"], "$defs": {"Item": {"type": "integer"}}})
    for fmt in (HERMES, GEMMA4):
        grammar = tool_call_grammar(fmt, [a, b])
        assert grammar_parses(grammar)
        m = GbnfMatcher(grammar)
        render = lambda name, x: fmt.render_call(ToolCallSpec(id="i", name=name, arguments={"x": x}))  # noqa: E731
        assert m.accepts(render("a", "s")) and m.accepts(render("b", 3))
        assert not m.accepts(render("a", 3)) and not m.accepts(render("b", "s"))


def test_grammar_tool_name_with_special_characters_is_escaped():
    odd = ToolSpec('say"hi\\', parameters={"type": "object"})
    with pytest.raises(ValueError, match="cannot be written"):
        tool_call_grammar(HERMES, [odd])
    dotted = ToolSpec("ns.tool-v2", parameters={"type": "object"})
    for fmt in FORMATS.values():
        grammar = tool_call_grammar(fmt, [dotted])
        assert grammar_parses(grammar)
        assert GbnfMatcher(grammar).accepts(_good_call(fmt, name="ns.tool-v2", args={}))


def test_grammar_argument_errors():
    with pytest.raises(ValueError, match="at least one tool"):
        tool_call_grammar(HERMES, [])
    with pytest.raises(ValueError, match="unique"):
        tool_call_grammar(HERMES, [CLOCK, CLOCK])
    with pytest.raises(ValueError, match="not among"):
        tool_call_grammar(HERMES, TOOLS, forced_name="nope")
    for fmt in (HERMES, GEMMA4):
        with pytest.raises(SchemaError, match="must describe an object"):
            tool_call_grammar(fmt, [ToolSpec("s", parameters={"type": "string"})])
        with pytest.raises(SchemaError, match="'not'"):
            tool_call_grammar(fmt, [ToolSpec("n", parameters={"type": "object", "properties": {"a": {"not": {}}}})])


def test_gemma4_grammar_with_optional_keys_in_template_order():
    tool = ToolSpec("t", parameters={"type": "object", "properties": {
        "b": {"type": "integer"}, "A": {"type": "boolean"}, "c": {"type": "array", "items": {"type": "number"}},
        "d": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["c"]})
    m = GbnfMatcher(tool_call_grammar(GEMMA4, [tool]))
    ok = [{"c": []}, {"A": True, "c": [1.5, -2]}, {"A": False, "b": 3, "c": [0], "d": "x"}, {"c": [], "d": None}]
    for args in ok:
        assert m.accepts(GEMMA4.render_call(ToolCallSpec("i", "t", args))), args
    assert not m.accepts('<|tool_call>call:t{b:3}<tool_call|>')  # c is required
    assert not m.accepts('<|tool_call>call:t{c:[],b:3}<tool_call|>')  # b must come before c
    assert not m.accepts('<|tool_call>call:t{c:[],e:1}<tool_call|>')  # undeclared key


def test_package_exports_the_public_api():
    import inferd.engine.chat as chat

    for name in chat.__all__:
        assert getattr(chat, name) is not None, name
    assert chat.detect is detect and chat.FORMATS is FORMATS and chat.ToolCallParser is tc.ToolCallParser
    assert chat.ToolCallMalformed is ToolCallMalformed and issubclass(ToolCallMalformed, Exception)
    assert ToolCallMalformed("why").message == "why"


@pytest.mark.parametrize("body", ["", "\n", "  \n "])
def test_an_empty_call_region_is_no_call(body):
    # Issue 21: the model writing `<tool_call></tool_call>` was a 502 every time for
    # the same request; it names no tool, so the answer is the text around it.
    text = f"Let me check.<tool_call>{body}</tool_call>"
    events = normalize(parse(HERMES, text))
    assert calls(events) == [] and events == [TextDelta("Let me check.")]
    parser = HERMES.parser(id_factory=counter_ids())
    for piece in (text, ""):
        parser.push(piece)
    parser.finish()
    assert not parser.saw_tool_call


def test_mistrals_empty_call_list_is_no_call():
    events = normalize(parse(MISTRAL, "Checking.[TOOL_CALLS][]"))
    assert calls(events) == [] and events == [TextDelta("Checking.")]


def test_a_call_cut_by_the_token_limit_comes_out_as_text():
    # Issue 21: cut by max_tokens, an open call is unfinished, not malformed: what the
    # model wrote comes out as text and the turn finishes with "length".
    text = 'Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    parser = HERMES.parser(id_factory=counter_ids())
    events = parser.push(text) + parser.finish(cut=True)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text
    assert calls(events) == [] and not parser.saw_tool_call
    with pytest.raises(ToolCallMalformed):
        other = HERMES.parser(id_factory=counter_ids())
        other.push(text)
        other.finish()
