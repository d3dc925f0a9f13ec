"""inferd.client.events, issue 22: progress frames, status, notes and the one stop-reason
table. Recorded frame sequences (as the daemon sends them with `progress: true`) give
exact event lists; one tool-calling turn runs end to end against the scripted mock."""

from __future__ import annotations

import asyncio
import itertools
import json

from inferd.client import ClientV2, EventSession, TurnEndReason, engine_events
from inferd.client.events import (
    _STOP_REASONS,
    ContextUsage,
    Error,
    Footer,
    Info,
    ResponseStart,
    SpinnerStart,
    SpinnerStop,
    StatusUpdate,
    TextDelta,
    TextDone,
    ThinkingDelta,
    ThinkingDone,
    ThinkingStart,
    ToolCallStart,
    TurnEnd,
    TurnStart,
    Warn,
    turn_end_reason,
)
from inferd.proto import v1, v2

WEATHER = v2.Tool(name="get_weather", description="Weather for a city.",
                  input_schema={"type": "object", "properties": {"city": {"type": "string"}}})


class Recorded:
    """A recorded frame sequence, replayed as a FrameStream would: with its request."""

    def __init__(self, request, *lines: bytes, parse=v2.parse_response) -> None:
        self.request = request
        self.request_id = request.id
        self._frames = iter([parse(line) for line in lines])

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._frames)
        except StopIteration:
            raise StopAsyncIteration from None


def still(t: float = 0.0):
    return lambda: t


def v2_request(**extra) -> v2.RequestV2:
    return v2.RequestV2(id="t1", messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="Weather in Oslo?")])],
                        progress=True, **extra)


def progress(stage: str, **fields) -> bytes:
    return json.dumps({"type": "progress", "id": "t1", "stage": stage, **fields}).encode()


TIMINGS = b'"timings":{"prompt_ms":100.0,"generate_ms":200.0,"tokens_per_second":40.0}'


async def collect(events) -> list:
    return [e async for e in events]


async def test_a_queued_tool_calling_turn_exactly():
    frames = Recorded(
        v2_request(tools=[WEATHER], model="gemma-3"),
        progress("queued", position=2),
        progress("queued", position=2),  # sent again unchanged: nothing new to show
        progress("queued", position=1),
        progress("prefill", done=16, total=40),
        progress("prefill", done=40, total=40),
        progress("context", context={"used": 40, "max": 2048}),
        b'{"type":"frame","id":"t1","block":{"type":"thinking","delta":"Need the tool."}}',
        b'{"type":"frame","id":"t1","block":{"type":"text","delta":"Checking."}}',
        b'{"type":"frame","id":"t1","block":{"type":"tool_use","tool_call_id":"c1","name":"get_weather",'
        b'"input":{"city":"Oslo"}}}',
        b'{"type":"done","id":"t1","usage":{"input_tokens":40,"output_tokens":12},"stop_reason":"tool_use",'
        b'"backend":"llamacpp",' + TIMINGS + b',"context":{"used":52,"max":2048}}',
    )
    session = EventSession(clock=still())
    events = await collect(session.events(frames))
    assert events == [
        TurnStart(turn_id="t1"),
        SpinnerStart(message="queued (position 2)"),
        SpinnerStart(message="queued (position 1)"),
        SpinnerStart(message="reading the prompt (16/40 tokens)"),
        SpinnerStart(message="reading the prompt (40/40 tokens)"),
        ContextUsage(used=40, max=2048),
        StatusUpdate(model="gemma-3", provider="", context_pct=2.0, active_tools=1),
        SpinnerStop(),
        ThinkingStart(),
        ThinkingDelta(text="Need the tool."),
        ThinkingDone(),
        ResponseStart(),
        TextDelta(text="Checking."),
        TextDone(),
        ToolCallStart(id="c1", name="get_weather", args={"city": "Oslo"}),
        ContextUsage(used=52, max=2048),
        StatusUpdate(model="gemma-3", provider="llamacpp", context_pct=2.5, active_tools=1),
        Footer(prompt_tokens=40, completion_tokens=12, total_chars=9, rate=40.0, context="52/2048 (3%)"),
        TurnEnd(turn_id="t1", reason=TurnEndReason.TOOL_USE),
    ]
    assert session.queue_position == 2 and session.backend == "llamacpp"


