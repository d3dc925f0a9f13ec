"""An event loop whose clock the test drives: time passes only when the loop has
nothing to do but wait for a timer, and then it passes at once.

For tests of timeouts, back-offs and deadlines: everything asyncio times (`sleep`,
`timeout`, `wait_for`, `call_later`, `loop.time()`) runs on this clock, so a 0.3 s
timeout takes no real time and a test can assert that it fired after exactly 0.3 s.

What may still be on its way when the loop looks idle is waited for in real time:
bytes the kernel is moving between two sockets (a short real grace before each
jump) and jobs in the loop's executor (getaddrinfo, `to_thread`), during which the
loop waits for real and the clock advances only by a wait that ran out. Peers in
other threads or processes are outside it: use the real loop for those.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

#: How long the kernel gets to deliver what is in flight on a socket before the loop
#: counts as idle. Loopback delivery happens within the sending call; this is slack.
KERNEL_GRACE = 0.01


class _IdleSkippingSelector(selectors.BaseSelector):
    """The real selector, except that a wait for a timer that nothing can interrupt
    returns at once with the clock moved to that timer."""

    def __init__(self, threads_busy: Callable[[], bool]) -> None:
        self._real = selectors.DefaultSelector()
        self._threads_busy = threads_busy
        self.now = 1000.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._real.select(0)
        if timeout is None or self._threads_busy():
            ready = self._real.select(timeout)  # an answer can only come from outside
        else:
            ready = self._real.select(min(timeout, KERNEL_GRACE))
        if not ready and timeout is not None:
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on the driven clock (see the module docstring)."""

    def __init__(self) -> None:
        self._executor_jobs = 0
        self._clock = _IdleSkippingSelector(lambda: self._executor_jobs > 0)
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1

        def finished(_: asyncio.Future[Any]) -> None:
            self._executor_jobs -= 1

        future.add_done_callback(finished)
        return future


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async test `test` to its end on a VirtualTimeLoop of its own.

    The result is a plain test to pytest: the fixtures it takes must not be async
    ones (those would live on pytest-asyncio's loop, not this one).
    """

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
