"""The daemon's end of a runner channel (runner_wire.FrameChannel) and what the daemon
does with a runner that breaks the channel's rules (THREAT_MODEL F-9: a runner can end
its own requests, nothing more). Real socket pairs; no model."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from inferd.engine.llamacpp import runner_wire as wire
from inferd.engine.llamacpp.settings import LlamaCppSettings
from inferd.engine.llamacpp.supervised import RunnerBackend, _Process, _Stream


async def _pair(limit: int = wire.MAX_RUNNER_FRAME) -> tuple[wire.FrameChannel, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    _, channel = await asyncio.get_running_loop().create_connection(lambda: wire.FrameChannel(limit), sock=ours)
    return channel, theirs


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


def _msg(obj: dict) -> bytes:
    return wire.to_daemon(obj)


async def test_frames_cut_anywhere_arrive_whole_and_in_order():
    channel, theirs = await _pair()
    got: list[bytes] = []
    serving = asyncio.create_task(channel.serve(got.append))
    stream = b"".join(_msg({"op": "beat", "steps": n}) for n in range(20))
    # One byte at a time, then everything in one write.
    for i in range(len(stream)):
        await _send(theirs, stream[i:i + 1])
        await asyncio.sleep(0)
    await _send(theirs, stream)
    theirs.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(serving, 5) is None
    assert [json.loads(b)["steps"] for b in got] == list(range(20)) * 2
    theirs.close()


async def test_read_before_serve_then_serve_gets_the_rest():
    channel, theirs = await _pair()
    await _send(theirs, _msg({"op": "hello"}) + _msg({"op": "beat", "steps": 1}))
    assert json.loads(await asyncio.wait_for(channel.read(), 5)) == {"op": "hello"}
    got: list[bytes] = []
    serving = asyncio.create_task(channel.serve(got.append))
    await _send(theirs, _msg({"op": "beat", "steps": 2}))
    theirs.close()
    assert await asyncio.wait_for(serving, 5) is None
    assert [json.loads(b)["steps"] for b in got] == [1, 2]


@pytest.mark.parametrize("data, why", [
    ((1 << 20).to_bytes(4, "big") + b"x", "over the 1024 byte limit"),
    (wire.frame(b'{"op":"beat"}')[:-3], "ended inside a frame"),
    (b"\x00\x00", "ended inside a frame"),
])
async def test_an_oversized_or_cut_frame_ends_the_channel_with_a_channel_error(data: bytes, why: str):
    channel, theirs = await _pair(limit=1024)
    serving = asyncio.create_task(channel.serve(lambda body: None))
    await _send(theirs, data)
    theirs.shutdown(socket.SHUT_WR)
    ended = await asyncio.wait_for(serving, 5)
    assert isinstance(ended, wire.ChannelError) and why in str(ended), ended
    theirs.close()


async def test_a_handler_refusing_a_frame_closes_the_channel():
    channel, theirs = await _pair()

    def refuse(body: bytes) -> None:
        raise wire.ChannelError("no")

    serving = asyncio.create_task(channel.serve(refuse))
    await _send(theirs, _msg({"op": "x"}) + _msg({"op": "y"}))
    ended = await asyncio.wait_for(serving, 5)
    assert isinstance(ended, wire.ChannelError)
    # The daemon's end is closed: the runner reads EOF.
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(theirs, 10), 5) == b""
    theirs.close()


class _FakeRunnerProcess:
    """Stands in for the runner's Popen: `kill()` is what the daemon does to a runner
    that broke its channel."""

    def __init__(self) -> None:
        self.killed = False
        self.pid = 4242

    def poll(self) -> int | None:
        return -9 if self.killed else None

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float | None = None) -> int:
        return -9


@pytest.mark.parametrize("message", [
    {"op": "beat"},                                  # a field missing
    {"op": "beat", "steps": "many"},                 # of the wrong kind
    {"op": "ev", "batch": 5},                        # not a list
    {"op": "ev", "batch": [[1, ["t", 7]]]},          # text that is not text
    {"op": "ev", "batch": [[1, ["Nope", {}]]]},      # an event nobody knows
    {"op": "seq", "slots": [{"bogus": True}]},       # a slot report that does not validate
    {"op": "what"},
    [1, 2],                                          # not an object
])
async def test_a_runner_sending_a_malformed_message_is_ended_not_the_daemon(tmp_path, message):
    backend = RunnerBackend(LlamaCppSettings(model_path=tmp_path / "m.gguf"), "m")
    channel, theirs = await _pair()
    fake = _FakeRunnerProcess()
    proc = _Process(fake, channel)
    backend._streams[1] = _Stream(None)  # type: ignore[arg-type]
    body = json.dumps(message).encode()
    # A good frame first: the channel serves it, then the bad one ends it.
    await _send(theirs, _msg({"op": "beat", "steps": 3}) + wire.frame(body))
    reason = await asyncio.wait_for(backend._pump(proc), 10)
    assert reason.startswith("engine broke its channel"), reason
    assert fake.killed
    assert proc.steps == 3
    theirs.close()


async def test_a_large_frame_in_small_pieces_arrives_whole():
    # An embedding batch is the biggest honest frame: megabytes, read in pieces.
    channel, theirs = await _pair()
    got: list[bytes] = []
    serving = asyncio.create_task(channel.serve(got.append))
    big = {"op": "result", "rid": 1, "value": {"embeddings": [[0.125] * 512] * 600}}
    data = _msg(big) + _msg({"op": "beat", "steps": 9})
    for i in range(0, len(data), 4096):
        await _send(theirs, data[i:i + 4096])
    theirs.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(serving, 30) is None
    assert [json.loads(b) for b in got] == [big, {"op": "beat", "steps": 9}]
    theirs.close()
