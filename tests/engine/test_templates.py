"""Prompt rendering: built-in family byte layouts and the GGUF (Jinja) template path."""

from __future__ import annotations

import pytest

from inferd.engine.llamacpp.templates import (
    ChatMLRenderer,
    GemmaRenderer,
    JinjaRenderer,
    Llama3Renderer,
    RenderError,
    builtin_for_architecture,
    resolve_renderer,
)

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hello \n"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Bye"},
]

# A ChatML template in the style HF repositories ship, written for this test.
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_gemma_folds_system_into_first_user_turn():
    assert GemmaRenderer().render(CHAT) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHello<end_of_turn>\n"
        "<start_of_turn>model\nHi.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_system():
    assert GemmaRenderer().render([{"role": "user", "content": "Hello"}]) == (
        "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_system_alone_keeps_its_text():
    out = GemmaRenderer().render([{"role": "system", "content": "Rules."}])
    assert out == "<bos><start_of_turn>user\nRules.<end_of_turn>\n<start_of_turn>model\n"


def test_chatml_layout_keeps_content_verbatim():
    assert ChatMLRenderer().render(CHAT) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\n  Hello \n<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_layout():
    assert Llama3Renderer().render(CHAT) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_jinja_template_renders_like_the_builtin():
    r = JinjaRenderer(CHATML_JINJA, bos_token="<s>", eos_token="</s>")
    assert r.render(CHAT) == ChatMLRenderer().render(CHAT)


def test_jinja_gets_bos_eos_and_generation_prompt():
    src = "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}" \
          "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}"
    r = JinjaRenderer(src, bos_token="<B>", eos_token="<E>")
    assert r.render([{"role": "user", "content": "x"}]) == "<B>[user:x]><E>"


def test_jinja_raise_exception_is_a_render_error():
    src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    r = JinjaRenderer(src, bos_token="", eos_token="")
    assert r.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(RenderError, match="first must be user"):
        r.render([{"role": "assistant", "content": "x"}])


def test_jinja_is_sandboxed():
    src = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    r = JinjaRenderer(src, bos_token="", eos_token="")
    with pytest.raises(RenderError):
        r.render([{"role": "user", "content": "x"}])


def test_jinja_messages_cannot_be_mutated():
    src = "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages | length }}"
    r = JinjaRenderer(src, bos_token="", eos_token="")
    with pytest.raises(RenderError):
        r.render([{"role": "user", "content": "x"}])


def test_jinja_tojson_is_plain_json():
    r = JinjaRenderer("{{ messages[0] | tojson }}", bos_token="", eos_token="")
    assert r.render([{"role": "user", "content": "<é>"}]) == '{"role": "user", "content": "<é>"}'


# ---- resolution -------------------------------------------------------------------------

def _resolve(override=None, template=None, arch=None):
    return resolve_renderer(override, gguf_template=template, architecture=arch, bos_token="<bos>", eos_token="<eos>")


def test_gguf_template_wins_over_architecture():
    assert _resolve(template=CHATML_JINJA, arch="gemma3").name == "model"


def test_architecture_picks_builtin_when_no_template():
    assert _resolve(arch="gemma3").name == "gemma"
    assert _resolve(arch="qwen2").name == "chatml"
    assert _resolve(arch="llama").name == "llama-3"
    assert _resolve(arch="bert") is None
    assert builtin_for_architecture(None) is None


def test_override_forces_builtin_even_with_template():
    assert _resolve("llama-3", template=CHATML_JINJA, arch="gemma3").name == "llama-3"
    assert _resolve("Gemma").name == "gemma"


def test_override_model_needs_a_template():
    assert _resolve("model", template=CHATML_JINJA).name == "model"
    with pytest.raises(ValueError, match="no tokenizer.chat_template"):
        _resolve("model")


def test_unknown_override_lists_known_names():
    with pytest.raises(ValueError, match="known: model, gemma, chatml, llama-3"):
        _resolve("alpaca")


def test_uncompilable_template_falls_back_to_architecture():
    assert _resolve(template="{% generation %}", arch="gemma3").name == "gemma"
    with pytest.raises(ValueError, match="does not compile"):
        _resolve(template="{% generation %}", arch="bert")
