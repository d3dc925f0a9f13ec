"""A one-token decode with given llama.cpp settings, in a process of its own.

`inferd doctor` runs it through spawn.py, so that a native fault (the AMX kernels of
ADR 0019, a malformed model, a driver) is reported as a finding instead of being
suffered by the daemon later. Input on stdin: the LlamaCppSettings as JSON. Output on
stdout: one JSON object (what llama.cpp used, the token, the time); exit 0 on success.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

from .settings import LlamaCppSettings

PROMPT = "The capital of France is"
#: Set to "segv" (tests do), the decode faults as AMX kernels would, so the parent's
#: report of a dead engine can be checked on any CPU. It only ever kills this process.
FAULT_ENV = "INFERD_SELFTEST_FAULT"


def decode_one_token(settings: LlamaCppSettings) -> dict[str, object]:
    import llama_cpp.llama_cpp as L

    from .amx import cpu_features_used
    from .native import create_context, init_backend, load_model, system_features, tokenize

    started = time.monotonic()
    plan = init_backend(settings.verbose, settings.amx)
    model = load_model(str(settings.model_path), 0, repack=plan.extra_bufts and not settings.batch_invariant)
    try:
        params = L.llama_context_default_params()
        params.n_ctx = 256
        params.n_batch = params.n_ubatch = 64
        params.n_threads = params.n_threads_batch = settings.threads()
        ctx, flash = create_context(model, params, settings.flash_attn)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        try:
            vocab = L.llama_model_get_vocab(model)
            tokens = tokenize(vocab, PROMPT, add_special=True, parse_special=False)
            arr = (L.llama_token * len(tokens))(*tokens)
            if os.environ.get(FAULT_ENV) == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0:
                raise RuntimeError("llama_decode failed")
            n_vocab = L.llama_vocab_n_tokens(vocab)
            logits = ctypes.cast(L.llama_get_logits_ith(ctx, -1), ctypes.POINTER(ctypes.c_float * n_vocab)).contents
            token = max(range(n_vocab), key=logits.__getitem__)
            piece = L.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")
        finally:
            L.llama_free(ctx)
    finally:
        L.llama_model_free(model)
    return {"ok": True, "token": token, "piece": piece, "amx": plan.setting, "amx_reason": plan.reason,
            "repack": plan.extra_bufts and not settings.batch_invariant, "flash_attn": flash,
            "cpu_features": cpu_features_used(system_features()), "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    try:
        settings = LlamaCppSettings.model_validate_json(sys.stdin.read())
        result = decode_one_token(settings)
    except Exception as exc:  # noqa: BLE001 - the parent reports whatever went wrong
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
