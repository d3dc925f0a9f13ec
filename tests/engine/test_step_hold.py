"""A runner holds a short step's events for the next step's frame (ADR 0035): the rule,
on a real socket pair with a clock the test moves. The scheduler's side (what is held
leaves before anything longer than a decode step) is in test_llamacpp_parallel.py."""

from __future__ import annotations

import json
import socket
from inferd.engine.events import TextDelta
from inferd.engine.llamacpp import runner as runner_mod
from inferd.engine.llamacpp import runner_wire as wire
from inferd.engine.llamacpp.bridge import StepPost


def _frames(sock: socket.socket) -> list[dict]:
    """Every whole frame waiting on `sock`, decoded."""
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    out = []
    while data:
        size = int.from_bytes(data[:4], "big")
        out.append(json.loads(data[4:4 + size]))
        data = data[4 + size:]
    return out


def test_a_short_step_waits_for_the_next_and_idle_lets_it_go(monkeypatch):
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    clock = [1000.0]
    monkeypatch.setattr(runner_mod.time, "monotonic", lambda: clock[0])
    r = runner_mod.Runner(None, ours, None)  # type: ignore[arg-type]
    direct = runner_mod._Direct(r)

    def step(text: str, after_s: float) -> None:
        """What the scheduler's thread does once a step has decoded: its events go
        through the poster in one call."""
        clock[0] += after_s
        direct.call_soon_threadsafe(r.outbox.append, [7, wire.encode_event(TextDelta(text))])

    def texts(frames: list[dict]) -> list[list[str]]:
        return [[wire.decode_event(ev).text for _, ev in f["batch"]] for f in frames]

    try:
        step("a", 1.0)                                # the first step after a pause: sent at once
        assert texts(_frames(theirs)) == [["a"]]
        step("b", 0.001)                              # 1 ms later: held
        assert _frames(theirs) == []
        step("c", r.hold_s)                           # the hold is over: both in one frame
        assert texts(_frames(theirs)) == [["b", "c"]]
        step("d", 0.001)                              # held again ...
        assert _frames(theirs) == []
        StepPost.idle()                               # ... until the scheduler turns to something longer
        assert texts(_frames(theirs)) == [["d"]]
        StepPost.idle()                               # nothing is held twice
        assert _frames(theirs) == []
        step("e", 0.002)                              # 2 ms after "d" left: held
        assert _frames(theirs) == []
        step("f", 0.5)                                # a slow step: sent with what was held
        assert texts(_frames(theirs)) == [["e", "f"]]
    finally:
        StepPost.idle()
        ours.close()
        theirs.close()


def test_where_decode_takes_every_core_a_step_shorter_than_the_interval_waits(monkeypatch):
    """The 30 ms interval of a machine whose cores all decode (ADR 0035 addendum 4): at
    24 ms a step, every other step's events wait for the next one's; a step longer
    than the interval is sent on its own."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    clock = [1000.0]
    monkeypatch.setattr(runner_mod.time, "monotonic", lambda: clock[0])
    r = runner_mod.Runner(None, ours, None)  # type: ignore[arg-type]
    r.hold_s = 0.030
    direct = runner_mod._Direct(r)

    def step(text: str, after_s: float) -> list[list[str]]:
        clock[0] += after_s
        direct.call_soon_threadsafe(r.outbox.append, [3, wire.encode_event(TextDelta(text))])
        return [[wire.decode_event(ev).text for _, ev in f["batch"]] for f in _frames(theirs)]

    try:
        assert step("a", 1.0) == [["a"]]
        assert step("b", 0.024) == []
        assert step("c", 0.024) == [["b", "c"]]
        assert step("d", 0.024) == []
        assert step("e", 0.024) == [["d", "e"]]
        assert step("f", 0.031) == [["f"]]
    finally:
        StepPost.idle()
        ours.close()
        theirs.close()

