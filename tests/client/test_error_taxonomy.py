"""The client's errors as seed 003 has them: every I/O failure is a ClientError, one
WaitError for the wait, ImageTokenBudget refuses bad values before sending, and the
proto types an app needs are importable from `inferd.client`.

The servers are real sockets (tests/client/tiny_daemons.py); a reset is a real TCP
RST (SO_LINGER 0), sent when the test says so, not at some moment of the kernel's.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import struct

import pytest

import inferd.client as pkg
from inferd.client import (
    BrokenPipe,
    Client,
    ClientError,
    ClientIOError,
    ConnectionRefused,
    ConnectionReset,
    ImageTokenBudget,
    InvalidRequest,
    Message,
    ProtoError,
    Request,
    Role,
    SocketNotFound,
    UnexpectedEof,
    WaitError,
    WaitPermanent,
    WaitTimeout,
    dial_and_wait_ready,
    engine_events,
)
from inferd.client.events import Error, TurnEnd, TurnEndReason
from inferd.proto import errors as proto_errors
from inferd.proto import v1

TOKEN = b'{"type":"token","id":"r","content":"par"}\n'
DONE = (b'{"type":"done","id":"r","content":"","usage":{"prompt_tokens":1,"completion_tokens":0},'
        b'"stop_reason":"end","backend":"mock"}\n')


def request(**extra) -> Request:
    return Request(id="r", messages=[Message(role=Role.USER, content="hi")], **extra)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: what a crashed peer's kernel sends."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_connection_reset_mid_stream_is_a_client_error(servers):
    go = asyncio.Event()

    async def handler(reader, writer):
        await reader.readline()
        writer.write(TOKEN)
        await writer.drain()
        await go.wait()
        reset(writer)

    host, port = await servers.tcp(handler)
    client = await Client.dial_tcp((host, port), read_timeout=10)
    stream = client.generate(request())
    first = await anext(stream)
    assert first == v1.TokenFrame(id="r", content="par")
    go.set()
    with pytest.raises(ClientError) as info:
        await anext(stream)
    exc = info.value
    # The library's error, and still the platform's kind with its errno.
    assert type(exc) is ConnectionReset
    assert isinstance(exc, ClientIOError) and isinstance(exc, ConnectionResetError)
    assert exc.errno == errno.ECONNRESET
    assert isinstance(exc.__cause__, ConnectionResetError) and not isinstance(exc.__cause__, ClientError)
    assert client.closed and stream.finished


async def test_a_reset_through_the_events_adapter_ends_the_turn_with_an_error(servers):
    async def handler(reader, writer):
        await reader.readline()
        reset(writer)

    host, port = await servers.tcp(handler)
    async with await Client.dial_tcp((host, port), read_timeout=10) as client:
        events = [e async for e in engine_events(client.generate(request()))]
    assert events[-2:] == [Error(code="backend_unavailable", message=events[-2].message),
                           TurnEnd(turn_id="r", reason=TurnEndReason.ERROR)]
    assert "reset" in events[-2].message.lower()


async def test_writing_to_a_reset_connection_is_a_client_error(servers):
    gone = asyncio.Event()

    async def handler(reader, writer):
        reset(writer)
        gone.set()

    host, port = await servers.tcp(handler)
    client = await Client.dial_tcp((host, port), read_timeout=10)
    await asyncio.wait_for(gone.wait(), 10)
    with pytest.raises(ClientIOError) as info:
        # The request may be refused at the write (EPIPE / ECONNRESET) or, if the
        # kernel took it, the answer at the read: a ClientIOError either way.
        async for _ in client.generate(request()):
            pass
    assert isinstance(info.value, (BrokenPipe, ConnectionReset)) and isinstance(info.value, ClientError)
    assert client.closed


async def test_eof_mid_stream_is_unexpected_eof(servers):
    async def handler(reader, writer):
        await reader.readline()
        writer.write(TOKEN)
        await writer.drain()
        # The handler returns: the connection closes cleanly (FIN), without a done frame.

    path = await servers.uds(handler)
    async with await Client.dial_uds(path, read_timeout=10) as client:
        frames = []
        with pytest.raises(UnexpectedEof) as info:
            async for frame in client.generate(request()):
                frames.append(frame)
    assert frames == [v1.TokenFrame(id="r", content="par")] and isinstance(info.value, ClientError)


async def test_dial_failures_are_client_errors_of_the_platforms_kind(sock_dir):
    with pytest.raises(SocketNotFound) as missing:
        await Client.dial_uds(str(sock_dir / "absent.sock"))
    assert isinstance(missing.value, ClientError) and isinstance(missing.value, FileNotFoundError)
    assert missing.value.errno == errno.ENOENT

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    try:
        with pytest.raises(ConnectionRefused) as refused:
            await Client.dial_tcp(listener.getsockname())
    finally:
        listener.close()
    assert isinstance(refused.value, ClientError) and isinstance(refused.value, ConnectionRefusedError)
    assert refused.value.errno == errno.ECONNREFUSED


async def test_one_wait_error_for_both_ways_the_wait_gives_up(sock_dir):
    with pytest.raises(WaitError) as timed_out:
        # A socket that never appears: every attempt is "not up yet".
        await dial_and_wait_ready(0.05, lambda: Client.dial_uds(str(sock_dir / "never.sock")))
    assert type(timed_out.value) is WaitTimeout and isinstance(timed_out.value, ClientError)
    assert isinstance(timed_out.value.__cause__, SocketNotFound)

    async def forbidden():
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(WaitError) as permanent:
        await dial_and_wait_ready(5, forbidden)
    assert type(permanent.value) is WaitPermanent and isinstance(permanent.value, ClientError)
    assert isinstance(permanent.value.error, PermissionError)


# ---- ImageTokenBudget -------------------------------------------------------------------


@pytest.mark.parametrize("value", [70, 140, 280, 560, 1120])
def test_image_token_budget_holds_the_accepted_values(value):
    budget = ImageTokenBudget(value)
    assert budget == value and isinstance(budget, int)
    assert json.loads(request(image_token_budget=budget).model_dump_json())["image_token_budget"] == value


@pytest.mark.parametrize("value", [0, 69, 100, 281, 2240, -70, True, "280", 280.0, None])
def test_image_token_budget_refuses_anything_else(value):
    with pytest.raises(InvalidRequest, match="image_token_budget .* not in \\[70, 140, 280, 560, 1120\\]"):
        ImageTokenBudget(value)


async def test_a_bad_budget_is_refused_before_the_request_is_sent(servers):
    lines: list[bytes] = []

    async def handler(reader, writer):
        while line := await reader.readline():
            lines.append(line)
            writer.write(DONE)
            await writer.drain()

    path = await servers.uds(handler)
    async with await Client.dial_uds(path, read_timeout=10) as client:
        with pytest.raises(ProtoError, match="image_token_budget 100 not in"):
            client.generate(request(image_token_budget=100))
        # Nothing was sent and the connection is still good for the next request.
        assert not client.closed
        done = await client.complete(request(image_token_budget=ImageTokenBudget(560)))
    assert done.type == "done"
    assert len(lines) == 1 and json.loads(lines[0])["image_token_budget"] == 560


async def test_progress_is_asked_for_on_the_wire_only_when_set(servers):
    lines: list[dict] = []

    async def handler(reader, writer):
        while line := await reader.readline():
            lines.append(json.loads(line))
            writer.write(DONE)
            await writer.drain()

    path = await servers.uds(handler)
    async with await Client.dial_uds(path, read_timeout=10) as client:
        await client.complete(request())
        await client.complete(request(), progress=True)
        stream = client.generate(request(progress=True), progress=False)
        assert stream.request.progress is False
        async for _ in stream:
            pass
    assert "progress" not in lines[0]
    assert lines[1]["progress"] is True and lines[2]["progress"] is False


def test_the_seed_003_names_are_importable_from_inferd_client():
    assert pkg.Resolved is v1.Resolved
    assert pkg.ProtoError is proto_errors.ProtoError and issubclass(pkg.InvalidRequest, pkg.ProtoError)
    assert pkg.ImageTokenBudget is ImageTokenBudget
    assert issubclass(WaitTimeout, WaitError) and issubclass(WaitPermanent, WaitError)
    assert issubclass(WaitError, ClientError) and issubclass(ClientIOError, ClientError)
    assert pkg.ProgressFrame is v1.ProgressFrame
    for name in ("Resolved", "ProtoError", "ImageTokenBudget", "WaitError", "ClientIOError", "ProgressFrame"):
        assert name in pkg.__all__
