"""Fixtures: llama-cpp-python's server as the remote, started only when a test asks."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from remote_servers import KEY_ENV, LlamaServer, start_llama_server


@pytest.fixture(scope="session")
def llama_server(model_path, tmp_path_factory) -> Iterator[LlamaServer]:
    """Chat server guarded by an API key, which the tests read from $INFERD_TEST_REMOTE_KEY."""
    key = secrets.token_urlsafe(16)
    log = tmp_path_factory.mktemp("llama-server") / "chat.log"
    server = start_llama_server(model_path, log, "--chat_format", "gemma", key=key)
    os.environ[KEY_ENV] = key
    yield server
    os.environ.pop(KEY_ENV, None)
    server.kill()


@pytest.fixture(scope="session")
def llama_embed_server(model_path, tmp_path_factory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama-server") / "embed.log"
    server = start_llama_server(model_path, log, "--embedding", "true", n_ctx=256)
    yield server
    server.kill()


@pytest.fixture
def doomed_llama_server(model_path, tmp_path) -> Iterator[LlamaServer]:
    """A server of its own for a test that kills it."""
    server = start_llama_server(model_path, tmp_path / "doomed.log", "--chat_format", "gemma")
    yield server
    server.kill()
