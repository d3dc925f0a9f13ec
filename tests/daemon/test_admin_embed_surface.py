"""Admin and embed surfaces of a real in-process daemon (upstream §9 16-20, 35-38)."""

from __future__ import annotations

import asyncio
import os

from daemon_harness import admin_frames, dial, line, read_json, roundtrip, start_daemon, stuck_socket, wait_until, watch_mock

# The mock is never ready by itself: each test below says when it is (set_ready).
NEVER_READY = {"ready_delay_ms": 600_000}


async def loading(sockdir):
    """A daemon whose admin socket is up and whose mock backend is loading."""
    d = await start_daemon(sockdir, wait_ready=False, mock=NEVER_READY)
    await wait_until(lambda: os.path.exists(d.admin) and bool(d.server.router.entries), 10, "the backend to load")
    return d


async def test_admin_replays_capabilities_then_snapshot(daemon_factory):
    d = await daemon_factory()
    caps, snap = await admin_frames(d.admin, 2)
    assert caps["id"] == "admin" and caps["type"] == "status" and caps["status"] == "capabilities"
    assert caps["backend"] == "mock" and caps["accelerator"] == "cpu" and caps["gpu_layers"] == 0
    assert caps["embed"] is True and caps["v2"] is True
    assert snap == {"id": "admin", "type": "status", "status": "ready"}


async def test_admin_during_loading_gets_snapshot_then_live_ready(sockdir):
    d = await loading(sockdir)
    try:
        reader, writer = await dial(d.admin)
        first = await read_json(reader)
        second = await read_json(reader)
        assert first["status"] == "capabilities"
        assert second["status"] == "loading_model" and second["phase"] == "checking_local"
        assert second["path"] == "(mock)"
        # F-13: no inference socket while loading
        assert not os.path.exists(d.infer)
        d.server.router.entries[0].backend.set_ready(True)
        third = await read_json(reader, timeout=10)
        assert third["status"] == "ready"
        await asyncio.wait_for(d.server.is_ready.wait(), 5)
        assert os.path.exists(d.infer)
        writer.close()
    finally:
        await d.stop()


async def test_connect_fails_before_ready_and_succeeds_after(sockdir):
    """F-13: the inference socket does not exist until the backend is ready."""
    d = await loading(sockdir)
    try:
        for _ in range(3):
            try:
                _, w = await asyncio.open_unix_connection(d.infer)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                w.close()
                raise AssertionError("connected before ready")
        d.server.router.entries[0].backend.set_ready(True)
        assert await d.wait_ready(10)
        frames = await roundtrip(d.infer, {"id": "r", "messages": [{"role": "user", "content": "x"}]})
        assert frames[-1]["type"] == "done"
    finally:
        await d.stop()


async def test_admin_ignores_client_writes(daemon_factory):
    d = await daemon_factory()
    reader, writer = await dial(d.admin)
    writer.write(b'{"command":"drain"}\n' * 10)
    frames = [await read_json(reader), await read_json(reader)]
    assert [f["status"] for f in frames] == ["capabilities", "ready"]
    writer.close()


async def test_admin_subscriber_that_never_reads_is_dropped(daemon_factory):
    from inferd.proto.admin import CheckingLocal, Ready, Restarting

    d = await daemon_factory()
    stuck = stuck_socket(d.admin)
    live_reader, live_writer = await dial(d.admin)
    assert [(await read_json(live_reader))["status"] for _ in range(2)] == ["capabilities", "ready"]

    async def live() -> int:
        seen = 0
        while True:
            frame = await read_json(live_reader, timeout=10)
            seen += 1
            if frame["status"] == "ready":
                return seen

    reading = asyncio.create_task(live())
    for i in range(600):
        d.server.broadcaster.publish(Restarting(phase=CheckingLocal(path=f"{i}-" + "x" * 4000)))
        await asyncio.sleep(0)
    d.server.broadcaster.publish(Ready())
    assert await reading == 601  # the reading subscriber got every event, `ready` last
    # The stuck one was cut off after lagging 256 events; only the live one remains.
    assert d.server.broadcaster.subscriber_count == 1
    stuck.close()
    live_writer.close()


async def test_embed_mock_vectors(daemon_factory):
    d = await daemon_factory()
    frames = await roundtrip(d.embed, {"id": "e1", "input": ["hello", "world!"]})
    emb = frames[0]
    assert emb["type"] == "embeddings" and emb["id"] == "e1" and emb["dimensions"] == 8
    assert emb["usage"] == {"input_tokens": 11} and emb["model"] == "mock" and emb["backend"] == "mock"
    assert emb["embeddings"][0] == [(k + 1) / 6 for k in range(8)]
    assert emb["embeddings"][1] == [(k + 1) / 7 for k in range(8)]
    frames = await roundtrip(d.embed, {"id": "e2", "input": ["abc"], "dimensions": 3})
    assert frames[0]["dimensions"] == 3 and len(frames[0]["embeddings"][0]) == 3


async def test_embed_validation_keeps_connection(daemon_factory):
    d = await daemon_factory()
    reader, writer = await dial(d.embed)
    cases = [({"id": "a", "input": []}, "input must not be empty"),
             ({"id": "b", "input": ["x", ""]}, "input[1] must not be empty"),
             ({"id": "c", "input": ["x"], "task": "some_future_task"}, "task uses an unknown variant")]
    for request, text in cases:
        writer.write(line(request))
        err = await read_json(reader)
        assert err["type"] == "error" and err["id"] == request["id"] and err["code"] == "invalid_request"
        assert text in err["message"]
    writer.write(line({"id": "ok", "input": ["fine"], "task": "retrieval_document"}))
    assert (await read_json(reader))["type"] == "embeddings"
    writer.write(b"not json\n")
    err = await read_json(reader)
    assert err["id"] == "" and err["code"] == "invalid_request"
    assert await read_json(reader) is None
    writer.close()


async def test_embed_socket_absent_without_capability(daemon_factory):
    d = await daemon_factory(mock={"embed": False})
    assert os.path.exists(d.infer)
    assert not os.path.exists(d.embed)


async def test_no_embed_flag_turns_the_socket_off(daemon_factory):
    d = await daemon_factory(embed=False)
    assert not os.path.exists(d.embed)


async def test_embed_shares_admission_with_generation(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["t"] * 10}, active_permits=1, queue_depth=0)
    mock = watch_mock(d, monkeypatch, hold_at=1)  # "gen" holds the only slot after one token
    reader, writer = await dial(d.infer)
    writer.write(line({"id": "gen", "messages": [{"role": "user", "content": "x"}]}))
    assert (await read_json(reader))["type"] == "token"
    frames = await roundtrip(d.embed, {"id": "emb", "input": ["x"]})
    assert frames == [{"type": "error", "id": "emb", "code": "queue_full", "message": "queue full"}]
    mock.gate.set()
    writer.close()
