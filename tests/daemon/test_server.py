"""Hostile clients, round two (issue 8): one client must never stall, blind or evict the others.

Each test names the issue item and the THREAT_MODEL finding it pins, and says how the
code before the issue (8da2fcd) failed it. Everything runs over real Unix sockets or
loopback TCP against a daemon in this process, or against `inferd serve` as a child
process where signals or exit codes are the point; the reload-eviction test loads the
real model. Waits are for conditions and bounded; nothing sleeps to decide an order.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_harness import (
    cleanup,
    dial,
    line,
    read_json,
    read_until_terminal,
    req,
    reserved_port,
    roundtrip,
    short_tmpdir,
    start_daemon,
    tcp_exchange,
    wait_until,
)

from inferd.daemon.net import listeners
from inferd.daemon.net.listeners import MAX_ADMIN_CONNECTIONS, MAX_PENDING_AUTH, PENDING_AUTH_POOL
from inferd.daemon.net.paths import SocketPathError, ensure_private_dir, prepare_socket_path
from inferd.daemon.observe.activity import LOG_FILE_NAME, MAX_LOGGED_VALUE_BYTES, ActivityLog, redact
from inferd.daemon.server import RELOAD_EVICTED
from inferd.engine.llamacpp.sampling import StopScanner
from inferd.engine.mock import MockBackend
from inferd.proto import limits, v1
from inferd.proto.framing import MAX_FRAME_BYTES

NOBODY = 65534
KEY = "plainkey-ABCdef-0123456789"  # matches none of the redactor's patterns


def records(directory: Path) -> list[dict[str, Any]]:
    path = directory / LOG_FILE_NAME
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def spawn_serve(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "inferd.cli.main", "serve", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def serve_env(d: Path) -> dict[str, str]:
    (d / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, INFERD_LOG_DIR=str(d / "logs"), INFERD_LOG="info", XDG_RUNTIME_DIR=str(d / "run"))
    for name in ("INFERD_ADMIN_ADDR", "INFERD_CONFIG", "INFERD_API_KEY", "INFERD_TCP"):
        env.pop(name, None)
    return env


def serve_args(d: Path, cfg: Path, *extra: str) -> list[str]:
    return ["--config", str(cfg), "--uds", str(d / "infer.sock"), "--admin-addr", str(d / "admin.sock"),
            "--lock", str(d / "inferd.lock"), "--no-v2", "--no-embed", *extra]


async def admin_until(reader: asyncio.StreamReader, status: str, timeout: float = 30.0,
                      phase: str | None = None) -> list[dict[str, Any]]:
    """Admin frames up to and including the first with `status` (and `phase`, if given)."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await read_json(reader, timeout)
        assert frame is not None, f"admin EOF after {seen}"
        seen.append(frame)
        if frame["status"] == status and (phase is None or frame.get("phase") == phase):
            return seen


