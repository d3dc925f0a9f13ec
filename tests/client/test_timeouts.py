"""Connect, read and write timeouts of every client, over real sockets.

The timeouts run on a driven clock (loop_clock.py): each fires after exactly the time
under test, and no real time passes waiting for it. Each test still bounds its own
wait with asyncio.wait_for, well above the timeout under test, so a missing timeout
fails the test (at once, on the driven clock) instead of hanging it.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import select
import socket

import pytest

from loop_clock import on_virtual_time
from tiny_daemons import Servers

from inferd.client import (
    AdminClient,
    Client,
    ClientError,
    ClientTimeout,
    ClientV2,
    ConnectTimeout,
    EmbedClient,
    EmbedRequest,
    Message,
    MessageV2,
    ReadTimeout,
    Request,
    RequestV2,
    Role,
    TextBlock,
    WriteTimeout,
    is_transient_dial_error,
)
from inferd.client import transport
from inferd.proto.admin import Capabilities, Ready, Starting, encode_status

GUARD = 10.0  # how long a test waits before declaring the timeout missing (driven clock)
SHORT = 0.3  # the timeouts under test
# Several times any socket buffer between us and a peer that does not read.
BIG = 8 << 20


def hello(id: str = "r1") -> Request:
    return Request(id=id, messages=[Message(role=Role.USER, content="hello")])


def line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def until_eof(reader: asyncio.StreamReader) -> None:
    try:
        await reader.read()
    except ConnectionResetError:
        pass


# ---- the error types -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ConnectTimeout, ReadTimeout, WriteTimeout])
def test_timeout_errors_are_client_errors_and_builtin_timeouts(cls):
    err = cls("took too long", 1.5)
    assert isinstance(err, ClientTimeout) and isinstance(err, ClientError) and isinstance(err, TimeoutError)
    assert err.timeout == 1.5 and str(err) == "took too long"
    # A connect that timed out means "not up yet" to dial_and_wait_ready.
    assert is_transient_dial_error(err)
    with pytest.raises(TimeoutError):
        raise err


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
async def test_bad_timeout_values_are_refused_before_connecting(servers, bad):
    accepted = asyncio.Event()

    async def note(reader, writer):
        accepted.set()
        await until_eof(reader)

    path = await servers.uds(note)
    for kwargs in ({"connect_timeout": bad}, {"read_timeout": bad}, {"write_timeout": bad}):
        with pytest.raises(ValueError):
            await Client.dial_uds(path, **kwargs)
    with pytest.raises(ValueError):
        await AdminClient.dial_admin_uds(path, read_timeout=bad)
    assert not accepted.is_set()


async def test_defaults_and_setters(servers):
    path = await servers.uds(until_eof_handler)
    for cls in (Client, ClientV2, EmbedClient):
        async with await cls.dial_uds(path) as client:
            assert (client.read_timeout, client.write_timeout) == (None, 30.0)
            client.read_timeout = 2
            assert client.read_timeout == 2.0
            with pytest.raises(ValueError):
                client.write_timeout = 0
    async with await AdminClient.dial_admin_uds(path) as admin:
        assert admin.read_timeout is None
    assert transport.DEFAULT_CONNECT_TIMEOUT == 5.0


async def until_eof_handler(reader, writer):
    await until_eof(reader)


# ---- read timeouts ------------------------------------------------------------------------


def silent_daemon(got_request: asyncio.Event, gone: asyncio.Event):
    """Accepts, reads the request, never answers; notes when the client hangs up."""

    async def handler(reader, writer):
        await reader.readline()
        got_request.set()
        await until_eof(reader)
        gone.set()

    return handler


@on_virtual_time
async def test_read_timeout_on_a_daemon_that_never_answers(sock_dir):
    async with Servers(sock_dir) as servers:
        got_request, gone = asyncio.Event(), asyncio.Event()
        path = await servers.uds(silent_daemon(got_request, gone))
        client = await Client.dial_uds(path, read_timeout=SHORT)
        stream = client.generate(hello())
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout) as info:
            await asyncio.wait_for(stream.__anext__(), GUARD)
        assert loop.time() - started == pytest.approx(SHORT)
        assert got_request.is_set()
        assert info.value.timeout == SHORT
        # The connection is closed: the daemon sees it go, and the stream is over.
        assert client.closed
        await asyncio.wait_for(gone.wait(), GUARD)
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        with pytest.raises(ClientError, match="closed"):
            await client.complete(hello())
        await client.aclose()


@on_virtual_time
async def test_read_timeout_applies_between_frames(sock_dir):
    async with Servers(sock_dir) as servers:
        gone = asyncio.Event()

        async def one_token_then_silence(reader, writer):
            await reader.readline()
            writer.write(line({"type": "token", "id": "r1", "content": "a"}))
            await writer.drain()
            await until_eof(reader)
            gone.set()

        path = await servers.uds(one_token_then_silence)
        async with await Client.dial_uds(path, read_timeout=SHORT) as client:
            got = []
            # `except TimeoutError` is enough for callers that do not know our types.
            with pytest.raises(TimeoutError):
                async for frame in client.generate(hello()):
                    got.append(frame)
            assert [f.content for f in got] == ["a"]
            assert client.closed
        await asyncio.wait_for(gone.wait(), GUARD)


@on_virtual_time
async def test_read_timeout_can_be_set_after_dialing(sock_dir):
    async with Servers(sock_dir) as servers:
        got_request, gone = asyncio.Event(), asyncio.Event()
        path = await servers.uds(silent_daemon(got_request, gone))
        async with await ClientV2.dial_uds(path) as client:
            client.read_timeout = SHORT
            request = RequestV2(id="v", messages=[MessageV2(role="user", content=[TextBlock(text="hi")])])
            with pytest.raises(ReadTimeout):
                await asyncio.wait_for(client.complete(request), GUARD)
        await asyncio.wait_for(gone.wait(), GUARD)


@on_virtual_time
async def test_embed_read_timeout(sock_dir):
    async with Servers(sock_dir) as servers:
        got_request, gone = asyncio.Event(), asyncio.Event()
        path = await servers.uds(silent_daemon(got_request, gone))
        async with await EmbedClient.dial_uds(path, read_timeout=SHORT) as client:
            with pytest.raises(ReadTimeout):
                await asyncio.wait_for(client.embed(EmbedRequest(id="e", input=["x"])), GUARD)
            assert client.closed
        await asyncio.wait_for(gone.wait(), GUARD)


# ---- the admin client ------------------------------------------------------------------------

CAPS = encode_status(Capabilities(backend="mock", accelerator="cpu", gpu_layers=0))
READY = encode_status(Ready())
STARTING = encode_status(Starting())


def admin_daemon(*frames: bytes):
    async def handler(reader, writer):
        for frame in frames:
            writer.write(frame)
        await writer.drain()
        await until_eof(reader)

    return handler


async def test_admin_snapshot_reads_capabilities_then_state(servers):
    path = await servers.uds(admin_daemon(CAPS, CAPS, READY, STARTING))
    async with await AdminClient.dial_admin_uds(path) as admin:
        snap = await asyncio.wait_for(admin.snapshot(), GUARD)
        assert [c.status for c in snap.capabilities] == ["capabilities", "capabilities"]
        assert snap.state.status == "ready" and snap.ready
        assert [f["status"] for f in snap.frames] == ["capabilities", "capabilities", "ready"]
        # Live events after the snapshot are left for recv.
        assert (await admin.recv()).status == "starting"


@on_virtual_time
async def test_admin_snapshot_is_bounded(sock_dir):
    from inferd.client.admin import SNAPSHOT_TIMEOUT

    # A one-shot status read has a bound by default; a subscription does not.
    assert inspect.signature(AdminClient.snapshot).parameters["timeout"].default == SNAPSHOT_TIMEOUT == 5.0
    async with Servers(sock_dir) as servers:
        path = await servers.uds(admin_daemon(CAPS))  # capabilities, then nothing
        admin = await AdminClient.dial_admin_uds(path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout, match="snapshot") as info:
            await asyncio.wait_for(admin.snapshot(timeout=SHORT), GUARD)
        assert info.value.timeout == SHORT
        assert loop.time() - started == pytest.approx(SHORT)
        assert admin.closed
        await admin.aclose()


@on_virtual_time
async def test_admin_wait_ready_with_a_total_timeout(sock_dir):
    async with Servers(sock_dir) as servers:
        # Two frames arrive, then silence: the bound is on the whole wait, not per frame.
        path = await servers.uds(admin_daemon(STARTING, CAPS))
        async with await AdminClient.dial_admin_uds(path) as admin:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ReadTimeout, match="ready"):
                await asyncio.wait_for(admin.wait_ready(timeout=SHORT), GUARD)
            assert loop.time() - started == pytest.approx(SHORT)
            assert admin.closed


@on_virtual_time
async def test_admin_read_timeout_per_call_and_per_client(sock_dir):
    async with Servers(sock_dir) as servers:
        path = await servers.uds(admin_daemon(STARTING))
        async with await AdminClient.dial_admin_uds(path, read_timeout=SHORT) as admin:
            assert (await admin.recv()).status == "starting"
            with pytest.raises(ReadTimeout):
                await asyncio.wait_for(admin.recv(), GUARD)
        async with await AdminClient.dial_admin(path) as admin:
            assert (await admin.recv(timeout=SHORT)).status == "starting"
            with pytest.raises(ReadTimeout):
                await asyncio.wait_for(admin.recv(timeout=SHORT), GUARD)


# ---- write timeouts ------------------------------------------------------------------------


def big_request(kind: str):
    text = "x" * BIG
    if kind == "v1":
        return Client, lambda c: c.complete(Request(id="big", messages=[Message(role=Role.USER, content=text)]))
    if kind == "v2":
        request = RequestV2(id="big", messages=[MessageV2(role="user", content=[TextBlock(text=text)])])
        return ClientV2, lambda c: c.complete(request)
    return EmbedClient, lambda c: c.embed(EmbedRequest(id="big", input=[text]))


@pytest.fixture
def unread_listener(sock_dir):
    """A Unix socket that is listened on but never accepted from, so never read."""
    path = str(sock_dir / "deaf.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.setblocking(False)
    yield srv, path
    srv.close()


@pytest.mark.parametrize("kind", ["v1", "v2", "embed"])
@on_virtual_time
async def test_write_timeout_when_the_daemon_stops_reading(unread_listener, kind):
    srv, path = unread_listener
    cls, send = big_request(kind)
    client = await cls.dial_uds(path, write_timeout=SHORT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(WriteTimeout) as info:
        await asyncio.wait_for(send(client), GUARD)
    assert info.value.timeout == SHORT
    assert loop.time() - started == pytest.approx(SHORT)
    assert client.closed
    # The peer, once it looks, finds part of the request and then the end of the
    # connection: the client did not keep it open to finish the write.
    peer, _ = await asyncio.wait_for(loop.sock_accept(srv), GUARD)
    with peer:
        received = 0
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 16), GUARD)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
    assert 0 < received < BIG
    await client.aclose()


@on_virtual_time
async def test_without_write_timeout_the_write_waits(unread_listener):
    # The control for the test above: the same request, no limit, is still pending
    # when the peer starts reading, and then goes through.
    srv, path = unread_listener
    client = await Client.dial_uds(path, write_timeout=None)
    pending = asyncio.ensure_future(client._conn.send(b"x" * BIG + b"\n"))
    done, _ = await asyncio.wait({pending}, timeout=SHORT * 2)
    assert not done
    loop = asyncio.get_running_loop()
    peer, _ = await asyncio.wait_for(loop.sock_accept(srv), GUARD)
    with peer:
        received = 0
        while received < BIG + 1:
            chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), GUARD)
            assert chunk
            received += len(chunk)
        await asyncio.wait_for(pending, GUARD)
    await client.aclose()


# ---- connect timeouts ------------------------------------------------------------------------


@pytest.fixture
def full_uds_backlog(sock_dir):
    """A Unix socket whose accept queue is full: a further connect cannot complete."""
    path = str(sock_dir / "full.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    srv.setblocking(False)
    fillers = []
    try:
        for _ in range(64):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError as exc:
                assert exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                sock.close()
                break
            fillers.append(sock)
        else:
            pytest.fail("the kernel accepted 64 connections on a listen(0) socket")
        yield srv, path, len(fillers)
    finally:
        for sock in fillers:
            sock.close()
        srv.close()


@on_virtual_time
async def test_uds_connect_timeout_when_the_accept_queue_is_full(full_uds_backlog):
    _, path, _ = full_uds_backlog
    loop = asyncio.get_running_loop()
    for dial in (
        lambda: Client.dial_uds(path, connect_timeout=SHORT),
        lambda: EmbedClient.dial(path, connect_timeout=SHORT),
        lambda: AdminClient.dial_admin(path, connect_timeout=SHORT),
        lambda: transport.dial_uds(path, connect_timeout=SHORT),
    ):
        started = loop.time()
        with pytest.raises(ConnectTimeout) as info:
            await asyncio.wait_for(dial(), GUARD)
        assert loop.time() - started == pytest.approx(SHORT)
        assert info.value.timeout == SHORT
        assert path in str(info.value)


@on_virtual_time
async def test_uds_connect_completes_once_the_queue_drains(full_uds_backlog):
    # asyncio's own dial "connects" at once to a full queue and fails on first use
    # (EINVAL); ours keeps trying until the daemon accepts.
    srv, path, queued = full_uds_backlog
    dial = asyncio.ensure_future(Client.dial_uds(path, connect_timeout=GUARD))
    done, _ = await asyncio.wait({dial}, timeout=SHORT)
    assert not done, "the dial finished while the accept queue was still full"
    loop = asyncio.get_running_loop()
    filler, _ = await loop.sock_accept(srv)  # makes room for one more
    filler.close()
    client = await asyncio.wait_for(dial, GUARD)
    # Ours is the last in the queue, behind the other fillers (none on Linux).
    for _ in range(queued - 1):
        (await loop.sock_accept(srv))[0].close()
    peer, _ = await asyncio.wait_for(loop.sock_accept(srv), GUARD)
    with peer:
        await loop.sock_sendall(peer, line({"type": "error", "id": "r1", "code": "queue_full", "message": "queue full"}))
        frame = await asyncio.wait_for(client.complete(hello()), GUARD)
    assert frame.code == "queue_full"
    await client.aclose()


@on_virtual_time
async def test_tcp_connect_timeout_when_the_accept_queue_is_full():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    addr = srv.getsockname()
    loop = asyncio.get_running_loop()
    fillers: list[socket.socket] = []
    try:
        # Linux drops SYNs to a listener whose accept queue is full; fill it until
        # a connect stays pending. The handshake is the kernel's, so it gets real
        # time (a second), outside the driven loop.
        for _ in range(16):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            fillers.append(sock)
            sock.connect_ex(addr)
            _, connected, _ = select.select([], [sock], [], 1.0)
            if not connected:
                break
        else:
            pytest.fail("the kernel completed 16 connects to a listen(0) socket")
        for dial in (
            lambda: Client.dial_tcp(addr, connect_timeout=SHORT),
            lambda: Client.dial(f"{addr[0]}:{addr[1]}", api_key="k", connect_timeout=SHORT),
        ):
            started = loop.time()
            with pytest.raises(ConnectTimeout) as info:
                await asyncio.wait_for(dial(), GUARD)
            assert loop.time() - started == pytest.approx(SHORT)
            assert f"127.0.0.1:{addr[1]}" in str(info.value)
    finally:
        for sock in fillers:
            sock.close()
        srv.close()


async def test_a_kernel_timeout_is_not_mistaken_for_ours():
    async def fails():
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    with pytest.raises(TimeoutError) as info:
        await transport.bounded(fails(), GUARD, lambda: ConnectTimeout("ours", GUARD))
    assert not isinstance(info.value, ClientTimeout)
