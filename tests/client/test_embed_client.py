"""EmbedClient over real sockets (upstream-protocol §9 item 42)."""

from __future__ import annotations

import asyncio
import json

import pytest

from daemon_harness import line

from inferd.client import (
    ClientDecodeError,
    EmbedClient,
    EmbeddingsFrame,
    EmbedErrorFrame,
    EmbedRequest,
    EmbedTask,
    UnexpectedEof,
)


def mock_vectors(texts: list[str], dims: int) -> list[list[float]]:
    # The mock backend's formula: element k of each vector is (k+1)/(len(input)+1).
    return [[(k + 1) / (len(t.encode()) + 1) for k in range(dims)] for t in texts]


async def mock_embed_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[dict]) -> None:
    while raw := await reader.readline():
        req = json.loads(raw)
        seen.append(req)
        rid = req.get("id", "")
        if any(t == "" for t in req["input"]):
            writer.write(line({"type": "error", "id": rid, "code": "invalid_request", "message": "input[1] must not be empty"}))
        else:
            dims = req.get("dimensions", 8)
            writer.write(
                line(
                    {
                        "type": "embeddings",
                        "id": rid,
                        "embeddings": mock_vectors(req["input"], dims),
                        "dimensions": dims,
                        "model": "mock",
                        "usage": {"input_tokens": sum(len(t.encode()) for t in req["input"])},
                        "backend": "mock",
                    }
                )
            )
        await writer.drain()


async def test_success_frame(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: mock_embed_daemon(r, w, seen))
    async with await EmbedClient.dial_uds(path) as client:
        resp = await client.embed(EmbedRequest(id="e1", input=["hello", "hi"], dimensions=4, task=EmbedTask.SIMILARITY))
    assert isinstance(resp, EmbeddingsFrame)
    assert (resp.id, resp.dimensions, resp.model, resp.usage.input_tokens) == ("e1", 4, "mock", 7)
    assert resp.embeddings == mock_vectors(["hello", "hi"], 4)
    assert seen == [{"id": "e1", "input": ["hello", "hi"], "dimensions": 4, "task": "similarity"}]


async def test_error_frame_and_connection_stays_usable(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: mock_embed_daemon(r, w, seen))
    async with await EmbedClient.dial_uds(path) as client:
        bad = await client.embed(EmbedRequest(id="bad", input=["hello", ""]))
        good = await client.embed(EmbedRequest(input=["x"]))
    assert isinstance(bad, EmbedErrorFrame)
    assert (bad.id, bad.code) == ("bad", "invalid_request")
    assert isinstance(good, EmbeddingsFrame) and good.id == "" and good.dimensions == 8
    # Unset optional fields and the empty id are not sent.
    assert seen[1] == {"input": ["x"]}


async def test_two_sequential_requests_get_their_own_responses(servers):
    seen: list[dict] = []
    accepted = 0

    async def counting(reader, writer):
        nonlocal accepted
        accepted += 1
        await mock_embed_daemon(reader, writer, seen)

    path = await servers.uds(counting)
    async with await EmbedClient.dial_uds(path) as client:
        first = await client.embed(EmbedRequest(id="one", input=["a"]))
        second = await client.embed(EmbedRequest(id="two", input=["bb"]))
    assert (first.id, second.id) == ("one", "two")
    assert first.embeddings == mock_vectors(["a"], 8)
    assert second.embeddings == mock_vectors(["bb"], 8)
    assert accepted == 1


async def test_concurrent_callers_do_not_swap_responses(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: mock_embed_daemon(r, w, seen))
    async with await EmbedClient.dial_uds(path) as client:
        results = await asyncio.gather(*(client.embed(EmbedRequest(id=f"c{i}", input=["x" * (i + 1)])) for i in range(5)))
    assert [r.id for r in results] == [f"c{i}" for i in range(5)]


async def test_eof_is_unexpected_eof(servers):
    async def hang_up(reader, writer):
        await reader.readline()

    path = await servers.uds(hang_up)
    client = await EmbedClient.dial_uds(path)
    with pytest.raises(UnexpectedEof):
        await client.embed(EmbedRequest(input=["a"]))
    assert client.closed
    await client.aclose()


async def test_undecodable_response_is_decode_error(servers):
    async def garbage(reader, writer):
        await reader.readline()
        writer.write(b'{"type":"embeddings","id":"x"}\n')
        await writer.drain()
        await reader.read()

    path = await servers.uds(garbage)
    async with await EmbedClient.dial_uds(path) as client:
        with pytest.raises(ClientDecodeError):
            await client.embed(EmbedRequest(input=["a"]))


async def test_tcp_with_api_key(servers):
    seen: list[dict] = []

    async def auth_daemon(reader, writer):
        if json.loads(await reader.readline()) != {"type": "auth", "key": "k"}:
            return
        await mock_embed_daemon(reader, writer, seen)

    host, port = await servers.tcp(auth_daemon)
    async with await EmbedClient.dial_tcp((host, port), api_key="k") as client:
        resp = await client.embed(EmbedRequest(id="t", input=["a"], dimensions=2))
    assert isinstance(resp, EmbeddingsFrame) and resp.embeddings == [[0.5, 1.0]]
