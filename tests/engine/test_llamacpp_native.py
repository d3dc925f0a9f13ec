"""The native seams of engine/llamacpp/native.py that llama-cpp-python does not document."""

from __future__ import annotations

import pytest

from inferd.engine.llamacpp import native


def test_ggml_device_table_is_reachable_through_the_private_module():
    """`probe_accelerator` reads ggml's device table through `llama_cpp._ggml` (ADR 0024).
    It reads it only on a GPU build and falls back to "no device name" when the module
    is gone, so on this CPU build nothing else would notice an upgrade that moved it."""
    lib = native._ggml()
    assert lib is not None, "llama_cpp._ggml.libggml is gone: see ADR 0024"
    assert lib.ggml_backend_dev_count() >= 1  # the CPU device at least


def test_greedy_reads_logits_rows_through_its_own_binding(tiny_gguf):
    """`Sampler` reads a logits row through its own ctypes binding of
    llama_get_logits_ith, by address, with a numpy view cached per address (issue 18).
    Checked against llama-cpp-python's binding on a real (tiny) model: the same row,
    live after the next decode, and a row without logits is an error, not a crash."""
    import numpy as np

    import llama_cpp.llama_cpp as L
    from inferd.engine.llamacpp import sampling
    from inferd.engine.llamacpp.sampling import Sampler, SamplingParams

    native.init_backend()
    model = native.load_model(tiny_gguf, 0)
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = 256, 64, 2, 2
    ctx, _ = native.create_context(model, params, None)
    assert ctx
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    batch = L.llama_batch_init(64, 0, 1)
    sampler = Sampler(SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=1), None, n_vocab)
    try:
        def decode(tokens: list[int], pos: int) -> None:
            batch.n_tokens = len(tokens)
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(tokens) - 1
            assert L.llama_decode(ctx, batch) == 0

        def theirs(row: int) -> np.ndarray:
            return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, row), shape=(n_vocab,)).copy()

        prompt = native.tokenize(vocab, "The sea is", add_special=True, parse_special=False)
        decode(prompt, 0)
        view = sampler._row_view(ctx, -1)
        assert np.array_equal(view, theirs(-1))
        token = sampler.quick(ctx)
        assert token == int(theirs(-1).argmax())
        with pytest.raises(RuntimeError, match="no logits for batch row 0"):
            sampler._row_view(ctx, 0)  # only the last row asked for logits
        decode([token], len(prompt))
        again = sampler._row_view(ctx, -1)
        assert np.array_equal(again, theirs(-1))  # the next step's logits, not a stale copy
        assert sampler.quick(ctx) == int(theirs(-1).argmax())
        assert sampling._row_address_through_the_binding(ctx, -1) == sampling._logits_row_address(ctx, -1)
        assert sampling._logits_row_address is not sampling._row_address_through_the_binding, (
            "llama_cpp.llama_cpp._lib is gone: greedy sampling fell back to the slower binding")
    finally:
        sampler.close()
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)


def test_sampled_pieces_are_remembered_and_end_of_generation_is_none(tiny_gguf, monkeypatch):
    """The scheduler reads a sampled token's text through `PieceReader.sampled`: the
    piece llama.cpp gives, None for an end-of-generation token, and from the second
    time on without calling llama.cpp (a vocabulary does not change; issue 18)."""
    import llama_cpp.llama_cpp as L

    native.init_backend()
    model = native.load_model(tiny_gguf, 0)
    try:
        vocab = L.llama_model_get_vocab(model)
        reader = native.PieceReader(vocab)
        token = native.tokenize(vocab, " sea", add_special=False, parse_special=False)[0]
        eos = L.llama_vocab_eos(vocab)
        assert L.llama_vocab_is_eog(vocab, eos)
        piece = reader(token)
        assert piece and reader.sampled(token) == piece
        assert reader.sampled(eos) is None

        def refuse(*_a: object) -> None:
            raise AssertionError("asked llama.cpp again")

        monkeypatch.setattr(L, "llama_token_to_piece", refuse)
        monkeypatch.setattr(L, "llama_vocab_is_eog", refuse)
        assert reader.sampled(token) == piece  # remembered
        assert reader.sampled(eos) is None
    finally:
        L.llama_model_free(model)
