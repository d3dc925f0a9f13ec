"""The one rate limit on refusal records, for every surface (THREAT_MODEL F-4, F-22; ADR 0033).

A refusal costs the refused peer nothing, so a peer can ask for thousands a second:
a record per refusal would rotate the owner's history out of the activity log (F-4)
and spend a core on formatting. Every refusal site therefore asks one `Throttle`
whether its record is due: the first refusal of a kind is logged at once, later ones
of the same kind at most once per interval, and the record that ends a quiet spell
says how many were held back (`suppressed`). The kinds are a fixed set (reason x
surface), never a peer's address, so the table stays small whatever peers do.

`log_refusal` is the call every surface makes; `ThrottleFilter` puts the same limit on
a library's own warnings (uvicorn's "Invalid HTTP request received." is one per bad
request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .activity import activity_record

#: A refusal kind is logged at most once per this many seconds.
REFUSAL_LOG_INTERVAL_SECS = 10.0
#: Kinds remembered at most; past it the table is cleared (a kind then logs once more).
MAX_KINDS = 1024


class Throttle:
    """At most one record per kind per `interval` seconds, counting the ones held back."""

    def __init__(self, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = REFUSAL_LOG_INTERVAL_SECS if interval is None else interval
        self._clock = clock
        self._kinds: dict[str, tuple[float, int]] = {}

    def due(self, kind: str) -> int | None:
        """None: stay quiet (counted). Otherwise log now, saying this many were held back."""
        now = self._clock()
        last, quiet = self._kinds.get(kind, (float("-inf"), 0))
        if now - last < self.interval:
            self._kinds[kind] = (last, quiet + 1)
            return None
        if len(self._kinds) >= MAX_KINDS and kind not in self._kinds:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return quiet

    def held_back(self, kind: str) -> int:
        """Refusals of `kind` not logged since its last record."""
        return self._kinds.get(kind, (0.0, 0))[1]


def log_refusal(throttle: Throttle, logger: logging.Logger, name: str, message: str, *,
                surface: str, level: int = logging.WARNING, **fields: Any) -> bool:
    """Log refusal `name` on `surface` unless its kind was logged within the interval.

    Returns whether a record was written. `message` is the human line (stderr);
    `fields` the record's structured part (never a secret: F-3).
    """
    quiet = throttle.due(f"{name}:{surface}")
    if quiet is None:
        return False
    logger.log(level, "%s", message, extra=activity_record("activity", name, surface=surface,
                                                           suppressed=quiet or None, **fields))
    return True


class ThrottleFilter(logging.Filter):
    """A logging filter that lets through one record per message template per interval."""

    def __init__(self, throttle: Throttle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True  # a library's errors are not a peer's doing: never held back
        quiet = self.throttle.due(str(record.msg))
        if quiet is None:
            return False
        if quiet:
            record.msg = f"{record.msg} ({quiet} more like this not logged)"
        return True
