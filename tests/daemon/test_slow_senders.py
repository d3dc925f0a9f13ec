"""Slow senders and the refusal throttle on the NDJSON sockets (issue 19 items 2-4;
THREAT_MODEL F-4, F-8, F-22). The HTTP side is tests/daemon/surfaces/http/test_http_hostile.py.

Each test says how the code before issue 19 (1f4ee46) failed it.
"""

from __future__ import annotations

import asyncio
import logging

from daemon_harness import RecordingActivityLog, dial, line, read_json, req, reserved_port, tcp_exchange, wait_until

from inferd.daemon.net.buffers import ByteBudget
from inferd.daemon.net.listeners import MAX_PENDING_AUTH, PENDING_AUTH_POOL
from inferd.daemon.observe.throttle import Throttle, ThrottleFilter, log_refusal

KIB = 1 << 10
MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_logs_the_first_then_once_per_interval_with_the_count_held_back():
    clock = Clock()
    rec = RecordingActivityLog()
    throttle = Throttle(10.0, clock)
    try:
        written = [log_refusal(throttle, rec.logger, "auth_refused", "no", surface="http") for _ in range(50)]
        assert written == [True] + [False] * 49 and throttle.held_back("auth_refused:http") == 49
        assert log_refusal(throttle, rec.logger, "auth_refused", "no", surface="inference")  # another kind
        clock.now = 10.0
        assert log_refusal(throttle, rec.logger, "auth_refused", "no", surface="http")
        refusals = [r for r in rec.records if r["surface"] == "http"]
        assert [r.get("suppressed") for r in refusals] == [None, 49]
    finally:
        rec.close()


def test_throttle_filter_holds_back_repeats_of_a_library_warning():
    clock = Clock()
    flt = ThrottleFilter(Throttle(10.0, clock))

    def record(level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, "Invalid HTTP request received.", None, None)

    assert [flt.filter(record()) for _ in range(5)] == [True, False, False, False, False]
    assert flt.filter(record(logging.ERROR))  # errors are never held back
    clock.now = 11.0
    passed = record()
    assert flt.filter(passed) and "4 more like this" in passed.getMessage()


def test_byte_budget_takes_gives_and_remembers_its_peak():
    budget = ByteBudget(100)
    a, b = budget.hold(), budget.hold()
    assert a.take(60) and not b.take(41) and b.take(40)
    assert budget.in_use == 100 and budget.refused == 1
    a.release()
    b.give(10)
    b.release()
    assert budget.in_use == 0 and budget.peak == 100
    assert ByteBudget(0).take(1 << 40)  # 0 = not bounded


async def test_slow_partial_lines_are_bounded_by_the_budget_and_cut_at_the_read_timeout(daemon_factory):
    """Six clients each send 700 KiB of a line and stall (the issue's slow senders,
    scaled to a 2 MiB budget). The daemon never holds more than the budget: those that
    find it used up get `queue_full` at once, the others `invalid_request` at the read
    timeout; every one gets its error frame and the budget is whole again. Old code: no
    budget, no timeout; all six held their lines for ever."""
    rec = RecordingActivityLog()
    d = await daemon_factory(buffer_budget_mib=2, read_timeout_secs=2.0, activity=rec)
    budget = d.server._security.budget
    peers = [await dial(d.infer) for _ in range(6)]
    for _, writer in peers:
        writer.write(b'{"id":"slow","messages":[{"role":"user","content":"' + b"a" * (700 * KIB))
    frames = await asyncio.gather(*(read_json(r, 20) for r, _ in peers))
    codes = sorted(f["code"] for f in frames if f is not None)
    assert len(codes) == 6 and all(f["type"] == "error" and f["id"] == "" for f in frames)
    assert codes.count("queue_full") >= 3 and set(codes) == {"invalid_request", "queue_full"}
    assert 0 < budget.peak <= 2 * MIB and budget.in_use == 0
    names = {r["msg"] for r in rec.records}
    assert {"buffer_budget_full", "read_timeout"} <= names
    for _, w in peers:
        w.close()
    frames = await asyncio.wait_for(_roundtrip_big(d.infer, 600 * KIB), 20)  # a whole big line still works
    assert frames["type"] == "done"


async def _roundtrip_big(path: str, size: int) -> dict:
    reader, writer = await dial(path)
    try:
        writer.write(line(req("big", content="b" * size)))
        while True:
            frame = await read_json(reader, 20)
            assert frame is not None
            if frame["type"] in ("done", "error"):
                return frame
    finally:
        writer.close()


async def test_a_full_pending_auth_pool_makes_room_for_a_newcomer(daemon_factory):
    """F-8: sixteen TCP peers that never authenticate fill the pending pool; a new peer
    that sends its auth frame at once takes the place of the oldest and is served. Old
    code: the newcomer was closed at once until one of the sixteen timed out."""
    with reserved_port() as port:
        d = await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key="k-0123456789")
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_PENDING_AUTH)]
    try:
        await wait_until(lambda: d.server.tracker.in_pool(PENDING_AUTH_POOL) == MAX_PENDING_AUTH, 10, "a full pool")
        frames = await tcp_exchange(port, line({"type": "auth", "key": "k-0123456789"}), line(req("new")))
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "new"
        assert await asyncio.wait_for(silent[0][0].read(), 10) == b""  # the oldest made room
    finally:
        for _, w in silent:
            w.close()
