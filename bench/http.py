"""The HTTP surface's cost: SSE vs the Unix socket, and llama-cpp-python's own server, same run.

    python bench/http.py [--model PATH] [--tokens 128] [--threads 2] [--rounds 5] [--rtt 30]

Three servers on the same GGUF, 2 threads, greedy, one request at a time:
  socket   `inferd serve`: v1 NDJSON over its Unix socket, the raw-prompt extension
  sse      the same daemon, `POST /v1/completions` with `stream: true` over loopback HTTP
  ollama   the same daemon, Ollama's `POST /api/generate` (`raw: true`, NDJSON lines)
  chat     the socket again, the prompt sent as a user message (chat template applied):
           the reference of the two chat-shaped APIs below
  responses  OpenAI's `POST /v1/responses`, streamed semantic events
  messages   Anthropic's `POST /v1/messages`, streamed events
  lcpp     `python -m llama_cpp.server` (FastAPI + uvicorn + sse-starlette), the same
           request to its /v1/completions
Every leg sends the same raw prompt (no chat template, so every server feeds the model
the same tokens) and is read by the same minimal client in this process (asyncio
streams; HTTP/1.1 chunked SSE parsed by hand), so what differs is the server. Before
each timed request a different one moves the server's KV cache off the prompt: every
leg prefills the whole prompt. Legs alternate within each round so background load hits
each alike; medians are reported.

  ttft ms       from writing the request to the first token's text
  decode tok/s  completion tokens after the first over the time since the first
  rtt ms        a whole 1-token request, not streamed, on a kept-alive connection

    python bench/http.py --mock 20000 [--rounds 5]

The transport alone: the mock backend streams N tokens as fast as it can, from a
daemon in this process (on its own thread and loop), once with uvicorn's h11 protocol
(what the daemon uses) and once with httptools' (needs `pip install httptools`; skipped
without it); tokens per second delivered over the socket, over SSE and over Ollama's
NDJSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named after what it measures; as a script its directory comes first on
# sys.path and it would shadow the standard library's `http` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.append(str(HERE))  # benchkit, after the standard library

from benchkit import Run, free_port, median, model_path, print_legs  # noqa: E402

#: A request that takes longer than this has hung: fail loudly rather than wait.
REQUEST_TIMEOUT_SECS = 300.0
PROMPT = "Once upon a time, in a small village by the sea, there lived"
WARM = "The capital of France is"


# ---- the NDJSON socket ------------------------------------------------------------------

class Ndjson:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)

    async def request(self, prompt: str, n: int, stream: bool = True) -> Run:
        return await asyncio.wait_for(self._request(prompt, n, stream), REQUEST_TIMEOUT_SECS)

    def body(self, prompt: str, n: int, stream: bool) -> dict:
        return {"id": "b", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream}

    async def _request(self, prompt: str, n: int, stream: bool) -> Run:
        assert self.reader is not None and self.writer is not None
        body = self.body(prompt, n, stream)
        start = time.perf_counter()
        self.writer.write(json.dumps(body).encode() + b"\n")
        first = last = None
        text: list[str] = []
        while True:
            frame = json.loads(await self.reader.readline())
            now = time.perf_counter()
            if frame["type"] == "token":
                text.append(frame["content"])
                first = first or now
                last = now
            elif frame["type"] == "done":
                if not stream:
                    return Run((now - start) * 1000, 0.0, frame["usage"]["completion_tokens"], frame["content"])
                count = frame["usage"]["completion_tokens"]
                break
            else:
                raise RuntimeError(frame)
        return _run(start, first, last, count, text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---- HTTP/1.1 with SSE, by hand ----------------------------------------------------------

class Http:
    """One kept-alive HTTP/1.1 connection to an OpenAI-compatible server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def _head(self) -> dict[str, str]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status, *lines = raw.decode("latin-1").split("\r\n")
        if int(status.split()[1]) != 200:
            raise RuntimeError(status)
        return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}

    async def _chunks(self):
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    async def request(self, prompt: str, n: int, stream: bool = True) -> Run:
        return await asyncio.wait_for(self._request(prompt, n, stream), REQUEST_TIMEOUT_SECS)

    def _post(self, path: str, body: dict) -> float:
        """Write one POST; returns when it was written (the clock's start)."""
        assert self.writer is not None
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        start = time.perf_counter()
        self.writer.write(head + data)
        return start

    async def _whole(self, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        return b"".join([c async for c in self._chunks()])

    async def _request(self, prompt: str, n: int, stream: bool) -> Run:
        assert self.reader is not None and self.writer is not None
        start = self._post("/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0,
                                               "stream": stream, "repeat_penalty": 1.0})
        headers = await self._head()
        if not stream:
            data = await self._whole(headers)
            now = time.perf_counter()
            answer = json.loads(data)
            return Run((now - start) * 1000, 0.0, answer["usage"]["completion_tokens"],
                       answer["choices"][0]["text"])
        first = last = None
        text: list[str] = []
        usage_tokens = None
        done = False
        async for now, payload in self._sse():
            if payload == b"[DONE]":
                done = True
                continue
            obj = json.loads(payload)
            if obj.get("usage"):
                usage_tokens = obj["usage"]["completion_tokens"]
            for choice in obj.get("choices", ()):
                if choice.get("text"):
                    text.append(choice["text"])
                    first = first or now
                    last = now
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        count = usage_tokens if usage_tokens is not None else len(text)
        return _run(start, first, last, count, text)

    async def _sse(self):
        """(arrival time, data payload) of each SSE `data:` line of the chunked body."""
        buffered = b""
        async for chunk in self._chunks():
            now = time.perf_counter()
            buffered += chunk
            while b"\n\n" in buffered or b"\r\n\r\n" in buffered:
                sep = b"\r\n\r\n" if b"\r\n\r\n" in buffered and (b"\n\n" not in buffered or buffered.index(
                    b"\r\n\r\n") < buffered.index(b"\n\n")) else b"\n\n"
                event, buffered = buffered.split(sep, 1)
                for line in event.splitlines():
                    if line.startswith(b"data: "):
                        yield now, line[6:]  # comments and pings carry no data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class OllamaHttp(Http):
    """Ollama's /api/generate on the same connection kind: a raw prompt, NDJSON lines."""

    async def _request(self, prompt: str, n: int, stream: bool) -> Run:
        start = self._post("/api/generate", {"model": MODEL[0], "prompt": prompt, "raw": True, "stream": stream,
                                             "options": {"num_predict": n, "temperature": 0}})
        headers = await self._head()
        if not stream:
            answer = json.loads(await self._whole(headers))
            return Run((time.perf_counter() - start) * 1000, 0.0, answer["eval_count"], answer["response"])
        first = last = None
        text: list[str] = []
        buffered = b""
        count = None
        async for chunk in self._chunks():
            now = time.perf_counter()
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                obj = json.loads(line)
                if "error" in obj:
                    raise RuntimeError(obj["error"])
                if obj["done"]:
                    count = obj["eval_count"]
                elif obj["response"]:
                    text.append(obj["response"])
                    first = first or now
                    last = now
        if count is None:
            raise RuntimeError("stream ended without its done line")
        return _run(start, first, last, count, text)


