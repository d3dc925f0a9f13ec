"""Protocol v1 against a real in-process daemon on the mock backend (upstream §9 28-34)."""

from __future__ import annotations

import asyncio
import json
import os
import stat

from daemon_harness import dial, line, read_json, read_until_terminal, req, roundtrip, wait_until, watch_mock

TAPE = ["alpha ", "beta ", "gamma"]


async def test_tape_streams_tokens_then_done(daemon_factory):
    d = await daemon_factory(mock={"tokens": TAPE})
    frames = await roundtrip(d.infer, req("req-1"))
    assert [f["type"] for f in frames] == ["token", "token", "token", "done"]
    assert all(f["id"] == "req-1" for f in frames)
    assert [f["content"] for f in frames[:3]] == TAPE
    done = frames[-1]
    assert done["content"] == "alpha beta gamma"
    assert done["stop_reason"] == "end"
    assert done["backend"] == "mock"
    assert done["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "cached_tokens": 0, "thinking_tokens": 0}
    assert list(done)[:2] == ["type", "id"]


async def test_invalid_request_keeps_connection_open(daemon_factory):
    d = await daemon_factory(mock={"tokens": TAPE})
    reader, writer = await dial(d.infer)
    writer.write(line({"id": "bad", "messages": []}))
    err = await read_json(reader)
    assert err["type"] == "error" and err["id"] == "bad" and err["code"] == "invalid_request"
    assert "messages" in err["message"]
    writer.write(line({"id": "bad-budget", "messages": [{"role": "user", "content": "x"}], "image_token_budget": 999}))
    err = await read_json(reader)
    assert err["code"] == "invalid_request" and "999" in err["message"]
    writer.write(line(req("after")))
    frames = await read_until_terminal(reader)
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == "after"
    writer.close()


async def test_mid_stream_drop_reports_backend_unavailable(daemon_factory):
    d = await daemon_factory(mock={"tokens": ["one", "two"], "drop_after": 1})
    frames = await roundtrip(d.infer, req("drop"))
    assert [f["type"] for f in frames] == ["token", "error"]
    assert frames[1]["code"] == "backend_unavailable"
    assert frames[1]["message"] == "backend ended stream without terminal frame"
    assert frames[1]["id"] == "drop"


async def test_backend_fault_mid_stream_keeps_daemon_serving(daemon_factory):
    d = await daemon_factory(mock={"tokens": ["one", "two", "three"], "raise_after": 2})
    reader, writer = await dial(d.infer)
    for i in range(2):
        writer.write(line(req(f"fault-{i}")))
        frames = await read_until_terminal(reader)
        assert [f["type"] for f in frames] == ["token", "token", "error"]
        assert frames[-1]["code"] == "backend_unavailable"
    writer.close()
    assert d.server.router.outstanding == 0


async def test_pre_stream_errors_map_to_codes(daemon_factory, sockdir):
    cases = {"NotReady": ("backend_unavailable", "backend not ready"),
             "InvalidRequest": ("invalid_request", "mock"),
             "Unavailable": ("backend_unavailable", "mock")}
    for i, (knob, (code, message)) in enumerate(cases.items()):
        sub = sockdir / f"d{i}"
        sub.mkdir()
        d = await daemon_factory(directory=sub, mock={"pre_stream_error": knob})
        frames = await roundtrip(d.infer, req(f"pre-{knob}"))
        assert frames == [{"type": "error", "id": f"pre-{knob}", "code": code, "message": message}]
        await d.stop()


async def test_undecodable_line_gets_one_error_then_close(daemon_factory):
    d = await daemon_factory()
    reader, writer = await dial(d.infer)
    writer.write(b"{ this is not json }\n" + line(req("never")))
    err = await read_json(reader)
    assert err["type"] == "error" and err["id"] == "" and err["code"] == "invalid_request"
    assert err["message"].startswith("decode: ")
    assert await read_json(reader) is None  # closed; the pipelined request is not served
    writer.close()


async def test_wrong_types_are_decode_errors(daemon_factory):
    d = await daemon_factory()
    for bad in ({"messages": [{"role": "User", "content": "x"}]},
                {"messages": [{"role": "user", "content": "x"}], "top_k": 64.0},
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4294967296},
                {"messages": [{"role": "user", "content": ["x"]}]}):
        frames = await roundtrip(d.infer, bad)
        assert len(frames) == 1 and frames[0]["code"] == "invalid_request" and frames[0]["id"] == ""


async def test_hostile_lines_never_stop_the_daemon(daemon_factory):
    d = await daemon_factory(mock={"tokens": ["ok"]})
    hostile = [b"[" * 100_000 + b"\n", b"\xff\xfe\xfd\n", b'{"id":"x","messages":[]}\x00\n',
               b'{"messages":[{"role":"user","content":"x"}],"top_k":99999999999999999999999}\n', b"\n"]
    for payload in hostile:
        reader, writer = await dial(d.infer)
        writer.write(payload)
        err = await read_json(reader)
        assert err["type"] == "error" and err["code"] == "invalid_request", payload[:20]
        assert await read_json(reader) is None
        writer.close()
    frames = await roundtrip(d.infer, req("still-alive"))
    assert frames[-1]["type"] == "done"


