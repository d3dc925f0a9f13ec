"""Models by name (issue 20, ADR 0034): cold vs warm first token, switching between two
models that both fit, and memory with one, two and three models loaded.

    python bench/models.py [--model PATH] [--tiny PATH] [--rounds 3]

One `inferd serve` subprocess with three entries: the embedded Gemma 3 270M (loaded at
boot, the default) and the tiny random GGUF under two names (`a`, `b`, on demand;
written with tests/tiny_gguf.py when --tiny is not given). Over the v1 socket:
  cold     request to first token of `a` when it is not loaded (its load included)
  warm     the same once it is loaded
  switch   first token of a, b, a, b... with both loaded (no reload: Ollama keeps both
           when they fit, OLLAMA_MAX_LOADED_MODELS >= 2): should equal warm
and the RSS of the daemon and its runners with 1, 2, 3 models loaded against the sum
of the GGUF files plus KV (and against the daemon's own estimate, which also counts
compute buffers). Times are reported as ratios to warm, measured in the same run.
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

from benchkit import accepts, model_path  # noqa: E402

SMALL = {"n_ctx": 512, "parallel": 1, "n_threads": 1}


def rss_tree(pid: int) -> int:
    """RSS bytes of `pid` and its direct children (the runners)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) != pid and int(stat[1]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def children(pid: int) -> int:
    n = 0
    for entry in Path("/proc").iterdir():
        try:
            n += entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
        except (OSError, ValueError, IndexError):
            continue
    return n


async def first_token(sock: str, model: str | None, rid: str) -> float:
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 22)
    body = {"id": rid, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
    if model:
        body["model"] = model
    started = time.perf_counter()
    writer.write(json.dumps(body).encode() + b"\n")
    took = None
    while True:
        frame = json.loads(await reader.readline())
        if took is None and frame["type"] in ("token", "done"):
            took = time.perf_counter() - started
        if frame["type"] in ("done", "error"):
            break
    writer.close()
    if frame["type"] == "error":
        raise RuntimeError(frame["message"])
    return took  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--tiny")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    gemma = model_path(args.model)
    from inferd.daemon.models.budget import estimate
    from inferd.engine.llamacpp.settings import LlamaCppOptions
    from inferd.models.gguf import read_gguf

    with tempfile.TemporaryDirectory(prefix="ifd-bench-", dir="/tmp") as tmp:
        d = Path(tmp)
        tiny = args.tiny
        if tiny is None:
            from tiny_gguf import write_tiny_gguf

            tiny = str(write_tiny_gguf(d / "tiny.gguf", gemma))
        entries = [{"kind": "llamacpp", "name": "gemma", "model_path": gemma, **SMALL},
                   {"kind": "llamacpp", "name": "a", "model_path": tiny, "on_demand": True, **SMALL},
                   {"kind": "llamacpp", "name": "b", "model_path": tiny, "on_demand": True, **SMALL}]
        (d / "config.json").write_text(json.dumps({"backends": entries, "keep_alive": "1h"}))
        sock = str(d / "infer.sock")
        env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
        argv = [sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(d / "config.json"),
                "--no-embed", "--uds", sock, "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "lock")]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while not accepts(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            asyncio.run(first_token(sock, None, "boot"))  # the default model, loaded at boot
            rss = [rss_tree(proc.pid)]
            cold, warm, switch = [], [], []
            for r in range(args.rounds):
                # keep_alive 0 on the last warm request unloads `a`, so the next round is cold again.
                cold.append(asyncio.run(first_token(sock, "a", f"cold{r}")))
                if r == 0:
                    rss.append(rss_tree(proc.pid))
                warm += [asyncio.run(first_token(sock, "a", f"warm{r}.{i}")) for i in range(3)]
                asyncio.run(first_token(sock, "b", f"load-b{r}"))
                if r == 0:
                    rss.append(rss_tree(proc.pid))
                for i in range(4):
                    switch.append(asyncio.run(first_token(sock, "ab"[i % 2], f"switch{r}.{i}")))
                # unload both tiny models before the next round's cold start
                async def unload() -> None:
                    for name in "ab":
                        reader, writer = await asyncio.open_unix_connection(sock)
                        writer.write(json.dumps({"id": "u", "model": name, "keep_alive": 0, "max_tokens": 1,
                                                 "messages": [{"role": "user", "content": "x"}]}).encode() + b"\n")
                        while json.loads(await reader.readline())["type"] not in ("done", "error"):
                            pass
                        writer.close()
                asyncio.run(unload())
                wait_until = time.monotonic() + 30
                while children(proc.pid) > 1 and time.monotonic() < wait_until:
                    time.sleep(0.05)  # their runners end
        finally:
            proc.terminate()
            proc.wait(30)
    if os.environ.get("BENCH_DEBUG"):
        print("cold", cold, "\nwarm", warm, "\nswitch", switch)
    w = statistics.median(warm)
    print(f"first token, median of {args.rounds} rounds (ratio to warm {w * 1000:.1f} ms):")
    print(f"  cold (load included)  {statistics.median(cold) / w:8.1f}x")
    print(f"  warm                  {1.0:8.1f}x")
    print(f"  switching a<->b       {statistics.median(switch) / w:8.1f}x   (both fit: no reload)")
    opts = LlamaCppOptions(**{**SMALL, "n_threads": None})
    files = [read_gguf(gemma), read_gguf(tiny), read_gguf(tiny)]
    mib = 1 << 20
    print("RSS of daemon + runners vs GGUF files + KV (and the budget's estimate):")
    for n in (1, 2, 3):
        est = [estimate(f, opts) for f in files[:n]]
        gguf_kv = sum(f.file_bytes for f in files[:n]) + sum(e.kv for e in est)
        print(f"  {n} model(s): RSS {rss[n - 1] / mib:7.0f} MiB   files+KV {gguf_kv / mib:7.0f} MiB   "
              f"estimate {sum(e.total for e in est) / mib:7.0f} MiB")


if __name__ == "__main__":
    main()
