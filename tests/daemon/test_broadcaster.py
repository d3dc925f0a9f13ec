"""StatusBroadcaster: capabilities replay, one snapshot, live events, lag drop
(upstream-protocol §4.4, §9 items 37-38)."""

from __future__ import annotations

import asyncio
import json

import pytest

from daemon_harness import begin

from inferd.daemon.status import LAG_LIMIT, StatusBroadcaster, Subscription
from inferd.proto.admin import (
    Capabilities,
    CheckingLocal,
    Download,
    Draining,
    KvCache,
    LoadingModel,
    Ready,
    Restarting,
    Starting,
    encode_status,
)


def status_of(frame: bytes | None) -> str:
    assert frame is not None, "subscription ended unexpectedly"
    obj = json.loads(frame)
    assert obj["id"] == "admin" and obj["type"] == "status"
    return obj["status"]


async def next_now(sub: Subscription) -> bytes | None:
    """The next frame, which must already be available."""
    return await asyncio.wait_for(sub.next(), 1)


async def drain_available(sub: Subscription) -> list[bytes]:
    out = []
    while sub.pending:
        frame = await next_now(sub)
        assert frame is not None
        out.append(frame)
    return out


def test_lag_limit_is_256() -> None:
    assert LAG_LIMIT == 256


async def test_initial_snapshot_is_starting() -> None:
    b = StatusBroadcaster()
    assert isinstance(b.snapshot, Starting)
    sub = b.subscribe()
    assert await next_now(sub) == b'{"id":"admin","type":"status","status":"starting"}\n'
    assert sub.pending == 0


async def test_publish_fans_out_and_updates_snapshot() -> None:
    b = StatusBroadcaster()
    subs = [b.subscribe() for _ in range(3)]
    assert b.subscriber_count == 3
    for sub in subs:
        assert status_of(await next_now(sub)) == "starting"
    b.publish(LoadingModel(phase=KvCache(n_ctx=4096)))
    assert isinstance(b.snapshot, LoadingModel)
    b.publish(Ready())
    assert isinstance(b.snapshot, Ready)
    for sub in subs:
        first = await next_now(sub)
        assert json.loads(first) == {
            "id": "admin",
            "type": "status",
            "status": "loading_model",
            "phase": "kv_cache",
            "n_ctx": 4096,
        }
        assert await next_now(sub) == encode_status(Ready())
        assert sub.pending == 0
    # A late subscriber gets only the newest snapshot.
    late = b.subscribe()
    assert await drain_available(late) == [encode_status(Ready())]


async def test_capabilities_do_not_change_snapshot() -> None:
    b = StatusBroadcaster()
    b.publish(Ready())
    b.publish(Capabilities(backend="llamacpp", accelerator="cuda", gpu_layers=33))
    assert isinstance(b.snapshot, Ready)
    sub = b.subscribe()
    frames = await drain_available(sub)
    assert [status_of(f) for f in frames] == ["capabilities", "ready"]
    caps = json.loads(frames[0])
    assert (caps["backend"], caps["accelerator"], caps["gpu_layers"]) == ("llamacpp", "cuda", 33)


async def test_subscribe_replays_capabilities_name_sorted_then_snapshot() -> None:
    b = StatusBroadcaster()
    b.publish(LoadingModel(phase=CheckingLocal(path="/m")))
    for name in ("zeta", "alpha", "mid"):
        b.publish(Capabilities(backend=name))
    b.publish(Capabilities(backend="alpha", gpu_layers=7))  # replaces alpha's frame
    b.publish(Ready())
    frames = await drain_available(b.subscribe())
    assert [status_of(f) for f in frames] == ["capabilities"] * 3 + ["ready"]
    backends = [json.loads(f)["backend"] for f in frames[:3]]
    assert backends == ["alpha", "mid", "zeta"]
    assert json.loads(frames[0])["gpu_layers"] == 7


async def test_clear_capabilities_forgets_old_backends() -> None:
    b = StatusBroadcaster()
    b.publish(Capabilities(backend="old"))
    b.clear_capabilities()
    b.publish(Capabilities(backend="new"))
    frames = await drain_available(b.subscribe())
    assert [json.loads(f).get("backend") for f in frames] == ["new", None]


async def test_live_capabilities_are_pushed() -> None:
    b = StatusBroadcaster()
    sub = b.subscribe()
    assert status_of(await next_now(sub)) == "starting"
    b.publish(Capabilities(backend="mock", embed=True))
    frame = json.loads(await next_now(sub))
    assert frame["status"] == "capabilities" and frame["embed"] is True


@pytest.mark.parametrize(
    "during",
    [
        LoadingModel(phase=CheckingLocal(path="/models/m.gguf")),
        LoadingModel(phase=Download(downloaded_bytes=1, total_bytes=None, source_url="u")),
        Restarting(phase=KvCache(n_ctx=8)),
    ],
    ids=["checking_local", "download", "restarting"],
)
async def test_subscriber_during_loading_gets_snapshot_then_ready_live(during) -> None:
    b = StatusBroadcaster()
    b.publish(during)
    sub = b.subscribe()
    assert await next_now(sub) == encode_status(during)
    waiter, called = begin(sub.next)
    await called.wait()
    assert not waiter.done()  # nothing more until something is published
    b.publish(Capabilities(backend="llamacpp"))
    b.publish(Ready())
    assert status_of(await asyncio.wait_for(waiter, 1)) == "capabilities"
    assert status_of(await next_now(sub)) == "ready"


