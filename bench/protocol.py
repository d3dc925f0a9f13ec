"""Protocol overhead benchmark: inferd on the mock backend vs a bare NDJSON server.

    python bench/protocol.py [--tokens 20000] [--requests 2000]

Both servers run as subprocesses on Unix sockets in a temp dir; the client is this
process. Reports token frames/s for one long streamed reply, and round-trip latency
of 1-token requests (median, p99), for inferd and for the reference, and the ratios.
The machine is shared and noisy: the ratio against the same-run reference is the number
to compare across runs, not the absolute figures.
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


async def wait_for_socket(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_unix_connection(path)
            w.close()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.05)
    raise TimeoutError(path)


async def stream_rate(path: str, n_tokens: int, rounds: int = 3) -> float:
    """Best-of-`rounds` token frames per second for one long reply."""
    best = 0.0
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    # The mock honours max_tokens like a model: ask for the whole tape.
    request = json.dumps({"id": "s", "messages": [{"role": "user", "content": "x"}],
                          "max_tokens": n_tokens}).encode() + b"\n"
    for _ in range(rounds):
        start = time.perf_counter()
        writer.write(request)
        frames = 0
        while True:
            line = await reader.readline()
            if line.startswith(b'{"type":"token"'):
                frames += 1
            else:
                break
        elapsed = time.perf_counter() - start
        assert frames == n_tokens, (frames, n_tokens, line[:200])
        best = max(best, frames / elapsed)
    writer.close()
    return best


async def latency(path: str, n: int) -> list[float]:
    reader, writer = await asyncio.open_unix_connection(path)
    request = json.dumps({"id": "l", "messages": [{"role": "user", "content": "x"}]}).encode() + b"\n"
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        writer.write(request)
        while True:
            line = await reader.readline()
            if not line.startswith(b'{"type":"token"'):
                break
        samples.append((time.perf_counter() - start) * 1e6)
    writer.close()
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_inferd(d: Path, tape: list[str], name: str) -> tuple[subprocess.Popen, str]:
    cfg = d / f"{name}.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", "tokens": tape, "embed": False}]}))
    sock = str(d / f"{name}.sock")
    runtime = d / f"{name}-run"  # every default endpoint (v2, embed) private to this daemon
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(cfg), "--uds", sock,
         "--admin-addr", str(d / f"{name}-admin.sock"), "--lock", str(d / f"{name}.lock")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, sock


def start_reference(d: Path, n_tokens: int, name: str) -> tuple[subprocess.Popen, str]:
    sock = str(d / f"{name}.sock")
    proc = subprocess.Popen([sys.executable, str(HERE / "_reference_server.py"), sock, str(n_tokens)],
                            stdout=subprocess.DEVNULL)
    return proc, sock


async def run(args: argparse.Namespace) -> None:
    d = Path(tempfile.mkdtemp(prefix="ifd-bench-", dir="/tmp"))
    procs = []
    try:
        long_inferd, long_inferd_sock = start_inferd(d, ["tok "] * args.tokens, "long")
        one_inferd, one_inferd_sock = start_inferd(d, ["tok "], "one")
        long_ref, long_ref_sock = start_reference(d, args.tokens, "rlong")
        one_ref, one_ref_sock = start_reference(d, 1, "rone")
        procs = [long_inferd, one_inferd, long_ref, one_ref]
        for sock in (long_inferd_sock, one_inferd_sock, long_ref_sock, one_ref_sock):
            await wait_for_socket(sock)
        # Interleave so that machine noise hits both sides alike.
        ref_rate = await stream_rate(long_ref_sock, args.tokens)
        inferd_rate = await stream_rate(long_inferd_sock, args.tokens)
        ref_rate = max(ref_rate, await stream_rate(long_ref_sock, args.tokens))
        await latency(one_ref_sock, 100)  # warm-up
        await latency(one_inferd_sock, 100)
        ref_lat = await latency(one_ref_sock, args.requests)
        inferd_lat = await latency(one_inferd_sock, args.requests)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    print(f"streaming, one client, {args.tokens} token frames (best of 3):")
    print(f"  reference  {ref_rate:12,.0f} frames/s")
    print(f"  inferd     {inferd_rate:12,.0f} frames/s   ratio inferd/reference = {inferd_rate / ref_rate:.2f}")
    print(f"round trip of a 1-token request, {args.requests} sequential requests on one connection:")
    for name, s in (("reference", ref_lat), ("inferd", inferd_lat)):
        print(f"  {name:<10} median {statistics.median(s):8.1f} us   p99 {pct(s, 0.99):8.1f} us")
    print(f"  ratio inferd/reference: median {statistics.median(inferd_lat) / statistics.median(ref_lat):.2f}"
          f"  p99 {pct(inferd_lat, 0.99) / pct(ref_lat, 0.99):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
