"""MockBackend: the token tape, the misbehaviour knobs and deterministic embeddings
(upstream-protocol §8)."""

from __future__ import annotations

import asyncio
import types

import pytest

from daemon_harness import req, roundtrip

from inferd.engine import mock as mock_module
from inferd.engine.backend import Backend, BackendError, BackendInvalidRequest, Fault, NotReady, Unavailable
from inferd.engine.events import Done, FinishReason, TextDelta, ThinkingDelta, ToolCall, Usage
from inferd.engine.mock import MockBackend, MockConfig
from inferd.proto.embed import EmbedRequest
from inferd.engine.mock import ScriptStep
from inferd.engine.request import ChatMessage, GenerationRequest, ToolSpec


class Clock:
    """The mock's clock and sleep, driven by the test: no real time passes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(mock_module, "time", types.SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(mock_module, "asyncio", types.SimpleNamespace(sleep=c.sleep))
    return c


def resolved(**kw):
    return GenerationRequest(id="r1", messages=[ChatMessage(role="user", content="hi")], **kw)


def done_(prompt: int, completion: int, reason: FinishReason = FinishReason.END) -> Done:
    return Done(reason, usage=Usage(prompt_tokens=prompt, completion_tokens=completion))


async def collect(backend: MockBackend) -> list:
    stream = await backend.generate(resolved())
    return [event async for event in stream]


def test_mock_identity() -> None:
    backend = MockBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "mock"
    assert backend.ready()  # ready immediately
    caps = backend.capabilities()
    # It claims only what its script emits: plain text by default.
    assert (caps.v2, caps.embed) == (True, True)
    assert (caps.vision, caps.audio, caps.tools, caps.thinking) == (False, False, False, False)
    assert MockBackend(MockConfig(embed=False)).capabilities().embed is False


async def test_default_tape() -> None:
    events = await collect(MockBackend())
    assert events == [TextDelta("mock-response"), done_(0, 1)]


async def test_tape_then_done() -> None:
    events = await collect(MockBackend(MockConfig(tokens=["alpha ", "beta ", "gamma"])))
    assert [e.text for e in events[:-1]] == ["alpha ", "beta ", "gamma"]
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Done)
    assert done.reason == FinishReason.END
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (0, 3)
    assert done.timings is None


async def test_empty_tape_is_just_done() -> None:
    assert await collect(MockBackend(MockConfig(tokens=[]))) == [done_(0, 0)]


@pytest.mark.parametrize(
    "kind, exc_type, message, code",
    [
        ("NotReady", NotReady, "backend not ready", Fault.NOT_READY),
        ("InvalidRequest", BackendInvalidRequest, "mock", Fault.INVALID_REQUEST),
        ("Unavailable", Unavailable, "mock", Fault.UNAVAILABLE),
    ],
)
async def test_pre_stream_errors(kind, exc_type, message, code) -> None:
    backend = MockBackend(MockConfig(pre_stream_error=kind))
    with pytest.raises(exc_type) as info:
        await backend.generate(resolved())
    assert isinstance(info.value, BackendError)
    assert info.value.message == message
    assert info.value.kind == code


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
    assert events == [TextDelta("a"), done_(0, 1)]


async def test_raise_after_is_a_mid_stream_fault() -> None:
    stream = await MockBackend(MockConfig(tokens=["a", "b"], raise_after=1)).generate(resolved())
    assert await stream.__anext__() == TextDelta("a")
    with pytest.raises(RuntimeError):
        await stream.__anext__()


async def test_ready_delay(clock) -> None:
    backend = MockBackend(MockConfig(ready_delay_ms=150))
    assert not backend.ready()
    with pytest.raises(NotReady):
        await backend.generate(resolved())
    with pytest.raises(NotReady):
        await backend.embed(EmbedRequest(input=["x"]).resolve())
    clock.now += 0.149
    assert not backend.ready()
    clock.now += 0.001
    assert backend.ready()
    assert (await collect(backend))[-1] == done_(0, 1)


async def test_set_ready() -> None:
    backend = MockBackend()
    backend.set_ready(False)
    assert not backend.ready()
    with pytest.raises(NotReady) as info:
        await backend.generate(resolved())
    assert info.value.kind == Fault.NOT_READY
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


async def test_token_delay(clock) -> None:
    backend = MockBackend(MockConfig(tokens=["a", "b", "c"], token_delay_ms=30))
    events = await collect(backend)
    assert len(events) == 4
    assert clock.slept == [0.03, 0.03, 0.03]  # before each token
    await collect(MockBackend(MockConfig(tokens=["a"])))
    assert clock.slept == [0.03] * 3  # a delay of 0 ms sleeps not at all


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


async def test_closing_stream_after_one_token_does_not_hang(clock) -> None:
    backend = MockBackend(MockConfig(tokens=["t"] * 1000, token_delay_ms=50))
    stream = await backend.generate(resolved())
    first = await asyncio.wait_for(stream.__anext__(), 1)
    assert first == TextDelta("t")
    await asyncio.wait_for(stream.aclose(), 1)
    assert clock.slept == [0.05]  # closed where it stood: no further delay was waited out
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_cancelling_a_consumer_mid_delay(monkeypatch) -> None:
    never = asyncio.Event()
    waiting = asyncio.Event()

    async def endless_delay(delay: float) -> None:  # the second token's delay never ends
        if waiting.is_set() or got:
            waiting.set()
            await never.wait()

    monkeypatch.setattr(mock_module, "asyncio", types.SimpleNamespace(sleep=endless_delay))
    backend = MockBackend(MockConfig(tokens=["t"] * 1000, token_delay_ms=50))
    stream = await backend.generate(resolved())
    got: list = []

    async def consume() -> None:
        async for event in stream:
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(waiting.wait(), 1)  # one token out, the next one's delay begun
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert got == [TextDelta("t")]
    await asyncio.wait_for(stream.aclose(), 1)


async def test_each_generate_gets_a_fresh_stream() -> None:
    backend = MockBackend(MockConfig(tokens=["x", "y"]))
    first = await collect(backend)
    second = await collect(backend)
    assert first == second == [TextDelta("x"), TextDelta("y"), done_(0, 2)]


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


SCRIPT = [ScriptStep(thinking="let me see"), ScriptStep(text="I will look it up. "),
          ScriptStep(tool_name="search", tool_input={"q": "cats"})]


async def test_script_emits_thinking_text_and_a_tool_call_in_order() -> None:
    backend = MockBackend(MockConfig(script=SCRIPT, prompt_tokens=12, cached_tokens=5, n_ctx=4096))
    caps = backend.capabilities()
    assert (caps.tools, caps.thinking) == (True, True)
    events = await collect(backend)
    assert events[:3] == [ThinkingDelta("let me see"), TextDelta("I will look it up. "),
                          ToolCall(id="mock-call-1", name="search", input={"q": "cats"})]
    done = events[3]
    assert done.reason == FinishReason.TOOL_USE
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (12, 2)
    assert (done.usage.cached_tokens, done.usage.thinking_tokens) == (5, 1)
    assert (done.context.used, done.context.max) == (14, 4096)


async def test_script_tool_choice_none_suppresses_calls() -> None:
    backend = MockBackend(MockConfig(script=SCRIPT))
    stream = await backend.generate(resolved(tools=[ToolSpec("search")], tool_choice="none"))
    events = [e async for e in stream]
    assert not any(isinstance(e, ToolCall) for e in events)
    assert events[-1].reason == FinishReason.END


async def test_max_tokens_is_honoured() -> None:
    stream = await MockBackend(MockConfig(tokens=["a", "b", "c"])).generate(resolved(max_tokens=2))
    events = [e async for e in stream]
    assert events == [TextDelta("a"), TextDelta("b"), done_(0, 2, FinishReason.LENGTH)]


async def test_stop_string_cuts_the_text_even_across_steps() -> None:
    """The mock scans with llama.cpp's StopScanner: no part of a stop string is sent, not
    even the part in an earlier step (the mock's own scan used to send "hello wo")."""
    backend = MockBackend(MockConfig(tokens=["hello wo", "rld and", " more"]))
    events = [e async for e in await backend.generate(resolved(stop=["world"]))]
    assert events[:-1] == [TextDelta("hello ")]
    assert events[-1].reason == FinishReason.END
    events = [e async for e in await backend.generate(resolved(stop=[" and"]))]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello world"


async def test_a_tail_held_for_a_stop_is_sent_in_its_place() -> None:
    """A tail that could begin a stop is held, and sent once it does not: before the call
    that follows it, and at the end."""
    script = [ScriptStep(text="a <"), ScriptStep(tool_name="search"), ScriptStep(text="b <")]
    backend = MockBackend(MockConfig(script=script))
    events = [e async for e in await backend.generate(resolved(stop=["<x"]))]
    assert [type(e) for e in events] == [TextDelta, TextDelta, ToolCall, TextDelta, TextDelta, Done]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a ", "<", "b ", "<"]


async def test_mock_honours_max_tokens_and_stop_over_the_socket(daemon_factory):
    """Item 10: the mock counts each text step as a token and cuts at a stop string, as a
    model would (the stop itself is not sent). Old code: it ignored both."""
    d = await daemon_factory(mock={"tokens": ["ab", "c", "ST", "OP", "d"]})
    frames = await roundtrip(d.infer, req("len", max_tokens=2))
    assert [f["content"] for f in frames[:-1]] == ["ab", "c"]
    done = frames[-1]
    assert done["content"] == "abc" and done["stop_reason"] == "length" and done["usage"]["completion_tokens"] == 2
    done = (await roundtrip(d.infer, req("stop", stop=["ST"])))[-1]
    assert done["content"] == "abc" and done["stop_reason"] == "end"
    done = (await roundtrip(d.infer, req("inside", stop=["zz", "b"])))[-1]
    assert done["content"] == "a" and done["stop_reason"] == "end"
    done = (await roundtrip(d.infer, req("none", stop=["never"])))[-1]
    assert done["content"] == "abcSTOPd" and done["stop_reason"] == "end"
