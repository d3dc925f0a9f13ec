"""The v2 socket of a real in-process daemon (mock backend), conformance item 32 and more."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from daemon_harness import (Daemon, RecordingActivityLog, dial, line, read_json, read_until_terminal, wait_until,
                            watch_mock)

from inferd.client import ClientV2, UnexpectedEof
from inferd.proto import v2


@pytest.fixture
async def start_daemon(daemon_factory):
    """A daemon serving v1 and v2 from the mock, whose tape is "a", "b", "c" unless told."""

    async def start(*, activity: Any = None, active_permits: int = 1, queue_depth: int = 10, **mock: Any) -> Daemon:
        return await daemon_factory(mock={"tokens": ["a", "b", "c"], **mock}, activity=activity, v2=True,
                                    active_permits=active_permits, queue_depth=queue_depth, drain_timeout_secs=5.0)

    return start


# ---- helpers ------------------------------------------------------------------------


class Conn:
    """One connection, spoken to with the harness's NDJSON helpers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def write(self, *payloads: dict | bytes) -> None:
        """Everything in one write, so pipelined requests share a segment."""
        self.writer.write(b"".join(p if isinstance(p, bytes) else line(p) for p in payloads))
        await self.writer.drain()

    async def frame(self) -> dict | None:
        return await read_json(self.reader)

    async def until_terminal(self) -> list[dict]:
        return await read_until_terminal(self.reader)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def text_req(id: str, text: str = "hi", **extra: Any) -> dict:
    return {"id": id, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], **extra}


def text_deltas(frames: list[dict]) -> list[str]:
    return [f["block"]["delta"] for f in frames if f["type"] == "frame" and f["block"]["type"] == "text"]


@pytest.fixture
async def conns():
    opened: list[Conn] = []

    async def open_(path: str) -> Conn:
        conn = Conn(*await dial(path))
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()


# ---- item 32 and the v1-shared semantics ----------------------------------------------


async def test_tape_streams_as_text_frames_then_done(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.v2)
    await c.write(text_req("req-1"))
    frames = await c.until_terminal()
    assert [f["block"] for f in frames[:-1]] == [{"type": "text", "delta": t} for t in "abc"]
    assert all(f["id"] == "req-1" for f in frames)
    assert frames[-1] == {
        "type": "done", "id": "req-1",
        "usage": {"input_tokens": 0, "output_tokens": 3, "cached_tokens": 0, "thinking_tokens": 0},
        "stop_reason": "end_turn", "backend": "mock",
    }


async def test_dangling_attachment_is_invalid_request_and_connection_stays_open(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.v2)
    bad = {"id": "dangle", "messages": [{"role": "user", "content": [{"type": "image", "attachment_id": "missing"}]}]}
    await c.write(bad)
    (err,) = await c.until_terminal()
    assert (err["type"], err["id"], err["code"]) == ("error", "dangle", "invalid_request")
    assert "missing" in err["message"]
    await c.write(text_req("after"))
    assert (await c.until_terminal())[-1]["type"] == "done"


async def test_multimodal_request_with_valid_image_completes(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.v2)
    req = {
        "id": "mm",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}, {"type": "image", "attachment_id": "img-1"}]}
        ],
        "attachments": [{"kind": "image", "id": "img-1", "width": 2, "height": 2, "bytes": base64.b64encode(bytes(12)).decode()}],
    }
    await c.write(req)
    frames = await c.until_terminal()
    assert text_deltas(frames) == ["a", "b", "c"]
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == "mm"


async def test_pre_stream_unavailable_is_backend_unavailable_with_id(start_daemon, conns):
    d = await start_daemon(pre_stream_error="Unavailable")
    c = await conns(d.v2)
    for rid in ("pre-1", "pre-2"):  # the connection survives it
        await c.write(text_req(rid))
        (err,) = await c.until_terminal()
        assert (err["id"], err["code"], err["message"]) == (rid, "backend_unavailable", "mock")


async def test_malformed_json_gets_one_error_with_empty_id_then_eof(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.v2)
    await c.write(b"{ this is not json }\n", text_req("never-read"))
    err = await c.frame()
    assert (err["type"], err["id"], err["code"]) == ("error", "", "invalid_request")
    assert err["message"].startswith("decode: ")
    assert await c.frame() is None


async def test_three_pipelined_requests_get_three_dones_in_order(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.v2)
    await c.write(*(text_req(f"v2-loop-{i}") for i in range(3)))
    dones = []
    for _ in range(3):
        frames = await c.until_terminal()
        assert text_deltas(frames) == ["a", "b", "c"]
        dones.append(frames[-1])
    assert [(f["type"], f["id"]) for f in dones] == [("done", f"v2-loop-{i}") for i in range(3)]


async def test_mid_stream_drop_sends_frames_then_backend_unavailable(start_daemon, conns):
    d = await start_daemon(drop_after=2)
    c = await conns(d.v2)
    await c.write(text_req("drop"))
    frames = await c.until_terminal()
    assert len(frames) == 3 and text_deltas(frames) == ["a", "b"]
    assert frames[-1] == {
        "type": "error", "id": "drop", "code": "backend_unavailable",
        "message": "backend ended stream without terminal frame",
    }
    await c.write(text_req("still-open"))
    assert (await c.until_terminal())[-1]["code"] == "backend_unavailable"