async def wait_for_path(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    async def exists() -> None:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
            await asyncio.sleep(0.02)

    await asyncio.wait_for(exists(), timeout)


def run_child(code: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run `code` in a fresh interpreter and return the JSON it prints. Bounded, so a
    quadratic redactor fails this in `timeout` seconds rather than after minutes."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout:g}s (redaction is not linear)")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# =============================================================================
# Item 1: the activity log (THREAT_MODEL F-3, F-4)
# =============================================================================

def test_adversarial_values_are_logged_in_linear_time_and_truncated():
    """Item 1. A 1 MiB id like "eyJ-" * 262144 made the JWT rule backtrack quadratically
    (~160 s with the event loop blocked); a 40 MiB id of plain letters cost 8 s and wrote
    a 40 MiB record. Now each value is cut to 1 KiB before redaction (the cut word goes,
    with a `…[+N bytes]` marker) and every rule is linear, also on 1 MiB unclipped text
    (what the stderr filter redacts). Old code: the child times out."""
    out = run_child("""
        import json, sys, tempfile, time, pathlib
        from inferd.daemon.observe.activity import ActivityLog, redact, LOG_FILE_NAME
        d = pathlib.Path(tempfile.mkdtemp())
        log = ActivityLog(d, level="info")
        values = {"jwt_shape": "eyJ-" * 262144, "letters": "a" * (40 << 20), "words": "word " * 100000}
        took = {}
        for name, value in values.items():
            t0 = time.perf_counter()
            log.record("info", "inference", "request_done", req_id=value)
            took[name] = time.perf_counter() - t0
        for name, text in {"redact_jwt_shape": "eyJ-" * 262144, "redact_kv": "token=" * 174763,
                           "redact_keys": "ask-" * 262144, "redact_auth": "authorization: " * 69906}.items():
            t0 = time.perf_counter()
            redact(text)
            took[name] = time.perf_counter() - t0
        log.close()
        lines = (d / LOG_FILE_NAME).read_text().splitlines()
        print(json.dumps({"took": took, "sizes": [len(x) for x in lines],
                          "ids": [json.loads(x)["req_id"] for x in lines]}))
    """)
    # A generous bound: the linear redactor needs milliseconds, the old one minutes.
    assert all(seconds < 2.0 for seconds in out["took"].values()), out["took"]
    assert all(size < 2 * MAX_LOGGED_VALUE_BYTES for size in out["sizes"]), out["sizes"]
    jwt_id, letters_id, words_id = out["ids"]
    # One unbroken word: nothing of it can be shown without showing part of it.
    assert jwt_id == f"…[+{4 * 262144} bytes]"
    assert letters_id == f"…[+{40 << 20} bytes]"
    assert words_id == "word " * 204 + "word" + f"…[+{500000 - 1024} bytes]"


def test_a_secret_cut_by_truncation_leaves_no_prefix_behind(tmp_path):
    """Item 1: a key straddling the 1 KiB cut would no longer match its rule; the whole
    word it is in is dropped instead of leaking its first half."""
    log = ActivityLog(tmp_path, level="info")
    secret = "sk-1234567890abcdefghijklmnop"
    value = "x " * 505 + secret + " tail"  # the key starts at byte 1010 and crosses 1024
    log.record("info", "activity", "m", text=value)
    log.close()
    (rec,) = records(tmp_path)
    assert "sk-" not in rec["text"] and rec["text"].startswith("x x ")
    assert rec["text"] == "x " * 505 + f"…[+{len(value) - 1010} bytes]"


async def test_daemon_api_key_is_redacted_wherever_it_appears(daemon_factory, sockdir):
    """Item 10 (F-3): the daemon's own API key is redacted from every record and stderr line
    whatever it looks like (it matches no pattern here). Old code: written in clear."""
    logs = sockdir / "logs"
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY,
                             activity=ActivityLog(logs, level="info"))
    rid = f"id-{KEY}-tail"
    frames = await tcp_exchange(port, line({"type": "auth", "key": KEY}), line(req(rid)))
    assert frames[-1]["type"] == "done" and frames[-1]["id"] == rid  # the wire is untouched
    assert redact(f"backend said {KEY}!") == "backend said [REDACTED:api-key]!"  # the stderr filter
    on_disk = (logs / LOG_FILE_NAME).read_text()
    assert KEY not in on_disk
    done = [r for r in records(logs) if r["msg"] == "request_done"]
    assert done[0]["req_id"] == "id-[REDACTED:api-key]-tail"


async def test_request_id_over_256_bytes_is_refused_and_never_echoed(daemon_factory, sockdir):
    """Item 1/5: an id over MAX_ID_BYTES (256 UTF-8 bytes) is refused with invalid_request
    naming the limit, on id "" (it is never echoed, nor logged), and the connection stays
    open; 256 bytes are fine. A 40 MiB id costs a parse, nothing more. Old code: echoed
    in every frame and written to the log whole."""
    logs = sockdir / "logs"
    d = await daemon_factory(mock={"tokens": ["ok"]}, activity=ActivityLog(logs, level="info"))
    reader, writer = await dial(d.infer)
    try:
        for rid in ("a" * 257, "é" * 129, "x" * (40 << 20)):
            writer.write(line(req(rid)))
            (frame,) = await read_until_terminal(reader, 30)
            assert frame["type"] == "error" and frame["id"] == "" and frame["code"] == "invalid_request"
            assert "256" in frame["message"] and "MAX_ID_BYTES" in frame["message"]
        for rid in ("b" * 256, "é" * 128):
            writer.write(line(req(rid)))
            frames = await read_until_terminal(reader)
            assert frames[-1]["type"] == "done" and frames[-1]["id"] == rid
    finally:
        writer.close()
    assert (logs / LOG_FILE_NAME).stat().st_size < 64 * 1024


# =============================================================================
# Item 3: per-surface connection budgets (F-1, F-8, F-17)
# =============================================================================

