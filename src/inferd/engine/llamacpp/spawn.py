"""The one place inferd starts a process (THREAT_MODEL F-14).

Only our own interpreter running one of our own engine modules, with a fixed
argument list, no shell, no inherited descriptors but stdio, and its input on stdin:
nothing a request or a config says reaches a command line. tests/test_no_subprocess.py
allows this file and no other.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass

#: The modules that may be started: each is ours and reads its input from stdin.
ENGINE_MODULES = frozenset({"inferd.engine.llamacpp.selftest", "inferd.engine.llamacpp.runner"})


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def _argv(module: str) -> list[str]:
    if module not in ENGINE_MODULES:
        raise ValueError(f"{module!r} is not an engine module")
    return [sys.executable, "-m", module]


def run_engine_module(module: str, stdin: str, timeout: float) -> Finished:
    """Run `python -m MODULE` to completion; a process that outlives `timeout` is killed
    (and reported with returncode -9)."""
    argv = _argv(module)
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, close_fds=True, shell=False, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Finished(-9, out, f"killed after {timeout:g} s without finishing")
    return Finished(done.returncode, done.stdout, done.stderr)


def start_engine_process(module: str, channel: socket.socket) -> subprocess.Popen[bytes]:
    """Start `python -m MODULE` with `channel` as its standard input (its only channel
    to us) and its output on our stderr; the caller owns the process from here."""
    return subprocess.Popen(_argv(module), stdin=channel.fileno(), stdout=2,
                            stderr=2, close_fds=True, shell=False)
