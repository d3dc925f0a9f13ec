"""Decode speed through the daemon's Unix socket vs llama-cpp-python in-process, same run.

    python bench/decode.py [--model PATH] [--tokens 128] [--threads 2] [--rounds 5]

Legs with greedy sampling and 2 threads, run in alternation so background load hits
each alike (medians reported):
  reference  llama-cpp-python `create_completion(stream=True)`, in a process of its own
  backend    inferd's LlamaCppBackend, in a process of its own (no sockets, one sequence)
  daemon     `inferd serve --backend llamacpp` as a subprocess, streamed over its Unix
             socket to a client in this process (what an app sees); llama.cpp runs in
             the daemon's runner process (ADR 0025)
  inproc     the same daemon with `--in-process`: daemon/inproc is what the runner costs
             (the runner sends a stream's tokens at most once per frame interval while
             steps are shorter: 30 ms where the decode threads take every core, as the
             header says; the in-process engine wakes the daemon every step)
  tools      the same daemon over its v2 socket, two tools declared but not called:
             the output parser (reasoning split, tool-call scan) runs on every token
  server     llama-server (LLAMA_SERVER; skipped when unset) with inferd's default slots
             (4 of n_ctx each), fed the same prompt tokens over /completion with
             `cache_prompt` off: the rate and first token a user's first request would
             get from llama.cpp's server (with it on, llama-server finds the prompt in
             another slot's cache and its first token skips the prefill)
  raw        the same daemon over v1 with `prompt` set to exactly the text the tools
             leg renders (tools declared in it) and no tools: the same tokens in, the
             same tokens out, no tool parsing. tools/raw is what declaring tools costs
             per token; tools/daemon also holds the longer prompt's attention cost
             (304 prompt tokens instead of 17 on Gemma 3 270M).
With LLAMA_BENCH set, llama-bench's tg rate (one sequence, no server, no sampling)
is a leg of its own, two repetitions in every round: the ceiling the daemon leg is
held to (issue 18's goal: daemon decode >= 0.97x tg and >= server, first token no
later than server's), measured in the same alternation as the legs it is compared
with (this box's speed drifts by 10% within an hour; one tg figure before and one
after the legs made the ratio follow the drift).
With `--tools-build`, every leg runs the llama.cpp libraries next to LLAMA_BENCH (the
daemon, its runner and the in-process legs load them through llama-cpp-python's
LLAMA_CPP_LIB_PATH) instead of llama-cpp-python's own build. On a CPU with AMX the
two differ: pip builds for the native CPU, and the tools must be built without AMX;
that alone moved daemon/tg by about 1% here (ADR 0035, addendum 3). What differed was
the compiler's tuning for the CPU it guessed, not the instruction set: the README's
install asks for generic tuning (`-mtune=generic`, addendum 6), but pip reuses a
llama-cpp-python it built before that. The header says which build the legs ran.
The daemons run their defaults but for `--n-ctx` (default: the daemon's own, 8192 per
slot) and the threads. The in-process legs run in child processes: two engines
decoding in one process slow each other (engine_decode.py says why).
Time to first token counts from writing the request; decode tok/s counts the tokens
after the first. Before every round each leg sends a request of other text, so the
daemon, inproc and server legs prefill (nearly) the whole prompt; `cached` shows the
prompt tokens the daemon found cached in the last round. The tools and raw legs find
their ~300-token prompt cached: the daemon copies a long shared prefix from another
slot (ADR 0018), so their first token is not a first request's; tools/raw compares
like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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

from benchkit import Run, accepts, median, model_path, print_legs  # noqa: E402
from cpptools import http_stream, llama_bench_tg, start_llama_server, tool, tools_lib_dir  # noqa: E402
from engine_decode import PROMPT, LegWorker  # noqa: E402


def _v1(content: str, max_tokens: int) -> dict:
    return {"id": "bench", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens}


def _v2(content: str, max_tokens: int, **extra: object) -> dict:
    return {"id": "bench", "messages": [{"role": "user", "content": [{"type": "text", "text": content}]}],
            "temperature": 0, "max_tokens": max_tokens, **extra}


def _v1_text(frame: dict) -> str | None:
    return frame["content"] if frame["type"] == "token" else None


def _v2_text(frame: dict) -> str | None:
    if frame["type"] != "frame":
        return None
    if frame["block"]["type"] == "tool_use":
        raise RuntimeError("the tools leg must not call a tool; pick another prompt")
    return frame["block"]["delta"]


async def _stream(sock: str, warm: dict, request: dict, text_of, completion_key: str) -> Run:
    """One timed request over a socket, after a different one that moves the KV cache off it."""
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 20)
    try:
        writer.write(json.dumps(warm).encode() + b"\n")
        while not (await reader.readline()).startswith(b'{"type":"done"'):
            pass
        start = time.perf_counter()
        writer.write(json.dumps(request).encode() + b"\n")
        first = last = None
        text = []
        while True:
            frame = json.loads(await reader.readline())
            now = time.perf_counter()
            piece = text_of(frame)
            if piece is not None:
                text.append(piece)
                if first is None:
                    first = now
                last = now
            elif frame["type"] == "done":
                count = frame["usage"][completion_key]
                cached = frame["usage"].get("cached_tokens", 0)
                break
            else:
                raise RuntimeError(frame)
    finally:
        writer.close()
    assert first is not None and last is not None
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text), cached)


async def run_daemon(sock: str, n: int) -> Run:
    return await _stream(sock, _v1("hi", 1), _v1(PROMPT[0]["content"], n), _v1_text, "completion_tokens")


TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "get_time", "description": "Current time in a time zone.",
     "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}},
]


async def run_daemon_raw(sock: str, prompt: str, n: int) -> Run:
    request = {"id": "bench", "prompt": prompt, "temperature": 0, "max_tokens": n}
    return await _stream(sock, _v1("hi", 1), request, _v1_text, "completion_tokens")


async def run_daemon_tools(sock: str, n: int) -> Run:
    request = _v2(PROMPT[0]["content"], n, tools=TOOLS, tool_choice="auto")
    return await _stream(sock, _v2("hi", 1), request, _v2_text, "output_tokens")


async def run_server(port: int, tokens: list[int], n: int) -> Run:
    """llama-server's /completion with the daemon's prompt tokens, evaluated whole.

    `cache_prompt` is off: with several slots llama-server sends a prompt to the slot
    whose cache shares the most of it (LCP similarity), so a warm-up request of other
    text does not move its cache off the prompt, as it does for the daemon, and the
    first token came from a one-token prefill (measured: 33 ms cached vs 48 ms whole
    on Gemma 3 270M, 17 tokens). A user's first request has nothing cached."""
    await http_stream(port, {"prompt": "hi", "n_predict": 1, "temperature": 0, "stream": True})
    s = await http_stream(port, {"prompt": tokens, "n_predict": n, "temperature": 0, "stream": True,
                                 "cache_prompt": False})
    assert s.first is not None and s.last is not None
    tps = (s.tokens - 1) / (s.last - s.first) if s.tokens > 1 and s.last > s.first else 0.0
    return Run((s.first - s.sent) * 1000, tps, s.tokens, s.text)


