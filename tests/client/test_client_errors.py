"""Seed 003's error taxonomy: every failure of an open connection is a ClientError
(issue 22), one WaitError base, the re-exports, and ImageTokenBudget."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tiny_daemons import Servers
import inferd.client as pkg
from inferd.client import (
    Client,
    ClientError,
    ConnectionLost,
    ImageTokenBudget,
    Message,
    Request,
    Role,
    WaitError,
    WaitPermanent,
    WaitTimeout,
)

GUARD = 10.0


def hello() -> Request:
    return Request(id="r1", messages=[Message(role=Role.USER, content="hello")])


async def test_a_connection_reset_mid_stream_is_a_client_error(sock_dir):
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"type":"token","id":"r1","content":"a"}\n')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends a reset, not an orderly end.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with Servers(sock_dir) as servers:
        addr = await servers.tcp(resets)
        async with await Client.dial_tcp(addr) as client:
            got = []
            with pytest.raises(ClientError) as info:
                async for frame in client.generate(hello()):
                    got.append(frame)
                    await asyncio.sleep(0.05)  # let the reset arrive before the next read
            assert [f.content for f in got] == ["a"]
            # A reset is ConnectionLost (also an OSError), or an early EOF if the
            # kernel reported the end before the reset: both are ClientErrors.
            assert isinstance(info.value, ClientError)
            if isinstance(info.value, ConnectionLost):
                assert isinstance(info.value, ConnectionError)


async def test_sending_on_a_reset_connection_is_connection_lost(sock_dir):
    async def resets_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with Servers(sock_dir) as servers:
        addr = await servers.tcp(resets_at_once)
        client = await Client.dial_tcp(addr)
        try:
            await asyncio.sleep(0.1)
            with pytest.raises(ClientError):
                for _ in range(64):  # the first writes may land in the buffer
                    await asyncio.wait_for(client.complete(hello()), GUARD)
        finally:
            await client.aclose()


def test_wait_errors_share_one_base():
    assert issubclass(WaitTimeout, WaitError) and issubclass(WaitPermanent, WaitError)
    assert issubclass(WaitError, ClientError)
    assert issubclass(WaitTimeout, TimeoutError)  # `except TimeoutError` keeps working


def test_the_seed_names_are_importable():
    from inferd.proto.errors import ProtoError
    from inferd.proto.v1 import Resolved

    assert pkg.ProtoError is ProtoError and pkg.Resolved is Resolved
    for name in ("ClientError", "WaitError", "ImageTokenBudget", "ProtoError", "Resolved", "ConnectionLost"):
        assert name in pkg.__all__, name


@pytest.mark.parametrize("value", [70, 140, 280, 560, 1120])
def test_image_token_budget_takes_the_daemons_values(value):
    budget = ImageTokenBudget(value)
    assert budget == value and isinstance(budget, int)
    assert Request(id="x", messages=[Message(role=Role.USER, content="hi")], image_token_budget=budget).resolve()


@pytest.mark.parametrize("value", [0, 69, 100, 2240, -70, True, 280.0, "280"])
def test_image_token_budget_refuses_others_before_sending(value):
    with pytest.raises(ValueError, match="image_token_budget"):
        ImageTokenBudget(value)
