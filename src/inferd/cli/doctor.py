"""`inferd doctor`: local checks, then what the running daemon says about itself.

Output lines are `[ ok ] LABEL: DETAIL` / `[FAIL] LABEL: DETAIL` (upstream-engine §7.5);
scripts grep them, so the shapes are fixed.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Optional

import typer

from inferd.client.admin import AdminClient
from inferd.client.errors import AdminClosed, ClientDecodeError
from inferd.proto.admin import AdminEvent
from inferd.proto.endpoints import default_admin_addr

from .admin_cmds import AdminAddrOpt
from .common import EXIT_FAIL, describe, human_bytes, run_async

Line = tuple[bool, str, str]

DIAL_TIMEOUT = 1.0
FRAME_TIMEOUT = 0.5
MAX_FRAMES = 8
#: How long a configured remote backend gets to answer `GET /models`.
REMOTE_TIMEOUT = 5.0


def format_line(ok: bool, label: str, detail: str) -> str:
    return f"[{' ok ' if ok else 'FAIL'}] {label}: {detail}"


def local_lines(config_path: str | None) -> list[Line]:
    """Config, model and manifest checks, owned by the daemon (no daemon needs to run)."""
    try:
        from inferd.daemon.doctor import local_checks
    except Exception as exc:  # noqa: BLE001 - a broken install is itself a finding
        return [(False, "config", f"cannot load the config checks: {describe(exc)}")]
    try:
        return [(bool(ok), str(label), str(detail)) for ok, label, detail in local_checks(config_path)]
    except Exception as exc:  # noqa: BLE001
        return [(False, "config", f"config checks failed: {describe(exc)}")]


async def remote_lines(config_path: str | None) -> list[Line]:
    """One `remote[NAME]` line per `kind: "openai"` backend: does it answer, from here?

    Asked with this shell's environment (the key variable must be set here too), the
    way the daemon asks at boot: `GET {base_url}/models`.
    """
    try:
        from inferd.daemon.config import OpenAIEntry, config_source

        cfg, _ = config_source(config_path)
    except Exception:  # noqa: BLE001 - the config line already says what is wrong
        return []
    lines: list[Line] = []
    for entry in cfg.backends:
        if isinstance(entry, OpenAIEntry):
            lines.append(await _probe_remote(entry))
    return lines


async def _probe_remote(entry: Any) -> Line:
    label = f"remote[{entry.name}]"
    try:
        from inferd.engine.backend import BackendError
        from inferd.engine.remote import OpenAIBackend
    except ImportError as exc:
        return False, label, f"cannot check: {describe(exc)}; install `inferd[remote]`"
    settings = entry.settings()
    try:
        backend = OpenAIBackend(settings)
    except ValueError as exc:
        return False, label, str(exc)
    try:
        await asyncio.wait_for(backend.probe(), REMOTE_TIMEOUT)
    except BackendError as exc:
        return False, label, exc.message
    except TimeoutError:
        return False, label, f"{settings.base_url} did not answer within {REMOTE_TIMEOUT:g}s"
    finally:
        await backend.stop(1.0)
    detail = f"{settings.base_url} answers; model={backend.model}"
    if backend.n_ctx is not None:
        detail += f" n_ctx={backend.n_ctx}"
    return True, label, detail


async def read_admin(addr: str) -> tuple[Line, list[AdminEvent]]:
    """The `admin` line plus every capabilities frame seen before the snapshot."""
    try:
        admin = await asyncio.wait_for(AdminClient.dial_admin(addr), DIAL_TIMEOUT)
    except TimeoutError:
        return (False, "admin", f"{addr} did not respond within {DIAL_TIMEOUT:g}s"), []
    except OSError as exc:
        return (
            False,
            "admin",
            f"{addr} not reachable: {describe(exc)}; daemon not running, or wrong --admin-addr",
        ), []
    frames: list[AdminEvent] = []
    async with admin:
        for _ in range(MAX_FRAMES):
            try:
                event = await asyncio.wait_for(admin.recv(), FRAME_TIMEOUT)
            except (TimeoutError, AdminClosed):
                break
            except ClientDecodeError as exc:
                return (False, "admin", f"connected at {addr} but got an unreadable frame: {exc}"), []
            frames.append(event)
            # The snapshot comes after the capabilities; anything later is live news.
            if event.status != "capabilities":
                break
    if not frames:
        return (False, "admin", f"connected at {addr} but no frame within {DIAL_TIMEOUT:g}s"), []
    snapshot = next((f for f in frames if f.status != "capabilities"), frames[0])
    phase = snapshot.phase or "-"
    detail = f"connected at {addr}; daemon status={snapshot.status} phase={phase}"
    if snapshot.phase == "waiting_remote":
        # A remote backend that does not answer keeps the daemon loading: say why.
        detail += f" remote={snapshot.path} attempt={snapshot.attempt} reason={snapshot.reason}"
    capabilities = [f for f in frames if f.status == "capabilities"]
    return (snapshot.status == "ready", "admin", detail), capabilities


def _flag(value: Any) -> str:
    return "true" if value else "false"


def backend_line(cap: AdminEvent) -> Line:
    """One backend; FAIL while its circuit is not closed (the replay carries `state`)."""
    detail = (
        f"{cap.backend or '?'} accelerator={cap.accelerator or '?'} gpu_layers={cap.gpu_layers or 0}"
        f" v2={_flag(cap.v2)} vision={_flag(cap.vision)} audio={_flag(cap.audio)}"
        f" tools={_flag(cap.tools)} thinking={_flag(cap.thinking)} embed={_flag(cap.embed)}"
    )
    if cap.model is not None:
        detail += f" model={cap.model}"
    if cap.n_ctx is not None:
        detail += f" n_ctx={cap.n_ctx}"
    if cap.parallel is not None:
        detail += f" parallel={cap.parallel}"
    if cap.n_threads is not None:
        # What was chosen for this machine (issue 18): threads per physical core.
        detail += f" threads={cap.n_threads}/{cap.n_threads_batch or cap.n_threads}"
    if cap.flash_attn is not None:
        detail += f" flash_attn={_flag(cap.flash_attn)}"
    if cap.decode_cpus is not None:
        # Each decode thread on a CPU of its own, or the kernel's placement (cpu_strict).
        detail += f" cpus={','.join(map(str, cap.decode_cpus)) or 'any'}"
    if cap.frame_interval_ms is not None:
        detail += f" frame_interval={cap.frame_interval_ms:g}ms"
    if cap.amx is not None:
        detail += f" amx={cap.amx}"
    runner = cap.runner or {}
    if runner:
        detail += f" runner={runner.get('state')} pid={runner.get('pid')} restarts={runner.get('restarts', 0)}"
        crash = runner.get("last_crash")
        if runner.get("profile") == "safe":
            detail += ("; engine crashed in its default profile; serving with no extra buffer types, "
                       "flash attention off, AMX off")
        if crash:
            detail += f"; last crash: {crash.get('reason')} after {crash.get('uptime_secs')}s"
        if runner.get("state") == "failed":
            return False, "backend", f"{detail}; failed: {runner.get('reason')}"
    if cap.state is not None and cap.state != "closed":
        detail += f" circuit={cap.state}"
        if cap.reason:
            detail += f" ({cap.reason})"
        return False, "backend", detail
    return True, "backend", detail


def device_line(cap: AdminEvent) -> Line:
    if not cap.device_name:
        detail = "cpu"
        if cap.cpu_features:
            detail += f" features={' '.join(cap.cpu_features)}"
        if cap.amx_reason and cap.amx != "absent":
            detail += f"; {cap.amx_reason}"
        return True, "device", detail
    return True, "device", f"{cap.device_name} vram={human_bytes(cap.vram_total_bytes)}"


async def doctor(config_path: str | None, admin_addr: str) -> list[Line]:
    lines = local_lines(config_path)
    lines.extend(await remote_lines(config_path))
    admin_line, capabilities = await read_admin(admin_addr)
    lines.append(admin_line)
    for cap in capabilities:
        lines.append(backend_line(cap))
        lines.append(device_line(cap))
    return lines


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        config: Annotated[
            Optional[str],
            typer.Option("--config", envvar="INFERD_CONFIG", help="Config file to check.", show_default=False),
        ] = None,
        admin_addr: AdminAddrOpt = None,
    ) -> None:
        """Check the config, the model store and the running daemon; exit 0 iff all ok."""
        lines = run_async(doctor(config, admin_addr or default_admin_addr()))
        for ok, label, detail in lines:
            print(format_line(ok, label, detail), flush=True)
        raise typer.Exit(0 if all(ok for ok, _, _ in lines) else EXIT_FAIL)
