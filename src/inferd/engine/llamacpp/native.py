"""Thin helpers over llama-cpp-python's ctypes bindings (llama_cpp.llama_cpp).

Everything here is stateless or process-wide: log routing, backend init, model
load/metadata, tokenisation and the accelerator probe. Contexts live in the workers.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as L

from . import amx
from .amx import AmxMode, AmxPlan

log = logging.getLogger("inferd.engine.llamacpp")
_native_log = logging.getLogger("inferd.engine.llamacpp.native")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_GGML_LOG_CONT = 5

_init_lock = threading.Lock()
_initialised = False
_verbose = False
_capture = threading.local()


@L.llama_log_callback
def _log_sink(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # Called from whichever native thread logs; it must never raise into C.
    try:
        msg = text.decode("utf-8", "replace")
        lines = getattr(_capture, "lines", None)
        if lines is not None:
            lines.append(msg)
        if _verbose:
            sys.stderr.write(msg)
        elif level != _GGML_LOG_CONT:
            _native_log.debug("%s", msg.rstrip())
    except Exception:  # noqa: BLE001 - see above
        pass


class capture_native_log:
    """Collect llama.cpp log lines emitted on this thread (for error messages)."""

    def __enter__(self) -> list[str]:
        self._saved = getattr(_capture, "lines", None)
        _capture.lines = []
        return _capture.lines

    def __exit__(self, *exc: object) -> None:
        _capture.lines = self._saved


def init_backend(verbose: bool = False, amx_mode: AmxMode = "auto") -> AmxPlan:
    """Process-wide llama.cpp setup; idempotent. Every use of llama.cpp in this
    process (the engine, embeddings, the doctor's self-test, tests' and benches'
    references) calls it before its first model load: that is where AMX is decided."""
    global _initialised, _verbose
    with _init_lock:
        _verbose = verbose
        # Importing llama_cpp installs a sink that prints everything to stderr;
        # ours keeps the daemon's stderr clean and the lines in `logging`.
        L.llama_log_set(_log_sink, ctypes.c_void_p(0))
        plan = _decide_amx(amx_mode)
        if not _initialised:
            L.llama_backend_init()
            _initialised = True
        return plan


def system_features() -> dict[str, str]:
    """llama.cpp's system info: the CPU features its build uses (AMX_INT8, AVX2, ...)."""
    return amx.parse_system_info(L.llama_print_system_info().decode("utf-8", "replace"))


#: Set by the first model load: from then on llama.cpp has listed its buffer types,
#: and withholding AMX no longer changes where weights go.
_bufts_listed = False


def _decide_amx(mode: AmxMode) -> AmxPlan:
    features = system_features()
    can = amx.can_withhold() and (amx.amx_withheld() or not _bufts_listed)
    plan = amx.plan_amx(mode, features, can_withhold=can)
    if plan.withhold:
        try:
            amx.withhold_amx()
        except OSError as exc:
            log.warning("cannot withhold AMX from llama.cpp (%s); turning off extra buffer types", exc)
            plan = amx.plan_amx(mode, features, can_withhold=False)
    elif plan.kernels and amx.amx_withheld():
        # A filter cannot be lifted: an earlier decision in this process stands.
        plan = amx.AmxPlan(kernels=False, extra_bufts=True, withhold=True,
                           reason="amx: on cannot take effect: this process already withholds AMX")
    if features.get("AMX_INT8") == "1":
        log.info("%s", plan.reason)
    return plan


# ---- model -------------------------------------------------------------------------


def create_context(model: L.llama_model_p, params: L.llama_context_params,
                   flash_attn: bool | None) -> tuple[L.llama_context_p | None, bool | None]:
    """A context with flash attention forced on/off, or left to llama.cpp's "auto"
    (None); returns it (NULL on failure) and whether flash attention is on (None when
    llama.cpp's auto did not say)."""
    if flash_attn is not None:
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        return L.llama_init_from_model(model, params), flash_attn
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO
    with capture_native_log() as lines:
        ctx = L.llama_init_from_model(model, params)
    said = "".join(lines)
    if "Flash Attention enabled" in said:
        return ctx, True
    if "Flash Attention not supported" in said:
        return ctx, False
    return ctx, None


