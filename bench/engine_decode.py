"""Decode speed: plain llama-cpp-python streaming vs. inferd's LlamaCppBackend, same run.

    /work/venv/bin/python bench/engine_decode.py [--model PATH] [--tokens 128] [--threads 2] [--rounds 3]

Both sides get the same prompt tokens, greedy sampling and thread count. Rounds
alternate A/B so background load hits both alike; the median of each is reported.
decode tok/s counts tokens after the first one (the first is prompt processing).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from llama_cpp import Llama

    from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings

    path = model_path(args.model)
    backend = LlamaCppBackend(LlamaCppSettings(
        model_path=path, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
    ))
    # Match the backend's context: flash attention is what llama.cpp's "auto" picks on CPU.
    llm = Llama(path, n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, flash_attn=True, verbose=False)
    prompt = backend.render(PROMPT)
    tokens = backend.tokenize_prompt(prompt)

    ref: list[Run] = []
    ours: list[Run] = []
    run_reference(llm, tokens, 8)  # warm-up: first-call allocations on both sides
    asyncio.run(run_backend(backend, 8))
    for _ in range(args.rounds):
        ref.append(run_reference(llm, tokens, args.tokens))
        ours.append(asyncio.run(run_backend(backend, args.tokens)))

    legs = {"llama-cpp-python stream": ref, "inferd LlamaCppBackend": ours}

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print(f"model {backend.label}  prompt {len(tokens)} tokens  greedy  max_tokens {args.tokens}  "
          f"threads {args.threads}  rounds {args.rounds}")
    print_legs(legs, 28)
    ratio = med(ours, "decode_tps") / med(ref, "decode_tps")
    print(f"decode ratio inferd/reference: {ratio:.3f}   "
          f"ttft ratio: {med(ours, 'ttft_ms') / med(ref, 'ttft_ms'):.3f}")
    print("same text:", ours[-1].text == ref[-1].text)
    backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
