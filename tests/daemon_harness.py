"""The one test harness: a real daemon (real sockets, in this process), raw NDJSON to
speak to it, and the waits, ports, descriptors and environment checks tests share.

Nothing here sleeps to decide an order. A wait is for a condition and has a bound
(`wait_until`, `Daemon.wait_ready`); a TCP port is held from before the daemon binds
it until after (`reserved_port`); a leak check compares descriptor tables exactly
(`open_fds`, `assert_same_fds`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import itertools
import json
import logging
import os
import pwd
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from inferd.daemon.config import ServeOptions
from inferd.daemon.observe.activity import ACTIVITY_LOGGER, EVENT_ATTR, NullActivityLog
from inferd.daemon.server import Server
from inferd.engine.events import Done

#: How long a daemon may take from serve() to ready before a test gives up on it.
BOOT_TIMEOUT = 30.0
#: The unprivileged user the cross-user tests switch a child process to.
NOBODY = 65534


def short_tmpdir() -> Path:
    # Unix socket paths must stay under ~108 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="ifd-", dir="/tmp"))


def cleanup(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


# ---- an in-process daemon -------------------------------------------------------------

@dataclass
class Daemon:
    server: Server
    task: asyncio.Task[int]
    dir: Path
    opts: ServeOptions
    v2: str = ""  # the v2 socket, when the daemon serves v2

    @property
    def infer(self) -> str:
        return self.opts.inference_address()

    @property
    def admin(self) -> str:
        return self.opts.admin_address()

    @property
    def embed(self) -> str:
        return self.opts.embed_address()

    async def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> bool:
        """True once the daemon is ready, False if serve() returned first; TimeoutError after `timeout`."""
        ready = asyncio.ensure_future(self.server.is_ready.wait())
        try:
            await asyncio.wait([ready, self.task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self.server.is_ready.is_set():
            return True
        if self.task.done():
            return False
        raise TimeoutError(f"daemon not ready within {timeout:g}s")

    async def stop(self, timeout: float = 15.0) -> int:
        self.server.request_shutdown()
        return await asyncio.wait_for(self.task, timeout)


_recorders = itertools.count(1)


class RecordingActivityLog(logging.Handler):
    """An activity log that keeps each record as the call site made it, unredacted:
    `{"component", "msg", **fields}` (the file's record without its time and level)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []
        self.logger = logging.getLogger(f"{ACTIVITY_LOGGER}.recording{next(_recorders)}")
        self.logger.setLevel(logging.DEBUG)
        self.traffic = self.logger.getChild("traffic")
        self.traffic.propagate = False
        for logger in (self.logger, self.traffic):
            logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        ev = getattr(record, EVENT_ATTR)
        self.records.append({"component": ev.component, "msg": ev.name or record.getMessage(), **ev.fields})

    def close(self) -> None:
        for logger in (self.logger, self.traffic):
            logger.removeHandler(self)
        super().close()


def mock_config(directory: Path, **mock: Any) -> Path:
    entry = {"kind": "mock", "name": "mock"}
    entry.update(mock)
    path = directory / "config.json"
    path.write_text(json.dumps({"backends": [entry]}))
    return path


def _llamacpp_flags(opts: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments named like llama.cpp options become the `llamacpp` overrides,
    as `inferd serve`'s flags do (`embed` stays the embed socket's switch there too)."""
    from inferd.engine.llamacpp.settings import LlamaCppOptions

    flags = {k: opts.pop(k) for k in list(opts) if k in LlamaCppOptions.model_fields and k != "embed"}
    if opts.pop("llamacpp_embed", False):
        flags["embed"] = True
    if flags:
        opts["llamacpp"] = {**opts.get("llamacpp", {}), **flags}
    return opts


async def start_daemon(directory: Path | None = None, *, wait_ready: bool = True, boot_timeout: float = BOOT_TIMEOUT,
                       activity: Any = None, mock: dict[str, Any] | None = None, install_signals: bool = False,
                       **opts: Any) -> Daemon:
    """A daemon serving in a task of this loop, its sockets in `directory`.

    Without a `config` or `backend` it serves the mock backend configured by `mock`.
    With `wait_ready=False` it returns before the serve task has run a single step, so
    a test can subscribe to `daemon.server.broadcaster` and miss no boot event. With
    `install_signals` SIGTERM/SIGINT/SIGHUP reach this daemon until it stops.
    """
    d = directory or short_tmpdir()
    if "config" not in opts and opts.get("backend") is None:
        opts["config"] = str(mock_config(d, **(mock or {})))
    opts.setdefault("uds", str(d / "infer.sock"))
    opts.setdefault("admin_addr", str(d / "admin.sock"))
    opts.setdefault("lock", str(d / "inferd.lock"))
    opts.setdefault("embed_addr", str(d / "infer.embed.sock"))
    opts.setdefault("v2_addr", str(d / "infer.v2.sock"))
    options = ServeOptions(**_llamacpp_flags(opts))
    server = Server(options, activity=activity or NullActivityLog(), install_signals=install_signals)
    task = asyncio.create_task(server.serve())
    daemon = Daemon(server, task, d, options, v2=options.v2_address() if options.v2 else "")
    if wait_ready and not await daemon.wait_ready(boot_timeout):
        raise RuntimeError(f"daemon exited during boot with {task.result()}")
    return daemon


@dataclass
class MockWatch:
    """What a daemon's mock backend generated (see `watch_mock`)."""

    started: list[str] = field(default_factory=list)   # request ids, as their generation began
    finished: list[str] = field(default_factory=list)  # ids whose generation reached its Done
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def watch_mock(daemon: Daemon, monkeypatch: pytest.MonkeyPatch, hold_at: int | None = None) -> MockWatch:
    """Record the generations of `daemon`'s mock backend. With `hold_at`, each one stops
    after that many events until the test opens `gate` - an order the test decides."""
    backend = daemon.server.router.entries[0].backend
    real = backend._stream
    watch = MockWatch()

    async def stream(request: Any) -> AsyncIterator[Any]:
        watch.started.append(request.id)
        sent = 0
        async for event in real(request):
            if sent == hold_at:
                await watch.gate.wait()
            sent += 1
            if isinstance(event, Done):
                watch.finished.append(request.id)
            yield event

    monkeypatch.setattr(backend, "_stream", stream)
    return watch


# ---- raw NDJSON -------------------------------------------------------------------

async def dial(path: str, limit: int = 1 << 20) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path, limit=limit)


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def req(id: str = "req-1", content: str = "hello", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id, "messages": [{"role": "user", "content": content}]}
    out.update(extra)
    return out


