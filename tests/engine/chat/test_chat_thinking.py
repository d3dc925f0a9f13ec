"""ThinkingSplitter, its token accounting, detection helpers, and OutputParser."""

from __future__ import annotations

import pytest

from chat_testlib import counter_ids, events_for_all_splits, normalize, run
from inferd.engine.chat.thinking import (
    GEMMA4_CHANNEL,
    THINK_TAGS,
    OutputParser,
    ThinkingSplitter,
    detect_thinking,
    prompt_opens_thinking,
)
from inferd.engine.chat.toolcalls import GEMMA4, HERMES, LLAMA3, ToolCallMalformed
from inferd.engine.events import TextDelta, ThinkingDelta, ToolCall


def splitter(markers=THINK_TAGS, **kw):
    return lambda: ThinkingSplitter(*markers, **kw)


@pytest.mark.parametrize("markers", [THINK_TAGS, GEMMA4_CHANNEL], ids=["think", "gemma4"])
def test_thinking_then_answer_for_every_split(markers):
    open_, close = markers
    text = f"{open_}\nStep 1: <b>x</b> < y.\nStep 2.\n{close}\n\nThe answer is 4."
    events = events_for_all_splits(splitter(markers), text)
    assert events == [ThinkingDelta("Step 1: <b>x</b> < y.\nStep 2."), TextDelta("The answer is 4.")]


def test_markers_never_leak_even_when_split():
    text = "Hi <think>a</think> b <think>c</think>d<thi"
    for pieces in ([text], list(text)):
        events = normalize(run(splitter(), pieces))
        for ev in events:
            assert "<think>" not in ev.text and "</think>" not in ev.text
    assert events_for_all_splits(splitter(), text) == [
        TextDelta("Hi"), ThinkingDelta("a"), TextDelta("b"), ThinkingDelta("c"), TextDelta("d<thi")]


def test_starts_inside():
    text = "reasoning here\n</think>\n\nanswer"
    assert events_for_all_splits(splitter(starts_inside=True), text) == [
        ThinkingDelta("reasoning here"), TextDelta("answer")]
    # The same text without starts_inside: the closer is not a marker then (it is text).
    assert events_for_all_splits(splitter(), "a</think>b") == [TextDelta("a</think>b")]


def test_unclosed_thinking_ends_as_thinking_and_partial_marker_is_content():
    assert events_for_all_splits(splitter(), "<think>still going</thi") == [ThinkingDelta("still going</thi")]


def test_streaming_is_prompt_and_holds_only_what_it_must():
    s = ThinkingSplitter()
    assert s.push("<thi") == []
    assert s.push("nk>\nLet me") == [ThinkingDelta("Let me")]
    assert s.in_thinking
    assert s.push(" think </th") == [ThinkingDelta(" think")]  # trailing space waits for what follows
    assert s.push("eory") == [ThinkingDelta(" </theory")]
    assert s.push("</think>") == []
    assert not s.in_thinking
    assert s.push("\n\nDone") == [TextDelta("Done")]
    assert s.finish() == []


def test_trim_false_keeps_all_whitespace():
    text = "<think>\n a \n</think>\n\nb "
    assert events_for_all_splits(splitter(trim=False), text) == [ThinkingDelta("\n a \n"), TextDelta("\n\nb ")]


def test_token_accounting():
    s = ThinkingSplitter()
    flags = []
    for piece in ["Hi", " <think>", "\nplan", " more", "</think>", "\n\nAnswer", "."]:
        s.push(piece)
        flags.append(s.last_was_thinking)
    assert flags == [False, True, True, True, True, False, False]
    assert s.thinking_pieces == 4
    assert s.thinking_chars == len("plan more")
    r1 = ThinkingSplitter(starts_inside=True)
    assert r1.in_thinking and r1.last_was_thinking
    r1.push("x")
    assert r1.last_was_thinking
    r1.push("</think>y")
    assert r1.last_was_thinking and not r1.in_thinking  # that piece closed the block
    r1.push("z")
    assert not r1.last_was_thinking


