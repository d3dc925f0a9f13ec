"""The admission gate: active permits + FIFO queue, `queue_full` beyond capacity.

Every order here is made by the test and observed through events: a ticket's task
signals in the very step in which it calls start(), so when the signal arrives the
ticket holds its permit or has taken its place in line; grants are reported on a
queue in the order they happen. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from daemon_harness import begin

from inferd.daemon.pipeline.admission import Admission, AdmissionClosed, QueueFull, Ticket


async def started(ticket: Ticket) -> asyncio.Task:
    """`ticket.start()` in a task, returned once the ticket holds its permit or waits in line."""
    task, joined = begin(ticket.start)
    await joined.wait()
    return task


def test_defaults_match_upstream() -> None:
    adm = Admission()
    assert (adm.active_permits, adm.queue_depth, adm.capacity) == (1, 10, 11)


async def test_capacity_admits_active_plus_queue_then_queue_full() -> None:
    adm = Admission(1, 2)
    assert adm.capacity == 3
    tickets = [adm.try_admit() for _ in range(3)]
    assert adm.outstanding == 3
    with pytest.raises(QueueFull):
        adm.try_admit()
    assert adm.outstanding == 3  # a refusal takes no slot
    for t in tickets:
        t.release()
    assert adm.outstanding == 0


async def test_queue_full_counts_waiting_and_running() -> None:
    adm = Admission(1, 2)
    first = adm.try_admit()
    await first.start()
    assert adm.running == 1
    waiting = [adm.try_admit(), adm.try_admit()]
    tasks = [await started(t) for t in waiting]
    assert not any(t.done() for t in tasks)
    with pytest.raises(QueueFull):
        adm.try_admit()
    first.release()
    await asyncio.wait_for(tasks[0], 1)
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)
    for t in waiting:
        t.release()
    assert adm.outstanding == 0 and adm.running == 0


async def test_release_frees_a_slot() -> None:
    adm = Admission(1, 2)
    tickets = [adm.try_admit() for _ in range(3)]
    with pytest.raises(QueueFull):
        adm.try_admit()
    tickets[1].release()
    assert adm.outstanding == 2
    again = adm.try_admit()
    with pytest.raises(QueueFull):
        adm.try_admit()
    for t in (tickets[0], tickets[2], again):
        t.release()
    assert adm.outstanding == 0


async def test_release_is_idempotent() -> None:
    adm = Admission(1, 0)
    t = adm.try_admit()
    await t.start()
    t.release()
    t.release()
    assert (adm.outstanding, adm.running) == (0, 0)
    other = adm.try_admit()
    await asyncio.wait_for(other.start(), 1)
    assert adm.running == 1
    other.release()


async def test_zero_zero_behaves_as_capacity_one() -> None:
    adm = Admission(0, 0)
    assert (adm.active_permits, adm.queue_depth, adm.capacity) == (1, 0, 1)
    t = adm.try_admit()
    # The one admitted request can actually run (it does not wait for a permit forever).
    await asyncio.wait_for(t.start(), 1)
    with pytest.raises(QueueFull):
        adm.try_admit()
    t.release()
    adm.try_admit().release()


async def test_negative_queue_depth_is_zero() -> None:
    adm = Admission(2, -5)
    assert adm.capacity == 2


async def test_close_refuses_new_but_admitted_tickets_still_run() -> None:
    adm = Admission(1, 2)
    running = adm.try_admit()
    await running.start()
    queued = adm.try_admit()
    queued_task = await started(queued)
    not_started = adm.try_admit()

    adm.close()
    assert adm.closed
    with pytest.raises(AdmissionClosed):
        adm.try_admit()

    running.release()
    await asyncio.wait_for(queued_task, 1)  # the queued one gets its turn after close
    queued.release()
    await asyncio.wait_for(not_started.start(), 1)  # admitted before close: still runs
    assert adm.running == 1
    not_started.release()
    await asyncio.wait_for(adm.wait_idle(), 1)

    adm.reopen()
    adm.try_admit().release()


async def test_closed_takes_precedence_over_full() -> None:
    adm = Admission(1, 0)
    t = adm.try_admit()
    adm.close()
    with pytest.raises(AdmissionClosed):
        adm.try_admit()
    t.release()


async def test_two_permits_run_two_at_once() -> None:
    adm = Admission(2, 5)
    a, b, c = adm.try_admit(), adm.try_admit(), adm.try_admit()
    await asyncio.wait_for(a.start(), 1)
    await asyncio.wait_for(b.start(), 1)
    assert adm.running == 2
    c_task = await started(c)
    assert not c_task.done()
    b.release()
    await asyncio.wait_for(c_task, 1)
    assert adm.running == 2
    a.release()
    c.release()
    assert (adm.outstanding, adm.running) == (0, 0)


@pytest.mark.parametrize("seed", range(8))
async def test_permits_go_in_the_order_tickets_queued(seed: int) -> None:
    """FIFO against a model. Tickets are admitted 0..7 but call start() in a shuffled
    order (never the admission order), and the permit comes back at random points
    between arrivals; each permit must go to whoever has waited longest. The test
    drives every arrival and release itself and reads the grants off a queue, so the
    expected order is exact and no timing can make a wrong gate pass."""
    rng = random.Random(seed)
    n = 8
    adm = Admission(1, n)
    tickets = [adm.try_admit() for _ in range(n)]
    arrival = list(range(n))
    while arrival == sorted(arrival):
        rng.shuffle(arrival)
    granted: asyncio.Queue[int] = asyncio.Queue()
    finish = [asyncio.Event() for _ in range(n)]
    tasks: dict[int, asyncio.Task] = {}

    async def job(i: int) -> None:
        await tickets[i].start()
        granted.put_nowait(i)
        await finish[i].wait()
        tickets[i].release()

    async def next_grant() -> int:
        return await asyncio.wait_for(granted.get(), 5)

    pending, line, holder = deque(arrival), deque(), None
    grants: list[int] = []
    while pending or holder is not None:
        if pending and (holder is None or rng.random() < 0.6):
            i = pending.popleft()
            tasks[i], joined = begin(lambda i=i: job(i))
            await joined.wait()  # i has called start(): it holds the permit or waits in line
            if holder is None:
                holder = i
                grants.append(await next_grant())
                assert grants[-1] == holder
            else:
                line.append(i)
                assert granted.empty(), f"{granted.get_nowait()} got a permit while {holder} held it"
        else:
            finish[holder].set()
            await asyncio.wait_for(tasks[holder], 5)  # released
            holder = line.popleft() if line else None
            if holder is not None:
                grants.append(await next_grant())
                assert grants[-1] == holder, f"permit went to {grants[-1]}; {holder} had waited longest"
    # Nobody idle, so each permit went to the earliest caller of start() still waiting.
    assert grants == arrival
    assert granted.empty()
    assert (adm.outstanding, adm.running) == (0, 0)


async def test_newcomer_does_not_barge_past_a_handed_over_permit() -> None:
    adm = Admission(1, 5)
    a, b, c = adm.try_admit(), adm.try_admit(), adm.try_admit()
    await a.start()
    b_task = await started(b)
    # c's first step is scheduled before b's wake-up, so c asks for a permit after a has
    # handed it over and before b has resumed: where a barging gate would give it away.
    c_task, c_joined = begin(c.start)
    a.release()
    await asyncio.wait_for(b_task, 1)
    assert c_joined.is_set()
    assert not c_task.done()
    assert adm.running == 1
    b.release()
    await asyncio.wait_for(c_task, 1)
    c.release()


async def test_cancelled_waiter_does_not_leak_the_permit() -> None:
    adm = Admission(1, 5)
    a, b, c = adm.try_admit(), adm.try_admit(), adm.try_admit()
    await a.start()
    b_task = await started(b)
    c_task = await started(c)
    b_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b_task
    b.release()
    assert adm.outstanding == 2
    a.release()
    await asyncio.wait_for(c_task, 1)  # the next waiter still runs
    assert adm.running == 1
    c.release()
    assert (adm.outstanding, adm.running) == (0, 0)
    d = adm.try_admit()
    await asyncio.wait_for(d.start(), 1)
    d.release()


async def test_waiter_cancelled_as_the_permit_is_released() -> None:
    """Cancel a queued ticket and release the permit before its task wakes up.

    The cancelled waiter's future is skipped by the release, so the waiter must still
    end with CancelledError (not a ValueError from its bookkeeping) and the permit
    must go to the next in line.
    """
    adm = Admission(1, 5)
    a, b, c = adm.try_admit(), adm.try_admit(), adm.try_admit()
    await a.start()
    b_task = await started(b)
    c_task = await started(c)
    b_task.cancel()
    a.release()  # same tick: b's future is already cancelled, c must get the permit
    with pytest.raises(asyncio.CancelledError):
        await b_task
    b.release()
    await asyncio.wait_for(c_task, 1)
    assert adm.running == 1
    c.release()
    assert (adm.outstanding, adm.running) == (0, 0)


async def test_waiter_cancelled_after_being_handed_the_permit_passes_it_on() -> None:
    adm = Admission(1, 5)
    a, b, c = adm.try_admit(), adm.try_admit(), adm.try_admit()
    await a.start()
    b_task = await started(b)
    c_task = await started(c)
    a.release()  # b's future gets the permit...
    b_task.cancel()  # ...but b is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await b_task
    b.release()
    await asyncio.wait_for(c_task, 1)
    assert adm.running == 1
    c.release()
    assert (adm.outstanding, adm.running) == (0, 0)


async def test_context_manager_releases_on_cancel_while_queued() -> None:
    adm = Admission(1, 5)
    a = adm.try_admit()
    await a.start()
    entered = asyncio.Event()

    async def use(ticket: Ticket) -> None:
        async with ticket:
            entered.set()

    b = adm.try_admit()
    b_task, joined = begin(lambda: use(b))
    await joined.wait()  # b waits in line
    b_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b_task
    assert not entered.is_set()
    assert adm.outstanding == 1  # b's slot came back
    a.release()
    assert (adm.outstanding, adm.running) == (0, 0)


async def test_wait_idle() -> None:
    adm = Admission(1, 5)
    await asyncio.wait_for(adm.wait_idle(), 1)  # idle from the start
    a, b = adm.try_admit(), adm.try_admit()
    await a.start()
    b_task = await started(b)
    idle, waiting = begin(adm.wait_idle)
    await waiting.wait()  # wait_idle() has run: had it returned, the task would be done
    assert not idle.done()
    a.release()
    await asyncio.wait_for(b_task, 1)
    assert not idle.done()
    b.release()
    await asyncio.wait_for(idle, 1)
    # Busy again, then idle again.
    c = adm.try_admit()
    idle2, waiting2 = begin(adm.wait_idle)
    await waiting2.wait()
    assert not idle2.done()
    c.release()
    await asyncio.wait_for(idle2, 1)
