"""`inferd service install | uninstall | status` into a temporary HOME.

The unit's content is checked line by line, and by `systemd-analyze --user verify`
where that program exists (it reports unknown keys and bad values on stderr); the
launchd plist is parsed with plistlib. Nothing here needs a running systemd.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferd.cli import service
from inferd.cli.main import app


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "INFERD_LOG_DIR",
                "MODELS_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    return h


def invoke(*args: str):
    return CliRunner().invoke(app, ["service", *args])


def unit_lines(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_install_writes_an_enabled_hardened_user_unit(home):
    r = invoke("install", "--http", "47324", "--drain-timeout-secs", "20", "--platform", "linux")
    assert r.exit_code == 0, r.output
    unit = home / ".config" / "systemd" / "user" / "inferd.service"
    link = unit.parent / "default.target.wants" / "inferd.service"
    assert f"wrote {unit}" in r.output
    assert unit.read_text().splitlines()[0].startswith("# " + service.MARKER)
    keys = unit_lines(unit)
    (exec_start,) = keys["ExecStart"]
    command = exec_start.split()
    assert Path(command[0]).is_absolute() and Path(command[0]).exists()
    assert command[command.index("serve"):] == ["serve", "--http", "47324", "--drain-timeout-secs", "20"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"]
    assert keys["TimeoutStopSec"] == ["35s"]  # longer than the drain
    for hardening in ("NoNewPrivileges=yes", "LimitCORE=0", "ProtectSystem=strict", "PrivateTmp=yes",
                      "RuntimeDirectory=inferd", "RuntimeDirectoryMode=0700", "UMask=0077"):
        key, _, value = hardening.partition("=")
        assert keys[key] == [value], key
    rw = keys["ReadWritePaths"][0].split()
    assert f"-{home}/.local/share/inferd/models" in rw and f"-{home}/.local/state/inferd/log" in rw
    assert keys["EnvironmentFile"] == [f"-{home}/.config/inferd/inferd.env"]
    assert keys["WantedBy"] == ["default.target"]
    # Enabled as `systemctl --user enable` would: a relative link in default.target.wants.
    assert link.is_symlink() and os.readlink(link) == "../inferd.service" and link.resolve() == unit
    # What to run next is printed; nothing was run (F-14).
    assert "systemctl --user daemon-reload" in r.output and "systemctl --user start inferd.service" in r.output


def test_the_unit_passes_systemd_analyze_verify_where_it_exists(home):
    assert invoke("install", "--platform", "linux").exit_code == 0
    unit = home / ".config" / "systemd" / "user" / "inferd.service"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # No systemd here: the content checks of the other tests are what there is.
        assert unit.read_text().count("\n[") == 2  # [Service] and [Install] follow [Unit]
        return
    proc = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys and bad values are reported here
    # The check can fail: a unit with a bad key is reported.
    bad = unit.with_name("bad.service")
    bad.write_text(unit.read_text().replace("LimitCORE=0", "LimitCORE=0\nProtectSystem=sideways"))
    proc = subprocess.run([analyze, "--user", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "sideways" in proc.stderr


def test_no_sandbox_drops_the_namespace_options(home):
    r = invoke("install", "--no-sandbox", "--dry-run", "--platform", "linux")
    assert r.exit_code == 0
    assert "NoNewPrivileges=yes" in r.output
    assert "ProtectSystem" not in r.output and "PrivateTmp" not in r.output
    assert not (home / ".config" / "systemd").exists()  # a dry run writes nothing


def test_install_refuses_a_unit_it_did_not_write(home):
    unit = home / ".config" / "systemd" / "user" / "inferd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/true\n")
    r = invoke("install", "--platform", "linux")
    assert r.exit_code == 1 and "not written by inferd" in r.output
    assert unit.read_text() == "[Service]\nExecStart=/usr/bin/true\n"
    r = invoke("uninstall", "--platform", "linux")
    assert r.exit_code == 1 and unit.exists()


def test_reinstall_updates_and_uninstall_removes(home):
    assert invoke("install", "--platform", "linux").exit_code == 0
    r = invoke("install", "--http", "127.0.0.1:9999", "--platform", "linux")
    assert r.exit_code == 0 and "updated" in r.output
    unit = home / ".config" / "systemd" / "user" / "inferd.service"
    assert "--http 127.0.0.1:9999" in unit.read_text()
    r = invoke("status", "--platform", "linux")
    assert r.exit_code == 0 and "(ours)" in r.output and "enabled: yes" in r.output
    assert "daemon: not running" in r.output
    r = invoke("uninstall", "--platform", "linux")
    assert r.exit_code == 0 and "systemctl --user stop inferd.service" in r.output
    assert not unit.exists() and not (unit.parent / "default.target.wants" / "inferd.service").is_symlink()
    r = invoke("status", "--platform", "linux")
    assert r.exit_code == 1 and "absent" in r.output


def test_launchd_agent_on_macos(home):
    r = invoke("install", "--http", "47324", "--platform", "darwin")
    assert r.exit_code == 0, r.output
    path = home / "Library" / "LaunchAgents" / f"{service.LAUNCHD_LABEL}.plist"
    data = plistlib.loads(path.read_bytes())
    assert data["Label"] == service.LAUNCHD_LABEL
    assert data["RunAtLoad"] is True and data["KeepAlive"] == {"SuccessfulExit": False}
    args = data["ProgramArguments"]
    assert Path(args[0]).is_absolute() and args[args.index("serve"):][:3] == ["serve", "--http", "47324"]
    assert "launchctl bootstrap gui/" in r.output
    assert invoke("uninstall", "--platform", "darwin").exit_code == 0 and not path.exists()


def test_unsupported_platform_is_a_clear_error(home):
    r = invoke("install", "--platform", "win32")
    assert r.exit_code != 0 and "no per-user service manager" in r.output


def test_quoting_of_paths_with_spaces():
    assert service._quote("/a b/c") == '"/a b/c"'
    assert service._quote("/plain") == "/plain"
    assert service._quote("50%$x") == '"50%%$$x"'
