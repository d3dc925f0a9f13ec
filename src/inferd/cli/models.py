"""`inferd pull` and `inferd import`: fill the model store without a running daemon.

`pull` fetches what the config pins (so a service can boot with `auto_pull: false`),
or, given `hf.co/OWNER/REPO:QUANT`, that GGUF, and adds it to the config (issue 20);
`import` is the airgapped path (upstream ADR 0028): hash a local file into the store.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

EXIT_FAIL = 1
EXIT_MISMATCH = 2
MiB = 1 << 20


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = EXIT_FAIL) -> typer.Exit:
    _say(f"error: {message}")
    return typer.Exit(code)


class ProgressBar:
    """A one-line bar on stderr, redrawn with \\r from `download` load phases."""

    WIDTH = 30

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.drawn = False

    def on_phase(self, phase: Any) -> None:
        kind = getattr(phase, "phase", "")
        if kind == "download":
            self._draw(phase.downloaded_bytes, phase.total_bytes)
            return
        self.end_line()
        if kind == "verify":
            self._write(f"verifying sha256 of {phase.path}\n")
        elif kind == "quarantine":
            self._write(f"sha256 mismatch: bytes moved to {phase.quarantine_path}\n")

    def _draw(self, done: int, total: int | None) -> None:
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"\r[{bar}] {frac * 100:5.1f}%  {done / MiB:.1f}/{total / MiB:.1f} MiB"
        else:
            line = f"\r{done / MiB:.1f} MiB"
        self._write(line)
        self.drawn = True

    def end_line(self) -> None:
        if self.drawn:
            self._write("\n")
            self.drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def pull(config: Optional[str]) -> None:
    # Lazy: the config module pulls in the whole daemon configuration surface.
    from inferd.daemon.config import ConfigError, load_config, resolve_config_path
    from inferd.models.store import ModelStore, StoreError, default_store_root

    path = resolve_config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    specs = [b.model for b in cfg.backends if getattr(b, "kind", None) == "llamacpp" and b.model is not None]
    if not specs:
        _say(f"no models to pull in {path}")
        return
    root = default_store_root(cfg.models_home)
    store = ModelStore(root)
    for spec in specs:
        _say(f"pulling {spec.name} -> {root}")
        bar = ProgressBar()
        try:
            # `pull` is the explicit download, so the config's auto_pull does not apply.
            blob = store.ensure(spec, bar.on_phase, auto_pull=True)
        except (StoreError, OSError) as exc:
            bar.end_line()
            raise _fail(str(exc)) from None
        bar.end_line()
        _say(f"blob ready at {blob}")


def pull_ref(text: str, config: Optional[str]) -> None:
    """`inferd pull hf.co/OWNER/REPO:QUANT`: resolve, download and verify the GGUF, then
    add (or update) a config entry named after it (issue 20)."""
    from inferd.daemon.config import resolve_config_path
    from inferd.models.hub import entry_name, parse_ref, resolve
    from inferd.models.store import ModelStore, StoreError, default_store_root

    from .model_cmds import _config, write_config

    try:
        ref = parse_ref(text)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    path = resolve_config_path(config)
    if path.exists():
        _, data = _config(config)
    else:
        data = {"backends": _embedded_entries()}
    try:
        spec, quant = resolve(ref)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    root = default_store_root(data.get("models_home"))
    _say(f"pulling {ref.repo_id}/{spec.filename}@{spec.revision[:12]} -> {root}")
    bar = ProgressBar()
    try:
        ModelStore(root).ensure(spec, bar.on_phase, auto_pull=True)
    except (StoreError, OSError) as exc:
        bar.end_line()
        raise _fail(str(exc)) from None
    bar.end_line()
    name = entry_name(ref, quant)
    aliases = [a for a in dict.fromkeys([text.strip(), str(ref)]) if a != name]
    entry = {"kind": "llamacpp", "name": name, "aliases": aliases, "on_demand": bool(data["backends"]),
             "model": spec.model_dump(exclude_none=True)}
    backends = [b for b in data["backends"] if b.get("name") != name]
    kept = next((b for b in data["backends"] if b.get("name") == name), None)
    if kept is not None:  # a pull again: new file, same place in the order and settings
        entry = {**kept, "model": entry["model"]}
        backends.insert(data["backends"].index(kept), entry)
    else:
        backends.append(entry)
    write_config(path, {**data, "backends": backends})
    print(f"pulled {ref} as {name!r} into {path}")
    print(f'use it: model="{name}" in OpenAI clients, {{"model": "{name}"}} on inferd\'s sockets; '
          "run `inferd reload` if the daemon is running")


def _embedded_entries() -> list[dict[str, Any]]:
    """A first config keeps serving what the daemon served without one (the embedded
    default), with the pulled model beside it; none when that is not installed."""
    from inferd.daemon.config import ConfigError, embedded_default_config

    try:
        cfg = embedded_default_config()
    except ConfigError:
        return []
    return [b.model_dump(exclude_unset=True) for b in cfg.backends]


def import_model(name: str, file: Path, expect_sha256: Optional[str], models_home: Optional[str]) -> None:
    from inferd.models.store import ModelStore, ShaMismatch, StoreError, default_store_root

    store = ModelStore(default_store_root(models_home))
    try:
        blob = store.import_file(name, file, expect_sha256=expect_sha256)
    except ShaMismatch as exc:
        raise _fail(str(exc), EXIT_MISMATCH) from None
    except (StoreError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    sha = blob.parent.name
    print(blob, flush=True)
    _say(
        "reference it from a llamacpp backend in the config: "
        f'"model": {{"name": "{name}", "sha256": "{sha}"}}'
    )


def register(app: typer.Typer) -> None:
    @app.command("pull")
    def pull_cmd(
        ref: Annotated[
            Optional[str],
            typer.Argument(help="hf.co/OWNER/REPO[:QUANT]: pull that GGUF and add it to the config.",
                           show_default=False),
        ] = None,
        config: Annotated[
            Optional[str],
            typer.Option("--config", envvar="INFERD_CONFIG", help="Config file (default: the platform config dir)."),
        ] = None,
    ) -> None:
        """Download and verify every model the config pins (or the one named), without starting the daemon."""
        if ref is not None:
            pull_ref(ref, config)
        else:
            pull(config)

    @app.command("import")
    def import_cmd(
        file: Annotated[Path, typer.Argument(help="The GGUF file to copy into the store.", show_default=False)],
        name: Annotated[str, typer.Option("--name", help="Store name to reference from the config.")],
        expect_sha256: Annotated[
            Optional[str],
            typer.Option("--expect-sha256", help="Refuse the file unless its SHA-256 is this (64 hex)."),
        ] = None,
        models_home: Annotated[
            Optional[str],
            typer.Option("--models-home", help="Store root (default: MODELS_HOME, else the platform data dir)."),
        ] = None,
    ) -> None:
        """Copy a local model file into the store (airgapped install); prints the blob path."""
        import_model(name, file, expect_sha256, models_home)