class _EventsHttp(Http):
    """A chat-shaped API whose stream is typed SSE events: subclasses say where the text
    and the final token count are."""

    path = ""

    def body(self, prompt: str, n: int, stream: bool) -> dict:
        raise NotImplementedError

    def whole(self, answer: dict) -> tuple[int, str]:
        """(output tokens, text) of a whole answer."""
        raise NotImplementedError

    def event(self, obj: dict) -> tuple[str | None, int | None]:
        """(a text piece, the final token count) of one event; raises on an error event."""
        raise NotImplementedError

    async def _request(self, prompt: str, n: int, stream: bool) -> Run:
        start = self._post(self.path, self.body(prompt, n, stream))
        headers = await self._head()
        if not stream:
            count, out = self.whole(json.loads(await self._whole(headers)))
            return Run((time.perf_counter() - start) * 1000, 0.0, count, out)
        first = last = None
        text: list[str] = []
        count = None
        async for now, payload in self._sse():
            piece, final = self.event(json.loads(payload))
            if piece:
                text.append(piece)
                first = first or now
                last = now
            if final is not None:
                count = final
        if count is None:
            raise RuntimeError(f"{self.path}: the stream ended without its final event")
        return _run(start, first, last, count, text)


class ResponsesHttp(_EventsHttp):
    """OpenAI's Responses API: the prompt as the user's input, semantic SSE events."""

    path = "/v1/responses"

    def body(self, prompt: str, n: int, stream: bool) -> dict:
        return {"model": MODEL[0], "input": prompt, "max_output_tokens": n, "temperature": 0, "stream": stream}

    def whole(self, answer: dict) -> tuple[int, str]:
        return answer["usage"]["output_tokens"], "".join(
            p["text"] for item in answer["output"] for p in item.get("content", ()))

    def event(self, obj: dict) -> tuple[str | None, int | None]:
        if obj["type"] in ("error", "response.failed"):
            raise RuntimeError(obj)
        if obj["type"] == "response.output_text.delta":
            return obj["delta"], None
        if obj["type"] in ("response.completed", "response.incomplete"):  # incomplete: max_output_tokens
            return None, obj["response"]["usage"]["output_tokens"]
        return None, None


