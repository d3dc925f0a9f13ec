"""Where the daemon's own work runs while a runner decodes (ADR 0035, addendum 5).

Where llama.cpp's decode threads take every CPU (2 cores, 2 threads), each runner frame
wakes the daemon's event loop, and a Unix-socket write wakes its reader on the writer's
CPU: the daemon preempted the runner's decode thread, which does the step's Python work
between two `llama_decode` calls, while llama.cpp's other thread spun idle on the other
core. With `cpu_strict` the decode thread that calls llama_decode keeps one CPU
(`LlamaCppSettings.decode_cpus()[0]`); the daemon's event-loop thread steps off that CPU
while a runner decodes there, so the wake-ups land where the OpenMP worker is waiting.

The thread that steps aside keeps the rest of its CPUs; threads it starts afterwards
inherit that (so does a runner it spawns, which widens itself back with `widen()` to
the CPUs the daemon passes in its settings). `cpus()` still counts the CPUs stepped off,
so defaults computed from "the CPUs this process may use" do not change.
Linux only: elsewhere every function here is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

log = logging.getLogger("inferd.engine.llamacpp")

_lock = threading.Lock()
#: CPUs the stepping thread left, counted by the runners that asked.
_aside: Counter[int] = Counter()


def _mask() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def cpus() -> set[int]:
    """The CPUs this process may use: the calling thread's mask plus those stepped off."""
    return _mask() | set(_aside)


def step_aside(cpu: int) -> bool:
    """Keep the calling thread (the daemon's event loop) off `cpu`, where a runner's
    decode thread is kept; undone by `step_back(cpu)`. False (nothing changed) when
    the thread would be left with no CPU, or the platform has no affinity."""
    with _lock:
        if not hasattr(os, "sched_setaffinity"):
            return False
        everything = cpus()
        keep = everything - set(_aside) - {cpu}
        if cpu not in everything or not keep:
            return False  # not a CPU of ours (THREAT_MODEL F-9: the runner said it), or the last one
        try:
            os.sched_setaffinity(0, keep)
        except OSError as exc:
            log.debug("could not step off CPU %d: %s", cpu, exc)
            return False
        _aside[cpu] += 1
        return True


def step_back(cpu: int) -> None:
    """Undo one `step_aside(cpu)`, from the same thread."""
    with _lock:
        if _aside[cpu] <= 0:
            return
        everything = cpus()
        _aside[cpu] -= 1
        if _aside[cpu] <= 0:
            del _aside[cpu]
        try:
            os.sched_setaffinity(0, everything - set(_aside))
        except OSError as exc:
            log.debug("could not step back on CPU %d: %s", cpu, exc)


def widen(allowed: list[int] | None) -> None:
    """Let every thread of this process run on `allowed` (a runner, started by a
    daemon thread that had stepped aside, takes back the daemon's CPUs)."""
    if not allowed or not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, allowed)
        except OSError as exc:
            log.debug("could not widen thread %d to CPUs %s: %s", tid, allowed, exc)
