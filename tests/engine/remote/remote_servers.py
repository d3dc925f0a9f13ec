"""A real OpenAI-compatible remote for the backend tests: llama-cpp-python's server.

It is not our code: `python -m llama_cpp.server` (the `llama-cpp-python[server]`
extra) on the embedded Gemma 3 270M GGUF, spawned as a subprocess (tests may spawn;
src/ may not, see tests/test_no_subprocess.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ALIAS = "gemma3-270m"
KEY_ENV = "INFERD_TEST_REMOTE_KEY"
STARTUP_SECONDS = 120


@dataclass
class LlamaServer:
    proc: subprocess.Popen
    port: int
    key: str | None
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model_path: str, log: Path, *extra: str, key: str | None = None,
                       n_ctx: int = 2048, port: int | None = None) -> LlamaServer:
    port = port or free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2",
            "--n_threads_batch", "2", "--verbose", "false", *extra]
    if key is not None:
        # One argv item: a random key may begin with "-", which argparse would take for an option.
        args.append(f"--api_key={key}")
    out = log.open("wb")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    server = LlamaServer(proc, port, key, log)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/models", headers=headers, timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.kill()
    raise RuntimeError(f"llama_cpp.server not up in {STARTUP_SECONDS} s:\n{log.read_text()[-4000:]}")


async def direct(server: LlamaServer, route: str, body: dict) -> dict:
    """A non-streamed request straight to the server, as an app would send it."""
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(f"{server.url}/{route}", json={"model": ALIAS, **body, "stream": False},
                              headers=headers)
        r.raise_for_status()
        return r.json()


async def unrelated_turn(server: LlamaServer) -> None:
    """Leave the server's prompt cache holding an unrelated prompt.

    llama-cpp-python's server answers a repeated prompt from its cache, evaluating only
    the last token, and on some CPUs that flips a near-tie in greedy text. Comparing two
    answers is fair only when both start from the same cache: call this before each.
    """
    await direct(server, "completions", {"prompt": "Unrelated: count to three.", "max_tokens": 1,
                                         "temperature": 0})
