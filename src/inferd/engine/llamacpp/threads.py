"""A thread that exclusively owns one llama.cpp context (ARCHITECTURE: concurrency model).

The context is created, used and freed on this thread only. Jobs arrive on a FIFO.
`ContextThread` runs them one at a time; a job that raises is reported through the
job itself and the thread carries on with the next one. A subclass may serve the
queue differently (`scheduler.BatchScheduler` runs many generations at once) by
overriding `_serve`; starting, submitting, shutting down and the refusal of what is
left in the queue at exit stay here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("inferd.engine.llamacpp")

S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)


class Job(Protocol[S_contra]):
    def run(self, state: S_contra) -> None:
        """Do the work on the owner thread; report results through the job's own channel."""

    def abandon(self, exc: BaseException) -> None:
        """The job will not (fully) run: report `exc` to whoever waits on it."""

    def interrupt(self) -> None:
        """Ask a running job to stop at its next checkpoint (shutdown)."""


class WorkerStopped(Exception):
    pass


T = TypeVar("T")


class _Call:
    """`ContextThread.call`'s job: a function run on the owner thread."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self, state: object) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            self.future.set_exception(exc)

    def abandon(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def interrupt(self) -> None:
        pass


class ContextThread(Generic[S]):
    def __init__(self, name: str, open_state: Callable[[], S], close_state: Callable[[S], None]) -> None:
        self.name = name
        self._open_state = open_state
        self._close_state = close_state
        self._jobs: queue.SimpleQueue[Job[S] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = False
        self._current: Job[S] | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.state: S | None = None

    def start(self) -> S:
        """Start the thread and wait until its context exists; re-raise a failure to create it."""
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error
        assert self.state is not None
        return self.state

    def submit(self, job: Job[S]) -> None:
        with self._lock:
            if not self._closing:
                self._jobs.put(job)
                return
        job.abandon(WorkerStopped("backend stopped"))

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on this thread (after the jobs before it) and return its result."""
        job = _Call(fn)
        self.submit(job)
        return job.future.result()

    @property
    def closing(self) -> bool:
        return self._closing

    def shutdown(self) -> None:
        """Refuse new jobs, interrupt the running ones, and let the thread exit."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._jobs.put(None)
        self._interrupt_running()

    def join(self, timeout: float | None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.state = self._open_state()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            self._serve(self.state)
        finally:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.abandon(WorkerStopped("backend stopped"))
            try:
                self._close_state(self.state)
            except Exception:  # noqa: BLE001
                log.exception("%s: freeing the context failed", self.name)

    # ---- the serving policy (overridable) ----------------------------------------------

    def _serve(self, state: S) -> None:
        """One job at a time, in arrival order, until shutdown."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run_one(job, state)

    def _run_one(self, job: Job[S], state: S) -> None:
        with self._lock:
            if self._closing:
                job.abandon(WorkerStopped("backend stopped"))
                return
            self._current = job
        try:
            job.run(state)
        except Exception as exc:  # noqa: BLE001 - one bad job must not end the worker
            log.exception("%s: job failed", self.name)
            job.abandon(exc)
        finally:
            with self._lock:
                self._current = None

    def _interrupt_running(self) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            current.interrupt()