async def test_a_queued_v1_turn_exactly():
    request = v1.Request(id="q", messages=[v1.Message(role="user", content="hi")], progress=True, max_tokens=2)
    frames = Recorded(
        request,
        b'{"type":"progress","id":"q","stage":"queued","position":3}',
        b'{"type":"progress","id":"q","stage":"queued","position":1}',
        b'{"type":"progress","id":"q","stage":"context","context":{"used":9,"max":512}}',
        b'{"type":"token","id":"q","content":"Hel"}',
        b'{"type":"token","id":"q","content":"lo"}',
        b'{"type":"done","id":"q","content":"Hello","usage":{"prompt_tokens":9,"completion_tokens":2},'
        b'"stop_reason":"length","backend":"mock","context":{"used":11,"max":512}}',
        parse=v1.parse_response,
    )
    session = EventSession(model="default-model", clock=itertools.chain([0.0], itertools.repeat(0.5)).__next__)
    events = await collect(session.events(frames))
    assert events == [
        TurnStart(turn_id="q"),
        SpinnerStart(message="queued (position 3)"),
        SpinnerStart(message="queued (position 1)"),
        ContextUsage(used=9, max=512),
        StatusUpdate(model="default-model", context_pct=1.8),
        SpinnerStop(),
        ResponseStart(),
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        TextDone(),
        ContextUsage(used=11, max=512),
        StatusUpdate(model="default-model", provider="mock", context_pct=2.1),
        Info(message="the reply was cut off at max_tokens (2)"),
        Footer(prompt_tokens=9, completion_tokens=2, total_chars=5, elapsed_ms=500, rate=4.0, context="11/512 (2%)"),
        TurnEnd(turn_id="q", reason=TurnEndReason.MAX_TOKENS),
    ]
    assert session.queue_position == 3


async def test_an_unsatisfied_tool_choice_is_a_warning_exactly():
    frames = Recorded(
        v2_request(tools=[WEATHER], tool_choice="required"),
        b'{"type":"frame","id":"t1","block":{"type":"text","delta":"Sunny."}}',
        b'{"type":"done","id":"t1","usage":{"input_tokens":30,"output_tokens":3},"stop_reason":"end_turn",'
        b'"backend":"openai-remote","tool_choice_unsatisfied":true,' + TIMINGS + b'}',
    )
    events = await collect(engine_events(frames, clock=still()))
    assert events == [
        TurnStart(turn_id="t1"),
        ResponseStart(),
        TextDelta(text="Sunny."),
        TextDone(),
        StatusUpdate(provider="openai-remote", active_tools=1),
        Warn(message='tool_choice "required" produced no tool call: the model answered in text'),
        Footer(prompt_tokens=30, completion_tokens=3, total_chars=6, rate=40.0),
        TurnEnd(turn_id="t1", reason=TurnEndReason.COMPLETE),
    ]


async def test_a_fallback_to_another_backend_is_a_warning_on_that_turn():
    def turn(backend: str) -> Recorded:
        return Recorded(v2_request(), b'{"type":"done","id":"t1","usage":{"input_tokens":1,"output_tokens":0},'
                        b'"stop_reason":"end_turn","backend":"' + backend.encode() + b'"}')

    session = EventSession(clock=still())
    first = await collect(session.events(turn("local")))
    again = await collect(session.events(turn("local")))
    fallback = await collect(session.events(turn("remote")))
    assert not [e for e in first + again if isinstance(e, (Warn, Info))]
    assert [e for e in fallback if isinstance(e, Warn)] == [
        Warn(message="this turn was served by backend 'remote', not 'local' "
                     "(a fallback, or a reload changed the backends)"),
    ]
    assert session.backend == "remote"
    # The provider a status bar shows before generation is the last turn's backend.
    ctx = Recorded(v2_request(), progress("context", context={"used": 5, "max": 100}),
                   b'{"type":"error","id":"t1","code":"queue_full","message":"full"}')
    assert (await collect(session.events(ctx)))[1:] == [
        ContextUsage(used=5, max=100),
        StatusUpdate(provider="remote", context_pct=5.0),
        Error(code="queue_full", message="full"),
        TurnEnd(turn_id="t1", reason=TurnEndReason.ERROR),
    ]


