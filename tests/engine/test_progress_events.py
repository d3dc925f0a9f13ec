"""PromptProgress (issue 22): the engine event, across the runner channel and the
thread-to-loop bridge, and the mock backend's reports."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inferd.engine.events import Done, FinishReason, PromptProgress, TextDelta
from inferd.engine.llamacpp import runner_wire as wire
from inferd.engine.llamacpp.bridge import WorkerStream
from inferd.engine.mock import MockBackend, MockConfig
from inferd.engine.request import ChatMessage, GenerationRequest


def test_prompt_progress_crosses_the_runner_channel() -> None:
    event = PromptProgress(done=128, total=300, cached=64)
    item = wire.encode_event(event)
    assert item == ["PromptProgress", {"done": 128, "total": 300, "cached": 64}]
    assert wire.decode_event(item) == event
    with pytest.raises(wire.ChannelError):
        wire.decode_event(["PromptProgress", {"done": 1, "total": 2, "cached": 0, "extra": 1}])


async def test_the_bridge_passes_progress_before_text() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    stream = WorkerStream(queue, threading.Event())
    for item in (PromptProgress(0, 10), PromptProgress(10, 10), TextDelta("hi"), Done(FinishReason.END)):
        queue.put_nowait(item)
    assert [type(e).__name__ async for e in stream] == ["PromptProgress", "PromptProgress", "TextDelta", "Done"]


def request(progress: bool) -> GenerationRequest:
    return GenerationRequest(id="r", messages=[ChatMessage(role="user", content="hi")], progress=progress)


@pytest.mark.parametrize("chunk, cached, marks", [
    (0, 0, [0, 100]),             # one chunk
    (40, 10, [10, 50, 90, 100]),  # reading starts at the cached tokens
    (25, 0, [0, 25, 50, 75, 100]),
])
async def test_mock_reports_only_when_asked(chunk: int, cached: int, marks: list[int]) -> None:
    backend = MockBackend(MockConfig(tokens=["a"], prompt_tokens=100, cached_tokens=cached, prefill_chunk=chunk))
    asked = [e async for e in await backend.generate(request(True))]
    assert [e.done for e in asked if isinstance(e, PromptProgress)] == marks
    assert all(e.total == 100 and e.cached == cached for e in asked if isinstance(e, PromptProgress))
    assert [type(e) for e in asked[len(marks):]] == [TextDelta, Done]
    plain = [e async for e in await backend.generate(request(False))]
    assert [type(e) for e in plain] == [TextDelta, Done]