async def read_json(reader: asyncio.StreamReader, timeout: float = 10.0) -> dict[str, Any] | None:
    raw = await asyncio.wait_for(reader.readline(), timeout)
    if not raw:
        return None
    return json.loads(raw)


async def read_until_terminal(reader: asyncio.StreamReader, timeout: float = 10.0) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await read_json(reader, timeout)
        if frame is None:
            raise EOFError(f"EOF after {frames}")
        frames.append(frame)
        if frame["type"] in ("done", "error", "embeddings", "count"):
            return frames


async def roundtrip(path: str, request: dict[str, Any], timeout: float = 10.0,
                    limit: int = 1 << 20) -> list[dict[str, Any]]:
    """One request on a fresh connection: its frames up to the terminal one.
    (`limit` bounds one line: raise it for multi-MiB `done` frames.)"""
    reader, writer = await dial(path, limit)
    try:
        writer.write(line(request))
        await writer.drain()
        return await read_until_terminal(reader, timeout)
    finally:
        writer.close()


async def admin_frames(path: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    reader, writer = await dial(path)
    try:
        return [await read_json(reader, timeout) for _ in range(count)]  # type: ignore[misc]
    finally:
        writer.close()


def stuck_socket(path: str) -> socket.socket:
    """A peer that connects and never reads: a raw socket with a tiny receive buffer.

    (An asyncio StreamReader would keep reading into its own buffer on our behalf.)
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    return s


# ---- loopback TCP -------------------------------------------------------------------

@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP port on `host` that no other socket can be given until the block ends.

    The port stays bound (SO_REUSEADDR, never listening) for the whole block, so the
    kernel hands it to nobody else, while the daemon - which binds with SO_REUSEADDR
    too - can bind and listen on it. Start the daemon inside the block. (Probing a
    free port and closing the probe before the daemon binds left that port to whoever
    asked next.)
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((host, 0))
        yield holder.getsockname()[1]


async def tcp_exchange(port: int, *payloads: bytes, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send `payloads` to 127.0.0.1:`port`; the frames up to a terminal one or the daemon's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames: list[dict[str, Any]] = []
    try:
        writer.write(b"".join(payloads))
        await writer.drain()
        while True:
            raw = await asyncio.wait_for(reader.readline(), timeout)
            if not raw:
                break
            frames.append(json.loads(raw))
            if frames[-1]["type"] in ("done", "error"):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass  # a silent close may arrive as a reset
    finally:
        writer.close()
    return frames


# ---- waits and leak checks -----------------------------------------------------------

def begin(call: Callable[[], Awaitable[Any]]) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """A task awaiting `call()`, and an event it sets in the very step in which it calls it.

    When the event wakes the test, `call()` has run up to its first suspension (or to
    its end: then the task is done). An order made of these is the test's, not the clock's.
    """
    called = asyncio.Event()

    async def run() -> Any:
        called.set()
        return await call()

    return asyncio.create_task(run()), called


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for a state `pred` reports (bounded). For a state only: an order is proven with events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def hold_generation(gen: Any) -> AsyncIterator[None]:
    """Hold a llama.cpp backend's generation thread (`backend._gen`, once idle) until
    the block ends: whatever is submitted meanwhile is admitted in one step, so those
    requests certainly overlap."""
    import threading

    started, release = threading.Event(), threading.Event()

    class Gate:
        def run(self, state: Any) -> None:
            started.set()
            release.wait(120)

        def abandon(self, exc: BaseException) -> None:
            started.set()

        def interrupt(self) -> None:
            release.set()

    gen.submit(Gate())
    await asyncio.to_thread(started.wait, 120)
    try:
        yield
    finally:
        release.set()


def open_fds() -> dict[int, str]:
    """This process's descriptor table: fd -> what it points at."""
    table: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass  # the listing's own descriptor, already closed
    return table


def assert_same_fds(before: dict[int, str], what: str = "") -> None:
    """Exactly the descriptors of `before` are open: none leaked, none lost."""
    after = open_fds()
    if after != before:
        opened = {fd: after[fd] for fd in after.keys() - before.keys()}
        closed = {fd: before[fd] for fd in before.keys() - after.keys()}
        changed = {fd: (before[fd], after[fd]) for fd in before.keys() & after.keys() if before[fd] != after[fd]}
        raise AssertionError(f"descriptor table changed{' ' + what if what else ''}: "
                             f"opened {opened}, closed {closed}, changed {changed}")


async def decoded_when_idle(backend: Any, timeout: float = 60.0) -> int:
    """Tokens a LlamaCppBackend's generation context has decoded (its `decoded` counter),
    read on its worker thread once every job submitted before this call has ended.

    A marker job joins the worker's queue; the worker runs a job that is not a
    generation as a barrier, after everything ahead of it. A generation that a cancel
    did not stop is waited out and counted in full - or, if it can never end (nobody
    reads its stream), the wait fails saying so.
    """
    result: concurrent.futures.Future[int] = concurrent.futures.Future()

    class Marker:
        def run(self, state: Any) -> None:
            result.set_result(state.decoded)

        def abandon(self, exc: BaseException) -> None:
            result.set_exception(exc)

        def interrupt(self) -> None:
            pass

    backend._gen.submit(Marker())
    try:
        return await asyncio.wait_for(asyncio.wrap_future(result), timeout)
    except TimeoutError:
        raise AssertionError(f"the generation context was still busy after {timeout:g}s: "
                             "a generation was not stopped") from None


# ---- the environment ---------------------------------------------------------------

def _nobody_exists() -> bool:
    try:
        pwd.getpwuid(NOBODY)
        grp.getgrgid(NOBODY)
    except KeyError:
        return False
    return True


def needs_root(why: str) -> pytest.MarkDecorator:
    """Skip, saying why, where the test needs root and the nobody user/group (65534)."""
    if os.geteuid() != 0:
        return pytest.mark.skipif(True, reason=f"needs root to {why} (running as uid {os.geteuid()})")
    return pytest.mark.skipif(not _nobody_exists(), reason=f"needs a user and group {NOBODY} to {why}")


# ---- `inferd` as a subprocess --------------------------------------------------------

def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "inferd.cli.main", *args]


def serve_argv(*args: str) -> list[str]:
    return cli_argv("serve", *args)


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any INFERD_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env.update(overrides)
    return env
