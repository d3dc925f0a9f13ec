"""AdminClient and AdminEvent decoding (upstream-protocol §9 item 40)."""

from __future__ import annotations

import asyncio
import json

import pytest

from inferd.client import AdminClient, AdminClosed, AdminEvent, ClientDecodeError
from inferd.proto.admin import (
    Capabilities,
    CheckingLocal,
    Download,
    LoadingModel,
    Ready,
    Starting,
    encode_status,
    parse_admin_event,
)

CAPS = encode_status(Capabilities(backend="llamacpp", accelerator="cpu", gpu_layers=0, embed=True))
STARTING = encode_status(Starting())
CHECKING = encode_status(LoadingModel(phase=CheckingLocal(path="/m/x.gguf")))
DOWNLOAD = encode_status(LoadingModel(phase=Download(downloaded_bytes=33554432, total_bytes=None, source_url="https://h/m")))
READY = encode_status(Ready())


def test_decodes_download_frame():
    line = (
        '{"id":"admin","type":"status","status":"loading_model","phase":"download",'
        '"downloaded_bytes":33554432,"total_bytes":5126304928,"source_url":"https://example/m.gguf"}'
    )
    event = parse_admin_event(line)
    assert (event.id, event.kind, event.status, event.phase) == ("admin", "status", "loading_model", "download")
    assert event.downloaded_bytes == 33554432
    assert event.total_bytes == 5126304928
    assert event.source_url == "https://example/m.gguf"


def test_ready_frame_has_empty_phase_and_no_counts():
    event = parse_admin_event('{"id":"admin","type":"status","status":"ready"}')
    assert event.status == "ready" and event.is_ready
    assert event.phase == ""
    assert event.downloaded_bytes is None and event.total_bytes is None


def test_null_total_bytes_is_none():
    event = parse_admin_event(DOWNLOAD)
    assert event.phase == "download"
    assert event.total_bytes is None
    assert event.downloaded_bytes == 33554432


def test_unknown_status_and_extra_keys_are_kept_and_ignored():
    event = parse_admin_event('{"id":"admin","type":"status","status":"hibernating","phase":"dreaming","zzz":[1,2]}')
    assert (event.status, event.phase) == ("hibernating", "dreaming")
    assert not event.is_ready


def test_capabilities_fields_decode():
    event = parse_admin_event(CAPS)
    assert event.status == "capabilities"
    assert (event.backend, event.accelerator, event.gpu_layers, event.embed, event.v2) == (
        "llamacpp",
        "cpu",
        0,
        True,
        False,
    )


def serve_frames(*frames: bytes, hold: bool = False):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for frame in frames:
            writer.write(frame)
        await writer.drain()
        if hold:
            await reader.read()  # keep the stream open until the client leaves

    return handler


async def test_recv_reads_frames_from_a_socket(servers):
    path = await servers.uds(serve_frames(CAPS, READY, hold=True))
    async with await AdminClient.dial_admin_uds(path) as admin:
        first = await admin.recv()
        second = await admin.recv()
    assert first.status == "capabilities" and first.backend == "llamacpp"
    assert second.status == "ready"


async def test_wait_ready_skips_starting_and_loading(servers):
    path = await servers.uds(serve_frames(STARTING, CHECKING, DOWNLOAD, CAPS, READY, hold=True))
    async with await AdminClient.dial_admin_uds(path) as admin:
        event = await asyncio.wait_for(admin.wait_ready(), 2)
    assert event.status == "ready"
    assert event.id == "admin"


async def test_eof_is_admin_closed(servers):
    path = await servers.uds(serve_frames(STARTING))
    async with await AdminClient.dial_admin_uds(path) as admin:
        assert (await admin.recv()).status == "starting"
        with pytest.raises(AdminClosed):
            await admin.recv()


async def test_wait_ready_raises_closed_when_stream_ends_first(servers):
    path = await servers.uds(serve_frames(STARTING, CHECKING))
    async with await AdminClient.dial_admin(path) as admin:
        with pytest.raises(AdminClosed):
            await admin.wait_ready()


async def test_async_iteration_stops_at_eof(servers):
    path = await servers.uds(serve_frames(STARTING, CHECKING, READY))
    async with await AdminClient.dial_admin_uds(path) as admin:
        statuses = [event.status async for event in admin]
    assert statuses == ["starting", "loading_model", "ready"]


async def test_recv_raw_keeps_unknown_keys(servers):
    newer = b'{"id":"admin","type":"status","status":"capabilities","backend":"b","rerank":true}\n'
    path = await servers.uds(serve_frames(newer, hold=True))
    async with await AdminClient.dial_admin_uds(path) as admin:
        event, obj = await admin.recv_raw()
    assert isinstance(event, AdminEvent) and event.backend == "b"
    assert obj["rerank"] is True


@pytest.mark.parametrize("bad", [b"not json\n", b"[1,2]\n", b'{"id":"admin"}\n'])
async def test_undecodable_frame_is_decode_error(servers, bad):
    path = await servers.uds(serve_frames(bad, hold=True))
    async with await AdminClient.dial_admin_uds(path) as admin:
        with pytest.raises(ClientDecodeError):
            await admin.recv()


async def test_frames_written_by_the_daemon_encoder_round_trip(servers):
    frames = [STARTING, CHECKING, DOWNLOAD, CAPS, READY]
    path = await servers.uds(serve_frames(*frames))
    async with await AdminClient.dial_admin_uds(path) as admin:
        got = [obj async for obj in _raw(admin)]
    assert got == [json.loads(f) for f in frames]


async def _raw(admin: AdminClient):
    while True:
        try:
            _, obj = await admin.recv_raw()
        except AdminClosed:
            return
        yield obj
