"""`inferd serve` (the daemon) and `inferd reload` (SIGHUP to the daemon holding the lock)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated, Optional

import typer

from ..daemon.surfaces.http import OLLAMA_PORT
from ..proto.endpoints import default_lock_path


def _setup_logging() -> None:
    from ..daemon.observe.activity import python_log_level

    numeric = python_log_level(os.environ.get("INFERD_LOG"))
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())


class _RedactingFilter(logging.Filter):
    """F-3 for stderr too: journald keeps what we print."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..daemon.observe.activity import redact

        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def serve(
    config: Annotated[Optional[str], typer.Option("--config", envvar="INFERD_CONFIG", help="JSON config file")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", envvar="INFERD_BACKEND", help="mock | llamacpp (overrides the config)")] = None,
    uds: Annotated[Optional[str], typer.Option("--uds", envvar="INFERD_UDS", help="v1 inference Unix socket path")] = None,
    tcp: Annotated[Optional[str], typer.Option("--tcp", envvar="INFERD_TCP", help="also serve v1 on loopback TCP HOST:PORT (default port 47321)")] = None,
    pipe: Annotated[Optional[str], typer.Option("--pipe", envvar="INFERD_PIPE", help="v1 inference named pipe (Windows)")] = None,
    admin_addr: Annotated[Optional[str], typer.Option("--admin-addr", envvar="INFERD_ADMIN_ADDR")] = None,
    lock: Annotated[Optional[str], typer.Option("--lock", envvar="INFERD_LOCK", help="single-instance lock file")] = None,
    embed: Annotated[Optional[bool], typer.Option("--embed/--no-embed", envvar="INFERD_EMBED", help="embed socket (default: when a backend can embed)")] = None,
    embed_addr: Annotated[Optional[str], typer.Option("--embed-addr", envvar="INFERD_EMBED_ADDR")] = None,
    embed_tcp: Annotated[Optional[str], typer.Option("--embed-tcp", envvar="INFERD_EMBED_TCP")] = None,
    v2: Annotated[bool, typer.Option("--v2/--no-v2", envvar="INFERD_V2",
                                     help="serve protocol v2 (tools, thinking) on its own socket")] = True,
    v2_addr: Annotated[Optional[str], typer.Option("--v2-addr", envvar="INFERD_V2_ADDR")] = None,
    v2_tcp: Annotated[Optional[str], typer.Option("--v2-tcp", envvar="INFERD_V2_TCP")] = None,
    http: Annotated[Optional[str], typer.Option("--http", envvar="INFERD_HTTP", help="also serve the OpenAI-compatible HTTP API on loopback [HOST:]PORT (default port 47324)")] = None,
    ollama: Annotated[bool, typer.Option("--ollama", envvar="INFERD_OLLAMA", help="also serve the HTTP API (Ollama's /api routes included) on 127.0.0.1:11434 when that port is free")] = False,
    active_permits: Annotated[Optional[int], typer.Option("--active-permits", envvar="INFERD_ACTIVE_PERMITS", min=0,
                                                          help="requests run at once per backend (default: what the backend can run)")] = None,
    queue_depth: Annotated[int, typer.Option("--queue-depth", envvar="INFERD_QUEUE_DEPTH", min=0)] = 10,
    ready_timeout_secs: Annotated[float, typer.Option("--ready-timeout-secs", envvar="INFERD_READY_TIMEOUT_SECS", min=0)] = 30.0,
    write_timeout_secs: Annotated[float, typer.Option("--write-timeout-secs", envvar="INFERD_WRITE_TIMEOUT_SECS", min=0, help="0 = unbounded")] = 60.0,
    drain_timeout_secs: Annotated[float, typer.Option("--drain-timeout-secs", envvar="INFERD_DRAIN_TIMEOUT_SECS", min=0)] = 30.0,
    max_connections: Annotated[int, typer.Option("--max-connections", envvar="INFERD_MAX_CONNECTIONS", min=0, help="open client connections at most (0 = unbounded)")] = 256,
    read_timeout_secs: Annotated[float, typer.Option("--read-timeout-secs", envvar="INFERD_READ_TIMEOUT_SECS", min=0, help="seconds a client may take to send a request it began (0 = unbounded)")] = 30.0,
    buffer_budget_mib: Annotated[float, typer.Option("--buffer-budget-mib", envvar="INFERD_BUFFER_BUDGET_MIB", min=0, help="MiB of unfinished requests held at once, across clients (0 = unbounded)")] = 256.0,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="INFERD_API_KEY", help="required first frame on TCP; Authorization: Bearer on HTTP", show_default=False)] = None,
    group: Annotated[Optional[str], typer.Option("--group", envvar="INFERD_GROUP", help="admit this group's users; chown inference sockets to it")] = None,
    allow_uid: Annotated[Optional[list[int]], typer.Option("--allow-uid", help="also admit this uid (repeatable)")] = None,
    model_path: Annotated[Optional[str], typer.Option("--model-path", envvar="INFERD_MODEL_PATH")] = None,
    model_sha256: Annotated[Optional[str], typer.Option("--model-sha256", envvar="INFERD_MODEL_SHA256")] = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", envvar="INFERD_N_CTX", min=1)] = None,
    n_gpu_layers: Annotated[Optional[int], typer.Option("--n-gpu-layers", envvar="INFERD_N_GPU_LAYERS")] = None,
    n_threads: Annotated[Optional[int], typer.Option("--n-threads", envvar="INFERD_N_THREADS", min=1)] = None,
    llamacpp_embed: Annotated[bool, typer.Option("--llamacpp-embed", envvar="INFERD_LLAMACPP_EMBED")] = False,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", envvar="INFERD_CHAT_TEMPLATE")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", envvar="INFERD_PARALLEL", min=1, max=256,
                                                    help="llama.cpp requests decoded together, each with --n-ctx (default 4)")] = None,
    flash_attn: Annotated[Optional[str], typer.Option("--flash-attn", envvar="INFERD_FLASH_ATTN", metavar="on|off",
                                                      help="llama.cpp flash attention (default: llama.cpp's auto)")] = None,
    amx: Annotated[Optional[str], typer.Option("--amx", envvar="INFERD_AMX", metavar="auto|on|off",
                                               help="llama.cpp's AMX kernels (default auto: off where known to fault)")] = None,
    frame_interval_ms: Annotated[Optional[float], typer.Option(
        "--frame-interval-ms", envvar="INFERD_FRAME_INTERVAL_MS", min=0, max=1000,
        help="a runner sends a stream's tokens at most this often while steps are shorter (default: 30 where "
             "the decode threads take every core, else 3; 0 = every step)")] = None,
    cpu_strict: Annotated[Optional[str], typer.Option(
        "--cpu-strict", envvar="INFERD_CPU_STRICT", metavar="on|off",
        help="keep each llama.cpp decode thread on a CPU of its own (default: on where the decode threads "
             "take every core)")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", envvar="INFERD_IN_PROCESS",
                                             help="run llama.cpp in the daemon's process, not a supervised runner (debugging, benches)")] = False,
) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads)."""
    from ..daemon.server import run
    from ..daemon.config import ServeOptions

    if backend is not None and backend not in ("mock", "llamacpp"):
        raise typer.BadParameter("must be mock or llamacpp", param_hint="--backend")
    if model_sha256 is not None and (len(model_sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in model_sha256)):
        raise typer.BadParameter("must be 64 hex characters", param_hint="--model-sha256")
    if uds and pipe:
        raise typer.BadParameter("give --uds or --pipe, not both", param_hint="--pipe")
    if flash_attn is not None and flash_attn not in ("on", "off"):
        raise typer.BadParameter("must be on or off", param_hint="--flash-attn")
    if amx is not None and amx not in ("auto", "on", "off"):
        raise typer.BadParameter("must be auto, on or off", param_hint="--amx")
    if cpu_strict is not None and cpu_strict not in ("on", "off"):
        raise typer.BadParameter("must be on or off", param_hint="--cpu-strict")
    # Flags that set a llama.cpp option, by its LlamaCppOptions name (None = not given).
    llamacpp = {
        "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers, "n_threads": n_threads, "chat_template": chat_template,
        "parallel": parallel, "flash_attn": None if flash_attn is None else flash_attn == "on", "amx": amx,
        "embed": True if llamacpp_embed else None, "runner": False if in_process else None,
        "frame_interval_ms": frame_interval_ms, "cpu_strict": None if cpu_strict is None else cpu_strict == "on",
    }
    _setup_logging()
    opts = ServeOptions(
        config=config, backend=backend, uds=uds, tcp=tcp, pipe=pipe, admin_addr=admin_addr, lock=lock,
        embed=embed, embed_addr=embed_addr, embed_tcp=embed_tcp, v2=v2, v2_addr=v2_addr, v2_tcp=v2_tcp, http=http,
        ollama_port=OLLAMA_PORT if ollama else None,
        active_permits=active_permits, queue_depth=queue_depth, ready_timeout_secs=ready_timeout_secs,
        write_timeout_secs=write_timeout_secs, drain_timeout_secs=drain_timeout_secs,
        max_connections=max_connections, read_timeout_secs=read_timeout_secs, buffer_budget_mib=buffer_budget_mib,
        api_key=api_key,
        group=group, allow_uids=list(allow_uid or []), model_path=model_path, model_sha256=model_sha256,
        llamacpp={k: v for k, v in llamacpp.items() if v is not None},
    )
    raise typer.Exit(run(opts))


def reload(
    lock: Annotated[Optional[str], typer.Option("--lock", envvar="INFERD_LOCK")] = None,
) -> None:
    """Ask the running daemon to re-read its config and reload the model (SIGHUP)."""
    from ..daemon.lock import read_lock_holder

    path = lock or default_lock_path()
    pid = read_lock_holder(path)
    if pid is None:
        typer.echo(f"error: no daemon holds the lock at {path}", err=True)
        raise typer.Exit(1)
    if sys.platform == "win32":
        typer.echo("error: reload by signal is not available on Windows; restart the daemon", err=True)
        raise typer.Exit(1)
    os.kill(pid, signal.SIGHUP)
    typer.echo(f"reload requested (pid {pid}); watch progress with `inferd watch`")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("reload")(reload)
