"""Helpers shared by the client-side CLI commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import typer

from inferd.client.wait import WaitPermanent, WaitTimeout, dial_and_wait_ready

T = TypeVar("T")

# Exit codes, as upstream inferdctl: 1 = the daemon answered "no", 2 = we could not ask.
EXIT_FAIL = 1
EXIT_ERROR = 2


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def die(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err(f"error: {message}")
    raise typer.Exit(code)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an unexpected failure is `error: ...` and exit 2."""
    try:
        return asyncio.run(coro)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        die(describe(exc))


def describe(exc: BaseException) -> str:
    """A one-line description that names the exception when its text is empty."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


def admin_json_line(obj: dict[str, Any]) -> str:
    """Re-print an admin frame: keys sorted, absent fields omitted.

    Nothing is printed as null except `total_bytes` of a download, where null is
    the protocol's way of saying "size unknown".
    """
    is_download = obj.get("phase") == "download"
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None and not (is_download and key == "total_bytes"):
            continue
        if key == "phase" and value == "":
            continue
        out[key] = value
    if is_download:
        out.setdefault("total_bytes", None)
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def human_bytes(n: int | None) -> str:
    """1024-based size: TiB/GiB with one decimal, MiB/KiB whole, else bytes."""
    if n is None:
        return "?"
    kib, mib, gib, tib = 1 << 10, 1 << 20, 1 << 30, 1 << 40
    if n >= tib:
        return f"{n / tib:.1f} TiB"
    if n >= gib:
        return f"{n / gib:.1f} GiB"
    if n >= mib:
        return f"{n // mib} MiB"
    if n >= kib:
        return f"{n // kib} KiB"
    return f"{n} B"


async def connect(dial: Callable[[str, str | None], Awaitable[T]], addr: str, api_key: str | None, wait: float) -> T:
    try:
        return await dial_and_wait_ready(wait, lambda: dial(addr, api_key))
    except WaitTimeout as exc:
        last = describe(exc.__cause__) if exc.__cause__ else "no answer"
        die(f"daemon not reachable at {addr} within {wait:g}s ({last})")
    except WaitPermanent as exc:
        die(f"cannot connect to {addr}: {describe(exc.error)}")
