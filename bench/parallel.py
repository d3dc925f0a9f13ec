"""Several clients at once: inferd's continuous batching beside llama.cpp's own tools.

    LLAMA_SERVER=... LLAMA_BATCHED_BENCH=... LLAMA_BENCH=... \\
    python bench/parallel.py [--model PATH] [--tiny PATH] [--clients 1,2,4,8] [--rounds 3]
                             [--baseline-src DIR] [--sections throughput,long,stall,baseline,evidence]

For each model (the real Gemma 3 270M, and the tiny random model that
../shared/tools/make_tiny_gguf.py writes, where everything around llama.cpp shows):

  throughput   N concurrent clients (distinct prompts, greedy, --tokens each) through
               `inferd serve --parallel 8` over its Unix socket, and through llama-server
               `--parallel 8` over HTTP (/completion, the same prompt tokens), alternated
               round by round so background load hits both alike; and through the same
               daemon with `--in-process` (llama.cpp in the daemon's own process, no
               runner; issue 18: inproc/inferd is what the runner costs). Aggregate tok/s (all
               tokens / wall time), decode tok/s (tokens after each client's first / time
               from the first first-token to the last token), TTFT p50/p95 per client.
  ceilings     llama-batched-bench (decode S_TG at N sequences, same prompt length and
               tokens, run before and after the legs) and llama-bench tg (one sequence).
  long         (real model) first turn of a chat with 459 / 1,792 / 6,680 prompt tokens
               through the chat template, one client, fresh prompt each round: TTFT.
  stall        (real model) 3 clients stream while a 6,680-token prompt arrives: the
               longest gap between two tokens of theirs until its first token, per server.
  baseline     with --baseline-src (a checkout of the code before parallel sequences,
               e.g. `git archive HEAD src | tar -x -C DIR`): one client's decode through
               today's daemon vs that one, alternated (goal: >= 0.97x).
  evidence     (in process) 8 greedy prompts alone and 8 at once, default kernels and
               batch_invariant: how many texts are identical (ADR 0018).

The C++ tools come from the llama.cpp sources vendored in llama-cpp-python's sdist
(see ADR 0018 for the build line); their paths are read from LLAMA_SERVER,
LLAMA_BATCHED_BENCH and LLAMA_BENCH, and a missing one is reported, its legs skipped.
The machine is shared: compare the same-run ratios, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))
from benchkit import accepts, model_path  # noqa: E402
from cpptools import Stream, batched_bench, http_stream, llama_bench_tg, start_llama_server, tool  # noqa: E402

TOPICS = ["the sea", "a lighthouse", "the moon", "a city at night", "a forest", "a desert caravan", "an old ship",
          "a mountain village", "a robot", "a dragon", "a library", "a storm", "a garden", "a train journey",
          "a winter market", "a volcano", "a space station", "a river", "a clockmaker", "a circus",
          "a detective", "a pirate", "a bakery", "a snowfall", "a cathedral", "an island", "a comet", "a harbour",
          "a farm", "a museum", "a jazz club", "a monastery"]
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---- clients -------------------------------------------------------------------------

async def inferd_stream(sock: str, messages: list[dict], n: int, rid: str, keep_times: bool = False,
                        stop: asyncio.Event | None = None) -> Stream:
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 22)
    out = Stream()
    try:
        body = {"id": rid, "messages": messages, "temperature": 0, "max_tokens": n}
        out.sent = time.perf_counter()
        writer.write(json.dumps(body).encode() + b"\n")
        parts = []
        while True:
            raw = await reader.readline()
            now = time.perf_counter()
            if not raw:
                break
            frame = json.loads(raw)
            if frame["type"] == "token":
                out.token(now, keep_times)
                parts.append(frame["content"])
                if stop is not None and stop.is_set():
                    break
            elif frame["type"] == "done":
                out.tokens = frame["usage"]["completion_tokens"]
                break
            else:
                raise RuntimeError(f"inferd: {frame}")
        out.text = "".join(parts)
    finally:
        writer.close()
    return out


# ---- servers -------------------------------------------------------------------------

class Servers:
    def __init__(self, model: str, n_ctx: int, parallel: int, threads: int, workdir: Path,
                 server_bin: str | None, baseline_src: str | None, inproc: bool = True) -> None:
        self.model, self.n_ctx, self.parallel, self.threads = model, n_ctx, parallel, threads
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.sock = self._inferd("new", SRC, parallel=parallel)
        self.inproc = self._inferd("inproc", SRC, parallel=parallel, extra=["--in-process"]) if inproc else None
        self.baseline = self._inferd("base", Path(baseline_src) / "src", parallel=None) if baseline_src else None
        self.today = self._inferd("today", SRC, parallel=None) if baseline_src else None
        self.port = self._llama_server(server_bin) if server_bin else None

    def _inferd(self, name: str, src: Path, parallel: int | None, extra: list[str] | None = None) -> str:
        d = self.dir / name
        d.mkdir()
        sock = str(d / "infer.sock")
        env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), PYTHONPATH=str(src), XDG_RUNTIME_DIR=str(d))
        # v2 is off by default in older checkouts (no --no-v2 flag there).
        usage = subprocess.run([sys.executable, "-m", "inferd.cli.main", "serve", "--help"], env=env,
                               capture_output=True, text=True).stdout
        no_v2 = ["--no-v2"] if "--no-v2" in usage else []
        argv = [sys.executable, "-m", "inferd.cli.main", "serve", "--backend", "llamacpp", "--model-path", self.model,
                "--n-ctx", str(self.n_ctx), "--n-threads", str(self.threads), "--no-embed", *no_v2, "--uds", sock,
                "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock"), "--queue-depth", "64"]
        if parallel is not None:
            argv += ["--parallel", str(parallel)]
        argv += extra or []
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(d / "stderr", "wb"))
        self.procs.append(proc)
        deadline = time.monotonic() + 180
        while not accepts(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inferd ({name}) did not start: {(d / 'stderr').read_text()[-2000:]}")
            time.sleep(0.1)
        return sock

    def _llama_server(self, binary: str) -> int:
        proc, port = start_llama_server(binary, self.model, self.n_ctx, self.parallel, self.threads, self.dir)
        self.procs.append(proc)
        return port

    def close(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# ---- prompts -------------------------------------------------------------------------

class Prompts:
    """Chat messages and the exact tokens inferd feeds for them (llama-server gets the tokens)."""

    def __init__(self, model: str) -> None:
        import llama_cpp.llama_cpp as L

        from inferd.engine.llamacpp.native import init_backend, tokenize
        from inferd.engine.llamacpp.templates import GemmaRenderer

        init_backend(False)
        params = L.llama_model_default_params()
        params.vocab_only = True
        self._model = L.llama_model_load_from_file(model.encode(), params)
        self._vocab = L.llama_model_get_vocab(self._model)
        self._render = GemmaRenderer().render
        self._tokenize = tokenize

    def tokens(self, messages: list[dict]) -> list[int]:
        text = self._render(messages)
        return self._tokenize(self._vocab, text, add_special=not text.startswith("<bos>"), parse_special=True)

    def story(self, i: int) -> list[dict]:
        return [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} (part {i // len(TOPICS)})."}]

    def sized(self, n_tokens: int, tag: str) -> list[dict]:
        """A first chat turn whose rendered prompt is about `n_tokens` tokens, unique to `tag`."""
        filler = ("The harbour master kept a log of every ship: its name, its cargo, the weather and the tide. ")
        lo, hi = 1, n_tokens
        while lo < hi:  # the number of filler sentences that reaches n_tokens
            mid = (lo + hi) // 2
            if len(self.tokens(self._chat(tag, filler, mid))) < n_tokens:
                lo = mid + 1
            else:
                hi = mid
        return self._chat(tag, filler, lo)

    @staticmethod
    def _chat(tag: str, filler: str, k: int) -> list[dict]:
        return [{"role": "user", "content": f"[{tag}] Summarise this log. " + filler * k}]


# ---- legs ----------------------------------------------------------------------------

@dataclass
class Leg:
    aggregate: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def summarise(streams: list[Stream], leg: Leg) -> None:
    start = min(s.sent for s in streams)
    end = max(s.last or s.sent for s in streams)
    total = sum(s.tokens for s in streams)
    leg.aggregate.append(total / (end - start))
    first = min(s.first for s in streams if s.first)
    after_first = sum(max(s.tokens - 1, 0) for s in streams)
    leg.decode.append(after_first / (end - first) if end > first else 0.0)
    leg.ttft_ms += [(s.first - s.sent) * 1000 for s in streams if s.first]
    leg.tokens.append(total)


async def one_round(servers: Servers, prompts: Prompts, n_clients: int, n_tokens: int, r: int,
                    legs: dict[str, Leg]) -> None:
    chats = [prompts.story(r * 64 + n_clients * 8 + i) for i in range(n_clients)]
    daemons = [("inferd", servers.sock)] + ([("inproc", servers.inproc)] if servers.inproc else [])
    # The runner and in-process daemons take turns at going first (ABBA over the rounds):
    # whichever runs right after llama-server's leg or an idle moment meets other caches.
    for name, sock in (daemons if r % 2 == 0 else daemons[::-1]):
        streams = await asyncio.gather(*(inferd_stream(sock, m, n_tokens, f"r{r}c{i}") for i, m in enumerate(chats)))
        summarise(list(streams), legs[name])
    if servers.port:
        bodies = [{"prompt": prompts.tokens(m), "n_predict": n_tokens, "temperature": 0, "stream": True,
                   "cache_prompt": True} for m in chats]
        streams = await asyncio.gather(*(http_stream(servers.port, b) for b in bodies))
        summarise(list(streams), legs["llama-server"])


async def long_prompts(servers: Servers, prompts: Prompts, sizes: list[int], rounds: int) -> None:
    print(f"\n-- long prompts: first turn of a chat, one client, TTFT ms (median of {rounds}) --")
    print(f"{'prompt tokens':>14}{'inferd':>10}{'llama-server':>14}{'ratio':>8}")
    for size in sizes:
        ours, theirs = [], []
        actual = 0
        for r in range(rounds):
            # Alternate who goes first: a noisy neighbour then hits both alike.
            for who in (("inferd", "server") if r % 2 == 0 else ("server", "inferd")):
                if who == "inferd":
                    m = prompts.sized(size, f"i{size}-{r}")
                    actual = len(prompts.tokens(m))
                    s = await inferd_stream(servers.sock, m, 1, f"long{size}-{r}")
                    ours.append((s.first - s.sent) * 1000)
                elif servers.port:
                    m = prompts.sized(size, f"s{size}-{r}")
                    s = await http_stream(servers.port, {"prompt": prompts.tokens(m), "n_predict": 1, "temperature": 0,
                                                         "stream": True, "cache_prompt": True})
                    theirs.append((s.first - s.sent) * 1000)
        a = statistics.median(ours)
        b = statistics.median(theirs) if theirs else float("nan")
        print(f"{actual:>14}{a:>10.0f}{b:>14.0f}{a / b:>8.2f}", flush=True)


async def stall(servers: Servers, prompts: Prompts, size: int) -> None:
    print(f"\n-- stall: 3 clients streaming while a {size}-token prompt arrives --")
    print(f"{'':14}{'long TTFT ms':>14}{'max gap ms':>12}{'median gap ms':>15}{'their tokens':>14}")

    async def measure(name: str, start_stream, start_long) -> None:
        stop = asyncio.Event()
        runners = [asyncio.ensure_future(start_stream(i, stop)) for i in range(3)]
        await asyncio.sleep(1.5)  # a bench, not a test: let them reach steady decoding
        t0 = time.perf_counter()
        long = await start_long()
        t1 = long.first or time.perf_counter()
        stop.set()
        streams = await asyncio.gather(*runners)
        gaps = []
        for s in streams:
            inside = [t for t in s.times if t0 <= t <= t1]
            edge = [t for t in s.times if t < t0][-1:] + inside + [t for t in s.times if t > t1][:1]
            gaps += [(b - a) * 1000 for a, b in zip(edge, edge[1:])]
        n = sum(len([t for t in s.times if t0 <= t <= t1]) for s in streams)
        print(f"{name:14}{(t1 - t0) * 1000:>14.0f}{max(gaps, default=float('nan')):>12.0f}"
              f"{statistics.median(gaps) if gaps else float('nan'):>15.0f}{n:>14}", flush=True)

    m = prompts.sized(size, "stall-i")
    await measure("inferd",
                  lambda i, stop: inferd_stream(servers.sock, prompts.story(900 + i), 4000, f"st{i}", True, stop),
                  lambda: inferd_stream(servers.sock, m, 1, "stall-long"))
    if servers.port:
        m2 = prompts.sized(size, "stall-s")
        await measure("llama-server",
                      lambda i, stop: http_stream(servers.port, {"prompt": prompts.tokens(prompts.story(900 + i)),
                                                                 "n_predict": 4000, "temperature": 0, "stream": True},
                                                  True, stop),
                      lambda: http_stream(servers.port, {"prompt": prompts.tokens(m2), "n_predict": 1,
                                                         "temperature": 0, "stream": True}))


async def baseline(servers: Servers, prompts: Prompts, rounds: int, n_tokens: int) -> None:
    print(f"\n-- one client through today's daemon vs the code before parallel sequences ({rounds} rounds) --")
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    legs: dict[str, list[Stream]] = {"today": [], "baseline": []}
    for _ in range(rounds):
        for name, sock in (("today", servers.today), ("baseline", servers.baseline)):
            await inferd_stream(sock, [{"role": "user", "content": "hi"}], 1, "warm")  # moves the cache off
            legs[name].append(await inferd_stream(sock, poem, n_tokens, "poem"))

    def rate(s: Stream) -> float:
        return (s.tokens - 1) / (s.last - s.first)

    for name, runs in legs.items():
        print(f"{name:10} decode {statistics.median(rate(s) for s in runs):7.1f} tok/s   "
              f"ttft {statistics.median((s.first - s.sent) * 1000 for s in runs):6.0f} ms")
    ratio = statistics.median(rate(s) for s in legs["today"]) / statistics.median(rate(s) for s in legs["baseline"])
    print(f"today/baseline decode: {ratio:.3f}   same text: {legs['today'][-1].text == legs['baseline'][-1].text}")


def evidence(model: str, threads: int, n_tokens: int) -> None:
    """Greedy alone vs beside others, in process (ADR 0018)."""
    from inferd.engine.events import TextDelta
    from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings
    from inferd.engine.request import ChatMessage, GenerationRequest

    print(f"\n-- evidence: 8 greedy prompts, {n_tokens} tokens, alone then all 8 at once --")

    async def text(b, i: int) -> str:
        req = GenerationRequest(id=str(i), messages=[ChatMessage("user", f"Write a long story about {TOPICS[i]}.")],
                                temperature=0, max_tokens=n_tokens)
        return "".join([e.text async for e in await b.generate(req) if isinstance(e, TextDelta)])

    for invariant in (False, True):
        b = LlamaCppBackend(LlamaCppSettings(model_path=model, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                                             parallel=8, batch_invariant=invariant))
        try:
            async def both() -> tuple[list[str], list[str]]:
                alone = [await text(b, i) for i in range(8)]
                # Same backend: each prompt returns to its slot and re-evaluates its last token.
                together = await asyncio.gather(*(text(b, i) for i in range(8)))
                return alone, list(together)

            alone, together = asyncio.run(both())
        finally:
            b.close()
        same = sum(a == t for a, t in zip(alone, together))
        firsts = [next((k for k in range(min(len(a), len(t))) if a[k] != t[k]), None) for a, t in zip(alone, together)]
        print(f"{'batch_invariant' if invariant else 'default kernels':16} identical {same}/8"
              + (f"   first differing character at {sorted(f for f in firsts if f is not None)}" if same < 8 else ""),
              flush=True)


def run_model(label: str, model: str, args: argparse.Namespace, n_tokens: int, full: bool) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    print(f"\n==== {label}: {model}  threads {args.threads}  tokens {n_tokens}  rounds {args.rounds} ====", flush=True)
    server_bin, batched_bin, bench_bin = tool("server"), tool("batched"), tool("bench")
    prompts = Prompts(model)
    pp = len(prompts.tokens(prompts.story(0)))
    ceilings: list[dict[int, float]] = []
    throughput = "throughput" in args.sections
    if batched_bin and throughput:
        ceilings.append(batched_bench(batched_bin, model, args.threads, pp, n_tokens, clients))
    work = Path(tempfile.mkdtemp(prefix="ifd-par-", dir="/tmp"))
    n_ctx = 8192 if full and not args.skip_long else 1024
    servers = Servers(model, n_ctx, max(clients), args.threads, work, server_bin,
                      args.baseline_src if full and "baseline" in args.sections else None,
                      inproc=throughput and not args.no_inproc)
    try:
        legs = {c: {"inferd": Leg(), "inproc": Leg(), "llama-server": Leg()} for c in clients}

        async def all_rounds() -> None:
            await inferd_stream(servers.sock, prompts.story(999), 4, "warm")
            if servers.inproc:
                await inferd_stream(servers.inproc, prompts.story(999), 4, "warm")
            for r in range(args.rounds if throughput else 0):
                for c in clients:
                    await one_round(servers, prompts, c, n_tokens, r, legs[c])
            if full and "long" in args.sections:
                await long_prompts(servers, prompts, [459, 1792, 6680], max(2, args.rounds))
            if full and "stall" in args.sections:
                await stall(servers, prompts, 6680)
            if full and servers.baseline:
                await baseline(servers, prompts, max(3, args.rounds), 128)

        asyncio.run(all_rounds())
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    if batched_bin and throughput:
        ceilings.append(batched_bench(batched_bin, model, args.threads, pp, n_tokens, clients))
    tg = llama_bench_tg(bench_bin, model, args.threads, n_tokens) if bench_bin and throughput else None

    def ceiling(c: int) -> float:
        vals = [d[c] for d in ceilings if c in d]
        return statistics.mean(vals) if vals else float("nan")

    med = statistics.median
    if not throughput:
        if full and not args.skip_evidence:
            evidence(model, args.threads, n_tokens)
        return
    print(f"\n-- throughput ({label}, prompt {pp} tokens, medians of {args.rounds} rounds) --")
    print(f"{'clients':>7} | {'inferd agg':>10} {'decode':>7} {'ttft p50':>8} {'p95':>6} | "
          f"{'server agg':>10} {'decode':>7} {'ttft p50':>8} {'p95':>6} | {'batched':>7} | "
          f"{'agg/server':>10} {'dec/batched':>11}")
    for c in clients:
        a, s = legs[c]["inferd"], legs[c]["llama-server"]
        sa = med(s.aggregate) if s.aggregate else float("nan")
        sd = med(s.decode) if s.decode else float("nan")
        print(f"{c:>7} | {med(a.aggregate):>10.1f} {med(a.decode):>7.1f} {pct(a.ttft_ms, .5):>8.0f} {pct(a.ttft_ms, .95):>6.0f}"
              f" | {sa:>10.1f} {sd:>7.1f} {pct(s.ttft_ms, .5):>8.0f} {pct(s.ttft_ms, .95):>6.0f} | {ceiling(c):>7.1f} | "
              f"{med(a.aggregate) / sa:>10.2f} {med(a.decode) / ceiling(c):>11.2f}")
    if legs[clients[0]]["inproc"].aggregate:
        print(f"\n-- runner vs in-process ({label}; ratio = runner / in-process, goal >= 0.98) --")
        print(f"{'clients':>7} | {'runner agg':>10} {'inproc agg':>10} {'ratio':>6} | {'runner ttft':>11} "
              f"{'inproc ttft':>11}")
        for c in clients:
            a, b = legs[c]["inferd"], legs[c]["inproc"]
            print(f"{c:>7} | {med(a.aggregate):>10.1f} {med(b.aggregate):>10.1f} "
                  f"{med(a.aggregate) / med(b.aggregate):>6.3f} | {pct(a.ttft_ms, .5):>11.1f} {pct(b.ttft_ms, .5):>11.1f}")
    one, top = legs[clients[0]]["inferd"], legs[clients[-1]]["inferd"]
    print(f"{clients[-1]} clients / {clients[0]} client (inferd aggregate): {med(top.aggregate) / med(one.aggregate):.2f}")
    if tg:
        print(f"llama-bench tg{n_tokens}: {tg:.1f} tok/s   inferd 1 client decode / tg: {med(one.decode) / tg:.2f}")
    print("tokens per round (inferd):", {c: legs[c]["inferd"].tokens[-1] for c in clients},
          " (llama-server):", {c: (legs[c]["llama-server"].tokens or [0])[-1] for c in clients}, flush=True)
    if full and not args.skip_evidence:
        evidence(model, args.threads, n_tokens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tiny", help="the tiny random GGUF (make_tiny_gguf.py); default /tmp/tiny-gemma3.gguf if present")
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=96, help="tokens per client on the real model")
    ap.add_argument("--tiny-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-inproc", action="store_true", help="skip the --in-process daemon's leg")
    ap.add_argument("--baseline-src", help="a checkout of the code before parallel sequences (has src/inferd)")
    ap.add_argument("--sections", default="throughput,long,stall,baseline,evidence",
                    help="which legs to run (comma-separated); ceilings run with throughput")
    args = ap.parse_args()
    args.sections = set(args.sections.split(","))
    args.skip_long = "long" not in args.sections and "stall" not in args.sections
    args.skip_evidence = "evidence" not in args.sections
    if not args.no_real:
        run_model("real", model_path(args.model), args, args.tokens, full=True)
    tiny = args.tiny or ("/tmp/tiny-gemma3.gguf" if os.path.exists("/tmp/tiny-gemma3.gguf") else None)
    if not args.no_tiny:
        if tiny:
            run_model("tiny", tiny, args, args.tiny_tokens, full=False)
        else:
            print("!! no tiny model: write one with ../shared/tools/make_tiny_gguf.py and pass --tiny")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
