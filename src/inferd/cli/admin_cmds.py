"""`inferd status` and `inferd watch`: read the admin socket and print its frames."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Optional

import typer

from inferd.client.admin import AdminClient
from inferd.client.errors import AdminClosed
from inferd.proto.endpoints import default_admin_addr

from .common import EXIT_FAIL, admin_json_line, describe, die, err, run_async

# The daemon sends one capabilities frame per backend before the snapshot (#57:
# reading a fixed two frames broke multi-backend daemons), so read a generous burst.
STATUS_MAX_FRAMES = 64
FRAME_TIMEOUT = 0.5

AdminAddrOpt = Annotated[
    Optional[str],
    typer.Option(
        "--admin-addr",
        envvar="INFERD_ADMIN_ADDR",
        help="Admin socket path or pipe name (default: the platform's admin address).",
        show_default=False,
    ),
]


async def dial_admin_or_die(addr: str) -> AdminClient:
    try:
        return await AdminClient.dial_admin(addr)
    except OSError as exc:
        die(f"cannot connect to admin socket at {addr}: {describe(exc)}; is the daemon running?")


async def status(addr: str) -> int:
    """Print the replay as JSON lines on stdout; notes for people go to stderr.

    A backend whose circuit is open or half-open (F-10) still leaves the daemon
    ready - requests go to the next backend - so it changes the notes, not the exit
    code. Its replayed capabilities frame carries `state` and `reason`.
    """
    admin = await dial_admin_or_die(addr)
    seen = 0
    ready = False
    notes: list[str] = []
    async with admin:
        for _ in range(STATUS_MAX_FRAMES):
            try:
                event, obj = await asyncio.wait_for(admin.recv_raw(), FRAME_TIMEOUT)
            except (TimeoutError, AdminClosed):
                break
            seen += 1
            print(admin_json_line(obj), flush=True)
            if event.status == "ready":
                ready = True
            if event.status == "capabilities" and event.state not in (None, "closed"):
                notes.append(f"backend {event.backend} is {event.state.replace('_', '-')}: {event.reason or '?'}; "
                             "requests go to the next backend that can serve them")
            if event.phase == "waiting_remote":
                notes.append(f"waiting for the remote at {event.path} (attempt {event.attempt}): {event.reason}")
            if event.status == "capabilities" and event.parallel:
                notes.append(describe_slots(event.backend or "?", event.parallel, event.sequences or []))
            if event.status == "capabilities" and event.expires_at is not None:
                left = max(0, round(event.expires_at - time.time()))
                notes.append(f"model {event.backend} is idle: unloaded in {left}s unless a request comes "
                             "(keep_alive; `inferd ps` lists the loaded models)")
            if event.status != "capabilities":
                break
    if seen == 0:
        die(f"no admin frame received within {int(FRAME_TIMEOUT * 1000)}ms")
    for note in notes:
        err(f"note: {note}")
    return 0 if ready else EXIT_FAIL


def describe_slots(backend: str, parallel: int, sequences: list[dict]) -> str:
    """One line on what a backend's slots are doing (ADR 0018)."""
    if not sequences:
        return f"backend {backend}: {parallel} slots, all idle"
    # A request id is the client's string: quoted and escaped, it cannot drive the terminal.
    running = ", ".join(
        f"slot {s.get('slot')}: {json.dumps(str(s.get('request', '')))} "
        f"{'prefilling' if s.get('state') == 'prefill' else 'decoding'}"
        f" ({s.get('cached_tokens', 0)} of {s.get('prompt_tokens', 0)} prompt tokens cached)"
        for s in sorted(sequences, key=lambda s: s.get("slot", 0)))
    return f"backend {backend}: {len(sequences)} of {parallel} slots running: {running}"


async def watch(addr: str) -> int:
    admin = await dial_admin_or_die(addr)
    async with admin:
        while True:
            try:
                _, obj = await admin.recv_raw()
            except AdminClosed:
                return 0
            print(admin_json_line(obj), flush=True)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status_cmd(admin_addr: AdminAddrOpt = None) -> None:
        """Print the daemon's capabilities and lifecycle state; exit 0 iff ready."""
        code = run_async(status(admin_addr or default_admin_addr()))
        raise typer.Exit(code)

    @app.command("watch")
    def watch_cmd(admin_addr: AdminAddrOpt = None) -> None:
        """Print every admin event as a JSON line until the daemon closes the stream."""
        code = run_async(watch(admin_addr or default_admin_addr()))
        raise typer.Exit(code)