def test_push_after_finish_and_bad_markers():
    s = ThinkingSplitter()
    assert s.finish() == [] and s.finish() == []
    with pytest.raises(RuntimeError):
        s.push("x")
    with pytest.raises(ValueError):
        ThinkingSplitter("", "</think>")


def test_detect_thinking_and_prompt_opening():
    assert detect_thinking(None) is None
    assert detect_thinking("{{ messages }}") is None
    assert detect_thinking("{% if enable_thinking %}x{% endif %}") == THINK_TAGS
    assert detect_thinking("'<think>\\n'") == THINK_TAGS
    assert detect_thinking("<|channel>thought ... enable_thinking") == GEMMA4_CHANNEL
    assert prompt_opens_thinking("<|Assistant|><think>\n", THINK_TAGS)
    assert not prompt_opens_thinking("<think>\n\n</think>\n\n", THINK_TAGS)
    assert not prompt_opens_thinking("user said <think> earlier. assistant:", THINK_TAGS)


# ---- OutputParser --------------------------------------------------------------------

def output_parser(markers=THINK_TAGS, fmt=HERMES, **kw):
    return lambda: OutputParser(thinking=ThinkingSplitter(*markers, **kw) if markers else None,
                                tools=fmt.parser(id_factory=counter_ids()) if fmt else None)


def test_calls_inside_thinking_are_not_calls():
    text = ('<think>maybe <tool_call>{"name": "x"}</tool_call>?</think>\n'
            'Calling.<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    events = events_for_all_splits(output_parser(), text)
    assert events == [ThinkingDelta('maybe <tool_call>{"name": "x"}</tool_call>?'), TextDelta("Calling."),
                      ToolCall("id0", "get_time", {})]


def test_gemma4_thinking_then_call():
    text = ("<|channel>thought\nThe user wants weather.<channel|>"
            '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>')
    p_events = events_for_all_splits(output_parser(GEMMA4_CHANNEL, GEMMA4), text)
    assert p_events == [ThinkingDelta("The user wants weather."), ToolCall("id0", "get_weather", {"city": "Paris"})]


def test_llama3_bare_call_after_thinking_counts_as_reply_start():
    text = '<think>use the tool</think>\n\n{"name": "get_time", "parameters": {}}'
    assert events_for_all_splits(output_parser(THINK_TAGS, LLAMA3), text) == [
        ThinkingDelta("use the tool"), ToolCall("id0", "get_time", {})]


def test_output_parser_state_and_optional_stages():
    p = OutputParser(thinking=ThinkingSplitter(), tools=HERMES.parser())
    assert p.push("<think>a") == [ThinkingDelta("a")]
    assert p.in_thinking and p.last_was_thinking and not p.saw_tool_call
    p.push('</think><tool_call>{"name": "f"}</tool_call>')
    assert p.saw_tool_call and not p.in_thinking
    assert p.finish() == []
    plain = OutputParser()
    assert plain.push("<think>x</think>") == [TextDelta("<think>x</think>")]
    assert plain.finish() == [] and not plain.saw_tool_call and not plain.last_was_thinking
    only_tools = OutputParser(tools=HERMES.parser())
    assert only_tools.push("<think>") == [TextDelta("<think>")]


def test_output_parser_malformed_call_propagates():
    p = OutputParser(thinking=ThinkingSplitter(), tools=HERMES.parser())
    p.push("<think>x</think><tool_call>{bad")
    with pytest.raises(ToolCallMalformed):
        p.finish()


def test_a_reply_without_reasoning_keeps_its_own_whitespace():
    """Only the edges of reasoning (and the text right after it) are trimmed: a plain
    reply, a continuation in particular, reaches the client byte for byte."""
    s = ThinkingSplitter()
    out = s.push(" leading and trailing \n") + s.finish()
    assert all(type(e) is TextDelta for e in out)
    assert "".join(e.text for e in out) == " leading and trailing \n"
    s = ThinkingSplitter()
    out = s.push("<think> why </think>\n\nAnswer. ") + s.finish()
    assert out[0] == ThinkingDelta("why")
    assert "".join(e.text for e in out[1:] if type(e) is TextDelta) == "Answer. "