async def test_checking_local_snapshot_carries_path() -> None:
    b = StatusBroadcaster()
    b.publish(LoadingModel(phase=CheckingLocal(path="/models/m.gguf")))
    obj = json.loads(await next_now(b.subscribe()))
    assert (obj["status"], obj["phase"], obj["path"]) == ("loading_model", "checking_local", "/models/m.gguf")


async def test_slow_subscriber_dropped_after_lag_limit() -> None:
    b = StatusBroadcaster()
    b.publish(Capabilities(backend="mock"))
    slow = b.subscribe()  # never reads: 2 initial frames queued
    fast = b.subscribe()
    got_fast: list[bytes] = []

    async def read_fast() -> None:
        while (frame := await fast.next()) is not None:
            got_fast.append(frame)
            if status_of(frame) == "ready":
                return

    reader = asyncio.create_task(read_fast())
    event = LoadingModel(phase=Download(downloaded_bytes=0, total_bytes=10, source_url="u"))
    for i in range(LAG_LIMIT):
        b.publish(event)
        if i % 32 == 0:
            await asyncio.sleep(0)
    # Exactly LAG_LIMIT events behind: still subscribed.
    assert not slow.lagged
    assert slow.pending == 2 + LAG_LIMIT
    assert b.subscriber_count == 2
    b.publish(event)  # one more: dropped
    assert slow.lagged
    assert b.subscriber_count == 1
    b.publish(Ready())
    await asyncio.wait_for(reader, 2)
    assert status_of(got_fast[-1]) == "ready"
    assert len(got_fast) == 2 + LAG_LIMIT + 2
    # The dropped subscriber sees EOF (it reconnects for a fresh snapshot) and its
    # queue was freed.
    assert slow.pending == 0
    assert await next_now(slow) is None
    assert await next_now(slow) is None
    b.publish(Ready())
    assert slow.pending == 0


async def test_small_lag_limit() -> None:
    b = StatusBroadcaster(lag_limit=3)
    sub = b.subscribe()
    for _ in range(3):
        b.publish(Ready())
    assert not sub.lagged and sub.pending == 4
    b.publish(Ready())
    assert sub.lagged and sub.pending == 0
    assert await next_now(sub) is None


async def test_reading_subscriber_is_never_dropped() -> None:
    b = StatusBroadcaster(lag_limit=4)
    sub = b.subscribe()
    assert status_of(await next_now(sub)) == "starting"
    for i in range(50):
        b.publish(LoadingModel(phase=KvCache(n_ctx=i)))
        assert json.loads(await next_now(sub))["n_ctx"] == i
    assert not sub.lagged
    assert b.subscriber_count == 1


async def test_lag_counts_live_events_only() -> None:
    """A subscriber that has read its replay and then falls more than LAG_LIMIT live
    events behind is dropped: the replayed frames it already consumed buy no slack."""
    b = StatusBroadcaster()
    b.publish(Capabilities(backend="a"))
    b.publish(Capabilities(backend="b"))
    sub = b.subscribe()
    assert [status_of(await next_now(sub)) for _ in range(3)] == ["capabilities", "capabilities", "starting"]
    for _ in range(LAG_LIMIT):
        b.publish(Ready())
    assert not sub.lagged
    b.publish(Ready())  # LAG_LIMIT + 1 live events behind
    assert sub.lagged
    assert await next_now(sub) is None


async def test_waiting_subscriber_wakes_with_none_when_dropped() -> None:
    b = StatusBroadcaster(lag_limit=2)
    sub = b.subscribe()
    assert status_of(await next_now(sub)) == "starting"
    waiter, called = begin(sub.next)
    await called.wait()  # blocked in next()
    b.publish(Ready())
    assert status_of(await asyncio.wait_for(waiter, 1)) == "ready"
    waiter, called = begin(sub.next)
    await called.wait()
    for _ in range(10):
        b.publish(Draining())
    # It was woken by the first publish but had not run yet: the flood drops it.
    assert sub.lagged
    assert await asyncio.wait_for(waiter, 1) is None


async def test_unsubscribe_ends_stream_after_queued_frames() -> None:
    b = StatusBroadcaster()
    sub = b.subscribe()
    b.unsubscribe(sub)
    assert b.subscriber_count == 0
    assert status_of(await next_now(sub)) == "starting"
    assert await next_now(sub) is None
    b.publish(Ready())
    assert sub.pending == 0


async def test_close_drains_queued_frames_then_none() -> None:
    b = StatusBroadcaster()
    subs = [b.subscribe() for _ in range(2)]
    b.publish(Ready())
    b.publish(Draining())
    blocked = b.subscribe()
    assert status_of(await next_now(blocked)) == "draining"
    waiter, called = begin(blocked.next)
    await called.wait()
    b.close()
    assert await asyncio.wait_for(waiter, 1) is None
    assert b.subscriber_count == 0
    for sub in subs:
        assert [status_of(await next_now(sub)) for _ in range(3)] == ["starting", "ready", "draining"]
        assert await next_now(sub) is None
    # Subscribing after close: the snapshot, then EOF.
    late = b.subscribe()
    assert status_of(await next_now(late)) == "draining"
    assert await next_now(late) is None
    assert b.subscriber_count == 0


async def test_publish_threadsafe() -> None:
    b = StatusBroadcaster()
    sub = b.subscribe()
    assert status_of(await next_now(sub)) == "starting"
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, b.publish_threadsafe, loop, Ready())
    assert status_of(await asyncio.wait_for(sub.next(), 1)) == "ready"
    assert isinstance(b.snapshot, Ready)
