"""The native seams of engine/llamacpp/native.py that llama-cpp-python does not document."""

from __future__ import annotations

from inferd.engine.llamacpp import native


def test_ggml_device_table_is_reachable_through_the_private_module():
    """`probe_accelerator` reads ggml's device table through `llama_cpp._ggml` (ADR 0024).
    It reads it only on a GPU build and falls back to "no device name" when the module
    is gone, so on this CPU build nothing else would notice an upgrade that moved it."""
    lib = native._ggml()
    assert lib is not None, "llama_cpp._ggml.libggml is gone: see ADR 0024"
    assert lib.ggml_backend_dev_count() >= 1  # the CPU device at least