@pytest.mark.parametrize("keyed", [True, False], ids=["api-key", "no-key"])
async def test_owner_is_served_on_unix_while_300_silent_tcp_peers_connect(daemon_factory, keyed):
    """Item 3: 300 TCP peers that connect and say nothing. With an API key at most 16 wait
    to authenticate and the rest are closed at once; without one they fill the TCP pool
    (256). Either way they never count against the Unix socket: the owner is served.
    Old code: they filled the daemon-wide 256 and the owner's request got EOF."""
    with reserved_port() as port:
        d = await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}",
                                 api_key="k-0123456789" if keyed else None)
    tracker = d.server.tracker
    peers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    reads = [asyncio.create_task(r.read()) for r, _ in peers]
    try:
        kept = MAX_PENDING_AUTH if keyed else 256
        await wait_until(lambda: sum(t.done() for t in reads) == 300 - kept, 30, "the excess peers to be closed")
        assert all(t.result() == b"" for t in reads if t.done())  # closed without a byte
        pool = PENDING_AUTH_POOL if keyed else "inference:tcp"
        assert tracker.in_pool(pool) == kept and tracker.in_pool("inference:local") == 0
        frames = await roundtrip(d.infer, req("owner"))
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "owner"
    finally:
        for t in reads:
            t.cancel()
        for _, w in peers:
            w.close()
    await wait_until(lambda: tracker.count() == 0, 15, "every peer's handler to end")
    if keyed:  # with the silent peers gone, the owner authenticates over TCP as before
        frames = await tcp_exchange(port, line({"type": "auth", "key": "k-0123456789"}), line(req("tcp")))
        assert frames[-1]["type"] == "done"


async def test_admin_subscribers_are_capped_on_their_own(daemon_factory):
    """Item 3: the admin socket takes 64 subscribers and closes the 65th at once; they do not
    count against the inference budget (here 3). Old code: admin uncapped, and its
    subscribers made the inference socket refuse the owner."""
    d = await daemon_factory(mock={"tokens": ["ok"]}, max_connections=3)
    subs = [await dial(d.admin) for _ in range(MAX_ADMIN_CONNECTIONS)]
    try:
        for r, _ in subs:  # each one is subscribed: it got its capabilities and the snapshot
            assert [(await read_json(r))["status"] for _ in range(2)] == ["capabilities", "ready"]
        extra_r, extra_w = await dial(d.admin)
        assert await asyncio.wait_for(extra_r.read(), 10) == b""
        extra_w.close()
        frames = await roundtrip(d.infer, req("owner"))
        assert frames[-1]["type"] == "done"
    finally:
        for _, w in subs:
            w.close()


# =============================================================================
# Item 4 and 10: the TCP first frame (F-8)
# =============================================================================

async def test_auth_line_is_capped_at_4_KiB(daemon_factory, monkeypatch):
    """Item 4: the line before authentication may be MAX_AUTH_FRAME_BYTES (4096) bytes; a
    longer one is refused as soon as it is longer, not after buffering 64 MiB or waiting
    out the auth timeout (60 s here). An auth line of exactly 4096 bytes works. Old code:
    read up to 64 MiB and parsed it on the loop; here it waited for the timeout."""
    monkeypatch.setattr(listeners, "AUTH_TIMEOUT_SECS", 60.0)
    key = "k" * (limits.MAX_AUTH_FRAME_BYTES - len('{"type":"auth","key":""}'))
    auth = json.dumps({"type": "auth", "key": key}, separators=(",", ":")).encode()
    assert len(auth) == limits.MAX_AUTH_FRAME_BYTES
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=key)
    ok = await tcp_exchange(port, auth + b"\n", line(req("at-cap")))
    assert ok[-1]["type"] == "done"
    # A big request pipelined right behind the auth line is read with the normal limits.
    ok = await tcp_exchange(port, auth + b"\n", line(req("big", content="y" * (1 << 20))))
    assert ok[-1]["type"] == "done" and ok[-1]["id"] == "big"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b'{"type":"auth","key":"' + b"k" * 8192)  # no newline: still "the first line"
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        pass  # closed with our bytes unread: a reset is a close too
    finally:
        writer.close()


async def test_bom_prefixed_auth_line_is_refused(daemon_factory):
    """Item 10: `\\ufeff{"type":"auth",...}` is not the auth frame (json.loads on bytes
    skipped the BOM). Old code: accepted and served."""
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY)
    frames = await tcp_exchange(port, b"\xef\xbb\xbf" + line({"type": "auth", "key": KEY}), line(req("bom")))
    assert frames == []
    frames = await tcp_exchange(port, line({"type": "auth", "key": KEY}), line(req("plain")))
    assert frames[-1]["type"] == "done"


async def test_lone_surrogate_key_is_refused_and_logged_without_a_traceback(daemon_factory, sockdir, caplog):
    """Item 10: a key "\\ud800" could not be encoded for the comparison: the handler died with
    a traceback and no `auth_refused` record. Now it is an ordinary wrong key."""
    caplog.set_level(logging.WARNING)
    logs = sockdir / "logs"
    with reserved_port() as port:
        await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", api_key=KEY,
                             activity=ActivityLog(logs, level="info"))
    frames = await tcp_exchange(port, b'{"type":"auth","key":"\\ud800"}\n', line(req("s")))
    assert frames == []
    await wait_until(lambda: any(r["msg"] == "auth_refused" for r in records(logs)), 10, "auth_refused")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# =============================================================================
