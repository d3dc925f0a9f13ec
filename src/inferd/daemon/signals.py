"""Signal handling in one place, installed for the life of one Server and then restored.

SIGTERM/SIGINT ask for a drain; a second one while the drain runs exits at once
(exit status 128 + signal number, as a shell reports a killed process), so an
operator is never stuck behind a long drain. SIGHUP asks for a reload. The
previous handlers come back on `restore()`, so a Server can be embedded in a
program (or a test) that has its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("inferd.signals")


def _hard_exit(code: int) -> None:
    logging.shutdown()
    os._exit(code)


class SignalHandlers:
    def __init__(self, on_shutdown: Callable[[], None], on_reload: Callable[[], None],
                 force_exit: Callable[[int], None] = _hard_exit) -> None:
        self._on_shutdown = on_shutdown
        self._on_reload = on_reload
        self._force_exit = force_exit
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stops = 0

    def install(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if sys.platform == "win32":  # pragma: no cover - no add_signal_handler there
            self._previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, lambda signum, _f: loop.call_soon_threadsafe(self._stop, signum))
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self._stop, sig)
        self._previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)

    def _stop(self, signum: int) -> None:
        self._stops += 1
        if self._stops > 1:
            log.warning("second %s: exiting now without waiting for the drain", signal.Signals(signum).name)
            self._force_exit(128 + signum)
            return
        self._on_shutdown()

    def restore(self) -> None:
        loop, self._loop = self._loop, None
        for sig, previous in self._previous.items():
            if loop is not None and sys.platform != "win32":
                loop.remove_signal_handler(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
