"""What the AMX decision costs (ADR 0019): repacked CPU kernels kept vs no extra buffer types.

    python bench/amx.py [--model PATH ...] [--tokens 128] [--rounds 3] [--threads 2]
    LLAMA_BENCH=/path/to/llama-bench python bench/amx.py --model a.gguf --model b.gguf

Two legs per model, each inferd's LlamaCppBackend in this process, loaded in turn and
alternated round by round:
  repack   the engine's default: AMX withheld where it faults, repacked CPU kernels kept
  plain    no extra buffer types (the fallback where AMX cannot be withheld alone; the
           same weights layout as `batch_invariant: true`)
With LLAMA_BENCH set, llama-bench's `-p 512 -n N --repack 1,0` on the same file is the
reference: the daemon's decode with repack should be within a few percent of
llama-bench's tg with repack on (a llama-bench built without AMX: see bench/README).
Q4_0 and IQ4_NL are where repacking matters most; make a Q4_0 copy of a model with
`llama-quantize --allow-requantize IN OUT Q4_0`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from benchkit import Run, model_path, print_legs  # noqa: E402
from engine_decode import run_backend  # noqa: E402


def llama_bench(path: str, tokens: int, threads: int) -> dict[str, float] | None:
    exe = os.environ.get("LLAMA_BENCH")
    if not exe:
        print("   (LLAMA_BENCH not set: no llama-bench reference)")
        return None
    out = subprocess.run([exe, "-m", path, "-p", "512", "-n", str(tokens), "-t", str(threads), "--repack", "1,0",
                          "-r", "3", "-o", "json"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print("!! llama-bench failed:", out.stderr[-500:])
        return None
    res: dict[str, float] = {}
    for row in json.loads(out.stdout):
        kind = "pp" if row["n_prompt"] else "tg"
        res[f"{kind} repack={int(row.get('repack', row.get('use_extra_bufts', 1)))}"] = row["avg_ts"]
    return res


def bench_model(path: str, args: argparse.Namespace) -> None:
    from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

    legs: dict[str, list[Run]] = {"repack": [], "plain": []}
    for _ in range(args.rounds):
        for leg in legs:
            backend = LlamaCppBackend(LlamaCppSettings(model_path=path, n_ctx=2048, n_threads=args.threads,
                                                       batch_invariant=leg == "plain"))
            try:
                asyncio.run(run_backend(backend, 4))  # first-call allocations
                legs[leg].append(asyncio.run(run_backend(backend, args.tokens)))
            finally:
                backend.close()
    print(f"\n== {Path(path).name}  amx={backend.amx.setting}: {backend.amx.reason}")
    print_legs(legs, 10)
    rep = statistics.median(r.decode_tps for r in legs["repack"])
    plain = statistics.median(r.decode_tps for r in legs["plain"])
    print(f"decode plain/repack: {plain / rep:.3f}   ttft plain/repack: "
          f"{statistics.median(r.ttft_ms for r in legs['plain']) / statistics.median(r.ttft_ms for r in legs['repack']):.3f}")
    ref = llama_bench(path, args.tokens, args.threads)
    if ref:
        print("llama-bench tok/s: " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(ref.items())))
        if "tg repack=1" in ref:
            print(f"inferd repack decode / llama-bench tg repack=1: {rep / ref['tg repack=1']:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="a GGUF (repeatable); default the packaged Gemma 3 270M")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for path in args.model or [None]:
        bench_model(model_path(path), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
