"""MockBackend: the token tape, the misbehaviour knobs and deterministic embeddings
(upstream-protocol §8)."""

from __future__ import annotations

import asyncio
import time

import pytest

from inferd.engine.backend import (
    Backend,
    BackendError,
    BackendInvalidRequest,
    Done,
    NotReady,
    Token,
    Unavailable,
)
from inferd.engine.mock import MockBackend, MockConfig
from inferd.proto.embed import EmbedRequest
from inferd.proto.errors import ErrorCode
from inferd.proto.v1 import Message, Request, Role, StopReason


def resolved():
    return Request(id="r1", messages=[Message(role=Role.USER, content="hi")]).resolve()


async def collect(backend: MockBackend) -> list:
    stream = await backend.generate(resolved())
    return [event async for event in stream]


def test_mock_identity() -> None:
    backend = MockBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "mock"
    assert backend.ready()  # ready immediately
    caps = backend.capabilities()
    assert (caps.v2, caps.thinking, caps.embed) == (True, True, True)
    assert (caps.vision, caps.audio, caps.tools) == (False, False, False)
    assert MockBackend(MockConfig(embed=False)).capabilities().embed is False


async def test_default_tape() -> None:
    events = await collect(MockBackend())
    assert events == [Token("mock-response"), Done(StopReason.END, prompt_tokens=0, completion_tokens=1)]


async def test_tape_then_done() -> None:
    events = await collect(MockBackend(MockConfig(tokens=["alpha ", "beta ", "gamma"])))
    assert [e.text for e in events[:-1]] == ["alpha ", "beta ", "gamma"]
    assert all(isinstance(e, Token) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Done)
    assert done.stop_reason == StopReason.END
    assert (done.prompt_tokens, done.completion_tokens) == (0, 3)
    assert done.timings is None


async def test_empty_tape_is_just_done() -> None:
    assert await collect(MockBackend(MockConfig(tokens=[]))) == [Done(StopReason.END, 0, 0)]


@pytest.mark.parametrize(
    "kind, exc_type, message, code",
    [
        ("NotReady", NotReady, "backend not ready", ErrorCode.BACKEND_UNAVAILABLE),
        ("InvalidRequest", BackendInvalidRequest, "mock", ErrorCode.INVALID_REQUEST),
        ("Unavailable", Unavailable, "mock", ErrorCode.BACKEND_UNAVAILABLE),
    ],
)
async def test_pre_stream_errors(kind, exc_type, message, code) -> None:
    backend = MockBackend(MockConfig(pre_stream_error=kind))
    with pytest.raises(exc_type) as info:
        await backend.generate(resolved())
    assert isinstance(info.value, BackendError)
    assert info.value.message == message
    assert info.value.code == code


@pytest.mark.parametrize("kind, exc_type", [("InvalidRequest", BackendInvalidRequest), ("Unavailable", Unavailable)])
async def test_pre_stream_error_checked_before_readiness(kind, exc_type) -> None:
    backend = MockBackend(MockConfig(pre_stream_error=kind))
    backend.set_ready(False)
    with pytest.raises(exc_type):
        await backend.generate(resolved())
    not_ready_yet = MockBackend(MockConfig(pre_stream_error=kind, ready_delay_ms=60_000))
    with pytest.raises(exc_type):
        await not_ready_yet.generate(resolved())


@pytest.mark.parametrize("drop_after, expected", [(0, []), (1, ["a"]), (2, ["a", "b"])])
async def test_drop_after_ends_without_done(drop_after: int, expected: list[str]) -> None:
    events = await collect(MockBackend(MockConfig(tokens=["a", "b", "c"], drop_after=drop_after)))
    assert not any(isinstance(e, Done) for e in events)
    assert [e.text for e in events] == expected


async def test_drop_after_beyond_tape_still_done() -> None:
    events = await collect(MockBackend(MockConfig(tokens=["a"], drop_after=5)))
    assert events == [Token("a"), Done(StopReason.END, 0, 1)]


async def test_raise_after_is_a_mid_stream_fault() -> None:
    stream = await MockBackend(MockConfig(tokens=["a", "b"], raise_after=1)).generate(resolved())
    assert await stream.__anext__() == Token("a")
    with pytest.raises(RuntimeError):
        await stream.__anext__()


