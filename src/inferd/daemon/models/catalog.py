"""The configured models by name (issue 20, ADR 0034).

Every backend entry of the config is a model. It answers to its entry name, its
`aliases`, and for a local GGUF its file name with and without `.gguf`; once loaded,
also to the name the model reports (what `/v1/models` showed before names existed).
Entries that share an alias form a failover group, tried in config order. A request
that names no model gets the default: `default_model` if the config sets one, else
every entry loaded at boot, in config order (exactly the routing before names).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ConfigFile, LlamaCppEntry, MockEntry, OpenAIEntry
from ..pipeline.keepalive import parse_keep_alive

if TYPE_CHECKING:
    from ..pipeline.router import BackendEntry
    from .budget import Estimate


class UnknownModel(LookupError):
    """A name no configured model answers to; the message lists what is available.
    THREAT_MODEL F-25: a name only ever selects a configured entry, never a path."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        listed = ", ".join(available) if available else "none"
        super().__init__(f"model {name!r} not found; available: {listed}")


@dataclass(eq=False)
class Model:
    """One configured model and its life: unloaded, loading, loaded."""

    name: str
    entry: MockEntry | LlamaCppEntry | OpenAIEntry
    names: list[str]
    boot: bool
    #: Seconds it stays loaded after a request when the request says nothing.
    keep_alive: float
    loaded: "BackendEntry | None" = None
    #: The load (or unload) in progress, which every request for it awaits.
    task: "asyncio.Task[Any] | None" = None
    #: Requests routed to it and not yet done (queued included): never evicted meanwhile.
    users: int = 0
    last_used: float = 0.0
    #: Loop time when it is unloaded if still idle; None: not counting down.
    expires_at: float | None = None
    estimate: "Estimate | None" = None
    #: Why the last load failed (shown by `inferd ps`), until one works.
    error: str | None = None

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def loadable(self) -> bool:
        """Loaded and unloaded by the daemon (a remote is there or not, on its own)."""
        return not isinstance(self.entry, OpenAIEntry)

    @property
    def can_embed(self) -> bool:
        return bool(getattr(self.entry, "embed", False))

    @property
    def state(self) -> str:
        if self.loaded is not None:
            return "loaded"
        return "loading" if self.task is not None else "unloaded"

    @property
    def busy(self) -> bool:
        return self.users > 0 or (self.loaded is not None and self.loaded.admission.outstanding > 0)


def _file_names(entry: Any) -> list[str]:
    if isinstance(entry, LlamaCppEntry):
        if entry.model_path:
            p = Path(entry.model_path)
            return [p.name, p.stem] if p.suffix == ".gguf" else [p.name]
        if entry.model is not None:
            return [entry.model.name]
    return []


@dataclass
class Catalog:
    models: list[Model] = field(default_factory=list)
    by_name: dict[str, list[Model]] = field(default_factory=dict)
    default: list[Model] = field(default_factory=list)
    #: Unknown names go to the default instead of an error (config `unknown_model`).
    lenient: bool = False

    @classmethod
    def from_config(cls, cfg: ConfigFile) -> "Catalog":
        pull_default = parse_keep_alive(cfg.keep_alive)
        cat = cls(lenient=cfg.unknown_model == "default")
        for entry in cfg.backends:
            on_demand = bool(getattr(entry, "on_demand", False))
            own = parse_keep_alive(getattr(entry, "keep_alive", None))
            keep = own if own is not None else (math.inf if not on_demand else pull_default)
            cat.models.append(Model(entry.name, entry, [entry.name, *entry.aliases], not on_demand, keep))  # type: ignore[arg-type]
        for model in cat.models:
            for name in model.names:
                group = cat.by_name.setdefault(name, [])
                if model not in group:
                    group.append(model)
        for model in cat.models:  # file names only where they name one model alone
            for name in _file_names(model.entry):
                cat.learn(model, name)
        if cfg.default_model is not None:
            cat.default = list(cat.by_name[cfg.default_model])
        else:
            cat.default = [m for m in cat.models if m.boot]
        return cat

    def learn(self, model: Model, name: str | None) -> None:
        """Another name `model` answers to, unless some other model has it already."""
        if not name or name in self.by_name:
            return
        self.by_name[name] = [model]
        model.names.append(name)

    def lookup(self, name: str) -> list[Model] | None:
        group = self.by_name.get(name)
        if group is None:
            folded = name.casefold().removesuffix(":latest")
            group = next((g for n, g in self.by_name.items() if n.casefold() == folded), None)
        return group

    def group(self, name: str | None, embed: bool = False) -> list[Model]:
        """The models a request naming `name` may be served by, in priority order."""
        if name is None:
            group = self.default
            if embed and not any(m.can_embed for m in group):
                # An embedding model beside the chat model serves unnamed embed requests.
                group = [m for m in self.models if m.can_embed] or group
            return group
        group = self.lookup(name)
        if group is None:
            if self.lenient:
                return self.group(None, embed)
            raise UnknownModel(name, self.available())
        return group

    def available(self) -> list[str]:
        return [m.name for m in self.models]

    def find(self, label: str) -> Model | None:
        return next((m for m in self.models if m.name == label), None)
