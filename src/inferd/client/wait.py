"""Retry dialing until the daemon is ready (upstream-protocol §7.2).

The daemon binds its inference sockets only after the model is ready (F-13), so
"connected" is the readiness signal: keep dialing while the failure means "not up
yet", give up at once when it means "you may never connect".
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import ClientError, ConnectTimeout
from .transport import bounded, check_timeout

T = TypeVar("T")

INITIAL_DELAY = 0.1
MAX_DELAY = 5.0
# Less time than this left is no time for another attempt: give up instead.
_MIN_ATTEMPT = 0.001

_TRANSIENT_ERRNOS = frozenset((errno.ECONNREFUSED, errno.ENOENT, errno.ETIMEDOUT, errno.EADDRNOTAVAIL))

# Windows reports pipe and socket failures through winerror; the messages below
# cover them too, these catch localised messages.
_TRANSIENT_WINERRORS = frozenset(
    (
        2,  # ERROR_FILE_NOT_FOUND: the pipe does not exist yet
        231,  # ERROR_PIPE_BUSY: all pipe instances are busy
        1225,  # ERROR_CONNECTION_REFUSED
        10060,  # WSAETIMEDOUT
        10061,  # WSAECONNREFUSED
        10049,  # WSAEADDRNOTAVAIL
    )
)

_TRANSIENT_MESSAGES = (
    "all pipe instances are busy",
    "the system cannot find",
    "target machine actively refused",
)


class WaitError(ClientError):
    """`dial_and_wait_ready` gave up: WaitTimeout or WaitPermanent (seed 003's one
    error type for the wait). A ClientError like every failure of this library."""


class WaitTimeout(WaitError, TimeoutError):
    """The daemon did not accept a connection within `timeout` seconds; the last
    failure is the `__cause__`."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"daemon not ready within {timeout:g}s")
        self.timeout = timeout


class WaitPermanent(WaitError):
    """Dialing failed in a way retrying cannot fix; the original is `.error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def is_transient_dial_error(exc: BaseException) -> bool:
    """True when a dial failure means the daemon is not (yet) listening."""
    if not isinstance(exc, OSError) or isinstance(exc, PermissionError):
        return False
    if isinstance(exc, (ConnectionRefusedError, FileNotFoundError, TimeoutError)):
        return True
    if exc.errno in _TRANSIENT_ERRNOS:
        return True
    if getattr(exc, "winerror", None) in _TRANSIENT_WINERRORS:
        return True
    message = str(exc).lower()
    return any(needle in message for needle in _TRANSIENT_MESSAGES)


async def dial_and_wait_ready(
    timeout: float, dial: Callable[[], Awaitable[T]], *, attempt_timeout: float | None = None
) -> T:
    """Call `dial` until it succeeds, backing off 100 ms, 200 ms, ... up to 5 s.

    Returns within `timeout` seconds. The first attempt is immediate. Each attempt
    is bounded by the time that is left (and by `attempt_timeout`, if given): an
    attempt that hangs, such as a connect to a daemon whose accept queue is full
    or a dial that waits for an answer that never comes, is cancelled at the
    deadline. An attempt cut short this way counts as "not ready yet", like a
    refused connection; so does a ConnectTimeout from the dialer itself.

    The sleeps between attempts are clamped to the time that is left, and no
    attempt starts once the deadline has passed; WaitTimeout then carries the last
    failure as its `__cause__`. (Upstream overshoots the deadline by up to one
    back-off step; this does not.) A `timeout` of 0 or less means one attempt,
    bounded only by the dialer's own connect timeout (and `attempt_timeout`).
    """
    cap = check_timeout("attempt_timeout", attempt_timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = INITIAL_DELAY
    left = timeout
    while True:
        budget = left if left > 0 else None
        if cap is not None:
            budget = cap if budget is None else min(budget, cap)
        try:
            return await _attempt(dial, budget)
        except Exception as exc:
            if not is_transient_dial_error(exc):
                raise WaitPermanent(exc) from exc
            last = exc
        left = deadline - loop.time()
        if left < _MIN_ATTEMPT:
            raise WaitTimeout(timeout) from last
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, MAX_DELAY)
        left = deadline - loop.time()
        if left < _MIN_ATTEMPT:
            raise WaitTimeout(timeout) from last


async def _attempt(dial: Callable[[], Awaitable[T]], budget: float | None) -> T:
    if budget is None:
        return await dial()
    return await bounded(
        dial(), budget, lambda: ConnectTimeout(f"dial attempt did not finish within {budget:g}s", budget)
    )
