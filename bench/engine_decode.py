"""Decode speed: plain llama-cpp-python streaming vs. inferd's LlamaCppBackend, same run.

    python bench/engine_decode.py [--model PATH] [--tokens 128] [--threads 2] [--rounds 3]

Both sides get the same prompt tokens, greedy sampling and thread count. Rounds
alternate A/B so background load hits both alike; the median of each is reported.
decode tok/s counts tokens after the first one (the first is prompt processing).

Each side runs in a process of its own (`LegWorker`): two llama.cpp contexts decoding
from two threads of one process make two OpenMP teams, and once a process holds more
OpenMP threads than CPUs libgomp stops spinning at its barriers and sleeps instead
(measured on 2 cores: the backend decoded 47 tok/s before the reference had run in
its process, 31 tok/s after). The daemon never does this: one runner process per model (ADR 0025).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import Run, model_path, print_legs  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def run_reference(llm, tokens: list[int], n: int) -> Run:
    llm.reset()  # no prompt cache on the reference side either
    start = time.perf_counter()
    first = last = None
    count = 0
    text = []
    stream = llm.create_completion(
        tokens, max_tokens=n, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
        repeat_penalty=1.0, stream=True,
    )
    for chunk in stream:
        piece = chunk["choices"][0]["text"]
        now = time.perf_counter()
        if piece:
            count += 1
            text.append(piece)
            if first is None:
                first = now
            last = now
    assert first is not None and last is not None
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text))


async def run_backend(backend, n: int) -> Run:
    from inferd.engine.events import Done, TextDelta
    from inferd.engine.request import ChatMessage, GenerationRequest

    # A different first message empties the KV cache, so both sides prefill fully.
    warm = GenerationRequest(id="warm", messages=[ChatMessage("user", "hi")], temperature=0, max_tokens=1)
    async for _ in await backend.generate(warm):
        pass
    req = GenerationRequest(id="bench", messages=[ChatMessage(**m) for m in PROMPT], temperature=0, max_tokens=n)
    start = time.perf_counter()
    first = last = None
    text = []
    done = None
    async for ev in await backend.generate(req):
        now = time.perf_counter()
        if isinstance(ev, TextDelta):
            text.append(ev.text)
            if first is None:
                first = now
            last = now
        elif isinstance(ev, Done):
            done = ev
    assert first is not None and last is not None and done is not None
    count = done.usage.completion_tokens
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text))


class LegWorker:
    """One in-process leg in a child process of its own, run on request.

    `kind` is "reference" (llama-cpp-python's Llama) or "backend" (inferd's
    LlamaCppBackend, one sequence); each line to the child is a JSON command and each
    line back its JSON answer.
    """

    def __init__(self, kind: str, model: str, threads: int, n_ctx: int) -> None:
        self.kind = kind
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--model", model,
             "--threads", str(threads), "--n-ctx", str(n_ctx)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._call({"op": "info"})

    def _call(self, command: dict) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} leg's process ended (exit {self._proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.kind} leg: {answer['error']}")
        return answer

    def run(self, n: int, tokens: list[int] | None = None) -> Run:
        return Run(**self._call({"op": "run", "n": n, "tokens": tokens}))

    def prepare(self, messages: list[dict], tools: list[dict] | None = None) -> dict:
        """The backend's rendered prompt and its tokens (backend legs only)."""
        return self._call({"op": "prepare", "messages": messages, "tools": tools})

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _serve_leg(kind: str, args: argparse.Namespace) -> int:
    """The child side of LegWorker: answers commands on stdin until it closes."""
    path = model_path(args.model)
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers on the channel
    if kind == "reference":
        from llama_cpp import Llama

        # Like the daemon's context: flash attention is what llama.cpp's "auto" picks on CPU.
        engine = Llama(path, n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                       n_threads_batch=args.threads, flash_attn=True, verbose=False)
        info: dict = {"label": "llama-cpp-python"}
    else:
        from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

        engine = LlamaCppBackend(LlamaCppSettings(model_path=path, n_ctx=args.n_ctx, n_threads=args.threads,
                                                  n_threads_batch=args.threads))
        info = {"label": engine.label}
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if cmd["op"] == "info":
                    answer = info
                elif cmd["op"] == "prepare":
                    from inferd.engine.request import ChatMessage, GenerationRequest, ToolSpec

                    tools = [ToolSpec(t["name"], t["description"], t["input_schema"]) for t in cmd["tools"] or []]
                    extra = {"tools": tools, "tool_choice": "auto"} if tools else {}
                    req = GenerationRequest(id="p", messages=[ChatMessage(**m) for m in cmd["messages"]], **extra)
                    prompt = engine._prepare(req)[1].prompt
                    answer = {"prompt": prompt, "tokens": engine.tokenize_prompt(prompt)}
                elif kind == "reference":
                    answer = vars(run_reference(engine, cmd["tokens"], cmd["n"]))
                else:
                    answer = vars(asyncio.run(run_backend(engine, cmd["n"])))
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        engine.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--worker", choices=("reference", "backend"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    if args.worker:
        return _serve_leg(args.worker, args)

    path = model_path(args.model)
    backend = LegWorker("backend", path, args.threads, args.n_ctx)
    reference = LegWorker("reference", path, args.threads, args.n_ctx)
    try:
        tokens = backend.prepare(PROMPT)["tokens"]
        ref: list[Run] = []
        ours: list[Run] = []
        reference.run(8, tokens)  # warm-up: first-call allocations on both sides
        backend.run(8)
        for _ in range(args.rounds):
            ref.append(reference.run(args.tokens, tokens))
            ours.append(backend.run(args.tokens))
    finally:
        backend.close()
        reference.close()

    legs = {"llama-cpp-python stream": ref, "inferd LlamaCppBackend": ours}

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print(f"model {backend.info['label']}  prompt {len(tokens)} tokens  greedy  max_tokens {args.tokens}  "
          f"threads {args.threads}  rounds {args.rounds}")
    print_legs(legs, 28)
    ratio = med(ours, "decode_tps") / med(ref, "decode_tps")
    print(f"decode ratio inferd/reference: {ratio:.3f}   "
          f"ttft ratio: {med(ours, 'ttft_ms') / med(ref, 'ttft_ms'):.3f}")
    print("same text:", ours[-1].text == ref[-1].text)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
