"""A remote backend's speed through inferd vs the same client straight to the remote, same run.

    python bench/remote.py [--model PATH] [--tokens 128] [--rounds 5] [--threads N]

The remote is llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`)
on the embedded Gemma 3 270M, on a loopback port. Two legs ask it the same greedy
question, in alternation so background load hits both alike (medians reported):
  direct  an httpx client in this process, streaming `POST /v1/chat/completions` (SSE)
  inferd  `inferd serve` as a subprocess whose only backend is `kind: "openai"` on that
          server; the client streams v1 over the daemon's Unix socket (what an app sees)
Time to first token counts from writing the request to the first text; decode tok/s
counts the tokens after the first. Before each measured request every leg sends a
short different question, so the server's prompt cache never holds the measured
prompt and both legs prefill it in full. Goal (issue 11): inferd/direct >= 0.97 for
decode tok/s, and direct/inferd >= 0.97 for time to first token.
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
# This folder holds a bench named http.py, which must not shadow the standard
# library's `http` package that httpx imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.append(str(HERE))  # benchkit, after the standard library

import httpx  # noqa: E402
from benchkit import Run, accepts, free_port, median, model_path, print_legs  # noqa: E402

ALIAS = "bench-remote"
QUESTION = "Write a short story about a lighthouse keeper and a storm."


def _wait(pred, proc: subprocess.Popen, what: str, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up within {seconds:g} s")
        time.sleep(0.1)


def start_remote(model: str, args: argparse.Namespace, d: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", ALIAS,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads),
         "--n_threads_batch", str(args.threads), "--chat_format", "gemma", "--verbose", "false"],
        stdout=(d / "remote.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/models", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(up, proc, "llama_cpp.server")
    return proc, url


def start_inferd(url: str, d: Path) -> tuple[subprocess.Popen, str]:
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "openai", "name": "remote", "base_url": url,
                                             "model": ALIAS, "first_token_timeout_secs": 120}]}))
    sock = str(d / "infer.sock")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(cfg), "--no-embed", "--uds", sock,
         "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock")],
        env=env, stdout=subprocess.DEVNULL, stderr=(d / "inferd.log").open("wb"))
    _wait(lambda: accepts(sock), proc, "inferd serve")
    return proc, sock


def _chat(content: str, n: int) -> dict:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "top_p": 0.95,
            "seed": 1, "max_tokens": n}


async def run_direct(client: httpx.AsyncClient, url: str, n: int, evict: str) -> Run:
    # Same evicting question first, as the inferd leg does.
    r = await client.post(f"{url}/chat/completions", json={"model": ALIAS, **_chat(evict, 1)})
    r.raise_for_status()
    body = {"model": ALIAS, "stream": True, **_chat(QUESTION, n)}
    start = time.perf_counter()
    first = last = None
    text: list[str] = []
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for raw in response.aiter_lines():
            if not raw.startswith("data:"):
                continue
            data = raw[5:].strip()
            if data == "[DONE]":
                break
            delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
            if delta:
                now = time.perf_counter()
                text.append(delta)
                first = first or now
                last = now
    assert first is not None and last is not None
    count = len(text)  # llama.cpp servers stream one token per chunk
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text))


async def run_inferd(sock: str, n: int, evict: str) -> Run:
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 20)
    try:
        writer.write(json.dumps({"id": "evict", **_chat(evict, 1)}).encode() + b"\n")
        while not (await reader.readline()).startswith(b'{"type":"done"'):
            pass
        request = json.dumps({"id": "bench", **_chat(QUESTION, n)}).encode() + b"\n"
        start = time.perf_counter()
        writer.write(request)
        first = last = None
        text: list[str] = []
        while True:
            raw = await reader.readline()
            now = time.perf_counter()
            frame = json.loads(raw)
            if frame["type"] == "token":
                text.append(frame["content"])
                first = first or now
                last = now
            elif frame["type"] == "done":
                break
            else:
                raise RuntimeError(frame)
    finally:
        writer.close()
    assert first is not None and last is not None
    count = len(text)
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text))


async def bench(url: str, sock: str, args: argparse.Namespace) -> dict[str, list[Run]]:
    legs: dict[str, list[Run]] = {"direct": [], "inferd": []}
    async with httpx.AsyncClient(timeout=300) as client:
        await run_direct(client, url, 8, "Hello.")  # warm-up: connections, first allocations
        await run_inferd(sock, 8, "Hello.")
        for i in range(args.rounds):
            evict = f"Say the number {i}."
            # Alternate which leg goes first, so neither always follows the other.
            order = ("direct", "inferd") if i % 2 == 0 else ("inferd", "direct")
            for leg in order:
                if leg == "direct":
                    legs[leg].append(await run_direct(client, url, args.tokens, evict))
                else:
                    legs[leg].append(await run_inferd(sock, args.tokens, evict))
    return legs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    # The remote's decode threads: by default all cores but one, which the client and
    # inferd need (on a real deployment the remote has its own machine).
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="ifd-remote-", dir="/tmp"))
    remote, url = start_remote(model_path(args.model), args, d)
    daemon = None
    try:
        daemon, sock = start_inferd(url, d)
        legs = asyncio.run(bench(url, sock, args))
    finally:
        for proc in (daemon, remote):
            if proc is not None:
                proc.terminate()
                proc.wait(30)

    def med(name: str, attr: str) -> float:
        return median(legs, name, attr)

    print(f"remote llama_cpp.server (Gemma 3 270M)  greedy  max_tokens {args.tokens}  "
          f"threads {args.threads}  rounds {args.rounds}")
    print_legs(legs, 10)
    print(f"inferd/direct decode tok/s: {med('inferd', 'decode_tps') / med('direct', 'decode_tps'):.3f}   "
          f"direct/inferd ttft: {med('direct', 'ttft_ms') / med('inferd', 'ttft_ms'):.3f}   (goal >= 0.97)")
    # The two legs of one round ran back to back: their ratio is less exposed to load
    # that comes and goes over the whole run.
    pairs = list(zip(legs["direct"], legs["inferd"]))
    decode = statistics.median(i.decode_tps / d.decode_tps for d, i in pairs)
    ttft = statistics.median(d.ttft_ms / i.ttft_ms for d, i in pairs)
    extra = statistics.median(i.ttft_ms - d.ttft_ms for d, i in pairs)
    print(f"per-round medians: inferd/direct decode {decode:.3f}   direct/inferd ttft {ttft:.3f}   "
          f"inferd ttft - direct ttft {extra:+.1f} ms")
    texts = {name: runs[-1].text for name, runs in legs.items()}
    print("same text on both legs:", len(set(texts.values())) == 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