async def test_oversize_line_gets_frame_too_large_then_close(daemon_factory):
    d = await daemon_factory()
    reader, writer = await dial(d.infer)

    async def flood() -> None:
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(65):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"x\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    flooder = asyncio.create_task(flood())
    err = await read_json(reader, timeout=30)
    await flooder
    assert err == {"type": "error", "id": "", "code": "frame_too_large", "message": "frame exceeds 67108864 byte cap"}
    assert await read_json(reader) is None
    writer.close()
    frames = await roundtrip(d.infer, req("after-flood"))
    assert frames[-1]["type"] == "done"


async def test_pipelined_requests_answered_in_order(daemon_factory):
    d = await daemon_factory(mock={"tokens": TAPE})
    reader, writer = await dial(d.infer)
    writer.write(b"".join(line(req(f"loop-{i}")) for i in range(3)))
    ids = []
    for _ in range(3):
        frames = await read_until_terminal(reader)
        assert frames[-1]["type"] == "done"
        assert {f["id"] for f in frames} == {frames[-1]["id"]}
        ids.append(frames[-1]["id"])
    assert ids == ["loop-0", "loop-1", "loop-2"]
    writer.close()


async def test_unknown_fields_ignored_and_final_line_without_newline(daemon_factory):
    d = await daemon_factory(mock={"tokens": TAPE})
    reader, writer = await dial(d.infer)
    writer.write(json.dumps(req("ff", future_field=42)).encode())
    writer.write_eof()
    frames = await read_until_terminal(reader)
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == "ff"
    writer.close()


async def test_stream_false_sends_only_done(daemon_factory):
    d = await daemon_factory(mock={"tokens": TAPE})
    frames = await roundtrip(d.infer, req("whole", stream=False))
    assert len(frames) == 1
    assert frames[0]["type"] == "done" and frames[0]["content"] == "alpha beta gamma"


async def test_queue_full_when_capacity_is_one(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["t"] * 8}, active_permits=1, queue_depth=0)
    mock = watch_mock(d, monkeypatch, hold_at=1)  # "first" holds the slot after one token
    r1, w1 = await dial(d.infer)
    w1.write(line(req("first")))
    first = await read_json(r1)
    assert first["type"] == "token"
    frames = await roundtrip(d.infer, req("second"))
    assert frames == [{"type": "error", "id": "second", "code": "queue_full", "message": "queue full"}]
    mock.gate.set()
    rest = await read_until_terminal(r1)
    assert rest[-1]["type"] == "done"
    w1.close()


async def test_three_concurrent_with_capacity_two(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["t"] * 8}, active_permits=1, queue_depth=1)
    mock = watch_mock(d, monkeypatch, hold_at=0)  # nothing finishes before all three are answered
    calls = [asyncio.create_task(roundtrip(d.infer, req(f"c{i}"), timeout=30)) for i in range(3)]
    answered, _ = await asyncio.wait(calls, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    # One running, one queued: the third is refused at once, whichever it is.
    assert [t.result() for t in answered] == [[{"type": "error", "id": t.result()[0]["id"], "code": "queue_full",
                                                "message": "queue full"}] for t in answered]
    assert d.server.router.outstanding == 2
    mock.gate.set()
    terminals = [frames[-1] for frames in await asyncio.gather(*calls)]
    assert sorted(t["type"] for t in terminals) == ["done", "done", "error"]


async def test_admitted_requests_are_served_fifo(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["a", "b"]}, active_permits=1, queue_depth=8)
    mock = watch_mock(d, monkeypatch, hold_at=0)
    conns = []
    for i in range(6):  # one at a time: each is admitted before the next is sent
        reader, writer = await dial(d.infer)
        writer.write(line(req(f"q{i}")))
        conns.append((reader, writer))
        await wait_until(lambda: d.server.router.outstanding == i + 1, 10, f"q{i} to be admitted")
    mock.gate.set()
    results = await asyncio.gather(*(read_until_terminal(reader, timeout=30) for reader, _ in conns))
    assert [frames[-1]["type"] for frames in results] == ["done"] * 6
    assert mock.started == [f"q{i}" for i in range(6)]  # served in the order admitted
    for _, writer in conns:
        writer.close()


async def test_disconnect_mid_stream_frees_the_slot(daemon_factory, monkeypatch):
    d = await daemon_factory(mock={"tokens": ["t"] * 200, "token_delay_ms": 20}, active_permits=1, queue_depth=0)
    mock = watch_mock(d, monkeypatch)
    reader, writer = await dial(d.infer)
    writer.write(line(req("leaver")))
    assert (await read_json(reader))["type"] == "token"
    writer.close()
    await wait_until(lambda: d.server.router.outstanding == 0, 10, "the leaver's slot to come back")
    assert mock.finished == []  # abandoned, not run to its end for nobody
    frames = await roundtrip(d.infer, req("next", stream=False, max_tokens=1), timeout=30)
    assert frames[-1]["type"] == "done"
    assert d.server.router.outstanding == 0


async def test_inference_socket_modes(daemon_factory):
    d = await daemon_factory()
    assert stat.S_IMODE(os.stat(d.infer).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(d.admin).st_mode) == 0o600
