"""Settings of the llama.cpp backend.

Kept free of any llama_cpp import so the daemon's config layer can build one
without loading the native library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 0xDEADBEEF
DEFAULT_N_CTX = 8192
DEFAULT_EMBED_N_CTX = 2048


@dataclass
class LlamaCppSettings:
    model_path: str | Path
    #: The file the operator named, when `model_path` is another way to reach it
    #: (the daemon loads a verified file through /proc/self/fd, THREAT_MODEL F-6).
    source_path: str | Path | None = None
    #: Display name reported as `model`; None = GGUF `general.name`, else the file stem.
    label: str | None = None
    n_ctx: int = DEFAULT_N_CTX
    #: None = every core this process may run on.
    n_threads: int | None = None
    #: None = same as n_threads.
    n_threads_batch: int | None = None
    n_batch: int = 512
    #: None = n_batch (one physical batch per logical batch).
    n_ubatch: int | None = None
    #: 0 = CPU only; negative = offload every layer (upstream semantics).
    n_gpu_layers: int = 0
    #: Sampling seed for requests that carry none.
    seed: int = DEFAULT_SEED
    embed: bool = False
    #: llama_pooling_type value for the embedding context; None = mean.
    embed_pooling: int | None = None
    embed_n_ctx: int = DEFAULT_EMBED_N_CTX
    #: None = the GGUF template, else a built-in chosen by architecture;
    #: "model" forces the GGUF template; "gemma" | "chatml" | "llama-3" force a built-in.
    chat_template: str | None = None
    #: None = llama.cpp decides (auto), True/False force flash attention on/off.
    flash_attn: bool | None = None
    #: Route llama.cpp's own log lines to stderr instead of the debug logger.
    verbose: bool = False

    def threads(self) -> int:
        if self.n_threads is not None and self.n_threads > 0:
            return self.n_threads
        return available_cores()

    def threads_batch(self) -> int:
        if self.n_threads_batch is not None and self.n_threads_batch > 0:
            return self.n_threads_batch
        return self.threads()


def available_cores() -> int:
    # The affinity mask is what a container or taskset actually grants us.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
