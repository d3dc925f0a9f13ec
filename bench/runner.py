"""What the runner process costs (ADR 0025): the daemon with its runner vs `--in-process`.

    python bench/runner.py [--model PATH] [--tokens 128] [--rounds 3] [--clients 1,8] [--parallel 8]

Each round starts both daemons in turn (alternated, so background load hits both alike)
as `inferd serve` subprocesses and measures, over the v1 Unix socket:
  boot     from the process start to the inference socket (model load included)
  N        N clients streaming the same greedy request at once: per-stream decode
           tok/s (median) and aggregate tok/s (all tokens / first to last token)
and, for the runner only, `crash`: SIGKILL the runner, then one request: seconds from
the kill to its first token (the restart's model load included; `boot` of the
in-process daemon is about what that load costs).
The tiny model (`python ../shared/tools/make_tiny_gguf.py /tmp/tiny-gemma3.gguf`)
shows the per-token cost of everything around llama.cpp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from benchkit import accepts, model_path  # noqa: E402

PROMPT = "Write about the ocean."


def start(model: str, args: argparse.Namespace, d: Path, in_process: bool) -> tuple[subprocess.Popen, str, float]:
    sock = str(d / "infer.sock")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
    argv = [sys.executable, "-m", "inferd.cli.main", "serve", "--backend", "llamacpp", "--model-path", model,
            "--n-ctx", str(args.n_ctx), "--n-threads", str(args.threads), "--parallel", str(args.parallel),
            "--no-embed", "--no-v2", "--uds", sock, "--admin-addr", str(d / "admin.sock"),
            "--lock", str(d / "inferd.lock")] + (["--in-process"] if in_process else [])
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not accepts(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("daemon did not start")
        time.sleep(0.005)
    return proc, sock, time.perf_counter() - started



async def stream(sock: str, n: int, rid: str) -> tuple[float, float, int]:
    """(first token time, last token time, tokens) of one greedy request."""
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 20)
    body = {"id": rid, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": n}
    writer.write(json.dumps(body).encode() + b"\n")
    first = last = 0.0
    count = 0
    try:
        while True:
            frame = json.loads(await reader.readline())
            if frame["type"] == "token":
                last = time.perf_counter()
                first = first or last
            elif frame["type"] == "done":
                count = frame["usage"]["completion_tokens"]
                break
            else:
                raise RuntimeError(frame)
    finally:
        writer.close()
    return first, last, count


async def clients(sock: str, n: int, tokens: int) -> tuple[float, float]:
    """(median per-stream decode tok/s, aggregate tok/s) of n clients at once."""
    await stream(sock, 4, "warm")
    runs = await asyncio.gather(*(stream(sock, tokens, f"c{i}") for i in range(n)))
    per = [(c - 1) / (b - a) for a, b, c in runs if c > 1 and b > a]
    span = max(b for _, b, _ in runs) - min(a for a, _, _ in runs)
    return statistics.median(per), sum(c for _, _, c in runs) / span


def runner_pid(daemon_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid and b"llamacpp.runner" in cmd:
                return int(entry.name)
    raise RuntimeError("no runner found")


async def crash_to_serving(sock: str, daemon_pid: int) -> float:
    await stream(sock, 2, "before")
    killed = time.perf_counter()
    os.kill(runner_pid(daemon_pid), signal.SIGKILL)
    while True:
        # Requests during the restart wait for the new runner; one sent at the very
        # moment of the kill may still meet the old one and get its error.
        try:
            first, _, _ = await stream(sock, 2, "after")
            return first - killed
        except RuntimeError:
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()
    model = model_path(args.model)
    counts = [int(c) for c in args.clients.split(",")]
    res: dict[str, dict[str, list[float]]] = {m: {} for m in ("runner", "inproc")}
    for round_ in range(args.rounds):
        # Each mode goes first in every other round (ABBA): a fixed order gave whichever
        # ran second the caches and clocks the first left behind.
        for mode in (("runner", "inproc") if round_ % 2 == 0 else ("inproc", "runner")):
            d = Path(tempfile.mkdtemp(prefix="ifd-runner-", dir="/tmp"))
            proc, sock, boot = start(model, args, d, mode == "inproc")
            try:
                res[mode].setdefault("boot s", []).append(boot)
                for n in counts:
                    per, agg = asyncio.run(clients(sock, n, args.tokens))
                    res[mode].setdefault(f"{n} per-stream", []).append(per)
                    res[mode].setdefault(f"{n} aggregate", []).append(agg)
                if mode == "runner":
                    res[mode].setdefault("crash->token s", []).append(asyncio.run(crash_to_serving(sock, proc.pid)))
            finally:
                proc.terminate()
                proc.wait(60)
    print(f"model {Path(model).name}  max_tokens {args.tokens}  parallel {args.parallel}  threads {args.threads}  "
          f"rounds {args.rounds} (medians)")
    keys = list(res["runner"])
    print(f"{'':22}{'runner':>10}{'inproc':>10}{'ratio':>8}   per-round ratios (runner / the inproc of "
          "the same round): min .. max")
    for key in keys:
        r = statistics.median(res["runner"][key])
        i = res["inproc"].get(key)
        im = statistics.median(i) if i else None
        ratio = f"{r / im:8.3f}" if im else ""
        spread = ""
        if i:
            paired = sorted(a / b for a, b in zip(res["runner"][key], i))
            spread = f"   {paired[0]:.3f} .. {paired[-1]:.3f}"
        print(f"{key:22}{r:10.3f}{(f'{im:10.3f}' if im else ''):>10}{ratio}{spread}")
    boot_gap = statistics.median(res["runner"]["boot s"]) - statistics.median(res["inproc"]["boot s"])
    print(f"boot: runner is {boot_gap:+.3f} s vs in process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
