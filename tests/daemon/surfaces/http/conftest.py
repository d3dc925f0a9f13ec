"""The `http_daemon` fixture: an in-process daemon with `--http 127.0.0.1:0` (helpers
are in http_helpers.py: a module named `conftest` is ambiguous across test folders)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon_harness import Daemon


@pytest.fixture
def http_daemon(daemon_factory):
    async def start(**kwargs: Any) -> Daemon:
        kwargs.setdefault("http", "127.0.0.1:0")
        return await daemon_factory(**kwargs)

    return start
