"""NDJSON framing: FrameReader over real StreamReaders (fed by hand and over a
socketpair) and encode_frame's cap (upstream-protocol §3.1, §9 items 10-14)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from daemon_harness import begin, wait_until

from inferd.proto.errors import FrameTooLarge
from inferd.proto.framing import MAX_FRAME_BYTES, STREAM_LIMIT, FrameReader, encode_frame
from inferd.proto.v1 import Message, Request, Role, TokenFrame

KIB = 1024
MIB = 1024 * KIB


def test_constants() -> None:
    assert MAX_FRAME_BYTES == 67_108_864
    assert STREAM_LIMIT == 64 * KIB


# ---- helpers --------------------------------------------------------------------------


def fed(data: bytes, chunk: int | None = None, eof: bool = True) -> asyncio.StreamReader:
    """A StreamReader with the default 64 KiB limit, pre-loaded with `data`."""
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    if chunk is None:
        reader.feed_data(data)
    else:
        for i in range(0, len(data), chunk):
            reader.feed_data(data[i : i + chunk])
    if eof:
        reader.feed_eof()
    return reader


async def read_all(reader: asyncio.StreamReader, cap: int = MAX_FRAME_BYTES) -> list[bytes]:
    frames = FrameReader(reader, cap)
    out = []
    while (frame := await frames.read_frame()) is not None:
        out.append(frame)
    # "No more frames" is sticky.
    assert await frames.read_frame() is None
    return out


@contextlib.asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]]:
    """(reader on side B, writer on side A, writer on side B) over a real AF_UNIX socketpair."""
    a, b = socket.socketpair()
    _, writer_a = await asyncio.open_unix_connection(sock=a, limit=STREAM_LIMIT)
    reader_b, writer_b = await asyncio.open_unix_connection(sock=b, limit=STREAM_LIMIT)
    try:
        yield reader_b, writer_a, writer_b
    finally:
        for w in (writer_a, writer_b):
            w.close()
        for w in (writer_a, writer_b):
            with contextlib.suppress(Exception):
                await w.wait_closed()


async def write_then_close(writer: asyncio.StreamWriter, *parts: bytes) -> None:
    for part in parts:
        writer.write(part)
        await writer.drain()
    writer.close()


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
        await task


# ---- items 10-12 ----------------------------------------------------------------------


async def test_empty_stream_is_no_frame() -> None:
    assert await FrameReader(fed(b"")).read_frame() is None


async def test_final_line_without_newline_parses() -> None:
    assert await read_all(fed(b'{"a":1}')) == [b'{"a":1}']


async def test_two_frames_in_one_buffer_then_none() -> None:
    assert await read_all(fed(b'{"a":1}\n{"b":2}\n')) == [b'{"a":1}', b'{"b":2}']


async def test_frames_then_partial_final_line() -> None:
    assert await read_all(fed(b"one\ntwo\nthree")) == [b"one", b"two", b"three"]


async def test_empty_line_is_an_empty_frame() -> None:
    # An empty line is handed up (it is a decode error, not "no more frames").
    assert await read_all(fed(b"\nx\n")) == [b"", b"x"]


async def test_carriage_return_left_for_the_json_parser() -> None:
    assert await read_all(fed(b'{"a":1}\r\n')) == [b'{"a":1}\r']


async def test_frame_split_across_many_feeds() -> None:
    data = b'{"messages":[{"role":"user","content":"hello"}]}\n{"x":2}\n'
    assert await read_all(fed(data, chunk=3)) == [data.split(b"\n")[0], b'{"x":2}']


async def test_reader_waits_for_the_rest_of_a_line() -> None:
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    task, called = begin(FrameReader(reader).read_frame)
    await called.wait()  # read_frame() waits for data
    reader.feed_data(b'{"half":')  # wakes it: it is scheduled to run before we resume
    await asyncio.sleep(0)  # one loop turn, not time: it has read the half line and waits again
    assert not task.done()
    reader.feed_data(b'true}\n{"next"')
    assert await asyncio.wait_for(task, 1) == b'{"half":true}'


async def test_socketpair_basic_frames() -> None:
    async with socket_pair() as (reader, writer, _):
        writer_task = asyncio.create_task(write_then_close(writer, b'{"a":1}\n{"b"', b":2}\n", b"tail"))
        assert await asyncio.wait_for(read_all(reader), 5) == [b'{"a":1}', b'{"b":2}', b"tail"]
        await writer_task


async def test_socketpair_empty_stream() -> None:
    async with socket_pair() as (reader, writer, _):
        writer.close()
        assert await asyncio.wait_for(FrameReader(reader).read_frame(), 5) is None


# ---- the cap: exact boundary ----------------------------------------------------------


@pytest.mark.parametrize("cap", [1000, 200_000], ids=["cap<stream_limit", "cap>stream_limit"])
@pytest.mark.parametrize("chunk", [None, 4096], ids=["one_feed", "chunked"])
@pytest.mark.parametrize("newline", [True, False], ids=["newline", "eof"])
async def test_exact_cap_accepted_cap_plus_one_rejected(cap: int, chunk: int | None, newline: bool) -> None:
    end = b"\n" if newline else b""
    exact = b"a" * cap
    if newline:
        assert await read_all(fed(exact + b"\nok\n", chunk), cap) == [exact, b"ok"]
    else:
        assert await read_all(fed(exact, chunk), cap) == [exact]

    with pytest.raises(FrameTooLarge) as info:
        await FrameReader(fed(b"a" * (cap + 1) + end, chunk), cap).read_frame()
    assert info.value.cap == cap
    assert info.value.code == "frame_too_large"
    assert info.value.message == f"frame exceeds {cap} byte cap"


@pytest.mark.parametrize("cap", [1000, 200_000])
async def test_cap_applies_to_later_frames_too(cap: int) -> None:
    frames = FrameReader(fed(b"small\n" + b"b" * cap + b"\n" + b"c" * (cap + 1) + b"\n"), cap)
    assert await frames.read_frame() == b"small"
    assert await frames.read_frame() == b"b" * cap
    with pytest.raises(FrameTooLarge):
        await frames.read_frame()


async def test_exact_64mib_line_accepted_over_socketpair() -> None:
    line = b"a" * MAX_FRAME_BYTES
    async with socket_pair() as (reader, writer, _):
        writer_task = asyncio.create_task(write_then_close(writer, line, b"\n", b"next\n"))
        frames = FrameReader(reader)
        got = await asyncio.wait_for(frames.read_frame(), 60)
        assert got is not None and len(got) == MAX_FRAME_BYTES and got == line
        del got
        assert await asyncio.wait_for(frames.read_frame(), 10) == b"next"
        assert await asyncio.wait_for(frames.read_frame(), 10) is None
        await writer_task


async def test_64mib_plus_one_rejected_over_socketpair() -> None:
    async with socket_pair() as (reader, writer, reader_side_writer):
        # Written by a concurrent task in 1 MiB pieces so the writer blocks on
        # back-pressure exactly as a real client would.
        async def produce() -> None:
            piece = b"a" * MIB
            for _ in range(64):
                writer.write(piece)
                await writer.drain()
            writer.write(b"a\n")
            await writer.drain()

        writer_task = asyncio.create_task(produce())
        with pytest.raises(FrameTooLarge) as info:
            await asyncio.wait_for(FrameReader(reader).read_frame(), 60)
        assert info.value.cap == MAX_FRAME_BYTES
        reader_side_writer.close()
        await stop(writer_task)


# ---- the cap: endless streams ----------------------------------------------------------


async def test_endless_stream_raises_at_cap_with_bounded_buffer() -> None:
    cap = 2 * MIB
    chunk = 16 * KIB
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    task = asyncio.create_task(FrameReader(reader, cap).read_frame())
    data = b"x" * chunk
    fed_total = 0
    max_internal = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        # Give up long after the cap: an unbounded reader would still be waiting here.
        while not task.done() and fed_total < 8 * cap:
            reader.feed_data(data)
            fed_total += chunk
            for _ in range(3):
                await asyncio.sleep(0)
            max_internal = max(max_internal, len(reader._buffer))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert task.done(), f"reader still waiting after {fed_total} bytes"
    with pytest.raises(FrameTooLarge):
        task.result()
    # It stopped right after the cap, not after swallowing everything.
    assert fed_total <= cap + 2 * STREAM_LIMIT + chunk
    # The StreamReader's own buffer stays around its limit...
    assert max_internal <= 2 * STREAM_LIMIT + chunk
    # ...and the whole read never held much more than the cap (accumulator + buffer).
    assert peak < cap + cap // 2 + 4 * STREAM_LIMIT, f"peak {peak} bytes for a {cap}-byte cap"


async def test_endless_stream_over_socketpair() -> None:
    cap = 1 * MIB
    async with socket_pair() as (reader, writer, reader_side_writer):
        sent = 0

        async def flood() -> None:
            nonlocal sent
            data = b"y" * (64 * KIB)
            while True:
                writer.write(data)
                sent += len(data)
                await writer.drain()

        max_internal = 0
        stop_watch = asyncio.Event()

        async def watch() -> None:
            nonlocal max_internal
            while not stop_watch.is_set():
                max_internal = max(max_internal, len(reader._buffer))
                await asyncio.sleep(0)

        flood_task = asyncio.create_task(flood())
        watch_task = asyncio.create_task(watch())
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(FrameReader(reader, cap).read_frame(), 30)
        stop_watch.set()
        await watch_task
        # Back-pressure: the transport pauses at 2x the limit (+ one recv of at most 256 KiB).
        assert max_internal <= 2 * STREAM_LIMIT + 256 * KIB
        # Nothing keeps reading after the error: the socket is no longer read (so the
        # writer ends up blocked), not drained without bound into our memory.
        await wait_until(lambda: not reader_side_writer.transport.is_reading(), 10, "reading to pause")
        assert len(reader._buffer) <= 2 * STREAM_LIMIT + 256 * KIB
        reader_side_writer.close()
        await stop(flood_task)


async def test_partial_final_line_over_cap_is_too_large() -> None:
    with pytest.raises(FrameTooLarge):
        await FrameReader(fed(b"z" * 300_000), 200_000).read_frame()
    with pytest.raises(FrameTooLarge):
        await FrameReader(fed(b"z" * 1001), 1000).read_frame()


# ---- long lines under the cap -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1000, 70_000], ids=["one_feed", "small_chunks", "odd_chunks"])
async def test_lines_longer_than_stream_limit_read_intact(chunk: int | None) -> None:
    big = bytes(range(32, 127)) * (5_000_000 // 95)  # ~5 MB, no newline inside
    other = b"B" * (STREAM_LIMIT + 1)
    data = big + b"\nshort\n" + other + b"\n" + big[:STREAM_LIMIT] + b"\n" + b"tail"
    got = await read_all(fed(data, chunk))
    assert [len(f) for f in got] == [len(big), 5, len(other), STREAM_LIMIT, 4]
    assert got == [big, b"short", other, big[:STREAM_LIMIT], b"tail"]


async def test_5mb_lines_over_socketpair_back_to_back() -> None:
    first = b"1" * 5_000_000
    second = b"2" * 5_000_001
    async with socket_pair() as (reader, writer, _):
        # One write holding several lines: nothing past a newline may be lost.
        writer_task = asyncio.create_task(
            write_then_close(writer, first + b"\n" + second + b"\n{\"small\":1}\n" + first[:10])
        )
        got = await asyncio.wait_for(read_all(reader), 30)
        await writer_task
    assert len(got) == 4
    assert got[0] == first
    assert got[1] == second
    assert got[2] == b'{"small":1}'
    assert got[3] == b"1" * 10


async def test_long_line_final_without_newline() -> None:
    big = b"q" * (3 * STREAM_LIMIT + 17)
    assert await read_all(fed(b"a\n" + big, chunk=5000)) == [b"a", big]


# ---- item 14: the writer ------------------------------------------------------------------


def request_of_size(n: int) -> Request:
    """A request whose compact JSON payload is exactly `n` bytes."""
    empty = Request(messages=[Message(role=Role.USER, content="")])
    overhead = len(empty.model_dump_json(exclude_none=True))
    req = Request(messages=[Message(role=Role.USER, content="a" * (n - overhead))])
    assert len(req.model_dump_json(exclude_none=True)) == n
    return req


def test_encode_frame_cap_is_one_byte_stricter_than_reader() -> None:
    cap = 1000
    ok = encode_frame(request_of_size(cap - 1), cap)
    assert len(ok) == cap and ok.endswith(b"\n")
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(request_of_size(cap), cap)
    assert info.value.cap == cap
    with pytest.raises(FrameTooLarge):
        encode_frame(request_of_size(cap + 1), cap)


def test_encode_frame_refuses_64mib_request() -> None:
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(Request(messages=[Message(role=Role.USER, content="a" * MAX_FRAME_BYTES)]))
    assert info.value.cap == MAX_FRAME_BYTES
    with pytest.raises(FrameTooLarge):
        encode_frame(request_of_size(MAX_FRAME_BYTES))


def test_encode_frame_accepts_just_under_64mib() -> None:
    line = encode_frame(request_of_size(MAX_FRAME_BYTES - 1))
    assert len(line) == MAX_FRAME_BYTES


def test_encode_frame_response() -> None:
    assert encode_frame(TokenFrame(id="a", content="b")) == b'{"type":"token","id":"a","content":"b"}\n'