async def test_ready_delay() -> None:
    backend = MockBackend(MockConfig(ready_delay_ms=150))
    assert not backend.ready()
    with pytest.raises(NotReady):
        await backend.generate(resolved())
    with pytest.raises(NotReady):
        await backend.embed(EmbedRequest(input=["x"]).resolve())
    await asyncio.sleep(0.2)
    assert backend.ready()
    assert (await collect(backend))[-1] == Done(StopReason.END, 0, 1)


async def test_set_ready() -> None:
    backend = MockBackend()
    backend.set_ready(False)
    assert not backend.ready()
    with pytest.raises(NotReady) as info:
        await backend.generate(resolved())
    assert info.value.code == "backend_unavailable"
    with pytest.raises(NotReady):
        await backend.embed(EmbedRequest(input=["x"]).resolve())
    backend.set_ready(True)
    assert backend.ready()
    assert len(await collect(backend)) == 2
    # set_ready(True) overrides a pending ready delay.
    delayed = MockBackend(MockConfig(ready_delay_ms=60_000))
    assert not delayed.ready()
    delayed.set_ready(True)
    assert delayed.ready()


async def test_token_delay() -> None:
    backend = MockBackend(MockConfig(tokens=["a", "b", "c"], token_delay_ms=30))
    t0 = time.monotonic()
    events = await collect(backend)
    elapsed = time.monotonic() - t0
    assert len(events) == 4
    assert elapsed >= 0.08


async def test_embed_values() -> None:
    result = await MockBackend().embed(EmbedRequest(input=["hello", "world!"]).resolve())
    assert result.dimensions == 8
    assert result.model == "mock"
    assert result.input_tokens == 11
    assert len(result.embeddings) == 2
    assert result.embeddings[0] == pytest.approx([(k + 1) / 6 for k in range(8)])
    assert result.embeddings[1] == pytest.approx([(k + 1) / 7 for k in range(8)])
    assert result.embeddings[0][0] == pytest.approx(1 / 6)
    assert result.embeddings[1][7] == pytest.approx(8 / 7)


async def test_embed_uses_utf8_byte_length() -> None:
    result = await MockBackend().embed(EmbedRequest(input=["é✓"]).resolve())  # 2 + 3 bytes
    assert result.input_tokens == 5
    assert result.embeddings[0][0] == pytest.approx(1 / 6)


async def test_embed_dimensions_honoured() -> None:
    result = await MockBackend().embed(EmbedRequest(input=["ab"], dimensions=3).resolve())
    assert result.dimensions == 3
    assert result.embeddings == [pytest.approx([1 / 3, 2 / 3, 3 / 3])]


async def test_embed_pre_stream_error() -> None:
    backend = MockBackend(MockConfig(pre_stream_error="Unavailable"))
    with pytest.raises(Unavailable):
        await backend.embed(EmbedRequest(input=["x"]).resolve())


async def test_closing_stream_after_one_token_does_not_hang() -> None:
    backend = MockBackend(MockConfig(tokens=["t"] * 1000, token_delay_ms=50))
    stream = await backend.generate(resolved())
    first = await asyncio.wait_for(stream.__anext__(), 1)
    assert first == Token("t")
    t0 = time.monotonic()
    await asyncio.wait_for(stream.aclose(), 1)
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_cancelling_a_consumer_mid_delay() -> None:
    backend = MockBackend(MockConfig(tokens=["t"] * 1000, token_delay_ms=50))
    stream = await backend.generate(resolved())
    got: list = []

    async def consume() -> None:
        async for event in stream:
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert 1 <= len(got) <= 3
    await asyncio.wait_for(stream.aclose(), 1)


async def test_each_generate_gets_a_fresh_stream() -> None:
    backend = MockBackend(MockConfig(tokens=["x", "y"]))
    first = await collect(backend)
    second = await collect(backend)
    assert first == second == [Token("x"), Token("y"), Done(StopReason.END, 0, 2)]


async def test_mock_embed_dimensions_are_bounded():
    """Found by fuzzing: dimensions up to u32 max built 4e9 floats per input on the loop."""
    from inferd.engine.backend import BackendInvalidRequest
    from inferd.proto.embed import EmbedRequest

    backend = MockBackend()
    with pytest.raises(BackendInvalidRequest, match="between 1 and 4096"):
        await backend.embed(EmbedRequest(input=["x"], dimensions=4097).resolve())
    with pytest.raises(BackendInvalidRequest):
        await backend.embed(EmbedRequest(input=["x"], dimensions=0).resolve())
    assert (await backend.embed(EmbedRequest(input=["x"], dimensions=4096).resolve())).dimensions == 4096
