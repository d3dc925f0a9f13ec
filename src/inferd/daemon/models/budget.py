"""What a llama.cpp model will take in memory, and how much the daemon may use (ADR 0034).

An estimate before loading, from the GGUF header (models/gguf.py): the weights (the
tensor table's sizes), the KV cache for `n_ctx` x `parallel` tokens (layers x KV
heads x head dims x 2 bytes, f16), and the compute buffers (dominated by a batch's
logits: vocabulary x batch x 4 bytes). It errs high: a refusal names both numbers, so
an operator can raise the budget knowingly, while an underestimate lets the OOM
killer choose (Ollama's issues #9170, #8447).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ...engine.llamacpp.settings import DEFAULT_PARALLEL, LlamaCppOptions, padded_ctx
from ...models.gguf import GGUFInfo

GiB = 1 << 30
MiB = 1 << 20
#: Sliding-window architectures: one layer in N attends to the whole context (the rest
#: keep `sliding_window` positions per sequence when swa_full is off).
_SWA_PATTERN = {"gemma3": 6, "gemma2": 2, "cohere2": 4, "gemma3n": 5}
#: Runner process overhead: the interpreter, llama.cpp's own tables.
RUNNER_OVERHEAD = 96 * MiB


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int
    overhead: int = RUNNER_OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead


def _kv_bytes(info: GGUFInfo, tokens: int, per_seq_window: int, seqs: int, swa_full: bool) -> int:
    layers = info.arch_int("block_count") or 0
    heads = info.arch_int("attention.head_count") or 1
    kv_heads = info.arch_int("attention.head_count_kv") or heads
    embd = info.arch_int("embedding_length") or 0
    k = info.arch_int("attention.key_length") or (embd // heads if heads else 0)
    v = info.arch_int("attention.value_length") or k
    per_token_layer = kv_heads * (k + v) * 2  # f16 K and V
    window = info.arch_int("attention.sliding_window")
    pattern = _SWA_PATTERN.get(info.arch)
    if window and pattern and not swa_full:
        full_layers = -(-layers // pattern)
        swa_tokens = min(tokens, seqs * (window + per_seq_window))
        return per_token_layer * (full_layers * tokens + (layers - full_layers) * swa_tokens)
    return per_token_layer * layers * tokens


def estimate(info: GGUFInfo, opts: LlamaCppOptions) -> Estimate:
    """The memory a runner for this GGUF with these options will take, approximately."""
    seqs = opts.parallel or DEFAULT_PARALLEL
    ubatch = opts.n_ubatch or opts.n_batch
    tokens = padded_ctx(opts.n_ctx) * seqs
    swa_full = bool(opts.swa_full) if opts.swa_full is not None else seqs == 1
    kv = _kv_bytes(info, tokens, ubatch, seqs, swa_full)
    vocab = info.n_vocab or 32000
    embd = info.arch_int("embedding_length") or 0
    compute = vocab * min(ubatch, opts.n_ctx) * 4 + embd * ubatch * 4 * 8
    if opts.embed:  # the embedding context beside the chat one
        kv += _kv_bytes(info, padded_ctx(opts.embed_n_ctx), ubatch, 1, True)
    weights = info.tensor_bytes if info.tensor_bytes is not None else info.file_bytes
    return Estimate(weights=weights, kv=kv, compute=compute)


def total_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def default_budget(ram: int | None = None) -> int:
    """What the models may take when the config says nothing: the RAM less a quarter of
    it (at least 2 GiB) for the desktop and its apps, never under half of it."""
    ram = total_ram() if ram is None else ram
    return max(ram - max(ram // 4, 2 * GiB), ram // 2)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib|%)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "kib": 1 << 10, "mb": 10**6, "mib": MiB, "gb": 10**9, "gib": GiB,
          "tb": 10**12, "tib": 1 << 40}


def parse_budget(value: int | str | None, ram: int | None = None) -> int:
    """Bytes from the config's `memory_budget`: a number of bytes, "12GiB", "8 GB" or
    "70%" of RAM; None: default_budget(). Raises ValueError."""
    if value is None:
        return default_budget(ram)
    if isinstance(value, bool):
        raise ValueError("memory_budget must be bytes, a size such as \"12GiB\", or a share such as \"70%\"")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("memory_budget must be positive")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"memory_budget {value!r} is not a size such as \"12GiB\" or a share such as \"70%\"")
    number, unit = float(m.group(1)), (m.group(2) or "b").lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError("memory_budget as a share must be between 0% and 100%")
        return int((total_ram() if ram is None else ram) * number / 100)
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError("memory_budget must be positive")
    return size


def human(n: int) -> str:
    """Bytes as an operator reads them: MiB under a GiB, GiB above."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"