def load_model(path: str, n_gpu_layers: int, *, repack: bool = True) -> L.llama_model_p:
    """`repack=False` keeps the weights in the file's layout: llama.cpp's repacked CPU
    matmuls round a row differently depending on how many rows share its batch (ADR 0018).
    The caller has run init_backend, whose AMX plan may forbid repacking."""
    global _bufts_listed
    if not os.path.isfile(path):
        raise ValueError(f"model file not found: {path}")
    _bufts_listed = True
    params = L.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = repack
    model = L.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not load the model: {path}")
    return model


def meta_str(model: L.llama_model_p, key: str) -> str | None:
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        n = L.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.raw[:n].decode("utf-8", "replace")
        # Chat templates can be tens of KiB; n is the full length without the NUL.
        size = n + 1


def tokenize(vocab: L.llama_vocab_p, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    data = text.encode("utf-8")
    # Every token covers at least one byte, plus room for the added specials.
    cap = len(data) + 8
    arr = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), arr, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize failed ({n})")
    return arr[:n]


_UNSEEN = object()


class PieceReader:
    """Token -> bytes with a reusable buffer; one instance per thread."""

    def __init__(self, vocab: L.llama_vocab_p) -> None:
        self._vocab = vocab
        self._size = 256
        self._buf = ctypes.create_string_buffer(self._size)
        #: Pieces of the tokens sampled so far, None for end-of-generation ones: a
        #: vocabulary never changes, and a token is two calls into llama.cpp otherwise
        #: (no more entries than the vocabulary has tokens).
        self._sampled: dict[int, bytes | None] = {}

    def sampled(self, token: int) -> bytes | None:
        """The piece of a sampled token, or None when it ends the generation."""
        piece = self._sampled.get(token, _UNSEEN)
        if piece is _UNSEEN:
            piece = None if L.llama_vocab_is_eog(self._vocab, token) else self(token)
            self._sampled[token] = piece
        return piece  # type: ignore[return-value]

    def __call__(self, token: int) -> bytes:
        n = L.llama_token_to_piece(self._vocab, token, self._buf, self._size, 0, True)
        if n < 0:
            self._size = -n
            self._buf = ctypes.create_string_buffer(self._size)
            n = L.llama_token_to_piece(self._vocab, token, self._buf, self._size, 0, True)
        return self._buf.raw[:n]


def bos_piece(vocab: L.llama_vocab_p) -> str:
    bos = L.llama_vocab_bos(vocab)
    if bos < 0:
        return ""
    return PieceReader(vocab)(bos).decode("utf-8", "replace")


def eos_piece(vocab: L.llama_vocab_p) -> str:
    eos = L.llama_vocab_eos(vocab)
    if eos < 0:
        return ""
    return PieceReader(vocab)(eos).decode("utf-8", "replace")


# ---- accelerator -------------------------------------------------------------------

_KIND_BY_REG = {
    "metal": "metal", "mtl": "metal",
    "cuda": "cuda",
    "rocm": "rocm", "hip": "rocm",
    "vulkan": "vulkan",
}
_CASCADE = ("metal", "cuda", "rocm", "vulkan")
_FORCE = {"cpu": "cpu", "metal": "metal", "cuda": "cuda", "rocm": "rocm", "hip": "rocm",
          "vulkan": "vulkan", "vk": "vulkan"}


@dataclass(frozen=True)
class Accelerator:
    kind: str = "cpu"
    device_name: str | None = None
    vram_total_bytes: int | None = None


def _ggml() -> ctypes.CDLL | None:
    try:
        from llama_cpp._ggml import libggml
    except Exception:  # noqa: BLE001 - a missing symbol table only costs us the probe
        return None
    try:
        libggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        libggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        libggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        libggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        libggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        libggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        libggml.ggml_backend_reg_name.restype = ctypes.c_char_p
        libggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
        libggml.ggml_backend_dev_description.restype = ctypes.c_char_p
        libggml.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        libggml.ggml_backend_dev_memory.restype = None
    except AttributeError:
        return None
    return libggml


