from __future__ import annotations

import pytest

from daemon_harness import cleanup, short_tmpdir, start_daemon


@pytest.fixture
def sockdir():
    d = short_tmpdir()
    yield d
    cleanup(d)


@pytest.fixture
async def daemon_factory(sockdir):
    """Start in-process daemons on real sockets; every one is stopped at teardown."""
    started = []

    async def factory(**kwargs):
        kwargs.setdefault("directory", sockdir)
        d = await start_daemon(**kwargs)
        started.append(d)
        return d

    yield factory
    for d in started:
        if not d.task.done():
            try:
                await d.stop()
            except Exception:  # noqa: BLE001 - teardown best effort
                d.task.cancel()
