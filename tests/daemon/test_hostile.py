"""Hostile clients against a real in-process daemon (issue: survive hostile clients, load and faults).

Each test names the THREAT_MODEL finding it pins (upstream-daemon.md §6.1). Everything
runs over Unix sockets or loopback TCP; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import grp
import hmac
import json
import logging
import os
import socket
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import (
    NOBODY,
    dial,
    line,
    needs_root,
    read_json,
    read_until_terminal,
    req,
    reserved_port,
    roundtrip,
    stuck_socket,
    tcp_exchange,
    wait_until,
)

from inferd.daemon.observe.activity import LOG_FILE_NAME, ActivityLog

QUEUE_FULL = {"type": "error", "code": "queue_full", "message": "queue full"}
MID_STREAM = "backend ended stream without terminal frame"


# ---- helpers ---------------------------------------------------------------------

async def drain_raw(sock: socket.socket, timeout: float = 15.0) -> tuple[bytes, str]:
    """Read what the kernel still holds for `sock` until the daemon's close shows up."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    received = bytearray()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return bytes(received), "open"
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), left)
        except TimeoutError:
            return bytes(received), "open"
        except (ConnectionResetError, BrokenPipeError):
            return bytes(received), "reset"
        if not data:
            return bytes(received), "eof"
        received += data


def complete_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in data.split(b"\n")[:-1] if raw]


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for row in fh:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def activity_records(directory: Path) -> list[dict[str, Any]]:
    path = directory / LOG_FILE_NAME
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---- F-17: a peer that stops reading --------------------------------------------

async def test_write_stall_costs_the_hostile_its_connection_not_a_slot(daemon_factory):
    """F-17 (upstream write_stall.rs): a client that sends a request and never reads is cut
    off after the write timeout and its admission slot is released, so a victim retrying
    every 100 ms is served. Without the bound every victim attempt is `queue_full`."""
    d = await daemon_factory(mock={"tokens": ["x" * 4096] * 512}, active_permits=1, queue_depth=0,
                             write_timeout_secs=0.6)
    hostile = stuck_socket(d.infer)
    try:
        hostile.sendall(line(req("hostile")))
        await wait_until(lambda: d.server.router.outstanding == 1, 10, "the hostile request to be admitted")
        # The hostile request really holds the only slot (otherwise the test proves nothing).
        probe = await roundtrip(d.infer, req("probe"), timeout=10)
        assert probe == [dict(QUEUE_FULL, id="probe")]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        attempts: list[str] = []
        frames: list[dict[str, Any]] = []
        while loop.time() < deadline:
            rid = f"victim-{len(attempts)}"
            frames = await roundtrip(d.infer, req(rid), timeout=15, limit=16 << 20)  # a multi-MiB `done`
            attempts.append(frames[-1]["type"] if frames[-1]["type"] == "done" else frames[-1]["code"])
            if frames[-1]["type"] == "done":
                break
            assert frames == [dict(QUEUE_FULL, id=rid)]
            await asyncio.sleep(0.1)  # the victim's retry pace: the behaviour under test
        assert attempts and attempts[-1] == "done", f"victim never served: {len(attempts)} attempts all refused"
        assert len(frames) == 513 and frames[-1]["usage"]["completion_tokens"] == 512

        # The daemon dropped the hostile connection: what the kernel had buffered, then EOF.
        received, ending = await drain_raw(hostile, timeout=15)
        assert ending in ("eof", "reset"), "hostile connection still open after the write timeout"
        got = complete_lines(received)
        assert all(f["type"] == "token" and f["id"] == "hostile" for f in got)
        assert len(got) < 512, "the hostile stream was not abandoned"
        await wait_until(lambda: d.server.router.outstanding == 0, 5, "all slots released")
    finally:
        hostile.close()


async def test_stuck_admin_subscriber_keeps_daemon_memory_bounded(daemon_factory):
    """F-17 / upstream §6.2 (admin lag limit 256): a subscriber that never reads while the
    daemon publishes 5,000 events of 16 KiB (80 MiB in total) costs at most ~256 queued
    events - daemon RSS grows < 30 MiB - and once dropped its connection is closed
    within the write timeout. (That a reading subscriber keeps receiving events while a
    stuck one is dropped is covered in test_admin_embed_surface.py.)"""
    from inferd.proto.admin import CheckingLocal, Ready, Restarting

    d = await daemon_factory(write_timeout_secs=1.0)
    stuck = stuck_socket(d.admin)
    try:
        await wait_until(lambda: d.server.broadcaster.subscriber_count == 1, 10, "the subscriber to register")
        gc.collect()
        base = peak = rss_bytes()
        payload = "x" * 16384
        for i in range(5000):
            d.server.broadcaster.publish(Restarting(phase=CheckingLocal(path=f"{i}-{payload}")))
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the stuck subscriber's handler run and block
                peak = max(peak, rss_bytes())
        peak = max(peak, rss_bytes())
        d.server.broadcaster.publish(Ready())
        growth = peak - base
        assert growth < 30 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB with a stuck admin subscriber"
        assert d.server.broadcaster.subscriber_count == 0  # the laggard was dropped

        received, ending = await drain_raw(stuck, timeout=15)
        assert ending in ("eof", "reset"), "stuck admin connection never closed"
        assert len(received) < 5000 * 16384

        # A fresh subscriber gets the current state, i.e. the daemon is unharmed.
        reader, writer = await dial(d.admin)
        frames = [await read_json(reader), await read_json(reader)]
        assert [f["status"] for f in frames] == ["capabilities", "ready"]
        writer.close()
    finally:
        stuck.close()