def probe_accelerator() -> Accelerator:
    """Which device llama.cpp will use: Metal > CUDA > ROCm > Vulkan > CPU (upstream ADR 0019).

    INFERD_FORCE_BACKEND (cpu|metal|cuda|rocm|hip|vulkan|vk) overrides the pick.
    """
    devices: dict[str, tuple[str | None, int | None]] = {}
    lib = _ggml() if L.llama_supports_gpu_offload() else None
    if lib is not None:
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            reg = lib.ggml_backend_dev_backend_reg(dev)
            name = (lib.ggml_backend_reg_name(reg) or b"").decode(errors="replace").lower()
            kind = _KIND_BY_REG.get(name)
            if kind is None or kind in devices:
                continue
            desc = lib.ggml_backend_dev_description(dev)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            devices[kind] = (desc.decode(errors="replace") if desc else None, total.value or None)

    forced = os.environ.get("INFERD_FORCE_BACKEND", "").strip().lower()
    if forced:
        kind = _FORCE.get(forced)
        if kind is None:
            log.warning("INFERD_FORCE_BACKEND=%r is not one of %s; detecting", forced, sorted(_FORCE))
        elif kind == "cpu":
            return Accelerator()
        elif kind in devices:
            name, total = devices[kind]
            return Accelerator(kind, name, total)
        else:
            log.warning("INFERD_FORCE_BACKEND=%s but this llama.cpp build has no such device; detecting", forced)
    for kind in _CASCADE:
        if kind in devices:
            name, total = devices[kind]
            return Accelerator(kind, name, total)
    return Accelerator()


def resolve_gpu_layers(requested: int, n_layer_all: int, kind: str) -> int:
    """How many layers libllama actually offloads (upstream issue #51)."""
    if kind == "cpu" or requested == 0:
        return 0
    if requested < 0:
        return n_layer_all + 1
    return min(requested, n_layer_all + 1)


# ---- decode threads on CPUs of their own (llama-server's --cpu-strict) ------------------------

_GGML_MAX_N_THREADS = 512  # ggml.h: the length of a threadpool's CPU mask


class _ThreadpoolParams(ctypes.Structure):
    """ggml.h's `struct ggml_threadpool_params`."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * _GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_NEW_POOL = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ThreadpoolParams))
_FREE_POOL = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _threadpool_api() -> tuple[Any, Any, Any, Any] | None:
    """(params_init, new, free, attach), found as llama-server finds them: the pool's
    constructor through the CPU backend's registry, which also serves builds that load
    their backends at run time. None where this build lacks any of them."""
    lib = _ggml()
    if lib is None:
        return None
    try:
        lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        init = lib.ggml_threadpool_params_init
        init.argtypes = [ctypes.POINTER(_ThreadpoolParams), ctypes.c_int]
        init.restype = None
        attach = L._lib.llama_attach_threadpool
        attach.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        attach.restype = None
    except AttributeError:
        return None
    reg = lib.ggml_backend_reg_by_name(b"CPU")
    if not reg:
        return None
    new = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new")
    free = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free")
    if not new or not free:
        return None
    return init, _NEW_POOL(new), _FREE_POOL(free), attach


class StrictThreads:
    """ggml threadpools that keep a context's decode threads each on one CPU: the thread
    that calls llama_decode on `cpus[0]`, the i-th OpenMP worker on `cpus[i]` (ggml
    applies the masks at every graph, as llama-server's `--cpu-strict 1` does). Freed
    with `close()` after the context they serve (ADR 0035, addendum 5)."""

    def __init__(self, free: Any, pools: list[int]) -> None:
        self._free = free
        self._pools = pools

    @classmethod
    def attach(cls, ctx: L.llama_context_p, cpus: list[int], n_threads: int,
               n_threads_batch: int) -> "StrictThreads | None":
        """Pin `ctx`'s decode threads to `cpus` (one per thread: `decode_cpus()` chose
        them); None (and a debug line) where this build cannot: the kernel places them."""
        if max(cpus) >= _GGML_MAX_N_THREADS:
            return None
        api = _threadpool_api()
        if api is None:
            log.debug("this llama.cpp build has no threadpool API: decode threads are not pinned")
            return None
        init, new, free, attach = api
        pools: list[int] = []
        for n in dict.fromkeys((n_threads, n_threads_batch)):
            params = _ThreadpoolParams()
            init(ctypes.byref(params), n)
            for cpu in cpus[:n]:
                params.cpumask[cpu] = True
            params.strict_cpu = True
            pool = new(ctypes.byref(params))
            if not pool:
                for made in pools:
                    free(made)
                return None
            pools.append(pool)
        attach(ctx, pools[0], pools[-1])
        return cls(free, pools)

    def close(self) -> None:
        pools, self._pools = self._pools, []
        for pool in pools:
            self._free(pool)
