"""Shared fixtures for the llama.cpp backend tests: the real Gemma 3 270M (Q4_K_M) GGUF.

Each backend is loaded once per session and only when a test asks for it. The model
file comes from `model_path` (tests/conftest.py), which also marks these tests `model`.
"""

from __future__ import annotations

import pytest

N_CTX = 2048
THREADS = 2
EMBED_N_CTX = 256


@pytest.fixture(scope="session")
def backend(model_path):
    from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

    b = LlamaCppBackend(LlamaCppSettings(
        model_path=model_path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
    ))
    yield b
    assert b.close(timeout=30.0)


@pytest.fixture(scope="session")
def embed_backend(model_path):
    from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

    b = LlamaCppBackend(LlamaCppSettings(
        model_path=model_path, n_ctx=256, n_threads=THREADS, embed=True, embed_n_ctx=EMBED_N_CTX,
    ))
    yield b
    assert b.close(timeout=30.0)


@pytest.fixture(scope="session")
def reference(model_path):
    """llama-cpp-python in-process, configured like the backend's context."""
    from llama_cpp import Llama

    # flash_attn=True: llama.cpp's "auto" (what the backend uses) enables it on CPU.
    return Llama(model_path, n_ctx=N_CTX, n_batch=512, n_threads=THREADS, n_threads_batch=THREADS,
                 flash_attn=True, verbose=False)