# Item 5: what a request may multiply (F-1, F-11)
# =============================================================================

def _image(att_id: str) -> dict[str, Any]:
    return {"kind": "image", "id": att_id, "width": 1, "height": 1, "bytes": "AAAA"}


def _v2(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "v2", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    body.update(extra)
    return body


def _tool(name: str, schema: Any = None) -> dict[str, Any]:
    return {"name": name, "description": "d", "input_schema": schema or {"type": "object"}}


BIG_SCHEMA = {"type": "object", "description": "s" * limits.MAX_SCHEMA_BYTES}
LIMIT_CASES = [
    # (surface, request over the limit, the limit's name, the same request at the limit)
    ("v1", req("m", messages=[{"role": "user", "content": "a"}] * 4097), "MAX_MESSAGES",
     req("m", messages=[{"role": "user", "content": "a"}] * 4096)),
    ("v1", req("s", stop=[f"s{i}" for i in range(17)]), "MAX_STOP_STRINGS", req("s", stop=[f"s{i}" for i in range(16)])),
    ("v1", req("b", stop=["é" * 129]), "MAX_STOP_BYTES", req("b", stop=["é" * 128])),
    ("v1", req("g", grammar="x" * 65537), "MAX_GRAMMAR_BYTES", None),
    ("v1", req("r", response_format={"type": "json_schema", "schema": BIG_SCHEMA}), "MAX_SCHEMA_BYTES", None),
    ("v2", _v2(tools=[_tool(f"t{i}") for i in range(129)]), "MAX_TOOLS", _v2(tools=[_tool(f"t{i}") for i in range(128)])),
    ("v2", _v2(tools=[_tool("big", BIG_SCHEMA)]), "MAX_SCHEMA_BYTES", None),
    ("v2", _v2(attachments=[_image(f"a{i}") for i in range(101)]), "MAX_ATTACHMENTS",
     _v2(attachments=[_image(f"a{i}") for i in range(100)])),
    ("v2", _v2(stop=["x"] * 17), "MAX_STOP_STRINGS", None),
    ("embed", {"id": "e", "input": ["x"] * 2048, "dimensions": 4096}, "MAX_EMBED_VALUES",
     {"id": "e", "input": ["x"] * 2, "dimensions": 4096}),
]


@pytest.fixture
async def three_surfaces(daemon_factory, sockdir):
    return await daemon_factory(mock={"tokens": ["ok"]}, v2=True, v2_addr=str(sockdir / "v2.sock"))


@pytest.mark.parametrize(("surface", "over", "name", "at"), LIMIT_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(LIMIT_CASES)])
async def test_each_limit_is_refused_by_name_and_the_connection_stays_open(
        three_surfaces, monkeypatch, surface, over, name, at):
    """Item 5/6: every limit of proto/limits.py is an invalid_request naming it, on the
    request's id, before any backend work; the connection stays open. Old code: none of
    these limits existed (the embed one computed 8M floats, then crashed the handler)."""
    d = three_surfaces
    path = {"v1": d.infer, "v2": str(d.dir / "v2.sock"), "embed": d.embed}[surface]
    embedded: list[int] = []
    real_embed = MockBackend.embed

    async def spy(self: MockBackend, request: Any) -> Any:
        embedded.append(len(request.input))
        return await real_embed(self, request)

    monkeypatch.setattr(MockBackend, "embed", spy)
    reader, writer = await dial(path, limit=16 << 20)
    try:
        writer.write(line(over))
        (frame,) = await read_until_terminal(reader, 30)
        assert frame["type"] == "error" and frame["code"] == "invalid_request" and frame["id"] == over["id"]
        assert name in frame["message"], frame
        assert embedded == []
        follow = at or ({"id": "after", "input": ["x"]} if surface == "embed" else
                        _v2() if surface == "v2" else req("after"))
        writer.write(line(follow))
        frames = await read_until_terminal(reader, 30)
        assert frames[-1]["type"] in ("done", "embeddings"), frames[-1]
    finally:
        writer.close()


