"""Pure-Python pieces of the llama.cpp backend: the grammar limits, the settings' defaults."""

from __future__ import annotations

import pytest

from inferd.engine.llamacpp.sampling import (
    MAX_GRAMMAR_ALTERNATIONS,
    MAX_GRAMMAR_BYTES,
    GrammarError,
    check_grammar_limits,
)
from inferd.engine.llamacpp.settings import LlamaCppSettings


def test_grammar_limits():
    check_grammar_limits("x" * MAX_GRAMMAR_BYTES)
    check_grammar_limits("|" * MAX_GRAMMAR_ALTERNATIONS)
    with pytest.raises(GrammarError, match="65537 bytes"):
        check_grammar_limits("x" * (MAX_GRAMMAR_BYTES + 1))
    with pytest.raises(GrammarError, match="bytes"):
        # The byte limit counts UTF-8 bytes, not characters.
        check_grammar_limits("é" * (MAX_GRAMMAR_BYTES // 2 + 1))
    with pytest.raises(GrammarError, match="4097 '\\|' alternations"):
        check_grammar_limits("|" * (MAX_GRAMMAR_ALTERNATIONS + 1))


def test_settings_defaults_follow_upstream():
    s = LlamaCppSettings(model_path="m.gguf")
    # No configured seed: a request without one samples afresh (issue 21, ADR 0026),
    # where upstream used 0xDEADBEEF for every request.
    assert (s.n_ctx, s.n_gpu_layers, s.seed, s.embed, s.embed_n_ctx, s.n_batch) == (
        8192, 0, None, False, 2048, 512)
    assert s.threads() >= 1 and s.threads_batch() == s.threads()
    assert LlamaCppSettings(model_path="m", n_threads=3).threads_batch() == 3
