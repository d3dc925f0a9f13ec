"""The llama.cpp backend as the daemon sees it: a runner process, supervised (ADR 0025).

`RunnerBackend` keeps the Backend contract of the in-process engine (events,
cancellation, sequences, embeddings, token counting, capabilities) and forwards each
call over the runner's private channel (runner_wire.py). When the runner ends unasked
(any signal or exit, or a decode that stops advancing past the watchdog), the requests
it was serving end at once with `engine crashed: SIGSEGV` (after any partial output),
the daemon is told `restarting`, and a new runner is started with a bounded backoff;
requests that arrive meanwhile wait for it. A crash before the runner's first served
request, or soon after a restart, switches to the safe profile; a crash there marks
the backend failed. A request that was in flight in two crashes is refused from then on.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from ...proto.admin import BackendCapabilities, RunnerCrash, RunnerInfo, SequenceSlot
from ...proto.embed import EmbedResolved
from ..backend import Backend, BackendError, BackendInvalidRequest, EmbedResult, EngineCrashed, Unavailable
from ..events import Done, EventStream
from ..request import GenerationRequest
from . import placement, runner_wire as wire
from .settings import LlamaCppSettings
from .spawn import start_engine_process

log = logging.getLogger("inferd.engine.llamacpp")

RUNNER_MODULE = "inferd.engine.llamacpp.runner"
#: Backoff between restarts: doubles from the first to the last, reset by a served request.
BACKOFF_SECS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A second crash within this long of a restart counts as "soon after".
SOON_SECS = 60.0
#: Crashes a request may be in flight for before it is refused.
POISON_CRASHES = 2
QUARANTINE_SIZE = 256
#: How long a runner gets to exit after `stop` before it is killed.
STOP_GRACE_SECS = 5.0
_END = object()


class RunnerFailed(Exception):
    """The runner could not be brought up (it died or refused while loading)."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "engine ended"
    if returncode < 0:
        try:
            return f"engine crashed: {signal.Signals(-returncode).name}"
        except ValueError:
            return f"engine crashed: signal {-returncode}"
    return f"engine exited with status {returncode}"


def fingerprint(request: GenerationRequest) -> str:
    """What makes two requests the same input to the engine (ids and sampling aside)."""
    parts = [request.prompt or "", request.grammar, repr(request.response_format),
             repr([(t.name, t.parameters) for t in request.tools]),
             repr([(m.role, m.content, m.tool_call_id) for m in request.messages])]
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()


def safe_profile(settings: LlamaCppSettings) -> LlamaCppSettings:
    """No extra buffer types (weights as the file has them), flash attention off, no AMX."""
    return settings.model_copy(update={"batch_invariant": True, "flash_attn": False, "amx": "off"})


class _Process:
    """One runner process and its channel."""

    def __init__(self, proc: Any, channel: wire.FrameChannel) -> None:
        self.proc, self.channel = proc, channel
        self.started = time.monotonic()
        self.hello: dict[str, Any] = {}
        self.served = False
        self.steps = 0
        self.progress_at = time.monotonic()
        self.hung: str | None = None
        #: The CPU the daemon's loop thread stepped off for this runner's decode thread.
        self.aside: int | None = None

    @classmethod
    async def start(cls, settings: LlamaCppSettings, profile: str = "default") -> "_Process":
        ours, theirs = socket.socketpair()
        try:
            proc = start_engine_process(RUNNER_MODULE, theirs)
        finally:
            theirs.close()
        # A verified model is loaded through its open descriptor (THREAT_MODEL F-6): the
        # runner gets that descriptor over the channel, not by inheritance.
        fd = _verified_fd(settings.model_path)
        socket.send_fds(ours, [b"F"], [fd] if fd is not None else [])
        _, channel = await asyncio.get_running_loop().create_connection(wire.FrameChannel, sock=ours)
        process = cls(proc, channel)
        # The runner inherits this thread's CPUs, which may lack one it stepped off for
        # another runner: it is given them all (placement.py).
        settings = settings.model_copy(update={"cpus": sorted(placement.cpus())})
        channel.write(wire.to_runner({"op": "load", "profile": profile, "settings": settings.model_dump(mode="json")}))
        try:
            body = await channel.read()
            message = wire.from_runner(body) if body is not None else None
        except wire.ChannelError as exc:
            await process.kill()
            raise RunnerFailed(f"the runner broke its channel while loading: {exc}") from None
        except BaseException:
            # Cancelled (a shutdown during the load): nothing may outlive it. Killed at
            # once and reaped off the loop; the channel is closed, not left to the GC.
            process.abandon()
            raise
        if message is None or message.get("op") != "hello":
            returncode = await process.kill()
            raise RunnerFailed(describe_exit(returncode) + " while loading the model")
        process.hello = message
        caps = message.get("caps")
        cpus = caps.get("decode_cpus") if isinstance(caps, dict) else None
        if isinstance(cpus, list) and cpus and type(cpus[0]) is int and placement.step_aside(cpus[0]):
            # Frames from the runner wake this loop; not on the CPU its decode thread
            # keeps, where they would preempt it between two steps (ADR 0035 addendum 5).
            process.aside = cpus[0]
        return process

    def release(self) -> None:
        """The runner is gone or going: the loop thread may use its CPU again."""
        if self.aside is not None:
            placement.step_back(self.aside)
            self.aside = None

    def send(self, message: dict[str, Any]) -> None:
        self.channel.write(wire.to_runner(message))

    async def exit_code(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)
        except TimeoutError:
            return None

    def abandon(self) -> None:
        """Kill the runner and close its channel without waiting (a cancelled caller)."""
        self.release()
        if self.proc.poll() is None:
            self.proc.kill()
        self.channel.close()
        asyncio.get_running_loop().run_in_executor(None, self.proc.wait)

    async def kill(self) -> int | None:
        self.release()
        if self.proc.poll() is None:
            self.proc.kill()
        self.channel.close()
        return await self.exit_code(30.0)

    async def stop(self, timeout: float) -> None:
        self.release()
        self.send({"op": "stop"})
        if await self.exit_code(max(timeout, 0.1)) is None:
            await self.kill()
        self.channel.close()