# ---- F-1: an endless line ----------------------------------------------------------

async def test_endless_line_gets_one_frame_too_large_while_others_are_served(daemon_factory):
    """F-1: 70 MiB without a newline is answered with exactly one `frame_too_large` frame
    (id "") and the connection closes; a second client connecting while the hostile line
    is 16-60 MiB long is served normally."""
    d = await daemon_factory(mock={"tokens": ["a", "b"]})
    reader, writer = await dial(d.infer)
    chunk = b"y" * (1 << 20)
    halfway, bystander_done = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def flood() -> int:
        sent = 0
        try:
            for i in range(70):
                if i == 16:
                    halfway.set()
                if i == 60:  # do not complete the oversize line before the bystander is served
                    await asyncio.wait_for(bystander_done.wait(), 30)
                writer.write(chunk)
                await writer.drain()
                sent += 1
        except (ConnectionError, OSError):
            pass
        finally:
            halfway.set()
        return sent

    async def bystander() -> list[dict[str, Any]]:
        await halfway.wait()
        frames = await roundtrip(d.infer, req("bystander"), timeout=20)
        order.append("bystander")
        bystander_done.set()
        return frames

    async def collect() -> tuple[list[dict[str, Any]], str]:
        frames: list[dict[str, Any]] = []
        try:
            while True:
                raw = await asyncio.wait_for(reader.readline(), 40)
                if not raw:
                    return frames, "eof"
                frames.append(json.loads(raw))
                order.append("hostile-frame")
        except ConnectionResetError:
            return frames, "reset"

    sent, served, (frames, ending) = await asyncio.wait_for(
        asyncio.gather(flood(), bystander(), collect()), 60)
    writer.close()
    assert sent >= 60  # the line really went past the cap without a newline
    assert frames == [{"type": "error", "id": "", "code": "frame_too_large",
                       "message": "frame exceeds 67108864 byte cap"}]
    assert ending in ("eof", "reset")
    assert [f["type"] for f in served] == ["token", "token", "done"] and served[-1]["id"] == "bystander"
    assert order == ["bystander", "hostile-frame"]
    await wait_until(lambda: d.server.tracker.count({"inference"}) == 0, 10, "the hostile connection to close")
    assert d.server.router.outstanding == 0


# ---- F-7: other users through the daemon ------------------------------------------

_NOBODY_CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    path, uid, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode() + b"\\n"
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    out = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "frames": [], "ending": None}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    try:
        s.connect(path)
    except OSError as exc:
        out["ending"] = "connect:" + type(exc).__name__
    else:
        buf = b""
        try:
            s.sendall(payload)
            while out["ending"] is None:
                data = s.recv(65536)
                if not data:
                    out["ending"] = "eof"
                    break
                buf += data
                while b"\\n" in buf:
                    raw, buf = buf.split(b"\\n", 1)
                    frame = json.loads(raw)
                    out["frames"].append(frame)
                    if frame["type"] in ("done", "error"):
                        out["ending"] = "terminal"
        except (ConnectionResetError, BrokenPipeError):
            out["ending"] = "reset"
        except socket.timeout:
            out["ending"] = "timeout"
    print(json.dumps(out))
