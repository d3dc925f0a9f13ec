"""inferd.client.events: koda-shaped turn events from v1 and v2 frame streams."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from pydantic import BaseModel, TypeAdapter

from inferd.client import Client, ClientV2, Message, ReadTimeout, Request, Role, UnexpectedEof, engine_events
from inferd.client.errors import ClientDecodeError
from inferd.client.events import (
    ContextUsage,
    EngineEvent,
    Error,
    Footer,
    Info,
    ResponseStart,
    TextDelta,
    TextDone,
    ThinkingDelta,
    ThinkingDone,
    ThinkingStart,
    StatusUpdate,
    ToolCallStart,
    TurnEnd,
    TurnEndReason,
    TurnStart,
)
from inferd.proto import v1, v2

# ---- frames ------------------------------------------------------------------------------

# The done frames gained members this milestone: usage.cached_tokens and
# thinking_tokens, context, and timings on v2. A daemon from before sends none of
# them; these models are the done frames as such a daemon's client knew them.


class OldUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class OldDone(BaseModel):
    type: str = "done"
    id: str
    content: str
    usage: OldUsage
    stop_reason: str
    backend: str


class OldUsageV2(BaseModel):
    input_tokens: int
    output_tokens: int


class OldDoneV2(BaseModel):
    type: str = "done"
    id: str
    usage: OldUsageV2
    stop_reason: str
    backend: str


def token(text: str, id: str = "r1") -> v1.TokenFrame:
    return v1.TokenFrame(id=id, content=text)


def done_v1(content: str, completion: int, prompt: int = 3, **extra) -> v1.DoneFrame:
    return v1.DoneFrame(
        id="r1",
        content=content,
        usage=v1.Usage(prompt_tokens=prompt, completion_tokens=completion),
        stop_reason=v1.StopReason.END,
        backend="mock",
        **extra,
    )


def text(delta: str) -> v2.FrameV2:
    return v2.FrameV2(id="r2", block=v2.TextDeltaBlock(delta=delta))


def thinking(delta: str) -> v2.FrameV2:
    return v2.FrameV2(id="r2", block=v2.ThinkingDeltaBlock(delta=delta))


def tool_use(call_id: str, name: str, args) -> v2.FrameV2:
    return v2.FrameV2(id="r2", block=v2.ToolUseBlock(tool_call_id=call_id, name=name, input=args))


def done_v2(stop: v2.StopReasonV2, output: int, input: int = 5) -> v2.DoneFrameV2:
    return v2.DoneFrameV2(
        id="r2", usage=v2.UsageV2(input_tokens=input, output_tokens=output), stop_reason=stop, backend="mock"
    )


class Frames:
    """An async iterator over given frames that records whether it was closed."""

    def __init__(self, *frames, then: BaseException | None = None) -> None:
        self._frames = list(frames)
        self._then = then
        self.pulled = 0
        self.closed = False

    def __aiter__(self) -> "Frames":
        return self

    async def __anext__(self):
        if self.pulled < len(self._frames):
            self.pulled += 1
            return self._frames[self.pulled - 1]
        if self._then is not None:
            raise self._then
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


def clock(*times: float):
    """A clock returning the given times in order, then the last one forever."""
    it = itertools.chain(times, itertools.repeat(times[-1]))
    return lambda: next(it)


async def collect(frames, **kwargs) -> list:
    return [event async for event in engine_events(frames, **kwargs)]


def kinds(events) -> list[str]:
    return [event.kind for event in events]


# ---- v1 -----------------------------------------------------------------------------------


async def test_v1_stream_exact_sequence():
    frames = Frames(token("Hel"), token("lo"), done_v1("Hello", completion=2))
    events = await collect(frames, turn_id="r1", clock=clock(10.0, 10.5))
    assert events == [
        TurnStart(turn_id="r1"),
        ResponseStart(),
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        TextDone(),
        StatusUpdate(provider="mock"),
        Footer(prompt_tokens=3, completion_tokens=2, total_chars=5, elapsed_ms=500, rate=4.0),
        TurnEnd(turn_id="r1", reason=TurnEndReason.COMPLETE),
    ]
    assert not frames.closed  # the turn ended normally: nothing to cancel


async def test_v1_rate_comes_from_timings_when_present():
    timings = v1.Timings(prompt_ms=40.0, generate_ms=25.0, tokens_per_second=80.0)
    events = await collect(Frames(token("x"), done_v1("x", completion=2, timings=timings)), clock=clock(0.0, 2.0))
    (footer,) = [e for e in events if isinstance(e, Footer)]
    assert footer.rate == 80.0 and footer.elapsed_ms == 2000


async def test_v1_without_streaming_takes_the_text_from_done():
    events = await collect(Frames(done_v1("Paris", completion=2)), clock=clock(1.0, 1.25))
    assert events == [
        TurnStart(),
        ResponseStart(),
        TextDelta(text="Paris"),
        TextDone(),
        StatusUpdate(provider="mock"),
        Footer(prompt_tokens=3, completion_tokens=2, total_chars=5, elapsed_ms=250, rate=8.0),
        TurnEnd(reason=TurnEndReason.COMPLETE),
    ]


async def test_v1_done_with_the_new_members():
    done = v1.DoneFrame(
        id="r1",
        content="ok",
        usage=v1.Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=96, thinking_tokens=0),
        stop_reason="length",
        backend="llamacpp",
        context=v1.ContextInfo(used=2048, max=8192),
        timings=v1.Timings(prompt_ms=5.0, generate_ms=50.0, tokens_per_second=80.0),
    )
    events = await collect(Frames(token("ok"), done), turn_id="t", clock=clock(0.0, 0.1))
    assert events[-5:] == [
        ContextUsage(used=2048, max=8192),
        StatusUpdate(provider="llamacpp", context_pct=25.0),
        Info(message="the reply was cut off at max_tokens"),
        Footer(
            prompt_tokens=100,
            completion_tokens=4,
            cache_read_tokens=96,
            thinking_tokens=0,
            total_chars=2,
            elapsed_ms=100,
            rate=80.0,
            context="2048/8192 (25%)",
        ),
        TurnEnd(turn_id="t", reason=TurnEndReason.MAX_TOKENS),
    ]


async def test_v1_error_after_tokens():
    error = v1.ErrorFrame(id="r1", code="backend_unavailable", message="backend ended stream without terminal frame")
    events = await collect(Frames(token("one"), error), turn_id="r1")
    assert events == [
        TurnStart(turn_id="r1"),
        ResponseStart(),
        TextDelta(text="one"),
        TextDone(),
        Error(code="backend_unavailable", message="backend ended stream without terminal frame"),
        TurnEnd(turn_id="r1", reason="error"),
    ]


async def test_v1_error_before_anything():
    error = v1.ErrorFrame(id="r1", code="queue_full", message="queue full")
    events = await collect(Frames(error))
    assert events == [TurnStart(), Error(code="queue_full", message="queue full"), TurnEnd(reason="error")]


async def test_status_frames_and_empty_deltas_make_no_events():
    frames = Frames(v1.StatusFrame(id="r1", status="queued"), token(""), token("a"), token(""), done_v1("a", 1))
    assert kinds(await collect(frames)) == [
        "turn_start", "response_start", "text_delta", "text_done", "status_update", "footer", "turn_end",
    ]


# ---- v2 -----------------------------------------------------------------------------------


async def test_v2_thinking_text_and_tool_use_exact_sequence():
    frames = Frames(
        thinking("The user wants "),
        thinking("the weather."),
        text("Let me check."),
        tool_use("tc-1", "get_weather", {"city": "Oslo"}),
        tool_use("tc-2", "get_time", {"tz": "Europe/Oslo"}),
        done_v2(v2.StopReasonV2.TOOL_USE, output=20),
    )
    events = await collect(frames, turn_id="r2", clock=clock(5.0, 6.0))
    assert events == [
        TurnStart(turn_id="r2"),
        ThinkingStart(),
        ThinkingDelta(text="The user wants "),
        ThinkingDelta(text="the weather."),
        ThinkingDone(),
        ResponseStart(),
        TextDelta(text="Let me check."),
        TextDone(),
        ToolCallStart(id="tc-1", name="get_weather", args={"city": "Oslo"}),
        ToolCallStart(id="tc-2", name="get_time", args={"tz": "Europe/Oslo"}),
        StatusUpdate(provider="mock"),
        Footer(prompt_tokens=5, completion_tokens=20, total_chars=13, elapsed_ms=1000, rate=20.0),
        TurnEnd(turn_id="r2", reason=TurnEndReason.TOOL_USE),
    ]


async def test_v2_runs_of_text_and_thinking_alternate():
    frames = Frames(
        text("a"), thinking("hmm"), text("b"), text("c"), thinking("so"), done_v2(v2.StopReasonV2.END_TURN, 5)
    )
    assert kinds(await collect(frames)) == [
        "turn_start",
        "response_start",
        "text_delta",
        "text_done",
        "thinking_start",
        "thinking_delta",
        "thinking_done",
        "text_delta",  # the response has started already: no second response_start
        "text_delta",
        "text_done",
        "thinking_start",
        "thinking_delta",
        "thinking_done",
        "status_update",
        "footer",
        "turn_end",
    ]


async def test_v2_tool_use_without_text():
    frames = Frames(tool_use("c", "f", None), done_v2(v2.StopReasonV2.TOOL_USE, 1))
    events = await collect(frames)
    assert kinds(events) == ["turn_start", "tool_call_start", "status_update", "footer", "turn_end"]
    assert events[1] == ToolCallStart(id="c", name="f", args=None)


async def test_v2_done_with_the_new_members():
    done = v2.DoneFrameV2(
        id="r2",
        usage=v2.UsageV2(input_tokens=50, output_tokens=10, cached_tokens=40, thinking_tokens=6),
        stop_reason="max_tokens",
        backend="llamacpp",
        context=v1.ContextInfo(used=60, max=4096),
        timings=v1.Timings(prompt_ms=3.0, generate_ms=100.0, tokens_per_second=100.0),
    )
    events = await collect(Frames(thinking("t"), text("x"), done), clock=clock(0.0, 0.2))
    assert events[-5:] == [
        ContextUsage(used=60, max=4096),
        StatusUpdate(provider="llamacpp", context_pct=1.5),
        Info(message="the reply was cut off at max_tokens"),
        Footer(
            prompt_tokens=50,
            completion_tokens=10,
            cache_read_tokens=40,
            thinking_tokens=6,
            total_chars=1,
            elapsed_ms=200,
            rate=100.0,
            context="60/4096 (1%)",
        ),
        TurnEnd(reason=TurnEndReason.MAX_TOKENS),
    ]


async def test_v2_error_while_thinking():
    error = v2.ErrorFrameV2(id="r2", code="tool_call_malformed", message="bad call")
    events = await collect(Frames(thinking("x"), error))
    assert events == [
        TurnStart(),
        ThinkingStart(),
        ThinkingDelta(text="x"),
        ThinkingDone(),
        Error(code="tool_call_malformed", message="bad call"),
        TurnEnd(reason="error"),
    ]


async def test_frames_parsed_from_the_wire():
    lines = [
        b'{"type":"frame","id":"w","block":{"type":"thinking","delta":"hm"}}',
        b'{"type":"frame","id":"w","block":{"type":"text","delta":"Hi"}}',
        b'{"type":"done","id":"w","usage":{"input_tokens":1,"output_tokens":2},"stop_reason":"end_turn","backend":"mock"}',
    ]
    events = await collect(Frames(*(v2.parse_response(raw) for raw in lines)))
    assert kinds(events) == [
        "turn_start", "thinking_start", "thinking_delta", "thinking_done",
        "response_start", "text_delta", "text_done", "status_update", "footer", "turn_end",
    ]
    assert events[-1] == TurnEnd(reason=TurnEndReason.COMPLETE)


async def test_done_frames_from_the_wire_with_the_new_members():
    v1_done = (
        b'{"type":"done","id":"a","content":"hi","usage":{"prompt_tokens":9,"completion_tokens":1,'
        b'"cached_tokens":8,"thinking_tokens":0},"stop_reason":"end","backend":"llamacpp",'
        b'"timings":{"prompt_ms":1.0,"generate_ms":10.0,"tokens_per_second":100.0},"context":{"used":10,"max":100}}'
    )
    events = await collect(Frames(v1.parse_response(b'{"type":"token","id":"a","content":"hi"}'), v1.parse_response(v1_done)))
    assert events[-4:-1] == [
        ContextUsage(used=10, max=100),
        StatusUpdate(provider="llamacpp", context_pct=10.0),
        Footer(prompt_tokens=9, completion_tokens=1, cache_read_tokens=8, total_chars=2, elapsed_ms=events[-2].elapsed_ms,
               rate=100.0, context="10/100 (10%)"),
    ]
    v2_done = (
        b'{"type":"done","id":"b","usage":{"input_tokens":9,"output_tokens":4,"cached_tokens":0,"thinking_tokens":3},'
        b'"stop_reason":"end_turn","backend":"llamacpp","timings":{"prompt_ms":1.0,"generate_ms":40.0,'
        b'"tokens_per_second":75.0},"context":{"used":13,"max":8192}}'
    )
    events = await collect(Frames(v2.parse_response(v2_done)))
    assert events[1:] == [
        ContextUsage(used=13, max=8192),
        StatusUpdate(provider="llamacpp", context_pct=0.2),
        Footer(prompt_tokens=9, completion_tokens=4, thinking_tokens=3, elapsed_ms=events[3].elapsed_ms, rate=75.0,
               context="13/8192 (0%)"),
        TurnEnd(reason=TurnEndReason.COMPLETE),
    ]


async def test_done_frames_of_a_daemon_without_the_new_members():
    old = OldDone(id="o", content="abc", usage=OldUsage(prompt_tokens=2, completion_tokens=3), stop_reason="end",
                  backend="mock")
    events = await collect(Frames(token("abc"), old), clock=clock(0.0, 1.5))
    assert events[-3:] == [
        StatusUpdate(provider="mock"),
        Footer(prompt_tokens=2, completion_tokens=3, total_chars=3, elapsed_ms=1500, rate=2.0),
        TurnEnd(reason=TurnEndReason.COMPLETE),
    ]
    old_v2 = OldDoneV2(id="o", usage=OldUsageV2(input_tokens=1, output_tokens=0), stop_reason="end_turn", backend="mock")
    events = await collect(Frames(old_v2), clock=clock(0.0, 0.0))
    assert events == [TurnStart(), StatusUpdate(provider="mock"), Footer(prompt_tokens=1),
                      TurnEnd(reason=TurnEndReason.COMPLETE)]


# ---- failures of the stream and early exits ---------------------------------------------------


async def test_stream_ending_without_a_terminal_frame():
    events = await collect(Frames(token("par")))
    assert events[-3:] == [
        TextDone(),
        Error(code="backend_unavailable", message="the frame stream ended before a terminal frame"),
        TurnEnd(reason="error"),
    ]


@pytest.mark.parametrize(
    "exc, code",
    [
        (UnexpectedEof(), "backend_unavailable"),
        (ConnectionResetError(104, "Connection reset by peer"), "backend_unavailable"),
        (ReadTimeout("no frame from the daemon within 1s (read timeout)", 1.0), "timeout"),
        (ClientDecodeError("decode: bad"), "decode_error"),
    ],
)
async def test_client_failures_become_error_events(exc, code):
    events = await collect(Frames(thinking("a"), then=exc))
    assert events[-3:] == [ThinkingDone(), Error(code=code, message=str(exc)), TurnEnd(reason="error")]


async def test_other_exceptions_propagate():
    with pytest.raises(RuntimeError, match="bug"):
        await collect(Frames(token("a"), then=RuntimeError("bug")))


async def test_abandoning_the_events_closes_the_frame_stream():
    frames = Frames(token("a"), token("b"), done_v1("ab", 2))
    events = engine_events(frames)
    assert isinstance(await anext(events), TurnStart)
    assert isinstance(await anext(events), ResponseStart)
    await events.aclose()
    assert frames.closed and frames.pulled == 1


async def test_events_round_trip_through_json():
    frames = Frames(thinking("t"), text("x"), tool_use("c", "f", {"a": [1, 2.5, None]}), done_v2("tool_use", 3))
    events = await collect(frames, turn_id="j")
    adapter = TypeAdapter(list[EngineEvent])
    assert adapter.validate_json(adapter.dump_json(events)) == events
    assert {e.kind for e in events} >= {"turn_start", "thinking_start", "tool_call_start", "footer", "turn_end"}


# ---- against a real daemon ------------------------------------------------------------------


async def test_engine_events_against_a_real_daemon(daemon_factory, sockdir):
    d = await daemon_factory(mock={"tokens": ["Hello", ", ", "world"]}, v2=True, v2_addr=str(sockdir / "v2.sock"))
    expected = ["turn_start", "response_start", "text_delta", "text_delta", "text_delta", "text_done", "status_update",
                "footer", "turn_end"]

    async with await Client.dial_uds(d.infer, read_timeout=10) as client:
        request = Request(id="real-1", messages=[Message(role=Role.USER, content="hi")])
        events = await asyncio.wait_for(collect(client.generate(request)), 10)
        # The daemon may or may not report the context yet; if it does, it comes
        # right before the footer.
        assert [k for k in kinds(events) if k != "context_usage"] == expected
        assert kinds(events).count("context_usage") <= 1
        assert events[0] == TurnStart(turn_id="real-1")
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello, world"
        (footer,) = [e for e in events if isinstance(e, Footer)]
        assert footer.completion_tokens == 3 and footer.total_chars == 12 and footer.elapsed_ms >= 0
        assert events[-1] == TurnEnd(turn_id="real-1", reason=TurnEndReason.COMPLETE)
        # A finished turn leaves the connection usable for the next one.
        assert not client.closed
        again = await asyncio.wait_for(collect(client.generate(request.model_copy(update={"stream": False}))), 10)
        assert [k for k in kinds(again) if k != "context_usage"] == [
            "turn_start", "response_start", "text_delta", "text_done", "status_update", "footer", "turn_end",
        ]
        assert [e.text for e in again if isinstance(e, TextDelta)] == ["Hello, world"]

    async with await ClientV2.dial_uds(d.opts.v2_address(), read_timeout=10) as client:
        request = v2.RequestV2(id="real-2", messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="hi")])])
        events = await asyncio.wait_for(collect(client.generate(request)), 10)
        assert [k for k in kinds(events) if k != "context_usage"] == expected
        assert events[-1] == TurnEnd(turn_id="real-2", reason=TurnEndReason.COMPLETE)

        # An error frame from the daemon: a dangling attachment reference.
        bad = v2.RequestV2(id="bad", messages=[v2.MessageV2(role="user", content=[v2.ImageBlock(attachment_id="nope")])])
        events = await asyncio.wait_for(collect(client.generate(bad)), 10)
        assert kinds(events) == ["turn_start", "error", "turn_end"]
        assert events[1].code == "invalid_request" and events[2] == TurnEnd(turn_id="bad", reason="error")