def _verified_fd(path: object) -> int | None:
    text = str(path)
    prefix = "/proc/self/fd/"
    return int(text[len(prefix):]) if text.startswith(prefix) and text[len(prefix):].isdigit() else None


class _Stream:
    __slots__ = ("request", "queue", "done")

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.done = False


class RunnerBackend(Backend):
    name = "llamacpp"

    def __init__(self, settings: LlamaCppSettings, label: str) -> None:
        self.settings = settings
        self.entry_label = label
        self.safe = False
        self._proc: _Process | None = None
        self._state = "starting"
        self._reason: str | None = None
        self._ready = asyncio.Event()
        self._rids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._calls: dict[int, tuple[asyncio.Future[Any], GenerationRequest | None]] = {}
        self._lifecycle: Callable[[str, str], None] | None = None
        self._sequences: Callable[[list[SequenceSlot]], None] | None = None
        self._slots: list[SequenceSlot] = []
        self._quarantine: OrderedDict[str, int] = OrderedDict()
        self.restarts = 0
        self.last_crash: RunnerCrash | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._model_fd: int | None = None

    # ---- bring-up ---------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: LlamaCppSettings, label: str = "llamacpp") -> "RunnerBackend":
        """Start the runner and wait for its model; a crash while loading is retried once
        in the safe profile. Raises ValueError (the loader's "could not load") if neither loads."""
        fd = _verified_fd(settings.model_path)
        if fd is not None:
            # The loader closes its descriptor once we are up; restarts need one of ours.
            backend_fd = os.dup(fd)
            settings = settings.model_copy(update={"model_path": f"/proc/self/fd/{backend_fd}"})
        backend = cls(settings, label)
        backend._model_fd = backend_fd if fd is not None else None
        try:
            backend._proc = await _Process.start(settings)
        except RunnerFailed as first:
            log.warning("runner for %s: %s; retrying in the safe profile", label, first)
            backend.safe = True
            try:
                backend._proc = await _Process.start(safe_profile(settings), "safe")
            except RunnerFailed as second:
                backend._close_fd()
                raise ValueError(f"{first}; in the safe profile too: {second}") from None
        backend._adopt(backend._proc)
        backend._supervisor = asyncio.create_task(backend._supervise(), name=f"inferd-runner-{label}")
        return backend

    def _adopt(self, proc: _Process) -> None:
        hello = proc.hello
        self.concurrency = int(hello["concurrency"])
        self.n_ctx: int = int(hello["n_ctx"])
        self.label = str(hello["label"])
        self.n_embd: int | None = int(hello["n_embd"]) if hello.get("n_embd") is not None else None
        self._caps = BackendCapabilities.model_validate(hello["caps"])
        self._state, self._reason = "ready", None
        self._ready.set()

    # ---- the contract ---------------------------------------------------------------------

    def ready(self) -> bool:
        """Accepting requests: while a runner restarts they wait for it (not when failed)."""
        return self._state in ("ready", "restarting")

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc is not None else None

    def capabilities(self) -> BackendCapabilities:
        runner = RunnerInfo(pid=self.pid, profile="safe" if self.safe else "default",
                            state="ready" if self._state in ("ready", "starting") else self._state,  # type: ignore[arg-type]
                            restarts=self.restarts, reason=self._reason, last_crash=self.last_crash)
        return self._caps.model_copy(update={"runner": runner})

    def observe_sequences(self, sink: Callable[[list[SequenceSlot]], None] | None) -> None:
        self._sequences = sink

    def running_sequences(self) -> list[SequenceSlot]:
        return list(self._slots)

    def watch_lifecycle(self, sink: Callable[[str, str], None] | None) -> None:
        self._lifecycle = sink

    async def generate(self, request: GenerationRequest) -> EventStream:
        self._refuse_poison(request)
        proc = await self._serving()
        rid = next(self._rids)
        stream = self._streams[rid] = _Stream(request)
        try:
            await self._call(proc, rid, {"op": "generate", "rid": rid, "request": request}, request)
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return self._events(proc, rid, stream)

    async def count_tokens(self, request: GenerationRequest) -> int:
        proc = await self._serving()
        rid = next(self._rids)
        return int(await self._call(proc, rid, {"op": "count", "rid": rid, "request": request}, None))

    async def embed(self, request: EmbedResolved) -> EmbedResult:
        proc = await self._serving()
        rid = next(self._rids)
        value = await self._call(proc, rid, {"op": "embed", "rid": rid, "request": request}, None)
        return EmbedResult(embeddings=value["embeddings"], dimensions=int(value["dimensions"]),
                           model=str(value["model"]), input_tokens=int(value["input_tokens"]))

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self._state, self._reason = "failed", "stopped"
        self._ready.set()  # waiters see the state and give up
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._proc is not None:
            await self._proc.stop(min(timeout, STOP_GRACE_SECS))
        self._end_all(Unavailable("backend stopped"))
        self._close_fd()

    def _close_fd(self) -> None:
        if self._model_fd is not None:
            os.close(self._model_fd)
            self._model_fd = None

    # ---- requests ------------------------------------------------------------------------

    def _refuse_poison(self, request: GenerationRequest) -> None:
        if self._quarantine.get(fingerprint(request), 0) >= POISON_CRASHES:
            raise BackendInvalidRequest(
                f"this request was in flight in {POISON_CRASHES} engine crashes; it is refused so that it "
                "cannot take the engine down for every app again")

    async def _serving(self) -> _Process:
        while True:
            if self._state == "failed":
                raise Unavailable(f"engine failed: {self._reason}")
            if self._state == "ready" and self._proc is not None:
                return self._proc
            await self._ready.wait()

    async def _call(self, proc: _Process, rid: int, message: dict[str, Any],
                    request: GenerationRequest | None) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = (future, request)
        if not self._streams and len(self._calls) == 1:
            proc.progress_at = time.monotonic()  # the watchdog's clock starts with the work
        try:
            proc.send(message)
            return await future
        finally:
            self._calls.pop(rid, None)

    async def _events(self, proc: _Process, rid: int, stream: _Stream) -> AsyncIterator[Any]:
        try:
            while True:
                item = await stream.queue.get()
                if item is _END:
                    return  # ended before Done: the pipeline reports a mid-stream failure
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Done):
                    stream.done = True
                    return
        finally:
            if self._streams.pop(rid, None) is not None and not stream.done and proc is self._proc:
                proc.send({"op": "cancel", "rid": rid})

    # ---- the channel ------------------------------------------------------------------------

    def _dispatch(self, proc: _Process, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "ev":
            proc.progress_at = time.monotonic()
            for rid, item in message["batch"]:
                event = wire.decode_event(item)
                stream = self._streams.get(rid)
                if stream is not None:
                    stream.queue.put_nowait(event)
                if isinstance(event, Done):
                    proc.served = True
            return
        if op == "beat":
            steps = int(message["steps"])
            if steps != proc.steps:
                proc.steps, proc.progress_at = steps, time.monotonic()
            return
        if op == "seq":
            self._slots = [SequenceSlot.model_validate(s) for s in message["slots"]]
            if self._sequences is not None:
                self._sequences(self._slots)
            return
        rid = message.get("rid")
        if op in ("started", "refused", "result"):
            future = self._calls.get(rid, (None, None))[0]  # type: ignore[arg-type]
            if future is not None and not future.done():
                if op == "refused":
                    future.set_exception(wire.decode_error(message))
                else:
                    future.set_result(message.get("value"))
                    proc.served = proc.served or op == "result"
            return
        if op not in ("failed", "end"):
            raise wire.ChannelError(f"unknown op {op!r} from the runner")
        stream = self._streams.get(rid)  # type: ignore[arg-type]
        if stream is None:
            return  # a request the daemon has already forgotten (cancelled)
        if op == "failed":
            stream.queue.put_nowait(wire.decode_error(message))
        else:
            stream.queue.put_nowait(_END)

    async def _pump(self, proc: _Process) -> str:
        """Serve one runner's messages until it ends; returns why it ended."""
        watchdog = asyncio.create_task(self._watch(proc))

        def handle(body: bytes) -> None:
            try:
                self._dispatch(proc, wire.from_runner(body))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # THREAT_MODEL F-9: a field missing or of the wrong kind breaks the
                # channel's rules; it ends this runner, never the supervision.
                raise wire.ChannelError(f"a malformed {body[:40]!r}... frame: {exc!r}"[:300]) from None

        try:
            ended = await proc.channel.serve(handle)
        finally:
            watchdog.cancel()
            proc.release()
        if isinstance(ended, wire.ChannelError):
            log.error("runner %s broke its channel: %s; ending it", proc.proc.pid, ended)
            await proc.kill()
            return f"engine broke its channel: {ended}"
        returncode = await proc.exit_code(10.0)
        if returncode is None:
            returncode = await proc.kill()
        return proc.hung or describe_exit(returncode)

    async def _watch(self, proc: _Process) -> None:
        limit = self.settings.watchdog_secs
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            busy = bool(self._streams) or bool(self._calls)
            if busy and time.monotonic() - proc.progress_at > limit:
                proc.hung = f"engine hung: no decode step for {limit:g} s"
                log.error("runner %s: %s; killing it", proc.proc.pid, proc.hung)
                await proc.kill()
                return

    # ---- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        restarted_at: float | None = None
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            reason = await self._pump(proc)
            if self._stopping:
                return
            uptime = time.monotonic() - proc.started
            early = not proc.served or (restarted_at is not None and time.monotonic() - restarted_at < SOON_SECS)
            self._crashed(proc, reason, uptime)
            if proc.served:
                attempt = 0
            while not self._stopping:
                if early and self.safe:
                    self._fail(f"crashed in its default and safe profiles ({reason})")
                    return
                if early:
                    self.safe = True
                    log.warning("%s crashed in its default profile; serving with no extra buffer types, "
                                "flash attention off, AMX off", self.entry_label)
                delay = BACKOFF_SECS[min(attempt, len(BACKOFF_SECS) - 1)]
                attempt += 1
                self.restarts += 1
                self._state, self._reason = "restarting", reason
                self._ready.clear()
                self._notify("restarting", reason, delay)
                await asyncio.sleep(delay)
                try:
                    if self.safe:
                        self._proc = await _Process.start(safe_profile(self.settings), "safe")
                    else:
                        self._proc = await _Process.start(self.settings)
                except RunnerFailed as exc:
                    reason, early = str(exc), True
                    log.error("%s: runner did not come back: %s", self.entry_label, exc)
                    continue
                restarted_at = time.monotonic()
                self._adopt(self._proc)
                self._notify("ready", "", 0.0)
                break

    def _crashed(self, proc: _Process, reason: str, uptime: float) -> None:
        requests = [s.request.id for s in self._streams.values()]
        requests += [r.id for _, r in self._calls.values() if r is not None and r.id not in requests]
        for stream in self._streams.values():
            self._suspect(stream.request)
        self.last_crash = RunnerCrash(reason=reason, uptime_secs=round(uptime, 3), requests=requests, at=time.time())
        log.error("%s: runner %s ended after %.1f s: %s; requests in flight: %s", self.entry_label, proc.proc.pid,
                  uptime, reason, ", ".join(requests) or "none")
        self._slots = []
        if self._sequences is not None:
            self._sequences([])
        self._end_all(EngineCrashed(reason))

    def _suspect(self, request: GenerationRequest) -> None:
        key = fingerprint(request)
        self._quarantine[key] = self._quarantine.pop(key, 0) + 1
        while len(self._quarantine) > QUARANTINE_SIZE:
            self._quarantine.popitem(last=False)

    def _end_all(self, error: BackendError) -> None:
        for stream in list(self._streams.values()):
            stream.queue.put_nowait(error)
        self._streams.clear()
        for future, _ in list(self._calls.values()):
            if not future.done():
                future.set_exception(error)

    def _fail(self, reason: str) -> None:
        log.error("%s: %s; marked failed", self.entry_label, reason)
        self._state, self._reason = "failed", reason
        self._ready.set()
        self._notify("failed", reason, 0.0)

    def _notify(self, state: str, reason: str, delay: float) -> None:
        self.retry_in = delay
        if self._lifecycle is not None:
            self._lifecycle(state, reason)
