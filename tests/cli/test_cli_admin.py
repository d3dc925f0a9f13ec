"""`inferd status`, `watch` and `doctor` against a fake admin socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
from typer.testing import CliRunner

from inferd.cli.common import admin_json_line, human_bytes
from inferd.cli.main import app


CAPS_A = {
    "id": "admin",
    "type": "status",
    "status": "capabilities",
    "backend": "alpha",
    "v2": True,
    "vision": False,
    "audio": False,
    "tools": True,
    "thinking": True,
    "embed": False,
    "accelerator": "cpu",
    "gpu_layers": 0,
    "model": "gemma-3-270m",
    "n_ctx": 4096,
    "parallel": 4,
    "flash_attn": True,
    "frame_interval_ms": 30.0,
    "n_threads": 8,
    "n_threads_batch": 8,
    "decode_cpus": [0, 2, 4, 6, 1, 3, 5, 7],
}
CAPS_B = {
    "id": "admin",
    "type": "status",
    "status": "capabilities",
    "backend": "beta",
    "v2": False,
    "vision": True,
    "audio": False,
    "tools": False,
    "thinking": False,
    "embed": True,
    "accelerator": "cuda",
    "gpu_layers": 43,
    "device_name": "CUDA0",
    "vram_total_bytes": 17094475776,
}
STARTING = {"id": "admin", "type": "status", "status": "starting"}
READY = {"id": "admin", "type": "status", "status": "ready"}
CHECKING = {"id": "admin", "type": "status", "status": "loading_model", "phase": "checking_local", "path": "/m/x.gguf"}
DOWNLOAD = {
    "id": "admin",
    "type": "status",
    "status": "loading_model",
    "phase": "download",
    "downloaded_bytes": 33554432,
    "total_bytes": None,
    "source_url": "https://example/m.gguf",
}
DRAINING = {"id": "admin", "type": "status", "status": "draining"}

runner = CliRunner()


def frame(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def admin_daemon(*frames: dict, hold: bool = True):
    def handler(rfile, wfile):
        for f in frames:
            wfile.write(frame(f))
        if hold:
            rfile.read()  # blocks until the client hangs up

    return handler


def silent_daemon(rfile, wfile):
    rfile.read()


def sorted_line(obj: dict) -> str:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, sort_keys=True, separators=(",", ":"))


@pytest.fixture
def fake_config(monkeypatch):
    """Stand-in for inferd.daemon.doctor so doctor's local lines are under test control."""
    module = types.ModuleType("inferd.daemon.doctor")
    module.calls = []

    def local_checks(config_path):
        module.calls.append(config_path)
        return list(module.lines)

    module.lines = [(True, "config", "loaded /etc/inferd.json (backends: [llamacpp:alpha], auto_pull=true)")]
    module.local_checks = local_checks
    monkeypatch.setitem(sys.modules, "inferd.daemon.doctor", module)
    return module


# ---- status ----------------------------------------------------------------------


def test_status_ready_prints_every_frame_sorted_and_exits_0(fake_server):
    server = fake_server(admin_daemon(CAPS_A, CAPS_B, READY, STARTING))
    result = runner.invoke(app, ["status", "--admin-addr", server.path])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Two backends (old bug #57) and the snapshot; the live `starting` after it is not read.
    assert lines == [sorted_line(CAPS_A), sorted_line(CAPS_B), '{"id":"admin","status":"ready","type":"status"}']


def test_status_loading_exits_1_and_keeps_null_total_bytes(fake_server):
    server = fake_server(admin_daemon(CAPS_A, DOWNLOAD))
    result = runner.invoke(app, ["status", "--admin-addr", server.path])
    assert result.exit_code == 1
    last = result.stdout.splitlines()[-1]
    assert '"total_bytes":null' in last
    assert json.loads(last) == DOWNLOAD
    assert list(json.loads(last)) == sorted(DOWNLOAD)


def test_status_reads_admin_addr_from_env(fake_server):
    server = fake_server(admin_daemon(READY))
    result = runner.invoke(app, ["status"], env={"INFERD_ADMIN_ADDR": server.path})
    assert result.exit_code == 0
    assert result.stdout == '{"id":"admin","status":"ready","type":"status"}\n'


def test_status_with_no_frame_exits_2(fake_server):
    server = fake_server(silent_daemon)
    result = runner.invoke(app, ["status", "--admin-addr", server.path])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no admin frame received within 500ms"


def test_status_unreachable_exits_2(sock_dir):
    missing = str(sock_dir / "nobody.sock")
    result = runner.invoke(app, ["status", "--admin-addr", missing])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert missing in result.stderr
    assert result.stdout == ""


def test_admin_json_line_drops_nulls_except_download_total():
    assert admin_json_line({"status": "ready", "phase": "", "path": None, "type": "status"}) == (
        '{"status":"ready","type":"status"}'
    )
    assert admin_json_line({"status": "loading_model", "phase": "download", "downloaded_bytes": 1}) == (
        '{"downloaded_bytes":1,"phase":"download","status":"loading_model","total_bytes":null}'
    )


# ---- watch -----------------------------------------------------------------------


def test_watch_prints_every_event_until_eof(fake_server):
    events = [STARTING, CHECKING, DOWNLOAD, CAPS_A, READY, DRAINING]
    server = fake_server(admin_daemon(*events, hold=False))
    result = runner.invoke(app, ["watch", "--admin-addr", server.path])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines] == events
    assert lines[2].count("null") == 1