async def test_a_spinner_is_stopped_before_an_error_and_before_a_v1_whole_answer():
    frames = Recorded(v2_request(), progress("queued", position=1),
                      b'{"type":"error","id":"t1","code":"backend_unavailable","message":"gone"}')
    assert (await collect(engine_events(frames)))[1:] == [
        SpinnerStart(message="queued (position 1)"),
        SpinnerStop(),
        Error(code="backend_unavailable", message="gone"),
        TurnEnd(turn_id="t1", reason=TurnEndReason.ERROR),
    ]
    request = v1.Request(id="w", messages=[v1.Message(role="user", content="hi")], stream=False, progress=True)
    frames = Recorded(request, b'{"type":"progress","id":"w","stage":"prefill","done":1,"total":1}',
                      b'{"type":"done","id":"w","content":"ok","usage":{"prompt_tokens":1,"completion_tokens":1},'
                      b'"stop_reason":"end","backend":"mock"}', parse=v1.parse_response)
    kinds = [e.kind for e in await collect(engine_events(frames))]
    assert kinds == ["turn_start", "spinner_start", "spinner_stop", "response_start", "text_delta", "text_done",
                     "status_update", "footer", "turn_end"]


def test_one_table_maps_every_stop_reason_of_both_wires():
    for reason in list(v1.StopReason) + list(v2.StopReasonV2):
        assert reason.value in _STOP_REASONS, reason  # a new wire reason needs its row
    assert {turn_end_reason(v1.StopReason.END), turn_end_reason("end_turn"), turn_end_reason("stop_sequence")} == {
        TurnEndReason.COMPLETE}
    assert turn_end_reason(v1.StopReason.LENGTH) is turn_end_reason(v2.StopReasonV2.MAX_TOKENS) is TurnEndReason.MAX_TOKENS
    assert turn_end_reason("tool_use") is TurnEndReason.TOOL_USE
    assert turn_end_reason("cancelled") is TurnEndReason.CANCELLED and turn_end_reason("error") is TurnEndReason.ERROR
    assert turn_end_reason("a_newer_reason") is TurnEndReason.COMPLETE


def test_error_code_is_optional():
    assert Error(message="boom").code is None
    assert Error(message="boom", code="queue_full").code == "queue_full"


# ---- end to end, on the scripted mock --------------------------------------------------------


async def test_a_tool_calling_turn_against_the_mock_daemon_exactly(daemon_factory, sockdir):
    script = [{"thinking": "I need the weather."}, {"text": "Checking. "},
              {"tool_call": {"name": "get_weather", "input": {"city": "Paris"}}}]
    config = sockdir / "mock.json"
    config.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", "n_ctx": 4096, "prompt_tokens": 120,
                                                "script": script}]}))
    d = await daemon_factory(config=str(config), v2=True, v2_addr=str(sockdir / "v2.sock"))
    request = v2.RequestV2(id="e2e", messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="Paris?")])],
                           tools=[WEATHER])
    async with await ClientV2.dial_uds(d.opts.v2_address(), read_timeout=10) as client:
        events = await asyncio.wait_for(collect(engine_events(client.generate(request), clock=still())), 10)
    footer = next(e for e in events if isinstance(e, Footer))
    assert events == [
        TurnStart(turn_id="e2e"),
        ThinkingStart(),
        ThinkingDelta(text="I need the weather."),
        ThinkingDone(),
        ResponseStart(),
        TextDelta(text="Checking. "),
        TextDone(),
        ToolCallStart(id="mock-call-1", name="get_weather", args={"city": "Paris"}),
        ContextUsage(used=122, max=4096),
        StatusUpdate(provider="mock", context_pct=3.0, active_tools=1),
        # The rate is the daemon's measure when it sends timings: not ours to predict.
        Footer(prompt_tokens=120, completion_tokens=2, thinking_tokens=1, total_chars=10, rate=footer.rate,
               context="122/4096 (3%)"),
        TurnEnd(turn_id="e2e", reason=TurnEndReason.TOOL_USE),
    ]


async def test_a_progress_stage_newer_than_the_client_makes_no_event():
    class Newer:  # a progress frame of a later daemon, as a dict-like object would read
        type = "progress"
        id = "t1"
        stage = "unheard_of"

    frames = Recorded(v2_request())
    frames._frames = iter([Newer(), v2.parse_response(b'{"type":"done","id":"t1","usage":{"input_tokens":1,'
                                                      b'"output_tokens":0},"stop_reason":"end_turn","backend":"m"}')])
    assert [e.kind for e in await collect(engine_events(frames))] == ["turn_start", "status_update", "footer",
                                                                      "turn_end"]