async def test_a_line_of_two_million_messages_is_refused_before_it_is_parsed(daemon_factory, monkeypatch):
    """Item 5: a 64 MiB line of one-letter messages parsed for ~17 s with every client
    stalled (bench/stall.py). It is refused before the parser sees it: MAX_JSON_VALUES,
    id "" (unknown), connection open. The parser spy proves the order. Old code: parsed,
    then served two million messages."""
    d = await daemon_factory(mock={"tokens": ["ok"]})
    parsed: list[int] = []
    real = v1.Request.model_validate_json

    def spy(data: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(v1.Request, "model_validate_json", spy)
    one = b'{"role":"user","content":"a"},'
    n = (MAX_FRAME_BYTES - 1024) // len(one)
    big = b'{"id":"big","messages":[' + one * (n - 1) + one[:-1] + b"]}\n"
    assert len(big) < MAX_FRAME_BYTES
    reader, writer = await dial(d.infer)
    try:
        writer.write(big)
        small = line(req("after"))
        writer.write(small)
        (frame,) = await read_until_terminal(reader, 60)
        assert frame == {"type": "error", "id": "", "code": "invalid_request", "message": frame["message"]}
        assert "MAX_JSON_VALUES" in frame["message"]
        frames = await read_until_terminal(reader, 30)
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "after"
    finally:
        writer.close()
    assert parsed == [len(small) - 1]


def _naive_stop_scan(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    """The scan StopScanner replaced, as the reference: earliest stop wins, the held tail
    is the longest suffix that is a proper prefix of some stop."""
    stops = [s for s in stops if s]
    pending, out = "", []
    for chunk in chunks:
        pending += chunk
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            out.append(pending[:min(hits)])
            return "".join(out), True
        hold = max((k for s in stops for k in range(1, min(len(s) - 1, len(pending)) + 1)
                    if pending.endswith(s[:k])), default=0)
        out.append(pending[:len(pending) - hold])
        pending = pending[len(pending) - hold:]
    return "".join(out) + pending, False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stops=st.lists(st.text(alphabet="abc", max_size=6), max_size=6),
       chunks=st.lists(st.text(alphabet="abcd", max_size=5), max_size=12))
def test_stop_scanner_cuts_exactly_where_the_naive_scan_did(stops, chunks):
    """Item 5: the Aho-Corasick StopScanner (O(1) amortised per character, whatever the
    number of stops; 1,000 stops cost the old scan 3.7 ms a token) gives the same text
    and the same verdict as the scan it replaced, for any stops and any chunking."""
    scanner = StopScanner(stops)
    emitted, hit = [], False
    for chunk in chunks:
        text, hit = scanner.push(chunk)
        emitted.append(text)
        if hit:
            break
    if not hit:
        emitted.append(scanner.flush())
    assert ("".join(emitted), hit) == _naive_stop_scan(stops, chunks)


async def test_mock_honours_max_tokens_and_stop_over_the_socket(daemon_factory):
    """Item 10: the mock counts each text step as a token and cuts at a stop string, as a
    model would (the stop itself is not sent). Old code: it ignored both."""
    d = await daemon_factory(mock={"tokens": ["ab", "c", "ST", "OP", "d"]})
    frames = await roundtrip(d.infer, req("len", max_tokens=2))
    assert [f["content"] for f in frames[:-1]] == ["ab", "c"]
    done = frames[-1]
    assert done["content"] == "abc" and done["stop_reason"] == "length" and done["usage"]["completion_tokens"] == 2
    done = (await roundtrip(d.infer, req("stop", stop=["ST"])))[-1]
    assert done["content"] == "abc" and done["stop_reason"] == "end"
    done = (await roundtrip(d.infer, req("inside", stop=["zz", "b"])))[-1]
    assert done["content"] == "a" and done["stop_reason"] == "end"
    done = (await roundtrip(d.infer, req("none", stop=["never"])))[-1]
    assert done["content"] == "abcSTOPd" and done["stop_reason"] == "end"


# =============================================================================
# Item 6: replies over the cap
# =============================================================================

async def test_a_reply_over_the_frame_cap_ends_with_an_error_frame(daemon_factory):
    """Item 6: a `done` frame that would exceed 64 MiB (65 one-MiB tokens, stream false)
    made encode_frame raise: EOF, no error frame, a traceback. Now the request ends with
    frame_too_large on its id and the connection serves the next request."""
    d = await daemon_factory(mock={"tokens": ["x" * (1 << 20)] * 65})
    reader, writer = await dial(d.infer, limit=4 << 20)
    try:
        writer.write(line(req("huge", stream=False)))
        (frame,) = await read_until_terminal(reader, 60)
        assert frame["type"] == "error" and frame["id"] == "huge" and frame["code"] == "frame_too_large"
        assert str(MAX_FRAME_BYTES) in frame["message"]
        writer.write(line(req("small", stream=False, max_tokens=1)))
        (done,) = await read_until_terminal(reader, 60)
        assert done["type"] == "done" and done["id"] == "small" and len(done["content"]) == 1 << 20
    finally:
        writer.close()
    assert d.server.router.outstanding == 0


# =============================================================================
# Item 2 and 7: reload (F-8, F-13)
# =============================================================================

def write_mock_config(path: Path, **entry: Any) -> Path:
    path.write_text(json.dumps({"backends": [{"kind": "mock", "name": "mock", **entry}]}))
    return path


async def test_tcp_port_is_never_unbound_across_a_reload(sockdir):
    """Item 2 (F-8): while a SIGHUP reload loads the new backend, another local user trying
    to bind the TCP port (SO_REUSEADDR, the strongest attempt) must fail every time, and
    the port serves the new model afterwards. Old code: the listeners were closed during
    the reload, so the racer got the port and with it the owner's next auth frame."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    with reserved_port() as port:
        d = await start_daemon(sockdir, config=str(cfg), tcp=f"127.0.0.1:{port}")
    try:
        admin_r, admin_w = await dial(d.admin)
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=1500)
        d.server.request_reload()
        # The new backend's load phase: before issue 8 the sockets were closed by now.
        await admin_until(admin_r, "restarting", phase="checking_local")
        await admin_until(admin_r, "restarting", phase="checking_local")
        attempts = 0
        ready = asyncio.ensure_future(admin_until(admin_r, "ready"))
        try:
            while not ready.done():
                racer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                racer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    with pytest.raises(OSError) as err:
                        racer.bind(("127.0.0.1", port))
                    assert err.value.errno == errno.EADDRINUSE
                finally:
                    racer.close()
                attempts += 1
                await asyncio.sleep(0.01)
            assert "reload_error" not in ready.result()[-1]
        finally:
            ready.cancel()
        assert attempts >= 10, attempts  # the racer really ran during the reload
        frames = await tcp_exchange(port, line(req("after")))
        assert frames[-1]["content"] == "new"
        admin_w.close()
    finally:
        await d.stop()


async def test_reload_to_a_backend_that_never_becomes_ready_keeps_the_old_one(sockdir):
    """Item 7 (F-13): a new backend not ready within --ready-timeout-secs is stopped and the
    previous config serves again; `ready` carries reload_error. Old code: exit 1."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    d = await start_daemon(sockdir, config=str(cfg), ready_timeout_secs=0.5)
    try:
        admin_r, admin_w = await dial(d.admin)
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=600_000)
        d.server.request_reload()
        ready = (await admin_until(admin_r, "ready", timeout=30))[-1]
        assert "not ready within 0.5s" in ready["reload_error"], ready
        assert not d.task.done()
        assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "old"
        admin_w.close()
    finally:
        assert await d.stop() == 0