class MessagesHttp(_EventsHttp):
    """Anthropic's Messages API: the prompt as the user's message, its SSE events."""

    path = "/v1/messages"

    def body(self, prompt: str, n: int, stream: bool) -> dict:
        return {"model": MODEL[0], "max_tokens": n, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": prompt}]}

    def whole(self, answer: dict) -> tuple[int, str]:
        return answer["usage"]["output_tokens"], "".join(b.get("text", "") for b in answer["content"])

    def event(self, obj: dict) -> tuple[str | None, int | None]:
        if obj["type"] == "error":
            raise RuntimeError(obj)
        if obj["type"] == "content_block_delta":
            return obj["delta"].get("text"), None
        if obj["type"] == "message_delta":
            return None, obj["usage"]["output_tokens"]
        return None, None


class NdjsonChat(Ndjson):
    """The socket with the prompt as a chat message: what the chat-shaped APIs compare with."""

    def body(self, prompt: str, n: int, stream: bool) -> dict:
        return {"id": "b", "messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0,
                "stream": stream}


#: The served model's name, read from /v1/models once the daemon is up.
MODEL: list[str] = ["default"]


def served_model(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def _run(start: float, first: float | None, last: float | None, count: int, text: list[str]) -> Run:
    assert first is not None and last is not None
    tps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Run((first - start) * 1000, tps, count, "".join(text))


# ---- the servers -----------------------------------------------------------------------

def _wait(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_inferd(model: str, args: argparse.Namespace, d: Path) -> tuple[subprocess.Popen, str, int]:
    sock, port = str(d / "infer.sock"), free_port()
    env = dict(os.environ, INFERD_LOG="warn", INFERD_LOG_DIR=str(d / "logs"), XDG_RUNTIME_DIR=str(d))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--backend", "llamacpp", "--model-path", model,
         "--n-ctx", str(args.n_ctx), "--n-threads", str(args.threads), "--no-embed", "--uds", sock,
         "--admin-addr", str(d / "admin.sock"), "--lock", str(d / "inferd.lock"), "--no-v2",
         "--http", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(proc, lambda: _listening(port), "inferd")
    return proc, sock, port


def start_llama_cpp_server(model: str, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
         "--n_batch", "512", "--flash_attn", "true", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(proc, lambda: _listening(port), "llama_cpp.server")
    return proc, port


async def bench(args: argparse.Namespace, sock: str, port: int, lcpp_port: int) -> dict[str, dict[str, list]]:
    MODEL[0] = served_model(port)
    clients = {"socket": Ndjson(sock), "sse": Http("127.0.0.1", port), "ollama": OllamaHttp("127.0.0.1", port),
               "lcpp": Http("127.0.0.1", lcpp_port), "chat": NdjsonChat(sock),
               "responses": ResponsesHttp("127.0.0.1", port), "messages": MessagesHttp("127.0.0.1", port)}
    for c in clients.values():
        await c.open()
    streams: dict[str, list[Run]] = {k: [] for k in clients}
    rtts: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for c in clients.values():  # warm-up: first-call allocations everywhere
            await c.request(WARM, 4)
        for _ in range(args.rounds):
            for name, c in clients.items():
                for attempt in range(3):
                    # A fresh connection (uvicorn closes one idle for 5 s while the other legs
                    # run), then a request that moves the KV cache off PROMPT; neither is timed.
                    c.close()
                    await c.open()
                    try:
                        await c.request(WARM, 1)
                        streams[name].append(await c.request(PROMPT, args.tokens))
                        break
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        print(f"{name}: connection closed by the server ({exc!r}); again", file=sys.stderr)
                else:
                    raise RuntimeError(f"{name}: the server keeps closing the connection")
        for c in clients.values():
            c.close()
            await c.open()
        for _ in range(args.rtt):
            for name, c in clients.items():
                rtts[name].append((await c.request(WARM, 1, stream=False)).ttft_ms)
    finally:
        for c in clients.values():
            c.close()
    return {"streams": streams, "rtts": rtts}  # type: ignore[dict-item]


# ---- the transport alone (mock backend) ------------------------------------------------------

_PROTOCOLS: dict[str, type] = {}


def _mock_daemon(parser: str, tokens: int, d: Path):
    """A daemon on the mock backend in this process, on its own thread and event loop,
    with uvicorn's protocol forced to `parser`."""
    import threading

    import uvicorn.protocols.http.h11_impl as h11_impl

    from inferd.daemon.config import ServeOptions
    from inferd.daemon.observe.activity import NullActivityLog
    from inferd.daemon.server import Server

    original = _PROTOCOLS.setdefault("h11", h11_impl.H11Protocol)
    if parser == "h11":
        proto = original
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as proto  # needs httptools
    h11_impl.H11Protocol = proto  # what the daemon subclasses (surfaces/http/server.py)
    cfg = d / f"mock-{parser}.json"
    cfg.write_text(json.dumps({"backends": [{"kind": "mock", "tokens": ["tok "] * tokens, "embed": False}]}))
    port = free_port()
    opts = ServeOptions(config=str(cfg), uds=str(d / f"{parser}.sock"), admin_addr=str(d / f"{parser}.admin"),
                        lock=str(d / f"{parser}.lock"), v2=False, http=f"127.0.0.1:{port}")
    holder: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            server = Server(opts, activity=NullActivityLog(), install_signals=False)
            holder["server"], holder["loop"] = server, asyncio.get_running_loop()
            await server.serve()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not _listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError("mock daemon did not start")
        time.sleep(0.02)

    def stop() -> None:
        loop = holder["loop"]
        loop.call_soon_threadsafe(holder["server"].request_shutdown)  # type: ignore[attr-defined]
        thread.join(30)

    return opts.uds, port, stop


def transport(args: argparse.Namespace) -> int:
    d = Path(tempfile.mkdtemp(prefix="ifd-http-mock-", dir="/tmp"))
    rates: dict[str, list[float]] = {}
    parsers = ["h11"]
    try:
        import httptools  # noqa: F401
        parsers.insert(0, "httptools")
    except ImportError:
        print("httptools is not installed: its legs are skipped", file=sys.stderr)
    for parser in parsers:
        sock, port, stop = _mock_daemon(parser, args.mock, d)
        try:
            async def legs() -> None:
                MODEL[0] = await asyncio.to_thread(served_model, port)
                clients = {f"socket ({parser} run)": Ndjson(sock), f"sse {parser}": Http("127.0.0.1", port),
                           f"ollama {parser}": OllamaHttp("127.0.0.1", port)}
                for name, c in clients.items():
                    await c.open()
                    await c.request(WARM, args.mock)
                for _ in range(args.rounds):
                    for name, c in clients.items():
                        start = time.perf_counter()
                        run = await c.request(WARM, args.mock)
                        rates.setdefault(name, []).append(run.tokens / (time.perf_counter() - start))
                for c in clients.values():
                    c.close()

            asyncio.run(legs())
        finally:
            stop()
    print(f"mock backend, {args.mock} tokens per request, {args.rounds} rounds: tokens/s delivered (median)")
    for name, values in rates.items():
        print(f"  {name:24}{statistics.median(values):12.0f}")
    for parser in parsers:
        sock = statistics.median(rates[f"socket ({parser} run)"])
        for leg in ("sse", "ollama"):
            rate = statistics.median(rates[f"{leg} {parser}"])
            print(f"  {leg}/socket with {parser}: {rate / sock:.3f}   per-token cost of {leg} over the socket: "
                  f"{(1 / rate - 1 / sock) * 1e6:.1f} us")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtt", type=int, default=30, help="1-token round trips per leg")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--mock", type=int, default=0, metavar="TOKENS", help="measure the transport alone")
    args = ap.parse_args()
    if args.mock:
        return transport(args)

    model = model_path(args.model)
    d = Path(tempfile.mkdtemp(prefix="ifd-http-", dir="/tmp"))
    inferd, sock, port = start_inferd(model, args, d)
    try:
        lcpp, lcpp_port = start_llama_cpp_server(model, args)
        try:
            result = asyncio.run(bench(args, sock, port, lcpp_port))
        finally:
            lcpp.terminate()
            lcpp.wait(30)
    finally:
        inferd.terminate()
        inferd.wait(60)
    streams, rtts = result["streams"], result["rtts"]

    def med(name: str, attr: str) -> float:
        return median(streams, name, attr)

    print(f"prompt {PROMPT!r}  greedy  max_tokens {args.tokens}  threads {args.threads}  rounds {args.rounds}  "
          f"rtt x{args.rtt}")
    print_legs(streams, 8, (f"{'rtt ms (1 tok)':>16}", lambda name: f"{statistics.median(rtts[name]):16.2f}"))
    for a, b in (("sse", "socket"), ("ollama", "socket"), ("responses", "chat"), ("messages", "chat"),
                 ("sse", "lcpp"), ("socket", "lcpp")):
        print(f"{a}/{b}: decode {med(a, 'decode_tps') / med(b, 'decode_tps'):.3f}   "
              f"ttft {med(b, 'ttft_ms') / med(a, 'ttft_ms'):.3f} (higher = {a} faster)   "
              f"rtt {statistics.median(rtts[b]) / statistics.median(rtts[a]):.3f} (higher = {a} faster)")
    texts = {name: runs[-1].text for name, runs in streams.items()}
    print("same text socket/sse:", texts["socket"] == texts["sse"], "  ollama:", texts["ollama"] == texts["sse"],
          "  lcpp:", texts["lcpp"] == texts["sse"], "  chat/responses/messages:",
          texts["chat"] == texts["responses"] == texts["messages"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