def test_watch_unreachable_exits_2(sock_dir):
    result = runner.invoke(app, ["watch", "--admin-addr", str(sock_dir / "x.sock")])
    assert result.exit_code == 2
    assert "error:" in result.stderr


# ---- doctor ----------------------------------------------------------------------


def test_doctor_all_ok_exits_0(fake_server, fake_config):
    server = fake_server(admin_daemon(CAPS_A, CAPS_B, READY))
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path, "--config", "/etc/inferd.json"])
    assert result.exit_code == 0, result.output
    assert fake_config.calls == ["/etc/inferd.json"]
    assert result.stdout.splitlines() == [
        "[ ok ] config: loaded /etc/inferd.json (backends: [llamacpp:alpha], auto_pull=true)",
        f"[ ok ] admin: connected at {server.path}; daemon status=ready phase=-",
        "[ ok ] backend: alpha accelerator=cpu gpu_layers=0 v2=true vision=false audio=false"
        " tools=true thinking=true embed=false model=gemma-3-270m n_ctx=4096 parallel=4 threads=8/8 flash_attn=true"
        " cpus=0,2,4,6,1,3,5,7 frame_interval=30ms",
        "[ ok ] device: cpu",
        "[ ok ] backend: beta accelerator=cuda gpu_layers=43 v2=false vision=true audio=false"
        " tools=false thinking=false embed=true",
        "[ ok ] device: CUDA0 vram=15.9 GiB",
    ]


def test_doctor_config_env_and_default_none(fake_server, fake_config):
    server = fake_server(admin_daemon(READY))
    result = runner.invoke(app, ["doctor"], env={"INFERD_ADMIN_ADDR": server.path, "INFERD_CONFIG": "/x.json"})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path], env={"INFERD_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert fake_config.calls == ["/x.json", None]


def test_doctor_not_ready_daemon_fails_admin_line(fake_server, fake_config):
    server = fake_server(admin_daemon(CAPS_A, CHECKING))
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"[FAIL] admin: connected at {server.path}; daemon status=loading_model phase=checking_local" in lines
    assert any(line.startswith("[ ok ] backend: alpha ") for line in lines)


def test_doctor_unreachable_admin_fails(sock_dir, fake_config):
    missing = str(sock_dir / "gone.sock")
    result = runner.invoke(app, ["doctor", "--admin-addr", missing])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[ ok ] config: ")
    assert lines[1].startswith(f"[FAIL] admin: {missing} not reachable: ")
    assert lines[1].endswith("; daemon not running, or wrong --admin-addr")
    assert len(lines) == 2


def test_doctor_silent_daemon_fails(fake_server, fake_config):
    server = fake_server(silent_daemon)
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path])
    assert result.exit_code == 1
    assert f"[FAIL] admin: connected at {server.path} but no frame within 1s" in result.stdout.splitlines()


