"""Decode threads on CPUs of their own vs the kernel's placement, same run.

    python bench/placement.py [--model PATH] [--tokens 128] [--threads 2] [--rounds 12]

Two daemons (llama.cpp in its runner, defaults but for the threads): one with
`--cpu-strict on` (the decode thread that calls llama_decode keeps the first CPU, each
OpenMP worker the next, and the daemon's event loop stays off the first while the runner
decodes: ADR 0035 addendum 5; the default where decoding takes every core), one with
`--cpu-strict off`. One client streams the same greedy request to each in turn, in an
order shuffled per round, so the box's drift and noise hit both alike; decode tok/s
counts the tokens after the first. Prints each side's median, their ratio and the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from benchkit import model_path  # noqa: E402
from decode import run_daemon, start_daemon  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    path = model_path(args.model)
    from inferd.engine.llamacpp.settings import LlamaCppSettings

    on_cpus = LlamaCppSettings(model_path=path, n_threads=args.threads, cpu_strict=True).decode_cpus()
    if not on_cpus:
        print(f"!! {args.threads} threads cannot each have a CPU of their own here: nothing to compare")
        return 2
    root = Path(tempfile.mkdtemp(prefix="inferd-placement-"))
    daemons = {side: start_daemon(path, args, root / side, "--cpu-strict", side) for side in ("off", "on")}
    rates: dict[str, list[float]] = {side: [] for side in daemons}
    try:
        for _, sock in daemons.values():
            asyncio.run(run_daemon(sock, 8))  # warm: the runner's first decode builds its OpenMP team
        for r in range(args.rounds):
            order = list(daemons)
            random.Random(r).shuffle(order)
            for side in order:
                rates[side].append(asyncio.run(run_daemon(daemons[side][1], args.tokens)).decode_tps)
    finally:
        for proc, _ in daemons.values():
            proc.terminate()
            proc.wait()
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    paired = statistics.median(a / b for a, b in zip(rates["on"], rates["off"]))
    print(f"threads {args.threads}  tokens {args.tokens}  rounds {args.rounds}  decode CPUs with it on: "
          f"{','.join(map(str, on_cpus))}")
    print(f"cpu_strict on   {on:7.2f} tok/s\ncpu_strict off  {off:7.2f} tok/s")
    print(f"on/off: decode {on / off:.3f}   per-round median {paired:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
