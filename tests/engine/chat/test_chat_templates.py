"""Real chat templates (llama.cpp's models/templates fixtures, see templates/README.md):
`detect()` / `detect_thinking()` must pick the right format, and what each template
writes for an assistant tool call must parse back into the same calls."""

from __future__ import annotations

import pytest

from chat_testlib import (
    GbnfMatcher,
    calls,
    counter_ids,
    events_for_all_splits,
    render_template,
    template_source,
    visible_text,
)
from inferd.engine.chat.thinking import (
    GEMMA4_CHANNEL,
    THINK_TAGS,
    OutputParser,
    ThinkingSplitter,
    detect_thinking,
    prompt_opens_thinking,
)
from inferd.engine.chat.toolcalls import FORMATS, detect, tool_call_grammar
from inferd.engine.events import ToolCall
from inferd.engine.request import ToolSpec

WEATHER = ToolSpec("get_weather", "Current weather", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
})
TOOLS = [WEATHER.as_openai()]
ARGS = {"city": "Paris, \"FR\" <b>: 1", "days": 2, "opts": {"metric": True, "tags": ["a", "b c"]}, "ratio": 0.5}
USER = [{"role": "user", "content": "What's the weather in Paris?"}]

# file, format, thinking markers, end-of-turn text after the assistant's call, template kwargs,
# whether the template renders several calls in one turn
CASES = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes", None, "<|im_end|>\n", {}, True),
    ("Qwen-Qwen3-0.6B.jinja", "hermes", THINK_TAGS, "<|im_end|>\n", {}, True),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes", None, "<|im_end|>\n", {}, True),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", None, "<|eot_id|>", {}, False),
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3", None, "<|eot_id|>", {}, False),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral", None, "<EOS>", {}, True),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral-args", None, "<EOS>", {}, True),
    ("unsloth-mistral-Devstral-Small-2507.jinja", "mistral-args", None, "<EOS>", {}, True),
    ("google-gemma-4-31B-it.jinja", "gemma4", GEMMA4_CHANNEL, "<turn|>\n", {"enable_thinking": True}, True),
]
# Templates whose tool syntax we do not parse, or that have none: the builtin format.
OTHERS = [
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", THINK_TAGS),
    ("google-gemma-2-2b-it.jinja", None),
]


def assistant(n: int) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"abcDEF12{i}", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
        for i in range(n)]}


def assistant_output(filename: str, n: int, eot: str, kwargs: dict) -> str:
    """What the template writes for the assistant's turn after the generation prompt."""
    prompt = render_template(filename, USER, tools=TOOLS, **kwargs)
    full = render_template(filename, USER + [assistant(n)], tools=TOOLS, add_generation_prompt=False, **kwargs)
    assert full.startswith(prompt), "the generation prompt must prefix the rendered turn"
    out = full[len(prompt):]
    assert out.endswith(eot)
    return out[:-len(eot)]


@pytest.mark.parametrize("filename, fmt, markers, eot, kwargs, multi", CASES, ids=[c[0] for c in CASES])
def test_detect_picks_the_template_format(filename, fmt, markers, eot, kwargs, multi):
    src = template_source(filename)
    assert detect(src).name == fmt
    assert detect_thinking(src) == markers


@pytest.mark.parametrize("filename, markers", OTHERS, ids=[c[0] for c in OTHERS])
def test_templates_without_a_known_tool_syntax_get_builtin(filename, markers):
    src = template_source(filename)
    assert detect(src).name == "builtin"
    assert detect_thinking(src) == markers


@pytest.mark.parametrize("filename, fmt, markers, eot, kwargs, multi", CASES, ids=[c[0] for c in CASES])
def test_template_rendered_calls_parse_back(filename, fmt, markers, eot, kwargs, multi):
    for n in (1, 2) if multi else (1,):
        out = assistant_output(filename, n, eot, kwargs)
        assert FORMATS[fmt].call_start in out

        def make():
            thinking = ThinkingSplitter(*markers) if markers else None
            return OutputParser(thinking=thinking, tools=FORMATS[fmt].parser(id_factory=counter_ids()))

        events = events_for_all_splits(make, out)
        assert calls(events) == [("get_weather", ARGS)] * n
        assert visible_text(events) == ""  # markers and layout never leak
        assert all(isinstance(e, ToolCall) for e in events)


