"""LlamaCppBackend generation against the real Gemma 3 270M model.

Gemma 3 270M here is the base (pre-trained) model, so its answers are odd; the
tests only rely on properties that hold for any text it produces. Tests that load it
get it through the `model_path` fixture, which marks them `model` and holds llama.cpp
to the CPU (tests/conftest.py).
"""

from __future__ import annotations

import gc
import json

import llama_cpp.llama_cpp as L
import pytest

from inferd.engine.backend import BackendInvalidRequest, NotReady, Unavailable
from inferd.engine.events import Done, FinishReason, TextDelta
from inferd.engine.request import ChatMessage, GenerationRequest
from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

from daemon_harness import decoded_when_idle

N_CTX = 2048  # conftest's generation context
THREADS = 2

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
HIEROGLYPHS = [{"role": "user", "content": "Repeat exactly: 𓀀𓀁𓀂𓀃𓀄𓀅 𓀀𓀁𓀂𓀃𓀄𓀅"}]


def req(messages=POEM, **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 16)
    return GenerationRequest(id="", messages=[ChatMessage(**m) for m in messages], **kw)


async def run(backend, request: GenerationRequest) -> tuple[list[TextDelta], Done]:
    tokens: list[TextDelta] = []
    done = None
    async for ev in await backend.generate(request):
        assert done is None, "nothing may follow Done"
        if isinstance(ev, TextDelta):
            tokens.append(ev)
        else:
            assert isinstance(ev, Done)
            done = ev
    assert done is not None
    return tokens, done


def text_of(tokens: list[TextDelta]) -> str:
    return "".join(t.text for t in tokens)


