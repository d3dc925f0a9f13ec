"""Default endpoint addresses, shared by the daemon and every client so they agree.

Linux: $XDG_RUNTIME_DIR/inferd/ -> $HOME/.inferd/run/ -> /tmp/inferd-<uid>/.
(The upstream client's `/tmp/inferd/` last resort disagreed with its daemon; we use
the daemon's per-user directory on both sides.) macOS: $TMPDIR/inferd/. Other Unix:
/tmp/inferd/. Windows: named pipes `\\\\.\\pipe\\inferd-*`.

Pure functions of the environment: no sockets, no globals.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

INFER_LEAF = "infer.sock"
V2_LEAF = "infer.v2.sock"
EMBED_LEAF = "infer.embed.sock"
ADMIN_LEAF = "admin.sock"
LOCK_LEAF = "inferd.lock"

PIPE_INFER = r"\\.\pipe\inferd-infer"
PIPE_V2 = r"\\.\pipe\inferd-infer-v2"
PIPE_EMBED = r"\\.\pipe\inferd-infer-embed"
PIPE_ADMIN = r"\\.\pipe\inferd-admin"

DEFAULT_TCP_ADDR = ("127.0.0.1", 47321)
DEFAULT_V2_TCP_ADDR = ("127.0.0.1", 47322)
# Upstream named no embed port; the next one up keeps the three surfaces apart.
DEFAULT_EMBED_TCP_ADDR = ("127.0.0.1", 47323)


def _nonempty(name: str, env: os._Environ[str] | dict[str, str]) -> str | None:
    value = env.get(name)
    return value if value else None


def runtime_dir(env: dict[str, str] | None = None, platform: str | None = None) -> Path:
    """The directory holding sockets and the lock on Unix-like systems."""
    env = dict(os.environ) if env is None else env
    platform = platform or sys.platform
    if platform.startswith("linux"):
        xdg = _nonempty("XDG_RUNTIME_DIR", env)
        if xdg:
            return Path(xdg) / "inferd"
        home = _nonempty("HOME", env)
        if home:
            return Path(home) / ".inferd" / "run"
        uid = os.geteuid() if hasattr(os, "geteuid") else 0
        return Path(f"/tmp/inferd-{uid}")
    if platform == "darwin":
        tmp = _nonempty("TMPDIR", env) or "/tmp"
        return Path(tmp) / "inferd"
    return Path("/tmp/inferd")


def _is_windows(platform: str | None) -> bool:
    return (platform or sys.platform) == "win32"


def default_inference_addr(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    if _is_windows(platform):
        return PIPE_INFER
    return str(runtime_dir(env, platform) / INFER_LEAF)


def default_v2_addr(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    if _is_windows(platform):
        return PIPE_V2
    return str(runtime_dir(env, platform) / V2_LEAF)


def default_embed_addr(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    if _is_windows(platform):
        return PIPE_EMBED
    return str(runtime_dir(env, platform) / EMBED_LEAF)


def default_admin_addr(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    """The admin address, honouring INFERD_ADMIN_ADDR as the daemon does."""
    env_map = dict(os.environ) if env is None else env
    override = _nonempty("INFERD_ADMIN_ADDR", env_map)
    if override:
        return override
    if _is_windows(platform):
        return PIPE_ADMIN
    return str(runtime_dir(env_map, platform) / ADMIN_LEAF)


def default_lock_path(env: dict[str, str] | None = None, platform: str | None = None) -> str:
    if _is_windows(platform):
        env_map = dict(os.environ) if env is None else env
        base = env_map.get("LOCALAPPDATA") or str(Path.home())
        return str(Path(base) / "inferd" / LOCK_LEAF)
    return str(runtime_dir(env, platform) / LOCK_LEAF)


def parse_tcp_addr(addr: str | tuple[str, int], default_port: int | None = None) -> tuple[str, int]:
    """("host", port) from ("host", port), "host:port", "[v6]:port" or "tcp://host:port".

    The one parser the daemon (what to bind) and the client (what to dial) share.
    With `default_port`, a bare host (or ":port"-less text) takes it; an empty host
    means 127.0.0.1. A port outside 1-65535 is a ValueError, never a wrap-around.
    """
    if isinstance(addr, tuple):
        host, port = str(addr[0]), addr[1]
    else:
        text = addr.removeprefix("tcp://")
        host, sep, port_s = text.rpartition(":")
        if not sep or (host and host.startswith("[") and not host.endswith("]")):
            if default_port is None:
                raise ValueError(f"TCP address must be HOST:PORT, got {addr!r}")
            host, port_s = text, str(default_port)
        if not port_s.isascii() or not port_s.isdigit():
            raise ValueError(f"bad TCP address {addr!r}: port must be a number")
        port = int(port_s)
    host = host.strip("[]") or "127.0.0.1"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"bad TCP address {addr!r}: port must be between 1 and 65535")
    return host, port
