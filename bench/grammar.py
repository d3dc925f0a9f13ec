"""Another client's stream beside a costly grammar (THREAT_MODEL F-11, ADR 0032).

    python bench/grammar.py [--model PATH] [--k 200] [--tokens 48] [--rounds 3] [--src DIR]

One `inferd serve --parallel 2 --http` on the real Gemma 3 270M. Each round, one client
streams a greedy `/v1/completions` of --tokens tokens twice, alternated:

  alone    nobody else is connected;
  beside   while another client's request decodes with the grammar
           `root ::= ("zq"? ... (K times) "\\x01")+` (about K parse stacks; under the
           per-token CPU budget at the default K, so it keeps decoding all along).

Reported: the client's decode rate (tokens after its first over the time since the
first) and its largest gap between two tokens, medians over the rounds, and the ratio
beside/alone. With --src DIR (e.g. `git archive <commit> src | tar -x -C DIR`) the daemon
runs that code instead: the same bench before ADR 0032. The machine is shared: compare
the ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/http.py would shadow the standard library's `http` (httpx needs it): this
# directory goes last on the path, only for benchkit.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
sys.path.insert(0, str(HERE.parent / "src"))
from benchkit import free_port, model_path  # noqa: E402

import httpx  # noqa: E402


def optionals(k: int) -> str:
    # Repeated, so every token of the request stands before about K optionals.
    return "root ::= (" + " ".join(['"zq"?'] * k) + ' "\\x01")+\n'


def start(model: str, args: argparse.Namespace, d: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    src = str(Path(args.src).resolve()) if args.src else str(HERE.parent / "src")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d),
               PYTHONPATH=src)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--backend", "llamacpp", "--model-path", model,
         "--n-ctx", "2048", "--n-threads", str(args.threads), "--parallel", "2", "--no-embed",
         "--uds", str(d / "infer.sock"), "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock"),
         "--no-v2", "--http", f"127.0.0.1:{port}", *(["--in-process"] if args.in_process else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("inferd did not start")
        time.sleep(0.2)


async def stream(h: httpx.AsyncClient, base: str, tokens: int) -> tuple[float, float]:
    """(decode tok/s after the first token, largest gap between tokens in s)."""
    body = {"prompt": "The history of the printing press", "max_tokens": tokens, "temperature": 0,
            "stream": True}
    stamps: list[float] = []
    async with h.stream("POST", base + "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), max(gaps)


async def run(base: str, args: argparse.Namespace) -> None:
    alone: list[tuple[float, float]] = []
    beside: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=600) as h:
        await stream(h, base, 4)  # warm up
        for _ in range(args.rounds):
            alone.append(await stream(h, base, args.tokens))
            hostile = asyncio.ensure_future(h.post(base + "/v1/completions", json={
                "prompt": "Say something.", "grammar": optionals(args.k), "max_tokens": 10_000}))
            await asyncio.sleep(1.0)  # its prompt is in, its grammar passes running
            beside.append(await stream(h, base, args.tokens))
            if hostile.done():
                print("!! the grammar request ended before the other stream did: "
                      f"{hostile.result().status_code} {hostile.result().text[:200]}", flush=True)
            hostile.cancel()
            await asyncio.sleep(1.0)  # its slot frees
    for name, legs in (("alone", alone), ("beside", beside)):
        tps = statistics.median(t for t, _ in legs)
        gap = statistics.median(g for _, g in legs)
        print(f"{name:7s} decode {tps:7.1f} tok/s   largest gap {gap * 1000:8.1f} ms")
    ratio = statistics.median(t for t, _ in beside) / statistics.median(t for t, _ in alone)
    print(f"ratio   beside/alone decode rate {ratio:.2f}x  (K = {args.k})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--src", help="run the daemon from this source tree (a baseline)")
    ap.add_argument("--in-process", action="store_true", help="llama.cpp in the daemon's process, no runner")
    args = ap.parse_args()
    model = model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="inferd-grammar-") as tmp:
        proc, base = start(model, args, Path(tmp))
        try:
            asyncio.run(run(base, args))
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