def reference_greedy(llm, prompt_tokens: list[int], max_tokens: int) -> tuple[bytes, int]:
    """Greedy continuation computed by llama-cpp-python in-process: (bytes, token count)."""
    llm.reset()
    vocab = llm._model.vocab
    out: list[int] = []
    for tok in llm.generate(prompt_tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if L.llama_vocab_is_eog(vocab, tok):
            break
        out.append(tok)
        if len(out) >= max_tokens:
            break
    return llm.detokenize(out, special=True), len(out)


# ---- identity ------------------------------------------------------------------------

def test_identity_and_capabilities(backend):
    assert backend.name == "llamacpp"
    assert backend.ready()
    caps = backend.capabilities()
    # Tools through our built-in format (the gemma built-in renderer declares none);
    # no thinking: nothing in this model shows a reasoning format.
    assert (caps.v2, caps.vision, caps.audio, caps.tools, caps.thinking, caps.embed) == (
        True, False, False, True, False, False)
    assert caps.accelerator == "cpu" and caps.gpu_layers == 0  # model_path forces the CPU, GPU build or not
    assert caps.model == backend.label == "Gemma 3 270m"
    assert caps.n_ctx == N_CTX
    # This GGUF carries no chat template: the gemma3 architecture picks the built-in.
    assert backend.chat_template == "gemma"


# ---- decoding correctness ------------------------------------------------------------

async def test_greedy_equals_in_process_llama_cpp_python(backend, reference):
    prompt = backend.tokenize_prompt(backend.render(POEM))
    assert prompt[0] == L.llama_vocab_bos(L.llama_model_get_vocab(reference._model.model))
    assert prompt[1] != prompt[0], "the template's <bos> must not be doubled"
    want, n = reference_greedy(reference, prompt, 24)
    tokens, done = await run(backend, req(max_tokens=24))
    assert text_of(tokens) == want.decode("utf-8")
    assert done.usage.prompt_tokens == len(prompt)
    assert done.usage.completion_tokens == n


async def test_max_tokens_stops_with_length(backend):
    tokens, done = await run(backend, req(max_tokens=5))
    assert done.reason == FinishReason.LENGTH
    assert done.usage.completion_tokens == 5
    assert tokens
    assert done.timings is not None
    assert done.timings.prompt_ms > 0 and done.timings.generate_ms > 0
    assert done.timings.tokens_per_second > 0


async def test_zero_max_tokens(backend):
    tokens, done = await run(backend, req(max_tokens=0))
    assert tokens == [] and done.reason == FinishReason.LENGTH and done.usage.completion_tokens == 0


async def test_stop_string_ends_the_stream_before_it(backend):
    full_tokens, _ = await run(backend, req(max_tokens=20))
    full = text_of(full_tokens)
    assert len(full) > 30
    # A stop string that straddles a token boundary, so it must be caught across pieces.
    k = next(i for i in range(3, len(full_tokens) - 1)
             if len(full_tokens[i].text.strip()) >= 2 and len(full_tokens[i + 1].text.strip()) >= 2)
    stop = full_tokens[k].text[-2:] + full_tokens[k + 1].text[:2]
    cut = full.index(stop)
    tokens, done = await run(backend, req(max_tokens=20, stop=["never-appears", stop]))
    got = text_of(tokens)
    assert got == full[:cut]
    assert stop not in got
    assert done.reason == FinishReason.END
    assert done.usage.completion_tokens < 20


async def test_same_seed_same_text(backend):
    a = text_of((await run(backend, req(temperature=1.0, seed=1234, max_tokens=16)))[0])
    b = text_of((await run(backend, req(temperature=1.0, seed=1234, max_tokens=16)))[0])
    assert a == b
    others = {text_of((await run(backend, req(temperature=1.0, seed=s, max_tokens=16)))[0]) for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all give the same sample"


async def test_grammar_alternatives(backend):
    messages = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    tokens, done = await run(backend, req(messages, temperature=1.0, seed=7, grammar='root ::= "yes" | "no"'))
    assert text_of(tokens) in {"yes", "no"}
    assert done.reason == FinishReason.END


async def test_grammar_json(backend):
    grammar = r'''
root   ::= "{" ws "\"answer\"" ws ":" ws bool ws "," ws "\"n\"" ws ":" ws digits ws "}"
bool   ::= "true" | "false"
digits ::= [0-9] | [0-9] [0-9]
ws     ::= " "?
'''
    messages = [{"role": "user", "content": "Reply in JSON: is water wet, and how many legs has a cat?"}]
    tokens, done = await run(backend, req(messages, grammar=grammar, max_tokens=40))
    value = json.loads(text_of(tokens))
    assert set(value) == {"answer", "n"} and isinstance(value["answer"], bool)
    assert done.reason == FinishReason.END


async def test_utf8_never_split(backend, reference):
    prompt = backend.tokenize_prompt(backend.render(HIEROGLYPHS))
    want_bytes, n = reference_greedy(reference, prompt, 24)
    want = want_bytes.decode("utf-8", "replace")
    tokens, done = await run(backend, req(HIEROGLYPHS, max_tokens=24))
    got = text_of(tokens)
    # These characters have no vocabulary entry: they arrive as byte tokens.
    assert len(tokens) < done.usage.completion_tokens
    assert "\ufffd" not in want
    assert "\ufffd" not in got
    assert got == want


# ---- refusals before the stream ---------------------------------------------------------

async def test_prompt_longer_than_context_is_refused_before_decoding(backend):
    await run(backend, req(max_tokens=1))
    evaluated = backend.last_prompt_evaluated
    long = [{"role": "user", "content": "sea " * 3000}]
    with pytest.raises(BackendInvalidRequest, match=rf"^prompt is \d+ tokens but the context holds {N_CTX}$"):
        await backend.generate(req(long))
    assert backend.last_prompt_evaluated == evaluated


async def test_empty_messages_refused(backend):
    with pytest.raises(BackendInvalidRequest, match="messages must not be empty"):
        await backend.generate(GenerationRequest(id="x", messages=[]))


@pytest.mark.parametrize("grammar, pattern", [
    ("root ::= " + " | ".join(['"a"'] * 4098), r"4097 '\|' alternations, limit 4096"),
    ('root ::= "' + "a" * 65540 + '"', r"bytes, limit 65536"),
    ("root ::= [", r"^grammar: "),
    ('start ::= "yes"', r"^grammar: "),
])
async def test_bad_grammar_refused(backend, grammar, pattern):
    with pytest.raises(BackendInvalidRequest, match=pattern):
        await backend.generate(req(grammar=grammar))
    _, done = await run(backend, req(max_tokens=2))
    assert done.usage.completion_tokens == 2


# ---- KV prefix reuse ------------------------------------------------------------------

async def test_second_turn_reuses_the_history(backend, reference):
    # Longer than one 512-token batch and than Gemma 3's 512-token sliding window.
    first = [{"role": "system", "content": "You are a sailor who answers questions about ships and the sea. " * 50},
             {"role": "user", "content": "What is a schooner?"}]
    tokens, done1 = await run(backend, req(first, max_tokens=12))
    # Only the template's opening tokens can be shared with earlier tests' prompts.
    assert backend.last_prompt_evaluated > done1.usage.prompt_tokens - 8
    second = [*first, {"role": "assistant", "content": text_of(tokens)},
              {"role": "user", "content": "And a ketch?"}]
    tokens2, done2 = await run(backend, req(second, max_tokens=12))
    assert done1.usage.prompt_tokens > 600
    assert done2.usage.prompt_tokens > done1.usage.prompt_tokens
    assert backend.last_prompt_evaluated < done2.usage.prompt_tokens - done1.usage.prompt_tokens + 8
    # The reused cache must give what a fresh evaluation gives.
    prompt = backend.tokenize_prompt(backend.render(second))
    want, _ = reference_greedy(reference, prompt, 12)
    assert text_of(tokens2) == want.decode("utf-8")


async def test_identical_request_reevaluates_one_token(backend):
    a, _ = await run(backend, req(max_tokens=4))
    b, _ = await run(backend, req(max_tokens=4))
    assert backend.last_prompt_evaluated == 1
    assert text_of(a) == text_of(b)


# ---- cancellation and faults ------------------------------------------------------------

# Greedy on POEM this base model never stops by itself within LONG tokens, so a
# generation a cancel does not reach decodes about LONG more tokens.
LONG = 200


async def test_aclose_mid_stream_stops_the_decode(backend):
    stream = await backend.generate(req(max_tokens=LONG))
    seen = 0
    async for ev in stream:  # `break` leaves the stream open: only aclose() may stop it
        assert isinstance(ev, TextDelta)
        seen += 1
        if seen == 2:
            break
    await stream.aclose()
    at_close = backend._gen_state.decoded
    # The worker checks the cancel between tokens: the token it was decoding when the
    # cancel landed may finish, nothing after it.
    assert await decoded_when_idle(backend) - at_close <= 1
    _, done = await run(backend, req(max_tokens=3))
    assert done.usage.completion_tokens == 3


async def test_dropped_stream_is_cancelled_by_gc(backend):
    stream = await backend.generate(req(max_tokens=LONG))
    first = await stream.__anext__()
    assert isinstance(first, TextDelta)
    del stream
    gc.collect()
    at_drop = backend._gen_state.decoded
    assert await decoded_when_idle(backend) - at_drop <= 1
    _, done = await run(backend, req(max_tokens=3))
    assert done.usage.completion_tokens == 3


async def test_worker_fault_ends_stream_with_error_and_worker_survives(backend, monkeypatch):
    from inferd.engine.llamacpp import sampling

    calls = {"n": 0}
    real = sampling.Sampler.quick

    def flaky(self, ctx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        return real(self, ctx)

    monkeypatch.setattr(sampling.Sampler, "quick", flaky)
    stream = await backend.generate(req(max_tokens=10))
    got = []
    with pytest.raises(Unavailable, match="injected fault"):
        async for ev in stream:
            got.append(ev)
    assert len(got) == 2 and all(isinstance(e, TextDelta) for e in got)
    monkeypatch.setattr(sampling.Sampler, "quick", real)
    tokens, done = await run(backend, req(max_tokens=3))
    assert done.usage.completion_tokens == 3
    # The fault dropped the cache, so this prompt was evaluated in full.
    assert backend.last_prompt_evaluated == done.usage.prompt_tokens


# ---- a second, small backend: context limit, settings errors, stop ---------------------

async def test_small_context_fills_then_length_and_stop(model_path):
    # llama.cpp rounds a context up to 256 cells; the backend reports what it got.
    b = LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=200, n_threads=THREADS))
    try:
        assert b.n_ctx == b.capabilities().n_ctx == 256
        near_full = [{"role": "user", "content": "sea " * 200}]
        tokens, done = await run(b, req(near_full, max_tokens=500))
        assert done.usage.prompt_tokens > 200
        assert done.reason == FinishReason.LENGTH
        assert done.usage.completion_tokens == b.n_ctx - done.usage.prompt_tokens + 1
        # stop() during a generation ends that stream with an error, promptly.
        stream = await b.generate(req(max_tokens=200))
        assert isinstance(await stream.__anext__(), TextDelta)
        await b.stop(10)
        with pytest.raises(Unavailable):
            async for _ in stream:
                pass
    finally:
        await b.stop(10)
    assert not b.ready()
    with pytest.raises(NotReady):
        await b.generate(req())
    await b.stop(1)  # idempotent


def test_unknown_chat_template_lists_known_names(model_path):
    with pytest.raises(ValueError, match=r"unknown chat_template 'vicuna'; known: model, gemma, chatml, llama-3"):
        LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=64, chat_template="vicuna"))


