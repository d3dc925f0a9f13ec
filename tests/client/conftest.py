"""Fixtures for the client tests: a socket directory and tiny in-test daemons
(tiny_daemons.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_daemons import Servers


@pytest.fixture
def sock_dir(sockdir: Path) -> Path:
    """The harness's short socket directory (tests/conftest.py), by this package's name."""
    return sockdir


@pytest.fixture
async def servers(sock_dir):
    async with Servers(sock_dir) as s:
        yield s

