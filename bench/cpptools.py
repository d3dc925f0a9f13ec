"""llama.cpp's own tools as bench references: llama-server, llama-bench, llama-batched-bench.

Their paths come from LLAMA_SERVER, LLAMA_BENCH and LLAMA_BATCHED_BENCH (built from the
llama.cpp sources vendored in llama-cpp-python's sdist, ADR 0018); a missing one is
reported and its legs skipped. Imported by file name from bench/.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import free_port

TOOLS = {"server": "LLAMA_SERVER", "batched": "LLAMA_BATCHED_BENCH", "bench": "LLAMA_BENCH"}


def tool(name: str) -> str | None:
    var = TOOLS[name]
    path = os.environ.get(var)
    if not path:
        print(f"!! {var} is not set: the {name} legs are skipped", flush=True)
        return None
    if not os.access(path, os.X_OK):
        print(f"!! {var}={path} is not an executable: the {name} legs are skipped", flush=True)
        return None
    return path


def tool_env(binary: str) -> dict[str, str]:
    # The tools are linked against the libllama/libggml next to them.
    lib = str(Path(binary).resolve().parent)
    return dict(os.environ, LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))


def tools_lib_dir() -> str | None:
    """The directory of the shared libllama the tools run on (llama-bench's, else
    llama-server's), for LLAMA_CPP_LIB_PATH: None when neither is set or they are static."""
    for env in ("LLAMA_BENCH", "LLAMA_SERVER"):
        binary = os.environ.get(env)
        if binary:
            lib = Path(binary).resolve().parent
            if (lib / "libllama.so").exists() or (lib / "libllama.dylib").exists():
                return str(lib)
    return None


def start_llama_server(binary: str, model: str, n_ctx: int, parallel: int, threads: int,
                       workdir: Path) -> tuple[subprocess.Popen, int]:
    """llama-server with `parallel` slots of `n_ctx` each on a free loopback port, once healthy."""
    port = free_port()
    log = open(workdir / "llama-server.log", "wb")
    proc = subprocess.Popen(
        [binary, "-m", model, "-c", str(n_ctx * parallel), "--parallel", str(parallel),
         "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port),
         "--no-webui"], env=tool_env(binary), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("llama-server did not start: see " + str(workdir / "llama-server.log"))
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(200):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)


@dataclass
class Stream:
    sent: float = 0.0
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    times: list[float] = field(default_factory=list)
    text: str = ""

    def token(self, now: float, keep_times: bool) -> None:
        """One token arrived at `now`."""
        self.tokens += 1
        if self.first is None:
            self.first = now
        self.last = now
        if keep_times:
            self.times.append(now)


async def http_stream(port: int, body: dict, keep_times: bool = False, stop: asyncio.Event | None = None) -> Stream:
    """POST /completion with stream=true to llama-server; one SSE event per token."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    out = Stream()
    payload = json.dumps(body).encode()
    try:
        out.sent = time.perf_counter()
        writer.write(b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"llama-server: {status!r}")
        chunked = False
        while (h := await reader.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"transfer-encoding:") and b"chunked" in h.lower():
                chunked = True
        buf = b""
        parts = []
        done = False
        while not done:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                buf += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
            now = time.perf_counter()
            while b"\n" in buf:
                event, buf = buf.split(b"\n", 1)
                if not event.startswith(b"data: "):
                    continue
                obj = json.loads(event[6:])
                if obj.get("stop"):
                    out.tokens = obj.get("tokens_predicted", out.tokens)
                    done = True
                    break
                if obj.get("content") or obj.get("tokens"):
                    out.token(now, keep_times)
                    parts.append(obj.get("content", ""))
                    if stop is not None and stop.is_set():
                        done = True
                        break
        out.text = "".join(parts)
    finally:
        writer.close()
    return out


def batched_bench(binary: str, model: str, threads: int, pp: int, tg: int, clients: list[int]) -> dict[int, float]:
    out = subprocess.run(
        [binary, "-m", model, "-c", str(max(clients) * (pp + tg + 64)), "-b", "2048", "-ub", "512",
         "-npp", str(pp), "-ntg", str(tg), "-npl", ",".join(map(str, clients)), "-t", str(threads), "-tb",
         str(threads), "--output-format", "jsonl"], env=tool_env(binary), capture_output=True, text=True, timeout=1800)
    rates = {}
    for line_ in out.stdout.splitlines():
        if line_.startswith("{"):
            obj = json.loads(line_)
            rates[obj["pl"]] = obj["speed_tg"]
    if not rates:
        print("!! llama-batched-bench gave no result:", out.stderr[-500:])
    return rates


def llama_bench_tg(binary: str, model: str, threads: int, n: int, reps: int = 5) -> float | None:
    out = subprocess.run([binary, "-m", model, "-t", str(threads), "-p", "0", "-n", str(n), "-r", str(reps),
                          "-o", "json"],
                         env=tool_env(binary), capture_output=True, text=True, timeout=1800)
    try:
        rows = json.loads(out.stdout)
        return float(rows[0]["avg_ts"])
    except (ValueError, KeyError, IndexError):
        print("!! llama-bench gave no result:", out.stderr[-500:])
        return None