async def test_sigterm_during_a_slow_reload_exits_promptly_with_0(sockdir):
    """Item 7: SIGTERM abandons a reload in progress (here a backend that takes 10 minutes
    to get ready, with --ready-timeout-secs 900) and drains at once: exit 0 within seconds.
    Old code: the drain waited for the whole reload, past any service manager's stop timeout."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    proc = spawn_serve(serve_env(sockdir), *serve_args(sockdir, cfg, "--ready-timeout-secs", "900"))
    try:
        await wait_for_path(sockdir / "infer.sock", proc)
        admin_r, admin_w = await dial(str(sockdir / "admin.sock"))
        await admin_until(admin_r, "ready")
        write_mock_config(cfg, tokens=["new"], ready_delay_ms=600_000)
        proc.send_signal(signal.SIGHUP)
        await admin_until(admin_r, "restarting", phase="checking_local")
        await admin_until(admin_r, "restarting", phase="checking_local")  # the new backend is loading
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else rc
        assert not (sockdir / "infer.sock").exists()
        admin_w.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _GatedBodies:
    """Wraps a fake Hub handler's wfile: the first body write (after the headers) waits
    for `gate`, so a download is in progress for as long as the test wants."""

    def __init__(self, raw: Any, gate: threading.Event) -> None:
        self._raw = raw
        self._gate = gate
        self._writes = 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes == 2:
            assert self._gate.wait(60), "the test never opened the download gate"
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


async def test_requests_during_a_reload_download_are_served_by_the_old_model(sockdir, monkeypatch):
    """Item 7: a reload downloads and verifies its model while the old one serves. The
    download is held open by the test; requests sent meanwhile complete on the old model
    (the new file is no GGUF, so afterwards the old config comes back with reload_error).
    Old code: sockets closed for the whole download, every request refused."""
    import fake_hub

    gate = threading.Event()
    real_handler = fake_hub._handler

    def gated_handler(hub: Any) -> Any:
        base = real_handler(hub)

        class Gated(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.wfile = _GatedBodies(self.wfile, gate)

        return Gated

    monkeypatch.setattr(fake_hub, "_handler", gated_handler)
    blob = sockdir / "not-a-model.gguf"
    blob.write_bytes(b"GGUF-but-not-really" * 1000)
    cfg = write_mock_config(sockdir / "config.json", tokens=["old"])
    d = await start_daemon(sockdir, config=str(cfg))
    try:
        with fake_hub.serving_hub() as hub:
            hub.add(blob, repo="acme/tiny-GGUF", filename="tiny.gguf")
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            cfg.write_text(json.dumps({"models_home": str(sockdir / "models"), "backends": [{
                "kind": "llamacpp", "name": "tiny", "n_ctx": 256,
                "model": {"name": "tiny", "repo": "acme/tiny-GGUF", "filename": "tiny.gguf",
                          "sha256": hub.sha_of(blob)}}]}))
            admin_r, admin_w = await dial(d.admin)
            await admin_until(admin_r, "ready")
            d.server.request_reload()
            await admin_until(admin_r, "restarting", phase="download")
            for i in range(3):  # the download is still held: the old model answers
                frames = await roundtrip(d.infer, req(f"during-{i}"))
                assert frames[-1]["type"] == "done" and frames[-1]["content"] == "old"
            assert not gate.is_set()
            gate.set()
            ready = (await admin_until(admin_r, "ready", timeout=60))[-1]
            assert "serving the previous model again" in ready.get("reload_error", ""), ready
            assert (await roundtrip(d.infer, req("after")))[-1]["content"] == "old"
            admin_w.close()
    finally:
        gate.set()
        await d.stop()


@pytest.fixture
async def model_daemon(model_path):
    d = short_tmpdir()
    daemon = await start_daemon(d, backend="llamacpp", model_path=model_path, n_ctx=512, n_threads=2,
                                parallel=1, drain_timeout_secs=0.5, boot_timeout=120)
    yield daemon
    try:
        assert await daemon.stop(60) == 0
    finally:
        cleanup(d)


# A grammar the model can never finish (no accepting state), so the generation runs until
# it is stopped, whatever the model would rather say.
ENDLESS = 'root ::= "a" root'


async def test_reload_past_the_drain_deadline_cancels_and_frees_the_old_model(model_daemon, caplog):
    """Item 7 (real model): a generation still running on the old model when the reload's
    drain deadline (0.5 s) passes is cancelled: its client gets one error frame saying so
    and keeps its connection, which the new model then serves; the old model is freed
    (closed cleanly), not left loaded beside the new one. Old code: the connection was
    aborted without a frame."""
    caplog.set_level(logging.WARNING)
    d = model_daemon
    old = d.server.router.entries[0].backend
    reader, writer = await dial(d.infer)
    try:
        writer.write(line(req("long", content="Say a.", grammar=ENDLESS, max_tokens=100_000, temperature=0)))
        first = await read_json(reader, 120)
        assert first is not None and first["type"] == "token"
        d.server.request_reload()
        frames = [first] + await read_until_terminal(reader, 120)
        end = frames[-1]
        assert end == {"type": "error", "id": "long", "code": "backend_unavailable", "message": RELOAD_EVICTED}
        await wait_until(lambda: d.server.router.entries[0].backend is not old
                         and d.server.router.entries[0].backend.ready(), 120, "the new model")
        # Freed: close() found its worker idle (else it logs "model left loaded").
        assert old._model is None, [r.getMessage() for r in caplog.records]
        writer.write(line(req("next", content="Hi", max_tokens=3, temperature=0)))
        frames = await read_until_terminal(reader, 120)
        assert frames[-1]["type"] == "done" and frames[-1]["id"] == "next"
    finally:
        writer.close()


# =============================================================================
# Item 8 and 10: the socket directory (F-2)
# =============================================================================

def test_parents_are_created_0700_even_under_umask_000(tmp_path):
    """Item 8: every directory ensure_private_dir creates is 0700, not only the last one.
    Old code: makedirs left the parents 0777 under umask 000."""
    old = os.umask(0)
    try:
        prepare_socket_path(tmp_path / "a" / "b" / "c" / "infer.sock")
    finally:
        os.umask(old)
    for part in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(os.lstat(part).st_mode) == 0o700, part


def test_a_socket_dir_symlink_planted_by_another_user_is_refused(tmp_path):
    """Item 8 (F-2): the check uses lstat. A symlink owned by another user, pointing at a
    directory of ours, used to pass (stat followed it to our directory). A symlink we
    made ourselves is ours to make and is judged by where it leads."""
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.symlink_to(ours)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(SocketPathError, match="symlink owned by uid 65534"):
        prepare_socket_path(planted / "infer.sock")
    mine = tmp_path / "mine"
    mine.symlink_to(ours)
    ensure_private_dir(mine)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    link = tmp_path / "link-to-foreign"
    link.symlink_to(foreign)
    with pytest.raises(SocketPathError, match="owned by uid 65534"):
        ensure_private_dir(link)


async def test_foreign_owned_socket_dir_is_a_boot_error_with_a_record(tmp_path):
    """Item 10: a socket directory owned by another user stops the boot like every other
    boot error: exit 1 and a `boot_failed` record. Old code: the SocketPathError escaped
    the boot (exit 2, a traceback, no record)."""
    d = short_tmpdir()
    try:
        run_dir = d / "run" / "inferd"
        run_dir.mkdir(parents=True, mode=0o700)
        os.chown(run_dir, NOBODY, NOBODY)
        cfg = write_mock_config(d / "config.json", tokens=["x"])
        proc = spawn_serve(serve_env(d), "--config", str(cfg), "--no-v2", "--no-embed")
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert rc == 1, stderr
        assert "Traceback" not in stderr, stderr
        failed = [r for r in records(d / "logs") if r["msg"] == "boot_failed"]
        assert len(failed) == 1 and "owned by uid 65534" in failed[0]["reason"], records(d / "logs")
    finally:
        cleanup(d)


# =============================================================================
# Item 9 and 10: listen backlog, ports, signals
# =============================================================================

def _burst(family: int, address: Any, n: int) -> tuple[list[socket.socket], int]:
    """`n` non-blocking connects in a row, without yielding to the daemon's event loop (so
    it accepts none of them meanwhile). Returns the sockets and how many were refused."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(address)
        if err in (0, errno.EINPROGRESS):
            socks.append(s)
        else:
            refused += 1
            s.close()
    return socks, refused


