"""The daemon survives its engine (ADR 0025): llama.cpp runs in a runner process that
the tests make fault at a chosen point (INFERD_TEST_RUNNER_FAULT, read by the runner
only). The daemon stays up, says what happened, and serves again by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from daemon_harness import dial, read_until_terminal, req, roundtrip, wait_until
from inferd.engine.llamacpp.settings import LlamaCppSettings

FAULT = "INFERD_TEST_RUNNER_FAULT"
RUNNER = "inferd.engine.llamacpp.runner"


def runner_pids() -> set[int]:
    """Runner processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if RUNNER.encode() in cmdline and ppid == os.getpid():
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_runner_left_behind():
    before = runner_pids()
    yield
    assert runner_pids() - before == set(), "a runner outlived its daemon"


class Admin:
    """An admin subscription that keeps every frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.frames = reader, writer, []
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, path: str) -> "Admin":
        return cls(*await dial(path))

    async def _read(self) -> None:
        while line := await self.reader.readline():
            self.frames.append(json.loads(line))

    def statuses(self) -> list[str]:
        return [f["status"] if f["status"] != "restarting" else f"restarting:{f.get('reason')}" for f in self.frames
                if f["status"] in ("ready", "restarting", "backend_state")]

    async def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        await wait_until(lambda: any(predicate(f) for f in self.frames), timeout)
        return next(f for f in self.frames if predicate(f))

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def serve(daemon_factory, model_path, monkeypatch, fault: str, **opts):
    monkeypatch.setenv(FAULT, fault)
    opts.setdefault("n_ctx", 512)
    return await daemon_factory(backend="llamacpp", model_path=model_path, n_threads=2, **opts)


def crash_frames(frames: list[dict]) -> tuple[str, dict]:
    text = "".join(f["content"] for f in frames if f["type"] == "token")
    return text, frames[-1]


async def test_a_crash_mid_decode_ends_the_streams_with_its_cause_and_the_queue_is_served(
        daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "decode:3@CRASH", parallel=2, queue_depth=4)
    admin = await Admin.open(d.admin)
    pid = d.server.router.entries[0].backend.pid
    # Two streams decoding together (the second one the fault's trigger), a third queued.
    backend = d.server.router.entries[0].backend
    clients = [await dial(d.infer) for _ in range(3)]
    prompts = ["Write a long story about the sea.", "Please CRASH now.", "Say hello."]
    for (_, w), (i, text) in zip(clients, enumerate(prompts)):
        w.write(json.dumps(req(f"r{i}", text, temperature=0, max_tokens=200)).encode() + b"\n")
        await w.drain()
        if i == 0:
            await wait_until(lambda: len(backend.running_sequences()) == 1, 30)
    results = [await read_until_terminal(r, timeout=60) for r, _ in clients]
    other, crashed, queued = results
    for frames in (crashed, other):
        text, last = crash_frames(frames)
        assert last["type"] == "error", frames
        assert (last["code"], last["message"]) == ("backend_unavailable", "engine crashed: SIGSEGV")
    assert crash_frames(crashed)[0] != "", "the partial output came before the error"
    assert queued[-1]["type"] == "done" and queued[-1]["content"], queued
    # The admin channel said so, in order; the new runner is another process.
    restarting = await admin.wait_for(lambda f: f["status"] == "restarting")
    assert (restarting["phase"], restarting["backend"], restarting["reason"], restarting["attempt"]) == (
        "runner_restart", "llamacpp", "engine crashed: SIGSEGV", 1)
    assert admin.statuses()[-2:] == ["restarting:engine crashed: SIGSEGV", "ready"]
    assert backend.pid != pid
    crash = backend.capabilities().runner.last_crash
    assert crash.reason == "engine crashed: SIGSEGV" and set(crash.requests) == {"r0", "r1"}
    assert crash.uptime_secs > 0
    # No socket closed: a new connection on the same path is served.
    again = await roundtrip(d.infer, req("after", "Say hi.", temperature=0, max_tokens=4), timeout=60)
    assert again[-1]["type"] == "done"
    admin.close()
    for _, w in clients:
        w.close()


async def test_a_crash_in_prefill_ends_the_request_before_any_output(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "prefill@CRASH")
    frames = await roundtrip(d.infer, req("p", "CRASH in prefill", max_tokens=8), timeout=60)
    assert len(frames) == 1 and frames[0]["type"] == "error"
    assert frames[0]["message"] == "engine crashed: SIGSEGV"
    served = await roundtrip(d.infer, req("q", "Say hi.", temperature=0, max_tokens=4), timeout=60)
    assert served[-1]["type"] == "done"


async def test_a_crash_during_an_embed_and_a_runner_killed_from_outside(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "embed/default", llamacpp_embed=True)
    backend = d.server.router.entries[0].backend
    reply = await roundtrip(d.embed, {"id": "e", "input": ["a cat"]}, timeout=60)
    assert reply[-1]["type"] == "error" and reply[-1]["message"] == "engine crashed: SIGSEGV"
    # Nothing served yet when it crashed: the safe profile, where embedding works.
    reply = await roundtrip(d.embed, {"id": "e2", "input": ["a cat"]}, timeout=60)
    assert reply[-1]["type"] == "embeddings" and len(reply[-1]["embeddings"][0]) > 0
    assert backend.capabilities().runner.profile == "safe"
    pid = backend.pid
    os.kill(pid, 9)  # a runner killed from outside (the OOM killer) is a crash too
    await wait_until(lambda: backend.capabilities().runner.last_crash.reason == "engine crashed: SIGKILL", 30)


async def test_the_safe_profile_engages_when_the_default_crashes_at_load(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "load/default")
    caps = d.server.router.entries[0].backend.capabilities()
    assert caps.runner.profile == "safe" and caps.amx in ("off", "absent")
    admin = await Admin.open(d.admin)
    frame = await admin.wait_for(lambda f: f["status"] == "capabilities")
    assert frame["runner"]["profile"] == "safe"
    frames = await roundtrip(d.infer, req("s", "Say hi.", temperature=0, max_tokens=4), timeout=60)
    assert frames[-1]["type"] == "done"
    admin.close()


async def test_a_second_crash_soon_after_a_restart_goes_safe_then_failed_and_the_daemon_stays_up(
        daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "decode:1@CRASH")
    admin = await Admin.open(d.admin)
    backend = d.server.router.entries[0].backend
    assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"
    # Served before: the first crash restarts in the default profile.
    await roundtrip(d.infer, req("c1", "CRASH one", max_tokens=8), timeout=60)
    await wait_until(lambda: backend.capabilities().runner.state == "ready", 60)
    assert backend.capabilities().runner.profile == "default"
    # Soon after that restart: the safe profile.
    await roundtrip(d.infer, req("c2", "CRASH two", max_tokens=8), timeout=60)
    await wait_until(lambda: backend.capabilities().runner.state == "ready", 60)
    assert backend.capabilities().runner.profile == "safe"
    # The safe profile crashes before serving anything: failed, with the reason.
    await roundtrip(d.infer, req("c3", "CRASH three", max_tokens=8), timeout=60)
    await admin.wait_for(lambda f: f["status"] == "backend_state" and f["state"] == "failed")
    assert not backend.ready()
    refused = await roundtrip(d.infer, req("late", "Say hi.", max_tokens=2), timeout=30)
    assert refused[-1]["type"] == "error" and refused[-1]["code"] == "backend_unavailable"
    # The admin socket is still there, and it replays the failure.
    later = await Admin.open(d.admin)
    caps = await later.wait_for(lambda f: f["status"] == "capabilities")
    assert caps["state"] == "failed" and "safe profiles" in caps["reason"]
    admin.close()
    later.close()


async def test_a_request_in_flight_in_two_crashes_is_refused_after(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "decode:1@POISON")
    backend = d.server.router.entries[0].backend
    poison = req("p", "POISON pill", max_tokens=8)
    for _ in range(2):
        assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"
        assert (await roundtrip(d.infer, poison, timeout=60))[-1]["message"] == "engine crashed: SIGSEGV"
        await wait_until(lambda: backend.capabilities().runner.state == "ready", 60)
    third = await roundtrip(d.infer, poison, timeout=30)
    assert third[-1]["code"] == "invalid_request" and "in flight in 2 engine crashes" in third[-1]["message"]
    assert backend.capabilities().runner.restarts == 2
    # Everyone else is still served.
    assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"


async def test_a_hung_decode_is_ended_by_the_watchdog(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "hang:2@HANG", watchdog_secs=1.5)
    backend = d.server.router.entries[0].backend
    frames = await roundtrip(d.infer, req("h", "HANG here", temperature=0, max_tokens=16), timeout=60)
    assert frames[-1]["type"] == "error" and frames[-1]["message"] == "engine hung: no decode step for 1.5 s"
    assert any(f["type"] == "token" for f in frames)
    await wait_until(lambda: backend.capabilities().runner.state == "ready", 60)
    assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"


async def test_sigterm_while_the_runner_restarts_exits_cleanly(daemon_factory, model_path, monkeypatch):
    d = await serve(daemon_factory, model_path, monkeypatch, "")
    backend = d.server.router.entries[0].backend
    assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"
    monkeypatch.setenv(FAULT, "load")  # from now on every runner dies while loading
    backend._proc.proc.kill()  # noqa: SLF001
    await wait_until(lambda: backend.capabilities().runner.state == "restarting", 30)
    assert await d.stop(30) == 0
    assert backend.capabilities().runner.state == "failed"  # stopped, not serving


async def test_a_client_leaving_cancels_across_the_channel(daemon_factory, model_path, monkeypatch):
    """The runner is told to cancel: its slot frees at once, not after the 400 tokens."""
    d = await serve(daemon_factory, model_path, monkeypatch, "")
    backend = d.server.router.entries[0].backend
    reader, writer = await dial(d.infer)
    writer.write(json.dumps(req("long", "Write a long story about the sea.", temperature=0, max_tokens=400)).encode()
                 + b"\n")
    for _ in range(2):
        assert json.loads(await asyncio.wait_for(reader.readline(), 60))["type"] == "token"
    assert len(backend.running_sequences()) == 1
    # The frame interval this machine gets by default (ADR 0035 addendum 4), shown.
    assert backend.capabilities().frame_interval_ms == LlamaCppSettings(model_path="x", n_threads=2).frame_interval()
    writer.close()
    await wait_until(lambda: backend.running_sequences() == [], 5, "the runner to free the slot")
    await wait_until(lambda: d.server.router.outstanding == 0, 5)
    assert (await roundtrip(d.infer, req("next", "Say hi.", max_tokens=2), timeout=60))[-1]["type"] == "done"


async def test_the_loop_steps_off_the_cpu_the_runner_decodes_on_and_back_after(
        daemon_factory, model_path, monkeypatch):
    """ADR 0035 addendum 5: with strict placement (as this machine gets by default where the
    decode threads take every CPU), the runner's decode thread keeps one CPU and the
    daemon's event loop, which every runner frame wakes, stays off it until the runner is
    gone; the runner itself still has every CPU for its other threads."""
    everything = set(os.sched_getaffinity(0))
    d = await serve(daemon_factory, model_path, monkeypatch, "", cpu_strict=True)
    backend = d.server.router.entries[0].backend
    expected = LlamaCppSettings(model_path="x", n_threads=2, cpu_strict=True).decode_cpus()
    assert backend.capabilities().decode_cpus == expected
    assert (await roundtrip(d.infer, req("ok", "Say hi.", max_tokens=4), timeout=60))[-1]["type"] == "done"
    runner = backend.pid
    masks = [set(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{runner}/task")]
    assert set(os.sched_getaffinity(runner)) == everything  # widened back (it was started by the loop)
    if len(everything) > 1:
        assert {expected[0]} in masks  # the decode thread
        assert set(os.sched_getaffinity(0)) == everything - {expected[0]}  # this test's loop is the daemon's
    else:
        assert set(os.sched_getaffinity(0)) == everything  # one CPU: nowhere to step to
    assert await d.stop(30) == 0
    assert set(os.sched_getaffinity(0)) == everything


async def test_the_frame_interval_holds_tokens_for_the_next_frame_but_never_the_first(
        daemon_factory, model_path, monkeypatch):
    """ADR 0035 addendum 4: with a frame interval longer than the whole answer, the
    first token leaves with its prompt step, every later one waits, and the last ones
    leave with the Done: two `ev` frames for eight tokens, the same text as ever."""
    from inferd.engine.llamacpp.supervised import RunnerBackend

    frames: list[int] = []
    dispatch = RunnerBackend._dispatch

    def counting(self, proc, message):
        if message["op"] == "ev":
            frames.append(len(message["batch"]))
        return dispatch(self, proc, message)

    monkeypatch.setattr(RunnerBackend, "_dispatch", counting)
    d = await serve(daemon_factory, model_path, monkeypatch, "", frame_interval_ms=1000)
    assert d.server.router.entries[0].backend.capabilities().frame_interval_ms == 1000
    out = await roundtrip(d.infer, req("held", "Write about the sea.", temperature=0, max_tokens=8), timeout=60)
    assert out[-1]["type"] == "done" and out[-1]["usage"]["completion_tokens"] == 8
    pieces = [f["content"] for f in out if f["type"] == "token"]
    assert len(pieces) > 2 and "".join(pieces) == out[-1]["content"]
    # The first piece on its own; every later one (a token's text, or several tokens'
    # the output parser held back together) waits, then all of them go with the Done.
    assert frames == [1, len(pieces)], frames


async def test_the_runner_holds_only_its_channel_and_gains_no_privileges(daemon_factory, model_path, monkeypatch):
    """THREAT_MODEL F-9: no inherited descriptor but its channel (stdin) and our stderr
    (stdout is sent there too), no socket but the channel, no new privileges; the
    verified model's descriptor came over the channel."""
    d = await serve(daemon_factory, model_path, monkeypatch, "")
    pid = d.server.router.entries[0].backend.pid
    fds = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[int(fd.name)] = os.readlink(fd)
        except OSError:
            continue
    assert fds[0] == "/dev/null" and os.readlink("/proc/self/fd/2") == fds[2] == fds[1]
    files = {t for t in fds.values() if t.startswith("/") and t != "/dev/null" and t != fds[2]}
    assert files <= {os.path.realpath(model_path)}, fds  # at most the model (a verified one comes over the channel)
    assert "NoNewPrivs:\t1" in Path(f"/proc/{pid}/status").read_text()
    # Every socket is an unnamed Unix socket (the channel, the event loop's own pair):
    # no network socket, no address anyone could dial.
    inodes = {t[len("socket:["):-1] for t in fds.values() if t.startswith("socket:")}
    assert inodes
    for table in ("tcp", "tcp6", "udp", "udp6"):
        rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        assert not inodes & {r.split()[9] for r in rows}, table
    named = {r.split()[6]: r.split()[7:] for r in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]}
    assert all(named.get(i, []) == [] for i in inodes)
