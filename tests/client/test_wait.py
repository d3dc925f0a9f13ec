"""dial_and_wait_ready and the transient/permanent split (upstream-protocol §9 item 43).

Back-offs and deadlines are checked on a driven clock (loop_clock.py): exact times,
and no real waiting.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from loop_clock import on_virtual_time
from tiny_daemons import Servers

from inferd.client import (
    AdminClient,
    Client,
    ClientDecodeError,
    ConnectTimeout,
    UnexpectedEof,
    WaitPermanent,
    WaitTimeout,
    dial_and_wait_ready,
    is_transient_dial_error,
)
from inferd.proto.admin import Ready, encode_status

READY = encode_status(Ready())


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        TimeoutError("timed out"),
        OSError(errno.ECONNREFUSED, "refused, as a plain OSError"),
        OSError(errno.ENOENT, "missing, as a plain OSError"),
        OSError(errno.ETIMEDOUT, "timed out"),
        OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
        OSError("All pipe instances are busy."),
        OSError("The system cannot find the file specified."),
        OSError("No connection could be made because the target machine actively refused it."),
    ],
)
def test_transient(exc):
    assert is_transient_dial_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        # Even a permission error whose text looks like a busy pipe stays permanent.
        PermissionError("All pipe instances are busy."),
        ClientDecodeError("decode: bad frame"),
        UnexpectedEof(),
        OSError(errno.EINVAL, "Invalid argument"),
        ValueError("TCP address must be HOST:PORT"),
        RuntimeError("boom"),
    ],
)
def test_permanent(exc):
    assert not is_transient_dial_error(exc)


class Dialer:
    """Fails with the queued errors in order, then returns `value`; notes the loop's
    time of every call."""

    def __init__(self, *errors: BaseException, value: str = "client") -> None:
        self.errors = list(errors)
        self.times: list[float] = []
        self.value = value

    @property
    def calls(self) -> int:
        return len(self.times)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]

    async def __call__(self) -> str:
        self.times.append(asyncio.get_running_loop().time())
        if self.errors:
            raise self.errors.pop(0)
        return self.value


async def test_success_first_try_dials_once():
    dial = Dialer()
    assert await dial_and_wait_ready(5, dial) == "client"
    assert dial.calls == 1


@on_virtual_time
async def test_two_refusals_then_success_is_three_calls():
    dial = Dialer(ConnectionRefusedError(), FileNotFoundError())
    assert await dial_and_wait_ready(5, dial) == "client"
    assert dial.calls == 3
    # Sleeps of 100 ms then 200 ms between the attempts.
    assert dial.gaps() == pytest.approx([0.1, 0.2])


async def test_permanent_error_is_one_call():
    denied = PermissionError(errno.EACCES, "Permission denied")
    dial = Dialer(denied)
    with pytest.raises(WaitPermanent) as info:
        await dial_and_wait_ready(5, dial)
    assert dial.calls == 1
    assert info.value.error is denied
    assert info.value.__cause__ is denied


async def test_decode_error_is_permanent():
    dial = Dialer(ClientDecodeError("bad"))
    with pytest.raises(WaitPermanent):
        await dial_and_wait_ready(5, dial)
    assert dial.calls == 1


@on_virtual_time
async def test_constant_refusal_times_out_within_the_timeout():
    dial = Dialer(*[ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")] * 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(WaitTimeout) as info:
        await dial_and_wait_ready(0.25, dial)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.25
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    # Attempts at 0 and 0.1; the next sleep is clamped to the deadline (0.25), and
    # no attempt starts after it. Upstream would try again at 0.3.
    assert [t - started for t in dial.times] == pytest.approx([0.0, 0.1])
    assert loop.time() - started == pytest.approx(0.25)


async def test_zero_timeout_is_one_attempt():
    dial = Dialer(ConnectionRefusedError(), ConnectionRefusedError())
    with pytest.raises(WaitTimeout):
        await dial_and_wait_ready(0, dial)
    assert dial.calls == 1
    assert await dial_and_wait_ready(0, Dialer()) == "client"


@on_virtual_time
async def test_backoff_doubles_and_caps_at_five_seconds():
    dial = Dialer(*[ConnectionRefusedError() for _ in range(9)])
    assert await dial_and_wait_ready(60, dial) == "client"
    assert dial.gaps() == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


async def test_real_socket_appears_while_waiting(servers, sock_dir):
    path = str(sock_dir / "late.sock")
    refused = asyncio.Event()

    async def dial() -> AdminClient:
        try:
            return await AdminClient.dial_admin_uds(path)
        except FileNotFoundError:
            refused.set()  # the socket appears only after an attempt has found none
            raise

    async def bind_later():
        await refused.wait()
        await servers.uds(lambda r, w: r.read(), name="late.sock")

    binder = asyncio.create_task(bind_later())
    admin = await dial_and_wait_ready(5, dial)
    assert refused.is_set()
    await binder
    await admin.aclose()


@on_virtual_time
async def test_stale_socket_file_is_transient_refusal(sock_dir):
    path = str(sock_dir / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens: what a crashed daemon leaves
    with pytest.raises(WaitTimeout) as info:
        await dial_and_wait_ready(0.15, lambda: AdminClient.dial_admin_uds(path))
    assert isinstance(info.value.__cause__, ConnectionRefusedError)



# ---- every attempt is bounded ------------------------------------------------------------


async def dial_and_read_snapshot(path: str) -> AdminClient:
    """A dial that counts as ready only once the daemon says something."""
    admin = await AdminClient.dial_admin_uds(path)
    try:
        await admin.snapshot(timeout=None)
    except BaseException:
        await admin.aclose()
        raise
    return admin


@on_virtual_time
async def test_a_daemon_that_accepts_but_never_answers_is_a_wait_timeout(sock_dir):
    connections = 0
    gone = asyncio.Event()

    async def mute(reader, writer):
        nonlocal connections
        connections += 1
        await reader.read()
        gone.set()

    async with Servers(sock_dir) as servers:
        path = await servers.uds(mute)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WaitTimeout) as info:
            await asyncio.wait_for(dial_and_wait_ready(0.5, lambda: dial_and_read_snapshot(path)), 10)
        assert loop.time() - started == pytest.approx(0.5)
        assert isinstance(info.value.__cause__, ConnectTimeout)
        assert info.value.__cause__.timeout == pytest.approx(0.5)
        # One attempt, given all the time there was; its connection was dropped.
        assert connections == 1
        await asyncio.wait_for(gone.wait(), 10)


@on_virtual_time
async def test_attempt_timeout_retries_a_hung_attempt(sock_dir):
    connections = 0

    async def answers_the_second_connection(reader, writer):
        nonlocal connections
        connections += 1
        if connections >= 2:
            writer.write(READY)
            await writer.drain()
        await reader.read()

    async with Servers(sock_dir) as servers:
        path = await servers.uds(answers_the_second_connection)
        loop = asyncio.get_running_loop()
        started = loop.time()
        admin = await asyncio.wait_for(
            dial_and_wait_ready(10, lambda: dial_and_read_snapshot(path), attempt_timeout=0.2), 10
        )
        # The first attempt was cut at 0.2 s, the second came 0.1 s after it.
        assert loop.time() - started == pytest.approx(0.3)
        await admin.aclose()
    assert connections == 2


@on_virtual_time
async def test_attempts_never_outlast_the_total(sock_dir):
    async def mute(reader, writer):
        await reader.read()

    async with Servers(sock_dir) as servers:
        path = await servers.uds(mute)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WaitTimeout):
            # A per-attempt bound larger than the total is cut to what is left.
            await asyncio.wait_for(
                dial_and_wait_ready(0.4, lambda: dial_and_read_snapshot(path), attempt_timeout=30), 10
            )
        assert loop.time() - started == pytest.approx(0.4)


@on_virtual_time
async def test_full_accept_queue_is_a_wait_timeout_not_a_hang(sock_dir):
    path = str(sock_dir / "full.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fillers = []
    try:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                break
            fillers.append(sock)
            assert len(fillers) < 64
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WaitTimeout) as info:
            # The dialer's own connect timeout (5 s) is longer than the wait.
            await asyncio.wait_for(dial_and_wait_ready(0.4, lambda: Client.dial_uds(path)), 10)
        assert loop.time() - started == pytest.approx(0.4)
        assert isinstance(info.value.__cause__, ConnectTimeout)
    finally:
        for sock in fillers:
            sock.close()
        srv.close()


@on_virtual_time
async def test_a_connect_timeout_of_the_dialer_is_retried():
    dial = Dialer(ConnectTimeout("slow", 0.1), ConnectTimeout("slow", 0.1))
    assert await dial_and_wait_ready(5, dial) == "client"
    assert dial.calls == 3


async def test_bad_attempt_timeout_is_refused():
    with pytest.raises(ValueError):
        await dial_and_wait_ready(1, Dialer(), attempt_timeout=0)