@pytest.mark.parametrize("holder", ["v1", "v2"])
async def test_queue_full_when_the_shared_slot_is_taken(start_daemon, conns, holder, monkeypatch):
    d = await start_daemon(active_permits=1, queue_depth=0)
    mock = watch_mock(d, monkeypatch, hold_at=1)  # "first" holds the slot after one token
    first = await conns(d.infer if holder == "v1" else d.v2)
    if holder == "v1":
        await first.write({"id": "first", "messages": [{"role": "user", "content": "hi"}]})
    else:
        await first.write(text_req("first"))
    assert (await first.frame())["type"] in ("token", "frame")  # admitted and running

    second = await conns(d.v2)
    await second.write(text_req("second"))
    (err,) = await second.until_terminal()
    assert (err["id"], err["code"], err["message"]) == ("second", "queue_full", "queue full")

    mock.gate.set()
    rest = await first.until_terminal()
    assert rest[-1]["type"] == "done" and rest[-1]["id"] == "first"
    await second.write(text_req("third"))  # the slot is free again
    assert (await second.until_terminal())[-1]["type"] == "done"


async def test_backend_without_v2_capability_is_internal_and_connection_stays_open(start_daemon, conns):
    d = await start_daemon()
    caps = d.server.router.entries[0].caps
    caps.v2 = False
    c = await conns(d.v2)
    await c.write(text_req("no-v2"))
    (err,) = await c.until_terminal()
    assert (err["id"], err["code"]) == ("no-v2", "internal")
    assert err["message"] == 'backend "mock" does not advertise v2 capability'
    caps.v2 = True
    await c.write(text_req("v2-again"))
    assert (await c.until_terminal())[-1]["type"] == "done"


async def test_tool_use_event_becomes_a_whole_tool_use_frame(start_daemon, conns):
    d = await start_daemon()
    d.server.router.entries[0].backend.config.emit_tool_use = "get_weather"
    c = await conns(d.v2)
    await c.write(text_req("tools"))
    frames = await c.until_terminal()
    assert text_deltas(frames) == ["a", "b", "c"]
    assert frames[3]["block"] == {"type": "tool_use", "tool_call_id": "mock-call-1", "name": "get_weather", "input": {}}
    assert frames[4]["stop_reason"] == "tool_use" and frames[4]["usage"]["output_tokens"] == 3


async def test_v1_socket_still_serves_beside_v2(start_daemon, conns):
    d = await start_daemon()
    c = await conns(d.infer)
    await c.write({"id": "v1", "messages": [{"role": "user", "content": "hi"}]})
    done = (await c.until_terminal())[-1]
    assert (done["type"], done["content"], done["stop_reason"]) == ("done", "abc", "end")


async def test_activity_records_ids_and_counts_never_text(start_daemon, conns):
    log = RecordingActivityLog()
    d = await start_daemon(activity=log, tokens=["tok-alpha ", "tok-beta"])
    c = await conns(d.v2)
    await c.write(text_req("audit", text="secret prompt"))
    await c.until_terminal()
    # Recorded once the done frame is written: the client may read it first.
    await wait_until(lambda: any(r["msg"] == "v2_request_done" for r in log.records), 5, "the request_done record")
    (fields,) = [r for r in log.records if r["msg"] == "v2_request_done"]
    assert fields["req_id"] == "audit" and fields["completion_tokens"] == 2 and fields["text_frames"] == 2
    dumped = json.dumps(log.records, default=str)
    assert "secret prompt" not in dumped and "tok-alpha" not in dumped


# ---- the client library against the daemon ------------------------------------------------


async def test_client_v2_streams_and_reuses_the_connection(start_daemon):
    d = await start_daemon()
    async with await ClientV2.dial_uds(d.v2) as client:
        request = v2.RequestV2(id="c1", messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="hi")])])
        frames = [f async for f in client.generate(request)]
        assert [type(f) for f in frames] == [v2.FrameV2] * 3 + [v2.DoneFrameV2]
        assert "".join(f.block.delta for f in frames[:3]) == "abc"
        assert frames[-1].usage.output_tokens == 3 and frames[-1].stop_reason is v2.StopReasonV2.END_TURN

        dangling = v2.RequestV2(
            id="c2", messages=[v2.MessageV2(role="user", content=[v2.ImageBlock(attachment_id="missing")])]
        )
        err = await client.complete(dangling)
        assert isinstance(err, v2.ErrorFrameV2) and err.code == v2.ErrorCodeV2.INVALID_REQUEST and err.id == "c2"

        image = v2.ImageAttachment(id="img", width=2, height=2, bytes=bytes(12))
        mm = v2.RequestV2(
            id="c3",
            messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="look"), v2.ImageBlock(attachment_id="img")])],
            attachments=[image],
        )
        done = await client.complete(mm)
        assert isinstance(done, v2.DoneFrameV2) and done.id == "c3"
        assert not client.closed


async def test_client_v2_eof_before_terminal_is_unexpected_eof(sockdir):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    path = str(sockdir / "eof.sock")
    server = await asyncio.start_unix_server(hang_up, path)
    try:
        client = await ClientV2.dial_uds(path)
        request = v2.RequestV2(id="e", messages=[v2.MessageV2(role="user", content=[v2.TextBlock(text="hi")])])
        with pytest.raises(UnexpectedEof):
            async for _ in client.generate(request):
                pass
        assert client.closed
        await client.aclose()
    finally:
        server.close()
        await server.wait_closed()
