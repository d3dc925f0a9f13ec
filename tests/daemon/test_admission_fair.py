"""Fairness between apps in the admission gate (THREAT_MODEL F-21, ADR 0030), and the
queue places it reports (issue 22).

Apps are peer labels as the sockets write them. Every order is made by the test: a
ticket's task signals in the step in which it calls start(), so when the signal
arrives it holds its permit or has its place in line. Nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from daemon_harness import begin

from inferd.daemon.pipeline.admission import Admission, QueueFull, Ticket, app_of

HOG, OTHER, THIRD, FOURTH, FIFTH = (f"unix:1000:{pid}" for pid in (101, 202, 303, 404, 505))


async def waiting(ticket: Ticket, places: list[int] | None = None) -> asyncio.Task:
    async def report(place: int) -> None:
        places.append(place)  # type: ignore[union-attr]

    task, joined = begin(lambda: ticket.start(report if places is not None else None))
    await joined.wait()
    return task


def gauges_agree(adm: Admission) -> bool:
    """What /metrics computes (outstanding - running) is what waits in line."""
    return adm.outstanding - adm.running == adm.waiting and adm.running <= adm.active_permits


def test_apps_are_processes_on_unix_and_hosts_on_tcp() -> None:
    assert app_of("unix:1000:42") == "unix:1000:42"
    assert app_of("tcp:127.0.0.1:50001") == app_of("tcp:127.0.0.1:50002") == "tcp:127.0.0.1"
    assert app_of("tcp:::1:50001") == "tcp:::1"
    assert app_of("tcp") == "tcp" and app_of("") == ""


async def test_a_freed_permit_goes_to_the_app_with_none_before_the_hogs_backlog() -> None:
    adm = Admission(1, 10)
    held = adm.try_admit(HOG)
    await held.start()
    backlog = [adm.try_admit(HOG) for _ in range(5)]
    backlog_tasks = [await waiting(t) for t in backlog]
    other = adm.try_admit(OTHER)
    other_task = await waiting(other)
    assert adm.waiting == 6 and gauges_agree(adm)

    held.release()  # the hog's own backlog waited longer, but OTHER has no permit
    await asyncio.wait_for(other_task, 1)
    assert not any(t.done() for t in backlog_tasks)
    other.release()
    await asyncio.wait_for(backlog_tasks[0], 1)  # then the hog's line, in its own FIFO order
    for i, t in enumerate(backlog):
        t.release()
        if i + 1 < len(backlog):
            await asyncio.wait_for(backlog_tasks[i + 1], 1)
    assert (adm.outstanding, adm.running, adm.waiting) == (0, 0, 0)


async def test_two_apps_on_one_permit_take_turns() -> None:
    adm = Admission(1, 10)
    first = adm.try_admit(HOG)
    await first.start()
    tickets = {HOG: [adm.try_admit(HOG) for _ in range(3)], OTHER: [adm.try_admit(OTHER) for _ in range(3)]}
    tasks = {id(t): await waiting(t) for app in (HOG, OTHER) for t in tickets[app]}
    order: list[str] = []
    holder = first
    for _ in range(6):
        holder.release()
        done, _ = await asyncio.wait([tasks[id(t)] for ts in tickets.values() for t in ts if not tasks[id(t)].done()],
                                     return_when=asyncio.FIRST_COMPLETED, timeout=1)
        (task,) = done
        holder = next(t for ts in tickets.values() for t in ts if tasks[id(t)] is task)
        order.append(holder.app)
    holder.release()
    assert order == [OTHER, HOG, OTHER, HOG, OTHER, HOG]
    assert (adm.outstanding, adm.running) == (0, 0)


async def test_with_many_permits_the_newcomer_gets_the_next_one() -> None:
    adm = Admission(4, 8)
    running = [adm.try_admit(HOG) for _ in range(4)]
    for t in running:
        await t.start()
    backlog = [adm.try_admit(HOG) for _ in range(8)]
    backlog_tasks = [await waiting(t) for t in backlog]
    with pytest.raises(QueueFull):
        adm.try_admit(HOG)  # one app alone: a full queue is full
    other = adm.try_admit(OTHER)  # F-21: the hog gives up its newest place
    other_task = await waiting(other)
    with pytest.raises(QueueFull):
        await asyncio.wait_for(backlog_tasks[-1], 1)
    assert adm.outstanding == adm.capacity and gauges_agree(adm)
    running[0].release()
    await asyncio.wait_for(other_task, 1)  # the next permit, ahead of 7 older waiters
    assert not any(t.done() for t in backlog_tasks[:-1])
    for t in backlog_tasks[:-1]:
        t.cancel()
    await asyncio.gather(*backlog_tasks[:-1], return_exceptions=True)
    for t in [*running, *backlog, other]:
        t.release()
    assert (adm.outstanding, adm.running, adm.waiting) == (0, 0, 0)


async def test_a_full_queue_is_shared_max_min() -> None:
    """Each newcomer takes the newest place of the app holding the most, while that app
    holds two more than the newcomer's; never a place that would just swap two apps."""
    adm = Admission(1, 3)
    hog_running = adm.try_admit(HOG)
    await hog_running.start()
    hog_waiting = [adm.try_admit(HOG) for _ in range(3)]
    hog_tasks = [await waiting(t) for t in hog_waiting]
    newcomers = []
    for app in (OTHER, THIRD, FOURTH):
        ticket = adm.try_admit(app)
        newcomers.append((ticket, await waiting(ticket)))
        assert adm.outstanding == adm.capacity and gauges_agree(adm)
    # Newest first: the hog's three waiting places went to the three newcomers.
    for task in reversed(hog_tasks):
        with pytest.raises(QueueFull):
            await asyncio.wait_for(task, 1)
    assert adm.held(HOG) == 1 and all(adm.held(a) == 1 for a in (OTHER, THIRD, FOURTH))
    with pytest.raises(QueueFull):
        adm.try_admit(FIFTH)  # nobody holds two more than FIFTH's 0 and waits: full
    assert adm.held(FIFTH) == 0
    for t in hog_waiting:
        t.release()  # idempotent with the place already given away
    assert adm.outstanding == adm.capacity
    hog_running.release()
    for ticket, task in newcomers:
        await asyncio.wait_for(task, 1)
        ticket.release()
    assert (adm.outstanding, adm.running, adm.waiting) == (0, 0, 0)


