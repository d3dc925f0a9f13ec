"""Two llama.cpp engines in one process slow each other (their OpenMP teams outnumber
the cores): the load that makes it so says so in the log (issue 18). Real tiny model."""

from __future__ import annotations

import logging

from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings
from inferd.engine.llamacpp import backend as engine_module
from inferd.engine.llamacpp.settings import available_cores

WARNING = "llama.cpp engines in one process"


def _engine(path: str, threads: int) -> LlamaCppBackend:
    return LlamaCppBackend(LlamaCppSettings(model_path=path, n_ctx=256, n_threads=threads, runner=False))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]


def test_a_second_engine_whose_threads_outnumber_the_cores_is_warned_about(tiny_gguf, caplog):
    cores = available_cores()
    # Engines other tests of this session keep loaded count as they would in a daemon.
    others = [e for e in engine_module._engines if e._ready]
    threads = sum(max(e.settings.threads(), e.settings.threads_batch()) for e in others)
    caplog.set_level(logging.WARNING, logger="inferd.engine.llamacpp")
    first = _engine(tiny_gguf, cores)
    try:
        # Alone it fills the cores exactly: warned only beside engines already loaded.
        assert len(_warnings(caplog)) == (1 if others else 0), caplog.text
        caplog.clear()
        second = _engine(tiny_gguf, 1)
        try:
            warned = _warnings(caplog)
            assert len(warned) == 1, caplog.text
            assert (f"{len(others) + 2} llama.cpp engines in one process use {threads + cores + 1} threads "
                    f"on {cores} cores") in warned[0]
        finally:
            second.close()
        caplog.clear()
        first.close()
        # Closed engines do not count: one that fits beside what is left is not warned about.
        third = _engine(tiny_gguf, cores)
        third.close()
        assert len(_warnings(caplog)) == (1 if others else 0), caplog.text
    finally:
        first.close()