def test_model_template_required_when_forced(model_path):
    with pytest.raises(ValueError, match="GGUF has no tokenizer.chat_template"):
        LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=64, chat_template="model"))


async def test_chat_template_override_changes_the_prompt(model_path):
    b = LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=128, n_threads=THREADS,
                                         chat_template="chatml"))
    try:
        assert b.chat_template == "chatml"
        assert b.render(POEM) == "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
        # No BOS in the text, so the tokenizer adds the model's own.
        toks = b.tokenize_prompt(b.render(POEM))
        assert toks[0] == 2
        _, done = await run(b, req(max_tokens=2))
        assert done.usage.prompt_tokens == len(toks)
    finally:
        b.close()


def test_missing_model_file(tmp_path):
    with pytest.raises(ValueError, match="model file not found"):
        LlamaCppBackend(LlamaCppSettings(model_path=tmp_path / "nope.gguf"))


def test_roles_reach_the_template(backend):
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    text = backend.render([m.as_template_dict() for m in msgs])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    toks = backend.tokenize_prompt(text)
    assert toks[:2] == [2, 105]  # one <bos>, then <start_of_turn>


class _PassClock:
    """Stands in for `time` in sampling.py: each constrained pass reads thread_time
    twice (start, end) and is told it took the next of `durations` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.durations = list(durations)
        self.passes = 0
        self._end: float | None = None

    def thread_time(self) -> float:
        if self._end is not None:
            end, self._end = self._end, None
            return end
        start = 100.0 * self.passes
        self._end = start + (self.durations[self.passes] if self.passes < len(self.durations) else 0.001)
        self.passes += 1
        return start


# THREAT_MODEL F-11 (ADR 0032): a pass over the budget ends the request only when the
# pass before it was over too, or when it took GRAMMAR_ONE_PASS_BUDGETS budgets alone.
# Each token of "zq" text is one the model would not pick: every token is a pass.
@pytest.mark.parametrize("durations, refused_at", [
    ([0.6, 0.01, 0.6, 0.01, 0.6], None),   # a slow pass now and then: the machine, not the grammar
    ([0.01, 0.6, 0.6], 3),                 # costly twice in a row
    ([0.01, 2.5], 2),                      # one pass of five budgets
])
async def test_grammar_cost_is_judged_on_two_passes_in_a_row(backend, monkeypatch, durations, refused_at):
    from inferd.engine.llamacpp import sampling

    clock = _PassClock(durations)
    monkeypatch.setattr(sampling, "time", clock)
    request = req(max_tokens=12, grammar='root ::= "zq" "zq" "zq" "zq" "\\x01"')
    if refused_at is None:
        tokens, done = await run(backend, request)
        assert text_of(tokens) == "zqzqzqzq\x01" and done.reason == FinishReason.END
        assert clock.passes >= len(durations)
    else:
        with pytest.raises(BackendInvalidRequest, match="grammar too costly.*twice in a row"):
            await run(backend, request)
        assert clock.passes == refused_at
