"""Each backend's circuit breaker (THREAT_MODEL F-10, ADR 0016).

Consecutive *backend* faults (unavailable, not ready, internal, a stream that died
mid-way) open the circuit: for a cool-down no request goes there, so the next backend
in order serves at once instead of after a timeout. Then one trial request is let
through (half-open); its success closes the circuit, its failure opens it again for a
doubled cool-down (bounded). What a client can cause on purpose - a request the
backend rightly refuses, a client that hangs up - is neither a failure nor a success.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ...engine.backend import Fault

# The router's logger, which operators filter on (circuit changes themselves go to the
# activity log, through the listener).
log = logging.getLogger("inferd.router")

#: Fault kinds that are the backend's doing and count towards opening its circuit.
#: Everything else a backend raises (invalid_request, unsupported, attachment or
#: tool-call refusals) is about the request, which a client controls (F-10).
BACKEND_FAULTS = frozenset({Fault.UNAVAILABLE, Fault.NOT_READY, Fault.INTERNAL})


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a backend's circuit opens and for how long (config: `breaker`)."""

    #: Consecutive backend faults that open the circuit.
    failures: int = 3
    #: Seconds the circuit stays open before one trial request.
    cooldown: float = 30.0
    #: A failed trial doubles the cool-down, up to this many seconds.
    max_cooldown: float = 300.0


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of one backend's circuit, as the admin socket publishes it."""

    backend: str
    state: CircuitState
    reason: str | None
    failures: int
    #: Seconds until a trial request may go there (open only).
    retry_in: float | None = None


class Breaker:
    """One backend's circuit. Not thread-safe: it lives on the event loop.

    Every request that goes to the backend holds an `Attempt` from `admit()` and
    settles it once: `succeeded()`, `failed(reason)`, or `release()` for an outcome
    that says nothing about the backend. Verdicts of attempts admitted before the
    last state change are ignored, so a burst of requests that were already in
    flight when the circuit opened cannot flip it back and forth.
    """

    def __init__(self, name: str, policy: BreakerPolicy = BreakerPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self.state = CircuitState.CLOSED
        #: Consecutive backend faults in the current closed period (or the one that opened it).
        self.failures = 0
        self.reason: str | None = None
        self._cooldown = policy.cooldown
        self._retry_at = 0.0
        self._trial = False  # a half-open trial is in flight
        self._epoch = 0  # bumped on every state change
        self.listener: Callable[[StateChange], None] | None = None

    @property
    def trial_in_flight(self) -> bool:
        return self._trial

    def retry_in(self) -> float:
        """Seconds left of the cool-down (0 when not open, or when a trial may go)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(self._retry_at - self._clock(), 0.0)

    def would_admit(self) -> bool:
        """What `admit()` would answer, without taking a trial or changing state."""
        if self.state is CircuitState.OPEN:
            return self._clock() >= self._retry_at
        return not (self.state is CircuitState.HALF_OPEN and self._trial)

    def admit(self) -> "Attempt | None":
        """An attempt to send one request there, or None while the circuit refuses."""
        if self.state is CircuitState.OPEN:
            if self._clock() < self._retry_at:
                return None
            self._change(CircuitState.HALF_OPEN, self.reason)
        if self.state is CircuitState.HALF_OPEN:
            if self._trial:
                return None
            self._trial = True
            return Attempt(self, self._epoch, trial=True)
        return Attempt(self, self._epoch, trial=False)

    def refusal(self) -> str:
        """Why `admit()` said no, for the client's error message."""
        if self.state is CircuitState.HALF_OPEN:
            return f'backend "{self.name}" is half-open: its trial request is still in flight'
        left = self.retry_in()
        return (f'backend "{self.name}" is open after {self.failures} consecutive failure'
                f'{"" if self.failures == 1 else "s"} ({self.reason}); next trial in {left:.0f} s')

    # ---- verdicts (called through Attempt) ----------------------------------------------

    def _settle(self, attempt: "Attempt", ok: bool | None, reason: str | None) -> None:
        if attempt.trial and attempt.epoch == self._epoch:
            self._trial = False
        if ok is None or attempt.epoch != self._epoch:
            return
        if ok:
            if self.state is CircuitState.HALF_OPEN:
                self._cooldown = self.policy.cooldown
                self.failures = 0
                self._change(CircuitState.CLOSED, "trial request succeeded")
            else:
                self.failures = 0
            return
        self.failures += 1
        self.reason = reason
        if self.state is CircuitState.HALF_OPEN:
            # The trial failed: stay away for longer, within bounds.
            self._cooldown = min(self._cooldown * 2, max(self.policy.max_cooldown, self.policy.cooldown))
            self._open(reason)
        elif self.failures >= self.policy.failures:
            self._open(reason)

    def _open(self, reason: str | None) -> None:
        self._retry_at = self._clock() + self._cooldown
        self._change(CircuitState.OPEN, reason, retry_in=self._cooldown)

    def _change(self, state: CircuitState, reason: str | None, retry_in: float | None = None) -> None:
        self.state = state
        self._epoch += 1
        self._trial = False
        change = StateChange(self.name, state, reason, self.failures, retry_in)
        # The listener logs the change (the daemon's activity log), once.
        if self.listener is not None:
            try:
                self.listener(change)
            except Exception:  # noqa: BLE001 - publishing must never break routing
                log.exception("backend %s: publishing a circuit change failed", self.name)


class Attempt:
    """One request's use of a backend; settle it exactly once (later calls are no-ops)."""

    __slots__ = ("_breaker", "epoch", "trial", "settled")

    def __init__(self, breaker: Breaker, epoch: int, trial: bool) -> None:
        self._breaker = breaker
        self.epoch = epoch
        self.trial = trial
        self.settled = False

    def succeeded(self) -> None:
        self._settle(True, None)

    def failed(self, reason: str) -> None:
        self._settle(False, reason)

    def release(self) -> None:
        """No verdict: the outcome said nothing about the backend (a half-open trial
        slot is handed back for the next request)."""
        self._settle(None, None)

    def _settle(self, ok: bool | None, reason: str | None) -> None:
        if self.settled:
            return
        self.settled = True
        self._breaker._settle(self, ok, reason)
