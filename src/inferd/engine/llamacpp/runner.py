"""A llama.cpp runner: one model in a process of its own (ADR 0025).

Started by the daemon (spawn.py) as `python -m inferd.engine.llamacpp.runner` with the
channel socket as its standard input and nothing else inherited. It reads the
settings, loads the model with the in-process engine (LlamaCppBackend, unchanged),
says `hello`, then serves what the daemon asks over the channel until it says `stop`
or the channel ends. A fault here ends this process only; the daemon reports it and
starts another (supervised.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from ..events import Done
from . import placement, runner_wire as wire
from .bridge import Failure, StepPost
from .settings import FRAME_INTERVAL_MS_SPARE_CORES, LlamaCppSettings

#: Tests (only) make the runner fault at a chosen point, to check what the daemon
#: does about it: `load`, `prefill`, `decode[:N]` (after the N-th token, default 2),
#: `embed`, `hang[:N]` (the decode stops answering), optionally `...@TEXT` to fault
#: only on requests whose last message contains TEXT, and `.../default` to fault only
#: in the default profile. Kills (or hangs) this process only.
FAULT_ENV = "INFERD_TEST_RUNNER_FAULT"
HEARTBEAT_SECS = 1.0
_PR_SET_NO_NEW_PRIVS = 38


class FaultPlan:
    def __init__(self, spec: str | None, profile: str = "default") -> None:
        spec = spec or ""
        spec, _, only = spec.partition("/")
        if only and only != profile:
            spec = ""
        point, _, self.marker = spec.partition("@")
        name, _, count = point.partition(":")
        self.point = name
        self.after = int(count) if count else 2

    def applies(self, point: str, request: Any = None) -> bool:
        if self.point != point:
            return False
        if self.marker and request is not None:
            last = request.messages[-1].content if request.messages else (request.prompt or "")
            return self.marker in last
        return not self.marker or request is None

    def strike(self) -> None:
        if self.point == "hang":
            # The decode thread never returns: nothing more reaches the daemon.
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGSEGV)


class Runner:
    def __init__(self, reader: wire.FrameChannel, channel: socket.socket, model_fd: int | None) -> None:
        self.reader = reader
        self.fd = channel.fileno()
        #: One whole frame at a time, from the loop or the scheduler's thread.
        self.lock = threading.Lock()
        self.model_fd = model_fd
        self.backend: Any = None
        self.tasks: dict[int, asyncio.Task[None]] = {}
        #: Generations running, by request: setting one stops it within a decode step.
        self.cancels: dict[int, threading.Event] = {}
        self.outbox: list[Any] = []
        #: When the last frame of events left (the scheduler's thread only).
        self.sent_at = 0.0
        #: While steps end sooner than this after the last frame, a step's events wait
        #: for the next step's and leave with them (ADR 0035 addenda 3 and 4): each frame
        #: wakes the daemon and then the app, and on a CPU the decode threads fill, every
        #: wake-up preempts one of them. Set from the settings by load().
        self.hold_s = FRAME_INTERVAL_MS_SPARE_CORES / 1000.0
        self.fault = FaultPlan(None)

    # ---- out ---------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Write one frame from any thread. The channel is non-blocking (the loop reads
        it), so a full buffer is waited out here; the daemon is always reading."""
        data = memoryview(wire.to_daemon(message))
        with self.lock:
            while data:
                try:
                    data = data[os.write(self.fd, data):]
                except BlockingIOError:
                    select.select([], [self.fd], [])


    def flush(self) -> None:
        """Send what the scheduler's steps put in the outbox (its thread only)."""
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.send({"op": "ev", "batch": batch})
            self.sent_at = time.monotonic()

    def stepped(self) -> None:
        """A step's events are in the outbox: send them, or hold them for the next step's
        while steps are shorter than the frame interval (the scheduler releases them
        before anything longer)."""
        if time.monotonic() - self.sent_at >= self.hold_s:
            self.flush()
        elif self.outbox:
            StepPost.hold(self.flush)

    # ---- serving ------------------------------------------------------------------------

    async def load(self, settings: LlamaCppSettings) -> None:
        from .backend import LlamaCppBackend

        self.direct = _Direct(self)
        placement.widen(settings.cpus)  # before anything counts this process's CPUs
        interval = settings.frame_interval()
        self.hold_s = interval / 1000.0
        if self.fault.applies("load"):
            self.fault.strike()
        self.backend = await asyncio.to_thread(LlamaCppBackend, settings)
        self.backend.observe_sequences(
            lambda slots: self.send({"op": "seq", "slots": [s.model_dump() for s in slots]}))
        caps = self.backend.capabilities().model_dump()
        caps["frame_interval_ms"] = interval  # only a runner holds events
        self.send({"op": "hello", "pid": os.getpid(), "caps": caps, "n_ctx": self.backend.n_ctx,
                   "concurrency": self.backend.concurrency, "label": self.backend.label,
                   "n_embd": self.backend.n_embd})

    async def generate(self, rid: int, request: Any) -> None:
        """Start a generation whose events go from the scheduler's thread straight to
        the channel, one frame per step: this process's loop is not woken per token
        (on a busy CPU a wake-up can preempt one of llama.cpp's threads mid-step)."""
        cancel = threading.Event()
        self.cancels[rid] = cancel
        tokens = 0
        fault = self.fault
        strike_at = fault.after if fault.point in ("decode", "hang") and fault.applies(fault.point, request) else 0

        def put(item: object) -> None:
            nonlocal tokens
            if rid not in self.cancels:
                return  # cancelled: the daemon has forgotten this request
            if type(item) is Failure:
                del self.cancels[rid]
                self.flush()
                self.send({"op": "failed", "rid": rid, **wire.encode_error(item.exc)})  # type: ignore[attr-defined]
                return
            self.outbox.append([rid, wire.encode_event(item)])
            if type(item) is Done:
                del self.cancels[rid]
                self.flush()
                self.send({"op": "end", "rid": rid})
                return
            tokens += 1
            if tokens == strike_at:
                fault.strike()

        try:
            await self.backend.start(request, put, cancel, poster=self.direct)
        except Exception as exc:  # noqa: BLE001 - every refusal crosses the channel
            self.cancels.pop(rid, None)
            self.send({"op": "refused", "rid": rid, **wire.encode_error(exc)})
            return
        self.send({"op": "started", "rid": rid})
        if fault.applies("prefill", request):
            fault.strike()

    async def call(self, rid: int, what: str, request: Any) -> None:
        try:
            if what == "embed":
                if self.fault.applies("embed"):
                    self.fault.strike()
                result = await self.backend.embed(request)
                value: Any = {"embeddings": result.embeddings, "dimensions": result.dimensions,
                              "model": result.model, "input_tokens": result.input_tokens}
            else:
                value = await self.backend.count_tokens(request)
        except Exception as exc:  # noqa: BLE001
            self.send({"op": "refused", "rid": rid, **wire.encode_error(exc)})
            return
        self.send({"op": "result", "rid": rid, "value": value})

    def spawn(self, rid: int, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks[rid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(rid, None))

    async def heartbeat(self) -> None:
        """Decode steps done so far, every second: the daemon's watchdog sees a hung
        decode as steps that stop advancing while requests are in flight."""
        while True:
            self.send({"op": "beat", "steps": self.backend.decode_steps})
            await asyncio.sleep(HEARTBEAT_SECS)

    async def serve(self) -> int:
        first = await self.reader.read()
        if first is None:
            return 0
        load = wire.from_daemon(first)
        self.fault = FaultPlan(os.environ.get(FAULT_ENV), load["profile"])
        settings = LlamaCppSettings.model_validate(load["settings"])
        if self.model_fd is not None:
            settings = settings.model_copy(update={"model_path": f"/proc/self/fd/{self.model_fd}"})
        await self.load(settings)
        beat = asyncio.create_task(self.heartbeat())
        try:
            while (body := await self.reader.read()) is not None:
                msg = wire.from_daemon(body)
                op, rid = msg["op"], msg.get("rid", 0)
                if op == "generate":
                    self.spawn(rid, self.generate(rid, msg["request"]))
                elif op in ("embed", "count"):
                    self.spawn(rid, self.call(rid, op, msg["request"]))
                elif op == "cancel":
                    cancel = self.cancels.pop(rid, None)
                    if cancel is not None:
                        cancel.set()
                elif op == "stop":
                    break
        finally:
            beat.cancel()
            for cancel in self.cancels.values():
                cancel.set()
            for task in list(self.tasks.values()):
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            if self.backend is not None:
                await self.backend.stop(5.0)
        return 0


def _harden() -> tuple[socket.socket, int | None]:
    """Keep the channel (stdin) off the standard descriptors; stdout goes to stderr so a
    native printf cannot corrupt the channel; gain no privileges (THREAT_MODEL F-9).
    Returns the channel and the verified model's descriptor, if the daemon sent one."""
    channel = socket.socket(fileno=os.dup(0))
    _, fds, _, _ = socket.recv_fds(channel, 1, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return channel, (fds[0] if fds else None)


class _Direct:
    """Stands in for an event loop in the engine's emitter: a step's events are
    delivered on the scheduler's thread and leave as one frame at once."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        callback(*args)
        self.runner.stepped()


async def _main() -> int:
    channel, model_fd = _harden()
    _, reader = await asyncio.get_running_loop().create_connection(wire.FrameChannel, sock=channel)
    return await Runner(reader, channel, model_fd).serve()


def main() -> int:
    # The daemon's SIGINT (a terminal's Ctrl-C) is the daemon's to handle: it stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main())


if __name__ == "__main__":
    sys.exit(main())
