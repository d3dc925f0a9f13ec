"""Soak benchmark: many short requests over many connections against `inferd serve`.

    python bench/soak.py [--requests 10000] [--connections 20] [--tokens 4] [--warmup 200]

Spawns `inferd serve` (mock backend: `--tokens` x "tok ", no token delay, queue depth >=
connections, no embed socket) as a subprocess on a Unix socket in a temp dir. After a
warm-up, `--connections` client connections each send v1 requests one after another
until `--requests` are done in total. Reports requests/s and p50/p99 round-trip latency,
and the daemon's RSS (VmRSS) and open fd count when idle after the warm-up and when idle
after the run, with a few RSS samples in between, and whether they grew.

The same load then runs against bench/_reference_server.py (a bare NDJSON server, the
ceiling for this socket and this client) in the same run; the machine is shared and
noisy, so inferd/reference requests/s is the number to compare across runs.

Every response is checked (ids echoed, token count, done content); errors (for example
queue_full) are counted and reported. Loopback/Unix only; stops by itself (`--timeout`).
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROWTH_RSS_KIB = 4096  # RSS growth below this is noise (allocator arenas, caches)
GROWTH_FDS = 0


@dataclass
class Run:
    name: str
    latencies_us: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (requests done, VmRSS KiB)

    @property
    def rate(self) -> float:
        return len(self.latencies_us) / self.elapsed if self.elapsed else 0.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{path}: server exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_unix_connection(path)
            w.close()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.05)
    raise TimeoutError(path)


async def load(path: str, total: int, connections: int, n_tokens: int, run: Run,
               pid: int | None = None, io_timeout: float = 30.0) -> None:
    """`connections` clients, each sequential, until `total` requests have been answered."""
    issued = 0
    expected_content = "tok " * n_tokens
    sample_every = max(1, total // 10)

    async def client(c: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        try:
            while issued < total:
                issued += 1
                n = issued
                rid = f"c{c}-{n}"
                payload = json.dumps({"id": rid, "messages": [{"role": "user", "content": "x"}],
                                      "max_tokens": n_tokens}, separators=(",", ":")).encode() + b"\n"
                start = time.perf_counter()
                writer.write(payload)
                tokens = 0
                while True:
                    line = await asyncio.wait_for(reader.readline(), io_timeout)
                    if not line:
                        raise ConnectionError(f"{run.name}: EOF in the middle of {rid}")
                    if line.startswith(b'{"type":"token"'):
                        tokens += 1
                        continue
                    break
                run.latencies_us.append((time.perf_counter() - start) * 1e6)
                frame = json.loads(line)
                if frame.get("id") != rid:
                    raise AssertionError(f"{run.name}: id {frame.get('id')!r} for request {rid!r}")
                if frame["type"] == "done":
                    if tokens != n_tokens or frame["content"] != expected_content:
                        raise AssertionError(f"{run.name}: bad reply to {rid}: {tokens} tokens, {frame}")
                else:
                    key = f"{frame['type']}:{frame.get('code')}"
                    run.errors[key] = run.errors.get(key, 0) + 1
                if pid is not None and n % sample_every == 0:
                    run.rss_samples.append((n, rss_kib(pid)))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(connections)))
    run.elapsed = time.perf_counter() - start


async def settle(pid: int, seconds: float = 1.0) -> tuple[int, int]:
    """Idle a moment so the daemon finishes closing connections, then (RSS KiB, fds)."""
    await asyncio.sleep(seconds)
    return rss_kib(pid), fd_count(pid)


def start_inferd(d: Path, n_tokens: int, connections: int) -> tuple[subprocess.Popen, str]:
    cfg = d / "soak.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", "tokens": ["tok "] * n_tokens,
                                             "token_delay_ms": 0, "embed": False}]}))
    sock = str(d / "infer.sock")
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
    cmd = [sys.executable, "-m", "inferd.cli.main", "serve", "--config", str(cfg), "--uds", sock,
           "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock"), "--no-embed",
           "--active-permits", "1", "--queue-depth", str(max(connections, 10))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, sock


def start_reference(d: Path, n_tokens: int) -> tuple[subprocess.Popen, str]:
    sock = str(d / "ref.sock")
    proc = subprocess.Popen([sys.executable, str(HERE / "_reference_server.py"), sock, str(n_tokens)],
                            stdout=subprocess.DEVNULL)
    return proc, sock


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def report(args: argparse.Namespace, inferd: Run, ref: Run, before: tuple[int, int], after: tuple[int, int],
           pid: int, exit_code: int | None) -> None:
    print(f"soak: {args.requests} v1 requests ({args.tokens} token frames + done each) over "
          f"{args.connections} connections, after a {args.warmup}-request warm-up; mock backend, Unix socket")
    for run in (inferd, ref):
        lat = run.latencies_us
        errs = ", ".join(f"{k} x{v}" for k, v in sorted(run.errors.items())) or "none"
        print(f"  {run.name:<10} {run.rate:10,.0f} requests/s   p50 {statistics.median(lat) / 1000:7.2f} ms   "
              f"p99 {pct(lat, 0.99) / 1000:7.2f} ms   ({len(lat)} answered in {run.elapsed:.2f} s; errors: {errs})")
    print(f"  ratio inferd/reference requests/s = {inferd.rate / ref.rate:.2f}")
    (rss0, fd0), (rss1, fd1) = before, after
    print(f"  inferd daemon (pid {pid}), idle after warm-up -> idle after the run:")
    rss_grew = rss1 - rss0 > GROWTH_RSS_KIB
    fds_grew = fd1 - fd0 > GROWTH_FDS
    per_request = (rss1 - rss0) * 1024 / max(1, len(inferd.latencies_us))
    print(f"    VmRSS {rss0:,} KiB -> {rss1:,} KiB ({rss1 - rss0:+,} KiB, {per_request:+.0f} B/request): "
          f"{'GREW' if rss_grew else 'no growth'} beyond the {GROWTH_RSS_KIB:,} KiB tolerance")
    print(f"    open fds {fd0} -> {fd1} ({fd1 - fd0:+d}): {'GREW' if fds_grew else 'no growth'}")
    if inferd.rss_samples:
        print("    VmRSS during the run (requests done: KiB): "
              + ", ".join(f"{n}: {kib:,}" for n, kib in inferd.rss_samples))
    print("    note: pydantic's JSON parser caches short strings (<= 64 bytes, 16,384 slots), and every")
    print("    request id here is unique, so up to ~1 MiB of RSS growth is expected before a plateau.")
    if exit_code is not None:
        print(f"  WARNING: the daemon exited during the run with code {exit_code}")


async def run(args: argparse.Namespace) -> int:
    d = Path(tempfile.mkdtemp(prefix="ifd-soak-", dir="/tmp"))
    procs: list[subprocess.Popen] = []
    try:
        daemon, daemon_sock = start_inferd(d, args.tokens, args.connections)
        procs.append(daemon)
        reference, ref_sock = start_reference(d, args.tokens)
        procs.append(reference)
        await wait_for_socket(daemon_sock, daemon)
        await wait_for_socket(ref_sock, reference)
        pid = daemon.pid

        warm = Run("warm-up")
        await load(daemon_sock, args.warmup, args.connections, args.tokens, warm)
        before = await settle(pid)
        inferd = Run("inferd")
        await load(daemon_sock, args.requests, args.connections, args.tokens, inferd, pid=pid)
        after = await settle(pid)

        await load(ref_sock, args.warmup, args.connections, args.tokens, Run("ref warm-up"))
        ref = Run("reference")
        await load(ref_sock, args.requests, args.connections, args.tokens, ref)
        report(args, inferd, ref, before, after, pid, daemon.poll())
        return 0
    finally:
        stop(procs)
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=4, help='token frames per reply (mock tape of "tok ")')
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args()
    try:
        import uvloop  # the client loop too: a slow client would flatten the inferd/reference ratio

        runner = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.run
        loop_name = "asyncio"
    print(f"client event loop: {loop_name}", flush=True)
    try:
        sys.exit(runner(asyncio.wait_for(run(args), args.timeout)))
    except TimeoutError:
        print(f"soak: gave up after {args.timeout:g} s", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
