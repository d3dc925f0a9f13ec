"""Which backend serves a request. The daemon decides; there is no backend field on the wire.

Priority is config order: the first backend that is ready (and, for embeddings, can
embed) gets the request. No retry and no failover mid-request (upstream ADR 0007).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.backend import Backend, BackendCapabilities


@dataclass
class Slot:
    label: str  # config entry name: what capabilities frames call it
    backend: Backend
    caps: BackendCapabilities


class Router:
    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots

    def dispatch(self) -> Slot | None:
        for slot in self.slots:
            if slot.backend.ready():
                return slot
        return None

    def dispatch_embed(self) -> Slot | None:
        for slot in self.slots:
            if slot.caps.embed and slot.backend.ready():
                return slot
        return None

    @property
    def can_embed(self) -> bool:
        return any(s.caps.embed for s in self.slots)

    def all_ready(self) -> bool:
        return all(s.backend.ready() for s in self.slots)
