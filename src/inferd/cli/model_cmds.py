"""`inferd ps`, `inferd ls`, `inferd rm`: the models by name (issue 20, ADR 0034).

`ps` asks the running daemon (its admin replay: one capabilities frame per loaded
model, with its memory estimate, slots and expiry); `ls` and `rm` read and edit the
config file and need no daemon (`inferd reload` applies an edit).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from inferd.client.errors import AdminClosed
from inferd.proto.endpoints import default_admin_addr

from .admin_cmds import FRAME_TIMEOUT, STATUS_MAX_FRAMES, AdminAddrOpt, dial_admin_or_die
from .common import EXIT_FAIL, die, err

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", envvar="INFERD_CONFIG", help="Config file (default: the platform config dir)."),
]


def human(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def until(expires_at: float | None, now: float) -> str:
    if expires_at is None:
        return "never"
    left = max(0.0, expires_at - now)
    if left < 120:
        return f"in {left:.0f}s"
    return f"in {left / 60:.0f}m" if left < 7200 else f"in {left / 3600:.1f}h"


async def loaded_models(addr: str) -> list[dict[str, Any]]:
    """The replayed capabilities frames: one per loaded model."""
    admin = await dial_admin_or_die(addr)
    rows: list[dict[str, Any]] = []
    async with admin:
        for _ in range(STATUS_MAX_FRAMES):
            try:
                event, obj = await asyncio.wait_for(admin.recv_raw(), FRAME_TIMEOUT)
            except (TimeoutError, AdminClosed):
                break
            if event.status != "capabilities":
                break
            rows.append(obj)
    return rows


def ps_table(rows: list[dict[str, Any]], now: float) -> list[str]:
    lines = [f"{'NAME':<24} {'MODEL':<28} {'MEMORY':>9} {'SLOTS':>7}  EXPIRES"]
    for row in rows:
        parallel = row.get("parallel") or 1
        used = len(row.get("sequences") or [])
        lines.append(f"{row.get('backend', '?'):<24} {str(row.get('model') or '-')[:28]:<28} "
                     f"{human(row.get('memory_bytes')):>9} {f'{used}/{parallel}':>7}  "
                     f"{until(row.get('expires_at'), now)}")
    return lines


def _config(config: Optional[str]) -> tuple[Path, dict[str, Any]]:
    from inferd.daemon.config import ConfigError, load_config, resolve_config_path

    path = resolve_config_path(config)
    try:
        load_config(path)  # valid before we read or touch it
        return path, json.loads(path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        die(str(exc), EXIT_FAIL)


def write_config(path: Path, data: dict[str, Any]) -> None:
    """Validated, then replaced whole (a crash leaves the old file or the new one)."""
    from inferd.daemon.config import ConfigError, parse_config

    try:
        parse_config(data, source=str(path))
    except ConfigError as exc:
        die(str(exc), EXIT_FAIL)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ls_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{'NAME':<24} {'KIND':<9} {'LOADS':<10} {'ALIASES':<28} SOURCE"]
    for b in data.get("backends", []):
        source = b.get("model_path") or b.get("base_url") or ""
        model = b.get("model")
        if isinstance(model, dict):
            source = f"hf.co/{model['repo']}/{model['filename']}" if model.get("repo") else f"store:{model['name']}"
        loads = "on demand" if b.get("on_demand") else "at boot"
        lines.append(f"{b.get('name', b.get('kind')):<24} {b.get('kind', '?'):<9} {loads:<10} "
                     f"{', '.join(b.get('aliases', []))[:28]:<28} {source}")
    return lines


def remove_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The config without the model `name` (its name or an alias of exactly one entry)."""
    backends = data.get("backends", [])
    hits = [b for b in backends if b.get("name") == name] or [b for b in backends if name in b.get("aliases", [])]
    if not hits:
        die(f"no model named {name!r} in the config; `inferd ls` lists them", EXIT_FAIL)
    if len(hits) > 1:
        die(f"{name!r} is an alias of {len(hits)} models; remove one by its name", EXIT_FAIL)
    rest = [b for b in backends if b is not hits[0]]
    if not rest:
        die(f"{name!r} is the only model in the config; a daemon needs one", EXIT_FAIL)
    out = {**data, "backends": rest}
    if out.get("default_model") in (hits[0].get("name"), *hits[0].get("aliases", [])):
        out.pop("default_model")
    return out


def register(app: typer.Typer) -> None:
    @app.command("ps")
    def ps_cmd(admin_addr: AdminAddrOpt = None) -> None:
        """The models loaded now: memory (estimated), slots in use, when each is unloaded."""
        from .common import run_async

        rows = run_async(loaded_models(admin_addr or default_admin_addr()))
        for line in ps_table(rows, time.time()):
            print(line)

    @app.command("ls")
    def ls_cmd(config: ConfigOpt = None) -> None:
        """Every model the config names, loaded or not."""
        _, data = _config(config)
        for line in ls_lines(data):
            print(line)

    @app.command("rm")
    def rm_cmd(name: Annotated[str, typer.Argument(help="The model's name.")], config: ConfigOpt = None) -> None:
        """Remove a model from the config (`inferd reload` applies it; store blobs stay)."""
        path, data = _config(config)
        write_config(path, remove_entry(data, name))
        err(f"removed {name} from {path}; run `inferd reload` for a running daemon to forget it")
