"""Decode threads on CPUs of their own, and the daemon's loop off the decode thread's CPU
(`cpu_strict`, ADR 0035 addendum 5): the rule, the affinity calls, and the real engine."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from inferd.engine.llamacpp import LlamaCppBackend, LlamaCppSettings, placement
from inferd.engine.llamacpp import settings as settings_mod
from inferd.engine.llamacpp.settings import cpus_by_core
from inferd.engine.request import ChatMessage, GenerationRequest

ALL = sorted(os.sched_getaffinity(0))


def _mask_of(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))


def _in_a_thread(fn):
    """Run `fn` on a thread of its own: affinity calls on `0` then touch only that thread."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_decode_cpus_are_chosen_where_decode_takes_every_cpu(monkeypatch):
    monkeypatch.setattr(settings_mod, "_allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(settings_mod, "cpus_by_core", lambda cpus: [0, 2, 1, 3])
    # Saturated (threads >= CPUs): on by default, one CPU per thread in core order.
    assert LlamaCppSettings(model_path="x", n_threads=4).decode_cpus() == [0, 2, 1, 3]
    assert LlamaCppSettings(model_path="x", n_threads=4, cpu_strict=False).decode_cpus() == []
    # A CPU to spare: off by default, on when asked, with as many CPUs as threads.
    assert LlamaCppSettings(model_path="x", n_threads=2).decode_cpus() == []
    assert LlamaCppSettings(model_path="x", n_threads=2, cpu_strict=True).decode_cpus() == [0, 2]
    assert LlamaCppSettings(model_path="x", n_threads=2, n_threads_batch=3, cpu_strict=True).decode_cpus() == [0, 2, 1]
    # More threads than CPUs: nothing to give each its own, so the kernel places them.
    assert LlamaCppSettings(model_path="x", n_threads=6, cpu_strict=True).decode_cpus() == []


def test_cpus_are_ordered_one_per_core_before_any_sibling(tmp_path: Path):
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        d = tmp_path / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(siblings + "\n")
    assert cpus_by_core({0, 1, 2, 3}, tmp_path) == [0, 1, 2, 3]
    assert cpus_by_core({2, 3}, tmp_path) == [2, 3]
    (tmp_path / "cpu3" / "topology" / "thread_siblings_list").write_text("3\n")
    assert cpus_by_core({0, 1, 2, 3}, tmp_path) == [0, 1, 3, 2]  # cpu3 is a core of its own now
    assert cpus_by_core({5, 4}, tmp_path) == [4, 5]  # no topology: number order


def test_a_thread_steps_off_a_cpu_and_back_and_still_counts_it():
    cpu = ALL[0]

    def go():
        stepped = placement.step_aside(cpu)
        during = (_mask_of(0), placement.cpus())
        placement.step_back(cpu)
        return stepped, during, _mask_of(0)

    stepped, (during, counted), after = _in_a_thread(go)
    if len(ALL) == 1:
        assert not stepped and during == {cpu}  # no CPU would be left: nothing changes
    else:
        assert stepped and during == set(ALL) - {cpu}
    assert counted == set(ALL)  # what "this process may use" means does not change
    assert after == set(ALL)
    assert placement.cpus() == set(ALL)


def test_a_runner_started_by_a_narrowed_thread_widens_every_thread():
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def narrowed():
        os.sched_setaffinity(0, {ALL[-1]})
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=narrowed)
    t.start()
    try:
        assert ready.wait(10)
        assert _mask_of(tids[0]) == {ALL[-1]}
        placement.widen(ALL)
        assert _mask_of(tids[0]) == set(ALL)
    finally:
        done.set()
        t.join()


def test_strict_threads_keep_each_decode_thread_on_its_cpu(model_path):
    """The real engine: ggml's threadpool with strict placement pins the thread that calls
    llama_decode and its OpenMP worker, and the capabilities say where."""
    n = min(2, len(ALL))
    backend = LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=512, n_threads=n, n_threads_batch=n,
                                               cpu_strict=True))
    try:
        expected = backend.settings.decode_cpus()
        assert expected == cpus_by_core(set(ALL))[:n]
        assert backend.capabilities().decode_cpus == expected

        async def gen() -> None:
            req = GenerationRequest(id="p", messages=[ChatMessage("user", "Say hi.")], temperature=0, max_tokens=4)
            async for _ in await backend.generate(req):
                pass

        asyncio.run(gen())
        decode_tid = backend._gen._thread.native_id  # noqa: SLF001 - the thread that calls llama_decode
        assert _mask_of(decode_tid) == {expected[0]}
        others = {tid: _mask_of(tid) for tid in map(int, os.listdir("/proc/self/task")) if tid != decode_tid}
        if n == 2:
            assert {expected[1]} in others.values()  # the OpenMP worker, on the next CPU
    finally:
        assert backend.close(timeout=30.0)


def test_without_strict_placement_no_cpus_are_reported(model_path):
    backend = LlamaCppBackend(LlamaCppSettings(model_path=model_path, n_ctx=512, n_threads=1, n_threads_batch=1,
                                               cpu_strict=False))
    try:
        assert backend.capabilities().decode_cpus == []
        assert _mask_of(backend._gen._thread.native_id) == set(ALL)  # noqa: SLF001
    finally:
        assert backend.close(timeout=30.0)


@pytest.mark.parametrize("cpus", [None, []])
def test_widen_without_cpus_changes_nothing(cpus):
    before = _mask_of(0)
    placement.widen(cpus)
    assert _mask_of(0) == before


def test_a_cpu_that_is_not_ours_is_never_stepped_off():
    """THREAT_MODEL F-9: the CPU comes from the runner's hello; one the daemon does not
    have (or a negative number) changes nothing and is not counted."""
    def go():
        return [placement.step_aside(cpu) for cpu in (max(ALL) + 1, -1, 1 << 20)], _mask_of(0), placement.cpus()

    stepped, mask, counted = _in_a_thread(go)
    assert stepped == [False, False, False]
    assert mask == set(ALL) and counted == set(ALL)
