"""Client (v1) against in-test servers over real sockets (upstream-protocol §9 item 41)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from daemon_harness import line

from inferd.client import (
    Client,
    ClientDecodeError,
    ClientError,
    DoneFrame,
    ErrorCode,
    ErrorFrame,
    Message,
    Request,
    Role,
    TokenFrame,
    UnexpectedEof,
    default_inference_addr,
    dial_and_wait_ready,
    is_transient_dial_error,
)
from inferd.client.transport import classify_addr, parse_tcp_addr


def token(id: str, content: str) -> bytes:
    return line({"type": "token", "id": id, "content": content})


def done(id: str, content: str, completion: int = 1) -> bytes:
    return line(
        {
            "type": "done",
            "id": id,
            "content": content,
            "usage": {"prompt_tokens": 3, "completion_tokens": completion},
            "stop_reason": "end",
            "backend": "mock",
        }
    )


def hello(id: str = "r1") -> Request:
    return Request(id=id, messages=[Message(role=Role.USER, content="hello")])


async def echo_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[dict]) -> None:
    """Answers every request with one token and a done, like the mock backend."""
    while raw := await reader.readline():
        req = json.loads(raw)
        seen.append(req)
        rid = req.get("id", "")
        text = f"echo:{req['messages'][-1]['content']}"
        writer.write(token(rid, text) + done(rid, text))
        await writer.drain()


async def test_token_then_done_yields_exactly_two_frames(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: echo_daemon(r, w, seen))
    async with await Client.dial_uds(path) as client:
        frames = [f async for f in client.generate(hello())]
    assert len(frames) == 2
    assert isinstance(frames[0], TokenFrame) and frames[0].content == "echo:hello"
    assert isinstance(frames[1], DoneFrame) and frames[1].stop_reason == "end"
    assert all(f.id == "r1" for f in frames)


async def test_request_line_omits_unset_fields_and_empty_id(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: echo_daemon(r, w, seen))
    async with await Client.dial_uds(path) as client:
        await client.complete(Request(messages=[Message(role=Role.USER, content="x")], max_tokens=5))
        await client.complete(Request(id="s", messages=[Message(role=Role.USER, content="y")], stop=["\n"], seed=7))
    assert seen[0] == {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    assert seen[1] == {"id": "s", "messages": [{"role": "user", "content": "y"}], "stop": ["\n"], "seed": 7}


async def test_server_closing_after_read_is_unexpected_eof(servers):
    async def hang_up(reader, writer):
        await reader.readline()

    path = await servers.uds(hang_up)
    client = await Client.dial_uds(path)
    stream = client.generate(hello())
    with pytest.raises(UnexpectedEof):
        await stream.__anext__()
    # The stream is over after the error, and the broken connection is dropped.
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert client.closed
    await client.aclose()


async def test_eof_after_tokens_is_unexpected_eof(servers):
    async def drop_mid_stream(reader, writer):
        await reader.readline()
        writer.write(token("r1", "partial"))
        await writer.drain()

    path = await servers.uds(drop_mid_stream)
    async with await Client.dial_uds(path) as client:
        got = []
        with pytest.raises(UnexpectedEof):
            async for frame in client.generate(hello()):
                got.append(frame)
    assert [f.content for f in got] == ["partial"]


async def test_sequential_requests_share_one_connection(servers):
    seen: list[dict] = []
    accepted = 0

    async def counting(reader, writer):
        nonlocal accepted
        accepted += 1
        await echo_daemon(reader, writer, seen)

    path = await servers.uds(counting)
    async with await Client.dial_uds(path) as client:
        for i in range(3):
            result = await client.complete(Request(id=f"q{i}", messages=[Message(role=Role.USER, content=str(i))]))
            assert isinstance(result, DoneFrame)
            assert (result.id, result.content) == (f"q{i}", f"echo:{i}")
    assert accepted == 1
    assert [r["id"] for r in seen] == ["q0", "q1", "q2"]


async def test_error_frame_is_terminal(servers):
    async def full(reader, writer):
        await reader.readline()
        writer.write(line({"type": "error", "id": "r1", "code": "queue_full", "message": "queue full"}))
        # Anything after the terminal frame belongs to no request of ours.
        writer.write(token("r1", "stray"))
        await writer.drain()
        await reader.read()

    path = await servers.uds(full)
    async with await Client.dial_uds(path) as client:
        frames = [f async for f in client.generate(hello())]
    assert len(frames) == 1
    assert isinstance(frames[0], ErrorFrame)
    assert (frames[0].code, frames[0].message) == (ErrorCode.QUEUE_FULL, "queue full")


async def test_undecodable_frame_raises_decode_error_then_ends(servers):
    async def garbage(reader, writer):
        await reader.readline()
        writer.write(b"{ this is not json }\n")
        await writer.drain()
        await reader.read()

    path = await servers.uds(garbage)
    client = await Client.dial_uds(path)
    stream = client.generate(hello())
    with pytest.raises(ClientDecodeError):
        await stream.__anext__()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    await client.aclose()


async def test_unknown_frame_fields_are_ignored(servers):
    async def newer_daemon(reader, writer):
        await reader.readline()
        frame = json.loads(done("r1", "ok"))
        frame["future_field"] = {"x": 1}
        frame["timings"] = {"prompt_ms": 1.0, "generate_ms": 2.0, "tokens_per_second": 50.0}
        writer.write(line(frame))
        await writer.drain()
        await reader.read()

    path = await servers.uds(newer_daemon)
    async with await Client.dial_uds(path) as client:
        result = await client.complete(hello())
    assert isinstance(result, DoneFrame)
    assert result.timings is not None and result.timings.tokens_per_second == 50.0


async def test_abandoned_stream_drops_connection_so_daemon_stops(servers):
    closed = asyncio.Event()

    async def slow(reader, writer):
        await reader.readline()
        writer.write(token("r1", "a"))
        await writer.drain()
        await reader.read()  # returns at EOF: the client went away
        closed.set()

    path = await servers.uds(slow)
    client = await Client.dial_uds(path)
    async with client.generate(hello()) as stream:
        first = await stream.__anext__()
        assert first.content == "a"
    await asyncio.wait_for(closed.wait(), 2)
    assert client.closed
    with pytest.raises(ClientError):
        await client.complete(hello())
    await client.aclose()


async def test_second_generate_while_first_streams_is_refused(servers):
    seen: list[dict] = []
    path = await servers.uds(lambda r, w: echo_daemon(r, w, seen))
    async with await Client.dial_uds(path) as client:
        first = client.generate(hello("a"))
        await first.__anext__()
        with pytest.raises(ClientError, match="still streaming"):
            client.generate(hello("b"))
        rest = [f async for f in first]
        assert [f.type for f in rest] == ["done"]
        assert (await client.complete(hello("b"))).id == "b"


async def test_tcp_sends_auth_frame_first(servers):
    lines: list[dict] = []

    async def auth_daemon(reader, writer):
        first = json.loads(await reader.readline())
        lines.append(first)
        if first != {"type": "auth", "key": "sekrit"}:
            return  # wrong or missing key: silent close, as the daemon does (F-8)
        await echo_daemon(reader, writer, lines)

    host, port = await servers.tcp(auth_daemon)
    async with await Client.dial_tcp(f"{host}:{port}", api_key="sekrit") as client:
        result = await client.complete(hello())
    assert isinstance(result, DoneFrame)
    assert lines[0] == {"type": "auth", "key": "sekrit"}
    assert lines[1]["id"] == "r1"

    # Without the key the daemon hangs up and the client sees EOF, not a frame.
    async with await Client.dial_tcp((host, port)) as client:
        with pytest.raises(UnexpectedEof):
            await client.complete(hello())
    assert lines[2]["messages"][0]["content"] == "hello"


async def test_tcp_without_key_sends_request_first(servers):
    seen: list[dict] = []
    host, port = await servers.tcp(lambda r, w: echo_daemon(r, w, seen))
    async with await Client.dial(f"tcp://{host}:{port}") as client:
        assert (await client.complete(hello())).content == "echo:hello"
    assert seen == [{"id": "r1", "messages": [{"role": "user", "content": "hello"}]}]


async def test_dial_pipe_off_windows_is_a_permanent_oserror():
    if sys.platform == "win32":
        pytest.fail("this test pins the non-Windows behaviour")
    with pytest.raises(OSError, match="only available on Windows") as info:
        await Client.dial_pipe(r"\\.\pipe\inferd-infer")
    assert not is_transient_dial_error(info.value)


def test_address_classification():
    assert classify_addr(r"\\.\pipe\inferd-infer") == "pipe"
    assert classify_addr("/run/user/1000/inferd/infer.sock") == "uds"
    assert classify_addr("unix:///tmp/x.sock") == "uds"
    assert classify_addr("127.0.0.1:47321") == "tcp"
    assert classify_addr("tcp://localhost:1") == "tcp"
    assert classify_addr("./rel:1") == "uds"
    assert parse_tcp_addr("[::1]:47321") == ("::1", 47321)
    assert parse_tcp_addr(("127.0.0.1", 9)) == ("127.0.0.1", 9)
    with pytest.raises(ValueError):
        parse_tcp_addr("localhost")
    for bad in ("127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:-1", "127.0.0.1:8o"):
        with pytest.raises(ValueError):
            parse_tcp_addr(bad)
    # The daemon's side: a bare host takes the surface's default port.
    assert parse_tcp_addr("127.0.0.1", 47321) == ("127.0.0.1", 47321)


def test_error_codes_serialise_as_wire_strings():
    frame = ErrorFrame(id="x", code=ErrorCode.QUEUE_FULL, message="queue full")
    assert json.loads(frame.model_dump_json())["code"] == "queue_full"


async def test_readme_example_runs_against_default_address(servers, sock_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(sock_dir))
    (sock_dir / "inferd").mkdir()
    seen: list[dict] = []
    await servers.uds(lambda r, w: echo_daemon(r, w, seen), name="inferd/infer.sock")
    assert default_inference_addr() == str(sock_dir / "inferd" / "infer.sock")

    client = await dial_and_wait_ready(30, lambda: Client.dial_uds(default_inference_addr()))
    out = []
    async for frame in client.generate(Request(id="demo-1", messages=[Message(role=Role.USER, content="hello")])):
        if frame.type == "token":
            out.append(frame.content)
    await client.aclose()
    assert out == ["echo:hello"]
    assert seen[0]["id"] == "demo-1"


def test_client_imports_without_llama_cpp_or_daemon():
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "import inferd.client\n"
        "bad = [m for m in sys.modules if m.startswith(('inferd.daemon', 'inferd.engine', 'llama_cpp'))"
        " and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr


def test_package_reexports_the_public_surface():
    import inferd.client as pkg

    expected = """Client EmbedClient AdminClient dial_and_wait_ready is_transient_dial_error WaitTimeout
    WaitPermanent ClientError UnexpectedEof ClientDecodeError AdminClosed default_admin_addr
    default_inference_addr default_embed_addr default_v2_addr Request Message Role Response TokenFrame
    DoneFrame ErrorFrame StopReason Usage Timings ErrorCode EmbedRequest EmbeddingsFrame EmbedErrorFrame
    EmbedTask AdminEvent MAX_FRAME_BYTES VALID_IMAGE_TOKEN_BUDGETS""".split()
    missing = [name for name in expected if name not in pkg.__all__ or not hasattr(pkg, name)]
    assert missing == []
    assert pkg.MAX_FRAME_BYTES == 67_108_864


def test_package_reexports_the_v2_wire_types_and_the_new_surface():
    import inferd.client as pkg
    from inferd.client import errors, events
    from inferd.proto import v2

    v2_names = """RequestV2 MessageV2 RoleV2 TextBlock ImageBlock AudioBlock VideoBlock ToolUseBlock ToolResultBlock
    UnknownBlock ContentBlock Tool ImageAttachment AudioAttachment VideoAttachment UnknownAttachment Attachment
    FrameV2 DoneFrameV2 ErrorFrameV2 ResponseV2 StopReasonV2 ErrorCodeV2 UsageV2 TextDeltaBlock
    ThinkingDeltaBlock ResponseBlock DEFAULT_V2_MAX_TOKENS""".split()
    for name in v2_names:
        assert name in pkg.__all__, name
        assert getattr(pkg, name) is getattr(v2, name), name
    for name in "ClientTimeout ConnectTimeout ReadTimeout WriteTimeout".split():
        assert name in pkg.__all__ and getattr(pkg, name) is getattr(errors, name)
    assert pkg.engine_events is events.engine_events and pkg.EngineEvent is events.EngineEvent
    for name in "ClientV2 FrameStreamV2 FrameV2Any AdminSnapshot DEFAULT_CONNECT_TIMEOUT DEFAULT_WRITE_TIMEOUT".split():
        assert name in pkg.__all__ and hasattr(pkg, name)
    assert sorted(pkg.__all__) == sorted(set(pkg.__all__))
    assert all(hasattr(pkg, name) for name in pkg.__all__)
