"""`inferd serve` with no config at all: the embedded default model (real llama.cpp).

One daemon subprocess for the module (the model loads once); the CLI is driven
exactly as a person would from another terminal. `model_path` (tests/conftest.py) marks
these tests `model`; the daemon is held to the CPU like every real-model test.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import clean_env, cleanup, cli_argv, serve_argv, short_tmpdir


def inferd(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def served(model_path):
    d = short_tmpdir()
    env = clean_env(XDG_RUNTIME_DIR=str(d), XDG_CONFIG_HOME=str(d / "config"), INFERD_LOG_DIR=str(d / "logs"),
                    INFERD_N_THREADS="2", INFERD_FORCE_BACKEND="cpu")
    # Output to a file, not a pipe nobody reads while the daemon runs (a full pipe blocks it).
    with open(d / "stderr", "wb") as err:
        proc = subprocess.Popen(serve_argv(), env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while not (d / "inferd" / "infer.sock").exists():  # appears only once the daemon is ready
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"daemon did not come up: {(d / 'stderr').read_text()[-2000:]}")
        time.sleep(0.1)
    yield env, d
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, (d / "stderr").read_text()[-2000:]
    cleanup(d)


def test_doctor_all_ok_naming_model_file_and_sha256(served, model_path):
    env, _ = served
    out = inferd(env, "doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith("[ ok ]") for line in lines), out.stdout
    path = Path(model_path)
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    model_line = next(line for line in lines if "model[" in line)
    assert str(path) in model_line and f"sha256={digest}" in model_line
    assert any("status=ready" in line for line in lines)
    assert any("accelerator=cpu" in line and "embed=true" in line for line in lines)


def test_status_reports_capabilities_then_ready(served):
    env, _ = served
    out = inferd(env, "status")
    assert out.returncode == 0, out.stderr
    caps, ready = [json.loads(line) for line in out.stdout.splitlines()]
    assert caps["status"] == "capabilities" and caps["backend"] == "gemma-3-270m"
    assert caps["model"] == "Gemma 3 270m" and caps["n_ctx"] == 8192 and caps["gpu_layers"] == 0
    assert ready["status"] == "ready"


def test_run_is_deterministic_at_temperature_zero(served):
    env, _ = served
    args = ("run", "The capital of France is", "--max-tokens", "12", "--temperature", "0")
    first, second = inferd(env, *args), inferd(env, *args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip() and first.stdout == second.stdout


def test_embed_cli_returns_unit_vectors(served):
    env, _ = served
    out = inferd(env, "embed", "a small cat", "a kitten", "--dimensions", "128")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    for r in rows:
        assert r["dimensions"] == 128 and len(r["embedding"]) == 128
        assert math.isclose(math.sqrt(sum(x * x for x in r["embedding"])), 1.0, rel_tol=1e-3)
