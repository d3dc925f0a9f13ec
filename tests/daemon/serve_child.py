"""`inferd serve` as a child process, for tests where signals, exit codes or the boot's
own error handling are the point, and the activity records it leaves behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon_harness import read_json

from inferd.daemon.observe.activity import LOG_FILE_NAME


def records(directory: Path) -> list[dict[str, Any]]:
    path = directory / LOG_FILE_NAME
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def spawn_serve(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "inferd.cli.main", "serve", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def serve_env(d: Path) -> dict[str, str]:
    (d / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, INFERD_LOG_DIR=str(d / "logs"), INFERD_LOG="info", XDG_RUNTIME_DIR=str(d / "run"))
    for name in ("INFERD_ADMIN_ADDR", "INFERD_CONFIG", "INFERD_API_KEY", "INFERD_TCP"):
        env.pop(name, None)
    return env


def serve_args(d: Path, cfg: Path, *extra: str) -> list[str]:
    return ["--config", str(cfg), "--uds", str(d / "infer.sock"), "--admin-addr", str(d / "admin.sock"),
            "--lock", str(d / "inferd.lock"), "--no-v2", "--no-embed", *extra]


async def admin_until(reader: asyncio.StreamReader, status: str, timeout: float = 30.0,
                      phase: str | None = None) -> list[dict[str, Any]]:
    """Admin frames up to and including the first with `status` (and `phase`, if given)."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await read_json(reader, timeout)
        assert frame is not None, f"admin EOF after {seen}"
        seen.append(frame)
        if frame["status"] == status and (phase is None or frame.get("phase") == phase):
            return seen


async def wait_for_path(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    async def exists() -> None:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
            await asyncio.sleep(0.02)

    await asyncio.wait_for(exists(), timeout)


def write_mock_config(path: Path, **entry: Any) -> Path:
    path.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", **entry}]}))
    return path