""")


async def run_as_nobody(path: str, request: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _NOBODY_CLIENT, path, str(NOBODY), json.dumps(request),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["uid"] == NOBODY and result["gid"] == NOBODY
    return result


@needs_root("switch a child process to another user")
@pytest.mark.parametrize("policy", ["owner-only", "allow-uid", "group"])
async def test_peer_policy_applies_to_other_users(daemon_factory, sockdir, policy):
    """F-7: the daemon reads the kernel peer credentials of every connection. A process of
    another user (nobody, 65534) that can reach the socket file gets a closed connection and
    no frame, and the refusal is logged with its uid; `allow_uids=[65534]` or `group=<its
    group>` admits it, and accepted connections are logged with peer_uid/peer_pid."""
    logs = sockdir / "logs"
    opts: dict[str, Any] = {}
    group_name = grp.getgrgid(NOBODY).gr_name
    if policy == "allow-uid":
        opts["allow_uids"] = [NOBODY]
    elif policy == "group":
        opts["group"] = group_name
    d = await daemon_factory(mock={"tokens": ["hi"]}, activity=ActivityLog(logs, level="info"), **opts)
    os.chmod(sockdir, 0o755)
    if policy == "group":
        # No chmod: the group-owned 0660 socket itself must let the group in.
        st = os.stat(d.infer)
        assert st.st_gid == NOBODY and stat.S_IMODE(st.st_mode) == 0o660
        assert os.stat(d.embed).st_gid == NOBODY
        admin = os.stat(d.admin)
        assert admin.st_gid == os.getgid() and stat.S_IMODE(admin.st_mode) == 0o600  # admin stays private
    else:
        os.chmod(d.infer, 0o666)  # file permissions let nobody in; only the peer policy stands in the way

    result = await run_as_nobody(d.infer, req(f"nobody-{policy}"))
    records = activity_records(logs)
    pid = result["pid"]
    if policy == "owner-only":
        assert result["frames"] == [] and result["ending"] in ("eof", "reset"), result
        refused = [r for r in records if r["msg"] == "peer_refused"]
        assert refused, records
        assert refused[0]["peer_uid"] == NOBODY and refused[0]["peer_pid"] == pid
        assert refused[0]["surface"] == "inference" and refused[0]["level"] == "warn"
        assert not any(r.get("peer_uid") == NOBODY for r in records if r["msg"].endswith("_connection_accepted"))
        assert d.server.router.outstanding == 0
    else:
        assert result["ending"] == "terminal" and result["frames"][-1]["type"] == "done", result
        assert result["frames"][-1]["id"] == f"nobody-{policy}"
        accepted = [r for r in records if r["msg"] == "inference_connection_accepted"]
        assert any(r["peer_uid"] == NOBODY and r["peer_pid"] == pid and r["peer"] == f"unix:{NOBODY}:{pid}"
                   for r in accepted), accepted
        assert not any(r["msg"] == "peer_refused" for r in records)
    # The owner is served either way.
    frames = await roundtrip(d.infer, req("owner"))
    assert frames[-1]["type"] == "done"
    mine = [r for r in activity_records(logs) if r["msg"] == "inference_connection_accepted"
            and r["peer_uid"] == os.getuid()]
    assert mine and all(isinstance(r["peer_pid"], int) for r in mine)


# ---- F-3: secrets and prompts never reach the activity log ------------------------

async def test_activity_log_redacts_ids_and_never_logs_prompts(daemon_factory, sockdir):
    """F-3 (upstream logx.rs): a key in the request id is redacted on disk (`[REDACTED`
    appears, the key does not) and the prompt text is never written at all. The wire
    is not affected: the client gets its id back verbatim."""
    logs = sockdir / "logs"
    d = await daemon_factory(mock={"tokens": ["ok"]}, activity=ActivityLog(logs, level="info"))
    secret = "sk-1234567890abcdefghij"
    rid = f"req-{secret}"
    frames = await roundtrip(d.infer, req(rid, content="my password=hunter22 secret"))
    assert frames[-1]["type"] == "done" and all(f["id"] == rid for f in frames)
    # A second path that logs the id: a validation error.
    frames = await roundtrip(d.infer, {"id": rid, "messages": []})
    assert frames[-1]["code"] == "invalid_request" and frames[-1]["id"] == rid

    on_disk = "".join(p.read_text() for p in sorted(logs.iterdir()) if p.is_file())
    assert secret not in on_disk and "1234567890abcdefghij" not in on_disk
    assert "hunter22" not in on_disk
    assert "my password" not in on_disk and "[REDACTED:secret-kv] secret" not in on_disk  # prompt not logged
    done = [r for r in activity_records(logs) if r["msg"] == "request_done"]
    assert len(done) == 1
    assert "[REDACTED" in done[0]["req_id"] and done[0]["req_id"].startswith("req-")


# ---- F-8: loopback TCP -------------------------------------------------------------

async def test_tcp_without_key_logs_a_warning(daemon_factory, caplog):
    """F-8: binding loopback TCP without an API key warns the operator."""
    caplog.set_level(logging.WARNING, logger="inferd.listeners")
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["a"]}, tcp=f"127.0.0.1:{port}")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "without an API key" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()


async def test_tcp_key_compare_is_constant_time_and_exact(daemon_factory, caplog, monkeypatch):
    """F-8: the first-frame key is compared with hmac.compare_digest; a prefix of the right
    key, the key plus a byte, and a case variant are refused with a silent close; only the
    exact key is served. With a key configured there is no 'without an API key' warning."""
    calls: list[tuple[Any, Any]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    caplog.set_level(logging.WARNING, logger="inferd.listeners")
    key = "s3cret-key-0123456789"
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["a", "b"]}, tcp=f"127.0.0.1:{port}", api_key=key)
    assert not any("without an API key" in r.getMessage() for r in caplog.records)

    for wrong in (key[:-1], key[:4], key + "0", key.upper(), ""):
        frames = await tcp_exchange(port, line({"type": "auth", "key": wrong}) + line(req("nope")))
        assert frames == [], f"key {wrong!r} was accepted"
    ok = await tcp_exchange(port, line({"type": "auth", "key": key}) + line(req("yes")))
    assert ok[-1]["type"] == "done" and ok[-1]["content"] == "ab"

    presented = [a.decode() if isinstance(a, bytes) else a for a, _ in calls]
    assert presented == [key[:-1], key[:4], key + "0", key.upper(), "", key]
    assert all((b.decode() if isinstance(b, bytes) else b) == key for _, b in calls)


# ---- faults and idle peers ---------------------------------------------------------

async def test_backend_fault_mid_stream_releases_the_only_slot(daemon_factory, sockdir):
    """A backend that raises after one token: the client gets that token and one
    `backend_unavailable` frame, the single admission slot is free at once (another
    connection is admitted, not `queue_full`), the faulting connection stays usable and
    the fault is logged as request_error_mid_stream."""
    logs = sockdir / "logs"
    d = await daemon_factory(mock={"tokens": ["one", "two", "three"], "raise_after": 1},
                             active_permits=1, queue_depth=0, activity=ActivityLog(logs, level="info"))
    expected_types = ["token", "error"]
    reader, writer = await dial(d.infer)
    try:
        writer.write(line(req("fault-a1")))
        frames = await read_until_terminal(reader)
        assert [f["type"] for f in frames] == expected_types and frames[0]["content"] == "one"
        assert frames[1] == {"type": "error", "id": "fault-a1", "code": "backend_unavailable", "message": MID_STREAM}
        assert d.server.router.outstanding == 0
        # Capacity is one: if the slot leaked, this would be queue_full.
        other = await roundtrip(d.infer, req("fault-b"))
        assert [f["type"] for f in other] == expected_types and other[-1]["code"] == "backend_unavailable"
        writer.write(line(req("fault-a2")))
        again = await read_until_terminal(reader)
        assert [f["type"] for f in again] == expected_types and again[-1]["id"] == "fault-a2"
    finally:
        writer.close()
    assert not d.task.done()
    errs = [r for r in activity_records(logs) if r["msg"] == "request_error_mid_stream"]
    assert [r["req_id"] for r in errs] == ["fault-a1", "fault-b", "fault-a2"]
    assert all(r["text_frames"] == 1 and r["level"] == "warn" for r in errs)
    assert d.server.router.outstanding == 0


async def test_idle_and_half_line_peers_hold_no_slot(daemon_factory):
    """A peer that connects and sends nothing, one that sends half a line and waits, and one
    that sends half a line and closes: none of them is admitted (a slot is taken only for a
    complete request), so with capacity one a normal request still completes."""
    d = await daemon_factory(mock={"tokens": ["a", "b"]}, active_permits=1, queue_depth=0)
    idle_r, idle_w = await dial(d.infer)
    hold_r, hold_w = await dial(d.infer)
    hold_w.write(b'{"id":"half-hold","messages":[{"role":"us')
    await hold_w.drain()
    gone_r, gone_w = await dial(d.infer)
    gone_w.write(b'{"id":"half-gone","messages":[')
    await gone_w.drain()
    await wait_until(lambda: d.server.tracker.count({"inference"}) == 3, 10, "three accepted connections")
    gone_w.close()
    await gone_w.wait_closed()
    await wait_until(lambda: d.server.tracker.count({"inference"}) == 2, 10, "the closed peer's handler to end")
    assert d.server.router.outstanding == 0
    try:
        frames = await roundtrip(d.infer, req("normal"))
        assert [f["type"] for f in frames] == ["token", "token", "done"]
        assert d.server.router.outstanding == 0
        # The idle and half-line peers are still connected and still not admitted.
        assert d.server.tracker.count({"inference"}) >= 2
        # The half-line peer can still finish its line and be served.
        hold_w.write(b'er","content":"x"}]}\n')
        frames = await read_until_terminal(hold_r)
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "half-hold"
    finally:
        idle_w.close()
        hold_w.close()
    await wait_until(lambda: d.server.tracker.count({"inference"}) == 0, 10, "all handlers to end")
    assert d.server.router.outstanding == 0
