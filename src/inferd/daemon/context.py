"""What every connection handler shares: the router (with each backend's admission
gate), the status broadcaster and the activity log."""

from __future__ import annotations

from dataclasses import dataclass

from .observe.activity import ActivityLog, NullActivityLog
from .pipeline.router import Router
from .status import StatusBroadcaster


@dataclass
class DaemonContext:
    router: Router
    broadcaster: StatusBroadcaster
    activity: ActivityLog | NullActivityLog
