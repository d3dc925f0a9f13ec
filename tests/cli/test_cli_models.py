"""`inferd import` and `inferd pull` through typer's CliRunner."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from inferd.cli import models as models_cli
from inferd.models.store import ModelSpec, ModelStore


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Keep `import` and `pull` as subcommands."""

    models_cli.register(app)
    return app


@pytest.fixture
def gguf(tmp_path: Path) -> tuple[Path, bytes, str]:
    data = b"GGUF" + bytes(range(256)) * 512
    path = tmp_path / "local.gguf"
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def run(app: typer.Typer, *args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


# ---- import ----------------------------------------------------------------------------

def test_import_prints_blob_and_hint(app, gguf, tmp_path: Path) -> None:
    src, data, sha = gguf
    home = tmp_path / "store"
    result = run(app, "import", "--name", "local-model", "--expect-sha256", sha, str(src), "--models-home", str(home))
    assert result.exit_code == 0, result.stderr
    blob = home / "blobs" / "sha256" / sha[:2] / sha / "data"
    assert result.stdout == f"{blob}\n"
    assert blob.read_bytes() == data
    assert f'"model": {{"name": "local-model", "sha256": "{sha}"}}' in result.stderr
    manifest = json.loads((home / "manifests" / "local-model.json").read_text())
    assert manifest["blob"] == f"sha256:{sha}" and manifest["source"]["registry"] == "local-import"


def test_import_uses_models_home_env(app, gguf, tmp_path: Path) -> None:
    src, _, sha = gguf
    home = tmp_path / "env-store"
    result = run(app, "import", "--name", "m", str(src), env={"MODELS_HOME": str(home)})
    assert result.exit_code == 0, result.stderr
    assert (home / "manifests" / "m.json").is_file()
    assert result.stdout.strip().endswith(f"{sha}/data")


def test_import_mismatch_exits_2_and_imports_nothing(app, gguf, tmp_path: Path) -> None:
    src, _, sha = gguf
    home = tmp_path / "store"
    result = run(app, "import", "--name", "m", "--expect-sha256", "0" * 64, str(src), "--models-home", str(home))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: SHA-256 mismatch") and "(nothing imported)" in result.stderr
    assert result.stdout == ""
    assert not (home / "manifests" / "m.json").exists()
    assert not (home / "blobs" / "sha256" / sha[:2]).exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--name", "../escape"], "invalid model name"),
        (["--name", "m", "--expect-sha256", "abc"], "64 hexadecimal"),
    ],
)
def test_import_bad_input_exits_1(app, gguf, tmp_path: Path, args: list[str], needle: str) -> None:
    src, _, _ = gguf
    result = run(app, "import", *args, str(src), "--models-home", str(tmp_path / "store"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and needle in result.stderr


def test_import_missing_file_exits_1(app, tmp_path: Path) -> None:
    result = run(app, "import", "--name", "m", str(tmp_path / "nope.gguf"), "--models-home", str(tmp_path / "s"))
    assert result.exit_code == 1 and "is not a regular file" in result.stderr


# ---- pull ------------------------------------------------------------------------------

class _ConfigError(Exception):
    pass


@pytest.fixture
def fake_config(monkeypatch: pytest.MonkeyPatch):
    """Stand in for inferd.daemon.config with the interface `pull` relies on."""
    configs: dict[str, object] = {}
    mod = types.ModuleType("inferd.daemon.config")
    mod.ConfigError = _ConfigError
    mod.resolve_config_path = lambda explicit: Path(explicit or "/etc/inferd-default.json")

    def load_config(path):
        if str(path) not in configs:
            raise _ConfigError(f"config {path} does not exist")
        return configs[str(path)]

    mod.load_config = load_config
    monkeypatch.setitem(sys.modules, "inferd.daemon.config", mod)
    return configs


def _cfg(models_home: str, *backends) -> types.SimpleNamespace:
    return types.SimpleNamespace(backends=list(backends), models_home=models_home, auto_pull=False)


@pytest.fixture
def tiny_hub():
    data = bytes(range(256)) * 4096  # 1 MiB
    sha = hashlib.sha256(data).hexdigest()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_a) -> None:
            pass

        def do_HEAD(self) -> None:
            self._send(body=False)

        def do_GET(self) -> None:
            self._send(body=True)

        def _send(self, body: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Repo-Commit", "a" * 40)
            self.end_headers()
            if body:
                self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", data, sha
    server.shutdown()
    server.server_close()


def test_pull_downloads_with_progress(app, fake_config, tiny_hub, tmp_path: Path) -> None:
    url, data, sha = tiny_hub
    home = tmp_path / "store"
    spec = ModelSpec(name="tiny", sha256=sha, repo="acme/tiny", filename="tiny.gguf")
    fake_config["/cfg.json"] = _cfg(
        str(home),
        types.SimpleNamespace(kind="mock", model=None),
        types.SimpleNamespace(kind="llamacpp", model=None),  # a model_path entry: nothing to pull
        types.SimpleNamespace(kind="llamacpp", model=spec),
    )
    result = run(app, "pull", env={"INFERD_CONFIG": "/cfg.json", "HF_ENDPOINT": url})
    assert result.exit_code == 0, result.stderr
    blob = ModelStore(home).blob_path(sha)
    assert blob.read_bytes() == data
    lines = result.stderr.split("\n")
    assert lines[0] == f"pulling tiny -> {home}"
    assert "\r[" in result.stderr and "100.0%  1.0/1.0 MiB" in result.stderr
    assert lines[-2] == f"blob ready at {blob}"
    assert result.stdout == ""


def test_pull_with_nothing_to_pull(app, fake_config, tmp_path: Path) -> None:
    fake_config["/cfg.json"] = _cfg(str(tmp_path), types.SimpleNamespace(kind="mock", model=None))
    result = run(app, "pull", "--config", "/cfg.json")
    assert result.exit_code == 0
    assert result.stderr == "no models to pull in /cfg.json\n"


def test_pull_errors_exit_1(app, fake_config, tmp_path: Path) -> None:
    result = run(app, "pull", "--config", "/missing.json")
    assert result.exit_code == 1 and result.stderr == "error: config /missing.json does not exist\n"

    spec = ModelSpec(name="tiny", sha256="ab" * 32)  # no source, not in the store
    fake_config["/cfg.json"] = _cfg(str(tmp_path / "s"), types.SimpleNamespace(kind="llamacpp", model=spec))
    result = run(app, "pull", "--config", "/cfg.json")
    assert result.exit_code == 1
    assert "error: model tiny has no source and is not in the store" in result.stderr
