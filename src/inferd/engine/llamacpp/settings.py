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
#: Sequences decoded together when the config says nothing (ADR 0018: on this 2-core
#: CPU four clients get 1.3x one client's aggregate and nobody waits for a turn).
DEFAULT_PARALLEL = 4
#: llama.cpp's ceiling on sequences in one context (LLAMA_MAX_SEQ).
MAX_PARALLEL = 256
#: While other sequences are decoding, a prompt is fed in chunks sized so that one
#: decode step takes about this long (ADR 0018): the others' streams pause about this
#: much between two tokens while it is read, instead of for the whole prompt.
PREFILL_STEP_MS = 250.0


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
    #: True/False force flash attention on/off; None = llama.cpp's "auto" (on wherever
    #: the device supports it, the CPU included).
    flash_attn: bool | None = None
    #: Route llama.cpp's own log lines to stderr instead of the debug logger.
    verbose: bool = False
    #: Sequences decoded together in one context (continuous batching, ADR 0018);
    #: None = DEFAULT_PARALLEL, halved until the context fits if it does not (the
    #: daemon's default). One sequence is the engine exactly as it was before.
    parallel: int | None = 1
    #: A request's floats do not depend on what shares its batch (ADR 0018): weights
    #: are not repacked for the CPU. Off = llama.cpp's own kernels, as its tools run.
    batch_invariant: bool = False
    #: Largest prompt chunk fed into a step while other sequences decode; None =
    #: sized from the measured prompt speed so a step takes about PREFILL_STEP_MS.
    prefill_chunk: int | None = None
    #: Sliding-window layers (Gemma 3, gpt-oss...) keep every position of every
    #: sequence, like full-attention ones (llama-server's --swa-full). None = only
    #: with one sequence: with several, each keeps its window (ADR 0018), which costs
    #: far less memory and long-prompt time, and a later turn reuses the cache only if
    #: it continues the cached text up to the window.
    swa_full: bool | None = None

    def __post_init__(self) -> None:
        if self.parallel is not None and not 1 <= self.parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel must be between 1 and {MAX_PARALLEL}, got {self.parallel}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {self.prefill_chunk}")

    def threads(self) -> int:
        if self.n_threads is not None and self.n_threads > 0:
            return self.n_threads
        return available_cores()

    def threads_batch(self) -> int:
        if self.n_threads_batch is not None and self.n_threads_batch > 0:
            return self.n_threads_batch
        return self.threads()


def padded_ctx(n_ctx: int) -> int:
    """The context llama.cpp allocates for `n_ctx`: rounded up to a multiple of 256."""
    return -(-n_ctx // 256) * 256


def available_cores() -> int:
    # The affinity mask is what a container or taskset actually grants us.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
