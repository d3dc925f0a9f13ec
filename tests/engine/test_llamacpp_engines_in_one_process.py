"""Two llama.cpp engines in one process slow each other (their OpenMP teams outnumber
the cores): the second one's load says so in the log (issue 18). Real tiny model."""

from __future__ import annotations

import logging

from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings
from inferd.engine.llamacpp.settings import available_cores

WARNING = "llama.cpp engines in one process"


def _engine(path: str, threads: int) -> LlamaCppBackend:
    return LlamaCppBackend(LlamaCppSettings(model_path=path, n_ctx=256, n_threads=threads, runner=False))


def test_a_second_engine_whose_threads_outnumber_the_cores_is_warned_about(tiny_gguf, caplog):
    cores = available_cores()
    caplog.set_level(logging.WARNING, logger="inferd.engine.llamacpp")
    first = _engine(tiny_gguf, cores)
    try:
        assert WARNING not in caplog.text  # one engine alone: nothing to say
        second = _engine(tiny_gguf, 1)
        try:
            warned = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
            assert len(warned) == 1, caplog.text
            assert f"2 llama.cpp engines in one process use {cores + 1} threads on {cores} cores" in warned[0]
        finally:
            second.close()
        caplog.clear()
        first.close()
        # Closed engines do not count: a new one alone is not warned about.
        third = _engine(tiny_gguf, cores)
        third.close()
        assert WARNING not in caplog.text
    finally:
        first.close()
