"""Start a real daemon (real sockets, in this process) and speak raw NDJSON to it."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.daemon.observe.activity import NullActivityLog
from inferd.daemon.server import Server
from inferd.daemon.config import ServeOptions


def short_tmpdir() -> Path:
    # Unix socket paths must stay under ~108 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="ifd-", dir="/tmp"))


@dataclass
class Daemon:
    server: Server
    task: asyncio.Task[int]
    dir: Path
    opts: ServeOptions

    @property
    def infer(self) -> str:
        return self.opts.inference_address()

    @property
    def admin(self) -> str:
        return self.opts.admin_address()

    @property
    def embed(self) -> str:
        return self.opts.embed_address()

    async def stop(self, timeout: float = 15.0) -> int:
        self.server.request_shutdown()
        return await asyncio.wait_for(self.task, timeout)


def mock_config(directory: Path, **mock: Any) -> Path:
    entry = {"kind": "mock", "name": "mock"}
    entry.update(mock)
    path = directory / "config.json"
    path.write_text(json.dumps({"backends": [entry]}))
    return path


async def start_daemon(directory: Path | None = None, *, wait_ready: bool = True, activity: Any = None,
                       mock: dict[str, Any] | None = None, **opts: Any) -> Daemon:
    d = directory or short_tmpdir()
    if "config" not in opts and opts.get("backend") is None:
        opts["config"] = str(mock_config(d, **(mock or {})))
    opts.setdefault("uds", str(d / "infer.sock"))
    opts.setdefault("admin_addr", str(d / "admin.sock"))
    opts.setdefault("lock", str(d / "inferd.lock"))
    opts.setdefault("embed_addr", str(d / "infer.embed.sock"))
    options = ServeOptions(**opts)
    server = Server(options, activity=activity or NullActivityLog(), install_signals=False)
    task = asyncio.create_task(server.serve())
    daemon = Daemon(server, task, d, options)
    if wait_ready:
        ready = asyncio.ensure_future(server.is_ready.wait())
        done, _ = await asyncio.wait([ready, task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task.done():
                raise RuntimeError(f"daemon exited during boot with {task.result()}")
            raise RuntimeError("daemon not ready within 20s")
    return daemon


def cleanup(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


# ---- raw NDJSON -------------------------------------------------------------------

async def dial(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path, limit=1 << 20)


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
        if frame["type"] in ("done", "error", "embeddings"):
            return frames


async def roundtrip(path: str, request: dict[str, Any], timeout: float = 10.0) -> list[dict[str, Any]]:
    reader, writer = await dial(path)
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
