"""What every connection handler shares: the router (with each backend's admission
gate and circuit breaker), the models by name, the status broadcaster, the activity
log and the metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..proto.admin import BackendState
from .observe.activity import ActivityLog, NullActivityLog, activity_record
from .models.manager import ModelManager
from .observe.metrics import Metrics
from .pipeline.breaker import CircuitState, StateChange
from .pipeline.router import Router
from .status import StatusBroadcaster


@dataclass
class DaemonContext:
    router: Router
    broadcaster: StatusBroadcaster
    activity: ActivityLog | NullActivityLog
    metrics: Metrics = field(default_factory=Metrics)
    #: The configured models by name, loaded on demand (issue 20).
    models: ModelManager = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.router.on_change = self.publish_backend_state
        if self.models is None:
            self.models = ModelManager(self.router, self.broadcaster, self.activity)

    def publish_backend_state(self, change: StateChange) -> None:
        """A circuit change goes to admin subscribers and to the activity log (F-10)."""
        retry_in_ms = None if change.retry_in is None else round(change.retry_in * 1000)
        self.broadcaster.publish(BackendState(backend=change.backend, state=change.state.value,
                                              reason=change.reason, failures=change.failures,
                                              retry_in_ms=retry_in_ms))
        self.activity.logger.log(logging.INFO if change.state is CircuitState.CLOSED else logging.WARNING,
                                 "backend %s: circuit %s (%s)", change.backend, change.state.value, change.reason,
                                 extra=activity_record("router", "backend_state", backend=change.backend,
                                                       state=change.state.value, reason=change.reason or "",
                                                       failures=change.failures))
