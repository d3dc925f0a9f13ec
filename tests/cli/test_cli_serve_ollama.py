"""`inferd serve --ollama` asks for the HTTP API on Ollama's port too (ADR 0027, F-24)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from inferd.cli.main import app
from inferd.daemon import server
from inferd.daemon.config import ServeOptions


@pytest.mark.parametrize(("args", "port"), [(["--ollama"], 11434), ([], None)])
def test_ollama_flag_sets_the_port(monkeypatch, args, port):
    seen: list[ServeOptions] = []
    monkeypatch.setattr(server, "run", lambda opts: seen.append(opts) or 0)
    monkeypatch.setattr("inferd.cli.serve._setup_logging", lambda: None)
    result = CliRunner().invoke(app, ["serve", "--backend", "mock", *args])
    assert result.exit_code == 0, result.output
    assert seen[0].ollama_port == port


def test_config_file_takes_ollama_port_within_range():
    from pydantic import ValidationError

    from inferd.daemon.config import ConfigFile

    base = {"backends": [{"name": "m", "kind": "mock"}]}
    assert ConfigFile.model_validate({**base, "ollama_port": 11434}).ollama_port == 11434
    assert ConfigFile.model_validate(base).ollama_port is None
    with pytest.raises(ValidationError):
        ConfigFile.model_validate({**base, "ollama_port": 70000})
