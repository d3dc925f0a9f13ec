"""What every connection handler shares: the gate, the router, the log."""

from __future__ import annotations

from dataclasses import dataclass

from .activity import ActivityLog, NullActivityLog
from .admin import StatusBroadcaster
from .admission import Admission
from .router import Router


@dataclass
class DaemonContext:
    admission: Admission
    router: Router
    broadcaster: StatusBroadcaster
    activity: ActivityLog | NullActivityLog
    write_timeout: float | None = 60.0