def _completed(socks: list[socket.socket], timeout: float) -> int:
    """How many of `socks` finished connecting within `timeout` (the loop is not run)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    done, pending = 0, len(socks)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, end - time.monotonic())):
            sel.unregister(key.fileobj)
            pending -= 1
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                done += 1
    sel.close()
    return done


async def test_a_burst_of_1000_connects_is_queued_not_refused(daemon_factory):
    """Item 9: 1,000 non-blocking connects in a row while the daemon accepts none of them
    (the test holds the event loop). The listen backlog (1024) queues them all, on the Unix
    socket and on TCP. Old code: Python's default backlog of 100 refused ~900 with EAGAIN."""
    with reserved_port() as port:
        d = await daemon_factory(mock={"tokens": ["ok"]}, tcp=f"127.0.0.1:{port}", max_connections=0)
    unix, refused = _burst(socket.AF_UNIX, d.infer, 1000)
    try:
        assert refused == 0 and len(unix) == 1000
    finally:
        for s in unix:
            s.close()
    await wait_until(lambda: d.server.tracker.count() == 0, 30, "the burst's handlers to end")
    tcp, refused = _burst(socket.AF_INET, ("127.0.0.1", port), 1000)
    try:
        assert refused == 0 and _completed(tcp, 2.0) == 1000
    finally:
        for s in tcp:
            s.close()
    await wait_until(lambda: d.server.tracker.count() == 0, 30, "the burst's handlers to end")
    assert (await roundtrip(d.infer, req("after")))[-1]["type"] == "done"


