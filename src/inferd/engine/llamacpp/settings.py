"""Settings of the llama.cpp backend.

Kept free of any llama_cpp import so the daemon's config layer can build one
without loading the native library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import placement
from .amx import AmxMode

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
#: A runner sends a step's events at once only when its last frame left at least this
#: long before; else they wait for the next step's (ADR 0035, addenda 3 and 4). Where a
#: core is left over for the daemon and the apps, a frame per step costs the decode
#: nothing and only steps shorter than a wake-up chain (a tiny model) are held.
FRAME_INTERVAL_MS_SPARE_CORES = 3.0
#: Where the decode threads take every CPU this process may use, each frame's wake-ups
#: (the daemon's, then the app's) preempt a decode thread, and llama.cpp's other
#: threads wait for it: on 2 cores, Gemma 3 270M, 2% of the decode rate. About one
#: screen refresh (33 Hz): no reader sees tokens arriving two at a time.
FRAME_INTERVAL_MS_SATURATED = 30.0


class LlamaCppOptions(BaseModel):
    """Every knob of the llama.cpp backend: the one definition (ADR 0019).

    The config file's `llamacpp` entry is this model plus the entry's name and its
    model source (daemon/config.py); `inferd serve` flags are overrides of these
    fields by name (cli/serve.py); the engine reads them from LlamaCppSettings. A new
    setting is a field here and nowhere else (a flag for it is one more line there).
    """

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(default=DEFAULT_N_CTX, gt=0)
    #: None = one per physical core this process may run on (`physical_cores`), as
    #: llama.cpp's own tools choose: a second hardware thread of a core only contends
    #: for the same units in a decode step (issue 18).
    n_threads: int | None = Field(default=None, gt=0)
    #: None = same as n_threads.
    n_threads_batch: int | None = Field(default=None, gt=0)
    n_batch: int = Field(default=512, gt=0)
    #: None = n_batch (one physical batch per logical batch).
    n_ubatch: int | None = Field(default=None, gt=0)
    #: 0 = CPU only; negative = offload every layer (upstream semantics).
    n_gpu_layers: int = 0
    #: Sampling seed for requests that carry none; None = a fresh random seed per
    #: request, as OpenAI, llama-server and Ollama sample (issue 21: a client's retry
    #: must not repeat the same output). A number makes seedless requests repeatable.
    seed: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    embed: bool = False
    #: llama_pooling_type value for the embedding context; None = mean.
    embed_pooling: int | None = Field(default=None, ge=0, le=3)
    embed_n_ctx: int = Field(default=DEFAULT_EMBED_N_CTX, gt=0)
    #: None = the GGUF template, else a built-in chosen by architecture;
    #: "model" forces the GGUF template; "gemma" | "chatml" | "llama-3" force a built-in.
    chat_template: str | None = None
    #: Flash attention on/off (llama-server's --flash-attn); None = llama.cpp's "auto"
    #: (on wherever the device supports it, the CPU included).
    flash_attn: bool | None = None
    #: llama.cpp's AMX matmul kernels (Intel Sapphire Rapids and later): "auto" keeps
    #: them off in builds where they are known to fault (ADR 0019), "on" lets them run,
    #: "off" keeps them off. Repacked CPU kernels stay on either way where possible.
    amx: AmxMode = "auto"
    #: Sequences decoded together in one context (continuous batching, ADR 0018);
    #: None = DEFAULT_PARALLEL, halved until the context fits if it does not.
    parallel: int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    #: A request's floats do not depend on what shares its batch (ADR 0018): weights
    #: are not repacked for the CPU. Off = llama.cpp's own kernels, as its tools run.
    batch_invariant: bool = False
    #: Largest prompt chunk fed into a step while other sequences decode; None =
    #: sized from the measured prompt speed so a step takes about PREFILL_STEP_MS.
    prefill_chunk: int | None = Field(default=None, ge=1)
    #: Sliding-window layers (Gemma 3, gpt-oss...) keep every position of every
    #: sequence, like full-attention ones (llama-server's --swa-full). None = only
    #: with one sequence: with several, each keeps its window (ADR 0018), which costs
    #: far less memory and long-prompt time, and a later turn reuses the cache only if
    #: it continues the cached text up to the window.
    swa_full: bool | None = None
    #: Serve the model from a supervised runner process (ADR 0025): a fault in llama.cpp
    #: ends that process, not the daemon. False = in the daemon's own process (benches,
    #: debugging; `inferd serve --in-process`).
    runner: bool = True
    #: A runner that makes no decode step for this long while it has work is ended as
    #: hung (one step is one llama_decode call: a prompt chunk or a token for each sequence).
    watchdog_secs: float = Field(default=120.0, gt=0)
    #: A runner sends a stream's events at most once per this many ms while decode steps
    #: are shorter (a first token, a Done and an error leave at once; ADR 0035 addendum
    #: 4); 0 = a frame every step. None = by machine: FRAME_INTERVAL_MS_SATURATED when the
    #: decode threads take every CPU this process may use, else
    #: FRAME_INTERVAL_MS_SPARE_CORES. `inferd doctor` shows what was chosen.
    frame_interval_ms: float | None = Field(default=None, ge=0, le=1000)
    #: Keep each decode thread on a CPU of its own, as llama-server's `--cpu-strict 1`:
    #: the thread that calls llama_decode on the first CPU this process may use, each
    #: OpenMP worker on the next (one per physical core first). None = by machine: on
    #: where the decode threads take every CPU this process may use, where each wake-up
    #: of the daemon or an app would otherwise displace a decode thread and its cache
    #: (ADR 0035 addendum 5). `inferd doctor` shows the CPUs chosen.
    cpu_strict: bool | None = None


class LlamaCppSettings(LlamaCppOptions):
    """The options plus what the daemon resolved for this load."""

    model_path: str | Path
    #: The file the operator named, when `model_path` is another way to reach it
    #: (the daemon loads a verified file through /proc/self/fd, THREAT_MODEL F-6).
    source_path: str | Path | None = None
    #: Display name reported as `model`; None = GGUF `general.name`, else the file stem.
    label: str | None = None
    #: The CPUs this engine may use; None = this process's. A daemon gives a runner it
    #: starts its own, which the runner may not have inherited (placement.py).
    cpus: list[int] | None = None
    #: Route llama.cpp's own log lines to stderr instead of the debug logger.
    verbose: bool = False
    #: Built directly (tests, benches, embedding code) the engine runs one sequence,
    #: exactly as before parallel sequences; the daemon passes the config's value.
    parallel: int | None = Field(default=1, ge=1, le=MAX_PARALLEL)

    @classmethod
    def from_options(cls, options: LlamaCppOptions, **resolved: Any) -> "LlamaCppSettings":
        return cls(**{**options.model_dump(), **resolved})

    def threads(self) -> int:
        if self.n_threads is not None and self.n_threads > 0:
            return self.n_threads
        return physical_cores()

    def threads_batch(self) -> int:
        if self.n_threads_batch is not None and self.n_threads_batch > 0:
            return self.n_threads_batch
        return self.threads()

    def decodes_on_every_core(self) -> bool:
        """Whether the decode threads take every CPU this process may use: where they
        do, each wake-up of the daemon or an app displaces one of them, and both the
        frame interval and cpu_strict default accordingly (ADR 0035 addenda 4 and 5)."""
        return self.threads() >= available_cores()

    def frame_interval(self) -> float:
        """The runner's frame interval in ms: the setting, or the machine's default."""
        if self.frame_interval_ms is not None:
            return self.frame_interval_ms
        if self.decodes_on_every_core():
            return FRAME_INTERVAL_MS_SATURATED
        return FRAME_INTERVAL_MS_SPARE_CORES

    def decode_cpus(self) -> list[int]:
        """The CPUs the decode threads are kept on, in thread order; [] = the kernel
        places them (cpu_strict off, or more threads than CPUs to give them)."""
        strict = self.cpu_strict if self.cpu_strict is not None else self.decodes_on_every_core()
        if not strict:
            return []
        cpus = cpus_by_core(_allowed_cpus())
        n = max(self.threads(), self.threads_batch())
        return cpus[:n] if n <= len(cpus) else []


def padded_ctx(n_ctx: int) -> int:
    """The context llama.cpp allocates for `n_ctx`: rounded up to a multiple of 256."""
    return -(-n_ctx // 256) * 256


def available_cores() -> int:
    """Logical CPUs this process may run on (hardware threads, SMT siblings included)."""
    return len(_allowed_cpus()) or max(1, os.cpu_count() or 1)


def physical_cores(cpus: set[int] | None = None, topology: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among `cpus` (default: the CPUs this process may run on): the
    CPUs grouped by their `thread_siblings_list` (Linux sysfs). Where the topology
    cannot be read, every CPU counts as a core."""
    cpus = _allowed_cpus() if cpus is None else cpus
    if not cpus:
        return available_cores()
    cores = _cores(cpus, topology)
    return len(cpus) if cores is None else max(1, len(cores))


def cpus_by_core(cpus: set[int], topology: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """`cpus` ordered so that each physical core's first CPU comes before any core's
    second (its SMT sibling): N threads placed on the first N land on N cores where
    there are that many. Where the topology cannot be read, in number order."""
    cores = _cores(cpus, topology)
    if cores is None:
        return sorted(cpus)
    rank = [(i, cpu) for group in cores.values() for i, cpu in enumerate(group)]
    return [cpu for _, cpu in sorted(rank)]


def _cores(cpus: set[int], topology: Path) -> dict[str, list[int]] | None:
    """`cpus` grouped by physical core (their sysfs `thread_siblings_list`), each group
    in number order; None where the topology cannot be read."""
    cores: dict[str, list[int]] = {}
    for cpu in sorted(cpus):
        try:
            siblings = (topology / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
        except OSError:
            return None
        cores.setdefault(siblings, []).append(cpu)
    return cores


def _allowed_cpus() -> set[int]:
    # The affinity mask is what a container or taskset actually grants us (with any CPU
    # the daemon's loop thread stepped off for a runner's decode thread, placement.py).
    return placement.cpus()