def start_daemon(model: str, args: argparse.Namespace, d: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    d.mkdir(exist_ok=True)
    sock = str(d / "infer.sock")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--backend", "llamacpp", "--model-path", model,
         "--n-ctx", str(args.n_ctx), "--n-threads", str(args.threads), "--no-embed", "--uds", sock,
         "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock"),
         "--v2", "--v2-addr", str(d / "v2.sock"), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not accepts(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("daemon did not start")
        time.sleep(0.1)
    return proc, sock


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--tools-build", action="store_true",
                    help="run every leg on the llama.cpp libraries next to LLAMA_BENCH")
    args = ap.parse_args()
    spec = importlib.util.find_spec("llama_cpp")
    own = Path(spec.submodule_search_locations[0]) / "lib" if spec and spec.submodule_search_locations else "?"
    build = f"llama-cpp-python's own ({own})"
    if args.tools_build:
        lib = tools_lib_dir()
        if lib is None:
            print("!! --tools-build needs LLAMA_BENCH (or LLAMA_SERVER) next to a shared libllama")
            return 2
        os.environ["LLAMA_CPP_LIB_PATH"] = lib  # the daemons, runners and leg workers inherit it
        build = f"the tools' ({lib})"

    path = model_path(args.model)
    d = Path(tempfile.mkdtemp(prefix="ifd-decode-", dir="/tmp"))
    proc, sock = start_daemon(path, args, d)
    inproc_proc, inproc_sock = start_daemon(path, args, d / "inproc", "--in-process")
    # The in-process legs each in a process of their own (two engines in one process
    # slow both: engine_decode.py says why).
    backend = LegWorker("backend", path, args.threads, args.n_ctx)
    reference = LegWorker("reference", path, args.threads, args.n_ctx)
    tokens = backend.prepare(PROMPT)["tokens"]
    legs: dict[str, list[Run]] = {"reference": [], "backend": [], "daemon": [], "inproc": [], "tools": [],
                                   "raw": []}
    server_bin, bench_bin = tool("server"), tool("bench")
    server = None
    if server_bin:
        server = start_llama_server(server_bin, path, args.n_ctx, 4, args.threads, d)
        legs["server"] = []
    tg: list[float] = []
    tools_prompt = backend.prepare(PROMPT, TOOLS)["prompt"]
    v2_sock = str(d / "v2.sock")
    try:
        reference.run(8, tokens)  # warm-up: first-call allocations everywhere
        backend.run(8)
        asyncio.run(run_daemon(sock, 8))
        asyncio.run(run_daemon(inproc_sock, 8))
        asyncio.run(run_daemon_tools(v2_sock, 8))
        asyncio.run(run_daemon_raw(sock, tools_prompt, 8))
        if server:
            asyncio.run(run_server(server[1], tokens, 8))
        for _ in range(args.rounds):
            legs["reference"].append(reference.run(args.tokens, tokens))
            legs["backend"].append(backend.run(args.tokens))
            legs["daemon"].append(asyncio.run(run_daemon(sock, args.tokens)))
            legs["inproc"].append(asyncio.run(run_daemon(inproc_sock, args.tokens)))
            legs["tools"].append(asyncio.run(run_daemon_tools(v2_sock, args.tokens)))
            legs["raw"].append(asyncio.run(run_daemon_raw(sock, tools_prompt, args.tokens)))
            if server:
                legs["server"].append(asyncio.run(run_server(server[1], tokens, args.tokens)))
            if bench_bin:
                rate = llama_bench_tg(bench_bin, path, args.threads, args.tokens, reps=2)
                if rate:
                    tg.append(rate)
    finally:
        for p in (proc, inproc_proc, *([server[0]] if server else [])):
            p.terminate()
            p.wait(30)
        backend.close()
        reference.close()

    def med(name: str, attr: str) -> float:
        return median(legs, name, attr)

    from inferd.engine.llamacpp.settings import LlamaCppSettings

    chosen = LlamaCppSettings(model_path=path, n_threads=args.threads)
    cpus = ",".join(map(str, chosen.decode_cpus())) or "any"
    print(f"model {backend.info['label']}  prompt {len(tokens)} tokens  greedy  max_tokens {args.tokens}  "
          f"threads {args.threads}  rounds {args.rounds}  llama.cpp build: {build}  "
          f"runner frame interval {chosen.frame_interval():g} ms (ADR 0035 addendum 4)  "
          f"decode CPUs {cpus} (addendum 5)")
    print_legs(legs, 12, (f"{'cached':>8}", lambda name: f"{legs[name][-1].cached:8d}"))
    for a, b in (("daemon", "reference"), ("daemon", "backend"), ("daemon", "inproc"), ("backend", "reference"),
                 ("tools", "daemon"),
                 ("tools", "raw")):
        print(f"{a}/{b}: decode {med(a, 'decode_tps') / med(b, 'decode_tps'):.3f}   "
              f"ttft {med(a, 'ttft_ms') / med(b, 'ttft_ms'):.3f}")
    if server:
        print(f"daemon/server: decode {med('daemon', 'decode_tps') / med('server', 'decode_tps'):.3f}   "
              f"ttft {med('daemon', 'ttft_ms') / med('server', 'ttft_ms'):.3f}")
    if tg:
        ceiling = statistics.median(tg)
        print(f"llama-bench tg{args.tokens} by round: {' '.join(f'{t:.1f}' for t in tg)} tok/s (median "
              f"{ceiling:.1f})   daemon/tg {med('daemon', 'decode_tps') / ceiling:.3f}   inproc/tg "
              f"{med('inproc', 'decode_tps') / ceiling:.3f}   backend/tg {med('backend', 'decode_tps') / ceiling:.3f}"
              + (f"   server/tg {med('server', 'decode_tps') / ceiling:.3f}" if server else ""))
    texts = {name: runs[-1].text for name, runs in legs.items() if name not in ("tools", "raw")}
    groups: dict[str, list[str]] = {}
    for name, text in texts.items():
        groups.setdefault(text, []).append(name)
    print("same text on the plain legs:", len(groups) == 1,
          "" if len(groups) == 1 else "(" + " | ".join(" = ".join(g) for g in groups.values()) + ")",
          "  tools and raw:", legs["tools"][-1].text == legs["raw"][-1].text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