async def test_a_tcp_port_out_of_range_is_a_boot_error(sockdir):
    """Item 10: `--tcp 127.0.0.1:99999` used to listen on 99999 mod 65536 (34463). Now
    the boot fails (exit 1) naming the range."""
    d = await start_daemon(sockdir, wait_ready=False, mock={"tokens": ["x"]}, tcp="127.0.0.1:99999")
    assert await asyncio.wait_for(d.task, 30) == 1


async def test_a_second_sigterm_exits_at_once_with_143(sockdir):
    """Item 10: SIGTERM starts a drain that would wait (a slow request, --drain-timeout-secs
    600); a second SIGTERM ends the process at once with 128 + 15."""
    cfg = write_mock_config(sockdir / "config.json", tokens=["t"] * 1000, token_delay_ms=100)
    proc = spawn_serve(serve_env(sockdir), *serve_args(sockdir, cfg, "--drain-timeout-secs", "600"))
    try:
        await wait_for_path(sockdir / "infer.sock", proc)
        reader, writer = await dial(str(sockdir / "infer.sock"))
        writer.write(line(req("slow")))
        assert (await read_json(reader, 30))["type"] == "token"  # the request is in flight
        admin_r, admin_w = await dial(str(sockdir / "admin.sock"))
        await admin_until(admin_r, "ready")
        proc.send_signal(signal.SIGTERM)
        await admin_until(admin_r, "draining")
        assert proc.poll() is None  # the drain waits for the slow request
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        assert rc == 128 + signal.SIGTERM
        writer.close()
        admin_w.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
