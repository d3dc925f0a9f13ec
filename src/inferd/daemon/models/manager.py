"""Models on demand: route a request to the model it names, load it if need be, keep
it warm for its keep_alive, unload it when that runs out, and keep the loaded ones
within the memory budget (issue 20, ADR 0034).

A request holds a `Lease` on the models of its group from routing to its last byte:
a leased model is never evicted or expired. When the last lease of a model ends, its
countdown starts: the request's keep_alive if it gave one (0: unload now; math.inf:
never), else the model's default. One loop timer fires at the earliest expiry.

Loads happen one at a time (the budget is checked against what is loaded, as
Ollama's scheduler does); each load is one task that every request for that model
awaits, shielded, so a client that leaves does not abort a load others wait for.
Other models keep serving meanwhile. Before a load the model's estimate is compared
with the budget; idle models are unloaded least recently used first until it fits;
if even then it does not, the request is refused naming what it needs and what is free.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ...engine.backend import Fault
from ...models.gguf import GGUFError, read_gguf
from ...proto.admin import ModelState
from ..config import ConfigFile, LlamaCppEntry, MockEntry
from ..observe.activity import ActivityLog, NullActivityLog, activity_record
from ..pipeline.router import BackendEntry, Needs, Router
from ..status import StatusBroadcaster
from .budget import Estimate, estimate, human, parse_budget
from .catalog import Catalog, Model, UnknownModel

log = logging.getLogger("inferd.models")


class ModelRefused(Exception):
    """A request the models cannot serve; the pipeline turns it into its Refused."""

    def __init__(self, kind: Fault, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Hooks(Protocol):
    """What the daemon does for the manager: bring a model up, install it, take it out."""

    async def build(self, model: Model, phase: Callable[[Any], None]) -> BackendEntry: ...

    def install(self, entry: BackendEntry) -> None: ...

    def uninstall(self, entry: BackendEntry) -> None: ...

    async def stop(self, entry: BackendEntry) -> None: ...


class Lease:
    """The models a request may be served by, held from routing until it is done."""

    __slots__ = ("manager", "models", "entries", "keep_alive", "served")

    def __init__(self, manager: "ModelManager", models: list[Model], keep_alive: float | None) -> None:
        self.manager = manager
        self.models = models
        self.entries: list[BackendEntry] = []
        self.keep_alive = keep_alive
        self.served: BackendEntry | None = None
        for m in models:
            m.users += 1

    def release(self) -> None:
        models, self.models = self.models, []
        self.manager._released(models, self.served, self.keep_alive)


class ModelManager:
    def __init__(self, router: Router, broadcaster: StatusBroadcaster,
                 activity: ActivityLog | NullActivityLog) -> None:
        self.router = router
        self.broadcaster = broadcaster
        self.activity = activity
        self.catalog = Catalog()
        #: Bytes the loaded models may take together; 0: not configured (no limit).
        self.budget = 0
        self.hooks: Hooks | None = None
        self.models_home: str | None = None
        self._load_lock: asyncio.Lock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._joiners: set[asyncio.Task[Any]] = set()
        #: The clock expiries are counted on (monotonic); the wire says them in wall time.
        self._clock = time.monotonic

    # ---- configuration ------------------------------------------------------------------

    def configure(self, cfg: ConfigFile, hooks: Hooks) -> None:
        """A new catalog for `cfg` (at boot and at each reload); nothing is loaded yet."""
        self.catalog = Catalog.from_config(cfg)
        self.budget = parse_budget(cfg.memory_budget)
        self.hooks = hooks
        self.models_home = cfg.models_home

    def adopt(self, entries: list[BackendEntry]) -> None:
        """The backends the daemon brought up at boot (or reload) are these models, loaded."""
        now = self._now()
        for entry in entries:
            model = self.catalog.find(entry.label)
            if model is None:
                continue
            model.loaded, model.last_used, model.error = entry, now, None
            self.catalog.learn(model, entry.caps.model)
            if math.isfinite(model.keep_alive):
                model.expires_at = now + model.keep_alive
            self._spawn(self._size_then_publish(model))
        self._arm()

    def detach(self) -> None:
        """Forget every model (a reload replaces them; the daemon stops their backends),
        and stop waiting for remotes that never answered."""
        self._disarm()
        for m in self.catalog.models:
            m.loaded, m.expires_at = None, None
        for task in self._joiners:
            task.cancel()
        self._joiners.clear()
        self.catalog = Catalog()  # a load still in flight sees it was overtaken and stops

    def join_later(self, models: list[Model]) -> None:
        """Remotes that did not answer at boot: each joins its group when it answers
        (the daemon is ready meanwhile with the members that are up)."""
        for model in models:
            task = self._spawn(self._join(model))
            self._joiners.add(task)
            task.add_done_callback(self._joiners.discard)

    async def _join(self, model: Model) -> None:
        assert self.hooks is not None

        def phase(p: Any) -> None:
            self.broadcaster.publish(ModelState(model=model.name, state="loading", phase=p))

        entry = await self.hooks.build(model, phase)  # probes until the remote answers
        model.loaded, model.last_used = entry, self._now()
        self.hooks.install(entry)
        self.catalog.learn(model, entry.caps.model)
        self.activity.logger.info("remote %s answered: it joins", model.name, extra=activity_record(
            "models", "model_loaded", model=model.name))
        self._publish(model, "loaded")

    async def close(self) -> None:
        self._disarm()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def can_embed(self) -> bool:
        """Some model here embeds, loaded or not (the embed socket and /v1/embeddings)."""
        return self.router.can_embed or any(m.can_embed for m in self.catalog.models)

    # ---- routing ----------------------------------------------------------------------

    async def route(self, needs: Needs) -> Lease:
        """The loaded backends that may serve `needs`, best first, under a lease; a model
        of the group is loaded first when none is. Raises ModelRefused."""
        try:
            group = self.catalog.group(needs.model, needs.embed)
        except UnknownModel as exc:
            raise ModelRefused(Fault.MODEL_NOT_FOUND, str(exc)) from None
        lease = Lease(self, group, needs.keep_alive)
        if not self.catalog.models:  # not configured (a bare router, as in some tests)
            lease.entries = list(self.router.entries)
            return lease
        try:
            if not any(_usable(m) for m in group):
                # None can take it: load the first member that is not loaded (a local
                # fallback behind a remote whose circuit is open, or the model itself).
                target = next((m for m in group if m.loadable and m.loaded is None), None)
                if target is not None:
                    await self.ensure_loaded(target)
            lease.entries = [m.loaded for m in group if m.loaded is not None]
        except BaseException:
            lease.release()
            raise
        return lease

    async def fallback(self, lease: Lease) -> BackendEntry | None:
        """Every loaded member refused before its stream: load the group's next member
        that is not loaded (a local fallback behind a remote), or None."""
        for model in lease.models:
            if model.loadable and model.loaded is None:
                try:
                    entry = await self.ensure_loaded(model)
                except ModelRefused as exc:
                    log.warning("fallback %s for a refused request: %s", model.name, exc.message)
                    continue
                lease.entries.append(entry)
                return entry
        return None

    async def ensure_loaded(self, model: Model) -> BackendEntry:
        while model.loaded is None:
            if model.task is None:
                model.task = self._spawn(self._load(model))
            await asyncio.shield(model.task)
        return model.loaded

    # ---- load, unload -------------------------------------------------------------------

    async def _load(self, model: Model) -> None:
        assert self.hooks is not None
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        try:
            async with self._load_lock:
                if model.loaded is not None:
                    return
                await self._make_room(model)
                catalog = self.catalog
                self._publish(model, "loading")
                started = time.monotonic()

                loop = asyncio.get_running_loop()

                def phase(p: Any) -> None:  # the store calls it from its download thread
                    event = ModelState(model=model.name, state="loading", phase=p)
                    try:
                        on_loop = asyncio.get_running_loop() is loop
                    except RuntimeError:
                        on_loop = False
                    if on_loop:
                        self.broadcaster.publish(event)
                    else:
                        self.broadcaster.publish_threadsafe(loop, event)

                try:
                    entry = await self.hooks.build(model, phase)
                except Exception as exc:  # noqa: BLE001 - said to the requests and on the admin socket
                    model.error = str(exc)
                    self._publish(model, "failed", reason=model.error)
                    raise ModelRefused(Fault.UNAVAILABLE, f"model {model.name!r} could not be loaded: {exc}") from None
                if self.catalog is not catalog:  # a reload replaced the models meanwhile
                    await self.hooks.stop(entry)
                    raise ModelRefused(Fault.UNAVAILABLE, f"model {model.name!r}: the daemon reloaded while it loaded")
                model.loaded, model.error, model.last_used = entry, None, self._now()
                if model.users == 0 and math.isfinite(model.keep_alive):
                    # Everyone who asked for it left while it loaded: count down at once.
                    model.expires_at = self._now() + model.keep_alive
                    self._arm()
                self.hooks.install(entry)
                self.catalog.learn(model, entry.caps.model)
                secs = round(time.monotonic() - started, 3)
                self.activity.logger.info("model %s loaded in %.2fs", model.name, secs, extra=activity_record(
                    "models", "model_loaded", model=model.name, secs=secs,
                    memory_bytes=model.estimate.total if model.estimate else 0))
                self._publish(model, "loaded")
        finally:
            model.task = None

    async def unload(self, model: Model, reason: str) -> None:
        """Take `model` out of routing and end its backend (its runner process), unless a
        request took it meanwhile (then its countdown starts again when that one ends)."""
        entry = model.loaded
        if entry is None or model.busy:
            return
        model.loaded, model.expires_at = None, None
        assert self.hooks is not None
        self.hooks.uninstall(entry)
        await self.hooks.stop(entry)
        self.activity.logger.info("model %s unloaded: %s", model.name, reason, extra=activity_record(
            "models", "model_unloaded", model=model.name, reason=reason))
        self._publish(model, "unloaded", reason=reason)

    async def _make_room(self, model: Model) -> None:
        """THREAT_MODEL F-25: a request never makes the daemon take more than the budget."""
        need = await self._size(model)
        if not self.budget or not need:
            return
        if need > self.budget:
            raise ModelRefused(Fault.INSUFFICIENT_MEMORY, (
                f"model {model.name!r} needs about {human(need)} ({need} bytes) but the whole memory budget is "
                f"{human(self.budget)} ({self.budget} bytes); raise memory_budget or give it a smaller "
                "n_ctx or parallel"))
        while True:
            used = self.used_bytes()
            free = self.budget - used
            if need <= free:
                return
            idle = [m for m in self.catalog.models if m.loaded is not None and m.loadable and not m.busy
                    and m.estimate is not None and m.estimate.total > 0]  # unloading it must free something
            if not idle:
                raise ModelRefused(Fault.INSUFFICIENT_MEMORY, (
                    f"model {model.name!r} needs about {human(need)} ({need} bytes) but only {human(max(free, 0))} "
                    f"({max(free, 0)} bytes) of the {human(self.budget)} memory budget is free, and every loaded "
                    "model is serving; try again when one is idle"))
            victim = min(idle, key=lambda m: m.last_used)
            await self.unload(victim, f"evicted to make room for {model.name}")

    def used_bytes(self) -> int:
        return sum(m.estimate.total for m in self.catalog.models
                   if m.loaded is not None and m.estimate is not None)

    async def _size(self, model: Model) -> int:
        if model.estimate is None:
            model.estimate = await asyncio.to_thread(_estimate, model, self.models_home)
        return model.estimate.total if model.estimate is not None else 0

    async def _size_then_publish(self, model: Model) -> None:
        """A model loaded at boot is announced by its capabilities; its memory follows."""
        if await self._size(model) and model.loaded is not None:
            self._publish(model, "loaded")
            used = self.used_bytes()
            if self.budget and used > self.budget:
                log.warning("the models loaded at boot take about %s, over the %s memory budget; "
                            "on-demand models will find no room", human(used), human(self.budget))

    # ---- keep_alive ---------------------------------------------------------------------

    def _released(self, models: list[Model], served: BackendEntry | None, keep_alive: float | None) -> None:
        now = self._now()
        for m in models:
            m.users -= 1
            if m.loaded is None:
                continue
            if m.loaded is served:
                m.last_used = now
                seconds = keep_alive if keep_alive is not None else m.keep_alive
            elif m.expires_at is None and m.users == 0:
                seconds = m.keep_alive
            else:
                continue
            if m.users:
                continue  # the countdown starts when its last request ends
            if seconds == 0 and m.loadable:
                self._spawn(self.unload(m, "keep_alive 0: unloaded after its request"))
                continue
            before, m.expires_at = m.expires_at, now + seconds if math.isfinite(seconds) else None
            if before is not None or m.expires_at is not None:  # a pinned model stays quiet
                self._publish(m, "idle" if m.expires_at is not None else "loaded")
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        due = [m.expires_at for m in self.catalog.models
               if m.expires_at is not None and m.loaded is not None and m.loadable]
        if due:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, min(due) - self._now()), self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = self._now()
        for m in self.catalog.models:
            if m.loaded is None or m.expires_at is None or m.expires_at > now or not m.loadable:
                continue
            if m.busy:
                m.expires_at = None  # its requests restart the countdown when they end
                continue
            self._spawn(self.unload(m, "keep_alive expired"))
        self._arm()

    # ---- what `inferd ps` and /v1/models show ----------------------------------------------

    def _publish(self, model: Model, state: str, reason: str | None = None) -> None:
        self.broadcaster.publish(self.state_of(model, state, reason))

    def state_of(self, model: Model, state: str | None = None, reason: str | None = None) -> ModelState:
        if state is None:
            state = model.state if model.loaded is None or model.expires_at is None else "idle"
        expires = None if model.expires_at is None else time.time() + (model.expires_at - self._now())
        return ModelState(model=model.name, state=state, reason=reason,  # type: ignore[arg-type]
                          memory_bytes=model.estimate.total if model.estimate else None,
                          expires_at=None if expires is None else round(expires, 3),
                          backend=model.loaded.label if model.loaded is not None else None)

    # ---- helpers ------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _spawn(self, coro: Awaitable[Any]) -> "asyncio.Task[Any]":
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), ModelRefused):
            log.error("model task failed", exc_info=task.exception())


def _usable(model: Model) -> bool:
    entry = model.loaded
    return entry is not None and entry.backend.ready() and entry.breaker.would_admit()


def _estimate(model: Model, models_home: str | None) -> Estimate | None:
    """The model's memory estimate (runs on a thread: it reads the GGUF header)."""
    entry = model.entry
    if isinstance(entry, MockEntry):
        return Estimate(weights=entry.memory_bytes, kv=0, compute=0, overhead=0) if entry.memory_bytes else None
    if not isinstance(entry, LlamaCppEntry):
        return None  # a remote takes no memory here
    path = entry.model_path
    if path is None and entry.model is not None:
        from ...models.store import ModelStore, default_store_root

        path = str(ModelStore(default_store_root(models_home)).blob_path(entry.model.sha256))
    try:
        return estimate(read_gguf(path), entry.options())  # type: ignore[arg-type]
    except (OSError, GGUFError) as exc:
        log.info("model %s: no memory estimate yet (%s)", model.name, exc)
        return None