async def test_places_follow_the_serving_order() -> None:
    """Issue 22: a waiter hears its place when it starts waiting and whenever it
    changes - here because another app's request is served before it."""
    adm = Admission(1, 10)
    holder = adm.try_admit(HOG)
    await holder.start()
    h1, h2 = adm.try_admit(HOG), adm.try_admit(HOG)
    h1_places: list[int] = []
    h2_places: list[int] = []
    h1_task = await waiting(h1, h1_places)
    h2_task = await waiting(h2, h2_places)
    await asyncio.sleep(0)
    assert (h1_places, h2_places) == ([1], [2])
    other = adm.try_admit(OTHER)
    other_places: list[int] = []
    other_task = await waiting(other, other_places)
    for _ in range(3):
        await asyncio.sleep(0)  # let the nudged waiters write their new places
    # OTHER runs nothing and goes first; the hog's waiters move back one.
    assert (other_places, h1_places, h2_places) == ([1], [1, 2], [2, 3])
    holder.release()
    await asyncio.wait_for(other_task, 1)
    for _ in range(3):
        await asyncio.sleep(0)
    assert (h1_places, h2_places) == ([1, 2, 1], [2, 3, 2])
    h1_task.cancel()  # a waiter that leaves: the one behind it moves up
    with pytest.raises(asyncio.CancelledError):
        await h1_task
    h1.release()
    for _ in range(3):
        await asyncio.sleep(0)
    assert h2_places == [2, 3, 2, 1]
    other.release()
    await asyncio.wait_for(h2_task, 1)
    h2.release()
    assert (adm.outstanding, adm.running, adm.waiting) == (0, 0, 0)


async def test_a_report_that_fails_leaves_the_line_and_passes_nothing_on() -> None:
    adm = Admission(1, 10)
    holder = adm.try_admit(HOG)
    await holder.start()
    gone = adm.try_admit(OTHER)

    async def broken(place: int) -> None:
        raise ConnectionResetError("peer went away")

    task, joined = begin(lambda: gone.start(broken))
    await joined.wait()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, 1)
    gone.release()
    assert (adm.outstanding, adm.running, adm.waiting) == (1, 1, 0)
    after = adm.try_admit(THIRD)
    after_task = await waiting(after)
    holder.release()
    await asyncio.wait_for(after_task, 1)
    after.release()
    assert (adm.outstanding, adm.running, adm.waiting) == (0, 0, 0)