def test_doctor_local_failure_fails_even_when_daemon_ready(fake_server, fake_config):
    fake_config.lines = [
        (True, "config", "loaded /c.json (backends: [llamacpp:alpha], auto_pull=false)"),
        (False, "model[alpha]", "blob missing at /s/blob; run `inferd pull` or set auto_pull=true"),
    ]
    server = fake_server(admin_daemon(READY))
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path])
    assert result.exit_code == 1
    assert "[FAIL] model[alpha]: blob missing at /s/blob; run `inferd pull` or set auto_pull=true" in result.stdout
    assert f"[ ok ] admin: connected at {server.path}; daemon status=ready phase=-" in result.stdout


def test_doctor_without_config_module_prints_one_config_fail(fake_server, monkeypatch):
    monkeypatch.setitem(sys.modules, "inferd.daemon.config", None)  # import now fails
    monkeypatch.setitem(sys.modules, "inferd.daemon.doctor", None)  # even if another test imported it
    server = fake_server(admin_daemon(READY))
    result = runner.invoke(app, ["doctor", "--admin-addr", server.path])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[FAIL] config: ")
    assert lines[1:] == [f"[ ok ] admin: connected at {server.path}; daemon status=ready phase=-"]


def test_human_bytes():
    assert human_bytes(None) == "?"
    assert human_bytes(512) == "512 B"
    assert human_bytes(2048) == "2 KiB"
    assert human_bytes(5 * 1024 * 1024 + 1) == "5 MiB"
    assert human_bytes(17094475776) == "15.9 GiB"
    assert human_bytes(3 << 40) == "3.0 TiB"


# ---- as a real process -----------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    return subprocess.run(
        [sys.executable, "-m", "inferd.cli.main", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_status_as_a_process(fake_server, sock_dir):
    server = fake_server(admin_daemon(CAPS_A, READY))
    ok = run_cli("status", "--admin-addr", server.path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == '{"id":"admin","status":"ready","type":"status"}'

    down = run_cli("status", "--admin-addr", str(sock_dir / "none.sock"))
    assert down.returncode == 2
    assert down.stderr.startswith("error: ")


def test_serve_refuses_a_flash_attn_that_is_not_on_or_off():
    result = runner.invoke(app, ["serve", "--backend", "llamacpp", "--model-path", "/m.gguf", "--flash-attn", "auto"])
    assert result.exit_code == 2
    assert "must be on or off" in result.output


def test_serve_passes_cpu_strict_to_the_engine_and_refuses_other_words(monkeypatch):
    """`--cpu-strict on|off` (ADR 0035 addendum 5) is the engine's `cpu_strict`; unset = by machine."""
    import inferd.daemon.server as server_mod

    seen = []
    monkeypatch.setattr(server_mod, "run", lambda opts: seen.append(opts) or 0)
    args = ["serve", "--backend", "llamacpp", "--model-path", "/m.gguf"]
    assert runner.invoke(app, [*args, "--cpu-strict", "off"]).exit_code == 0
    assert seen[-1].llamacpp["cpu_strict"] is False
    assert runner.invoke(app, [*args, "--cpu-strict", "on"]).exit_code == 0
    assert seen[-1].llamacpp["cpu_strict"] is True
    assert runner.invoke(app, args).exit_code == 0
    assert "cpu_strict" not in seen[-1].llamacpp
    result = runner.invoke(app, [*args, "--cpu-strict", "1"])
    assert result.exit_code == 2 and "--cpu-strict" in result.output


def test_serve_passes_the_frame_interval_to_the_engine_and_refuses_one_out_of_range(monkeypatch):
    """`--frame-interval-ms` (ADR 0035 addendum 4) is the engine's `frame_interval_ms`."""
    import inferd.daemon.server as server_mod

    seen = []
    monkeypatch.setattr(server_mod, "run", lambda opts: seen.append(opts) or 0)
    args = ["serve", "--backend", "llamacpp", "--model-path", "/m.gguf"]
    assert runner.invoke(app, [*args, "--frame-interval-ms", "12.5"]).exit_code == 0
    assert seen[-1].llamacpp["frame_interval_ms"] == 12.5
    assert runner.invoke(app, args).exit_code == 0
    assert "frame_interval_ms" not in seen[-1].llamacpp  # by machine (the engine's default)
    result = runner.invoke(app, [*args, "--frame-interval-ms", "-1"])
    assert result.exit_code == 2 and "--frame-interval-ms" in result.output