@pytest.mark.parametrize("filename, fmt, markers, eot, kwargs, multi", CASES, ids=[c[0] for c in CASES])
def test_template_rendered_call_fits_the_tool_grammar(filename, fmt, markers, eot, kwargs, multi):
    # With arguments the schema allows, what the model was trained to write is what the
    # grammar admits (Mistral Nemo's template adds an "id" the grammar leaves out).
    args = {"city": "Paris", "days": 2}
    one = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": args}}]}
    prompt = render_template(filename, USER, tools=TOOLS, **kwargs)
    full = render_template(filename, USER + [one], tools=TOOLS, add_generation_prompt=False, **kwargs)
    out = full[len(prompt):-len(eot)]
    if markers and out.startswith(markers[0]):  # Qwen 3 renders an empty think block first
        out = out[out.index(markers[1]) + len(markers[1]):].lstrip()
    if fmt == "mistral":
        out = out.replace(', "id": "abcDEF123"', "")
    assert GbnfMatcher(tool_call_grammar(FORMATS[fmt], [WEATHER])).accepts(out), out


def test_generation_prompts_and_thinking_start():
    r1 = render_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", USER)
    assert prompt_opens_thinking(r1, THINK_TAGS)  # R1 opens <think> in the prompt
    qwen_off = render_template("Qwen-Qwen3-0.6B.jinja", USER, enable_thinking=False)
    qwen_on = render_template("Qwen-Qwen3-0.6B.jinja", USER, enable_thinking=True)
    assert not prompt_opens_thinking(qwen_off, THINK_TAGS)
    assert not prompt_opens_thinking(qwen_on, THINK_TAGS)
    gemma_off = render_template("google-gemma-4-31B-it.jinja", USER)
    gemma_on = render_template("google-gemma-4-31B-it.jinja", USER, enable_thinking=True)
    assert gemma_off.endswith("<|channel>thought\n<channel|>")
    assert not prompt_opens_thinking(gemma_off, GEMMA4_CHANNEL)
    assert not prompt_opens_thinking(gemma_on, GEMMA4_CHANNEL)


def test_r1_output_that_starts_inside_thinking():
    prompt = render_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", USER)
    markers = detect_thinking(template_source("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"))
    output = "The user wants weather.\nI cannot check.\n</think>\n\nI can't look that up."

    def make():
        return OutputParser(thinking=ThinkingSplitter(*markers, starts_inside=prompt_opens_thinking(prompt, markers)),
                            tools=FORMATS["builtin"].parser())

    events = events_for_all_splits(make, output)
    assert [(type(e).__name__, e.text) for e in events] == [
        ("ThinkingDelta", "The user wants weather.\nI cannot check."),
        ("TextDelta", "I can't look that up."),
    ]


def test_qwen3_thinking_then_call_round_trip():
    # The assistant turn as Qwen 3 renders it with reasoning, fed back as model output.
    turn = {"role": "assistant", "content": "<think>\nNeed the weather tool.\n</think>\n\n", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}
    prompt = render_template("Qwen-Qwen3-0.6B.jinja", USER, tools=TOOLS)
    full = render_template("Qwen-Qwen3-0.6B.jinja", USER + [turn], tools=TOOLS, add_generation_prompt=False)
    out = full[len(prompt):-len("<|im_end|>\n")]
    events = events_for_all_splits(
        lambda: OutputParser(thinking=ThinkingSplitter(*THINK_TAGS),
                             tools=FORMATS["hermes"].parser(id_factory=counter_ids())), out)
    assert [type(e).__name__ for e in events] == ["ThinkingDelta", "ToolCall"]
    assert events[0].text == "Need the weather tool."
    assert (events[1].name, events[1].input) == ("get_weather", ARGS)
