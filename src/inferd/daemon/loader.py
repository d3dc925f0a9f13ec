"""Turning config entries into running backends, publishing load phases as it goes.

Model files are resolved and verified first (checking_local, download, verify,
quarantine), then the backend is constructed (mmap, kv_cache). Construction of a
llama.cpp backend blocks for seconds, so it runs on a daemon thread: a shutdown
signal during a load can still end the process.

A remote (`kind: "openai"`) is prepared by asking it: `checking_local` names its
URL, then `GET /models` is retried with backoff until it answers, each failure
published as a `waiting_remote` phase with the reason. The daemon stays in loading
meanwhile - never ready on a lie - and the wait is cancelled like any load by a
shutdown signal. Because this happens while *preparing*, a reload towards a remote
that is down keeps the previous backends serving until it answers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..engine.backend import Backend, BackendError
from ..engine.mock import MockBackend, MockConfig, ScriptStep
from ..proto.admin import CheckingLocal, KvCache, Mmap, Verify, WaitingRemote
from .config import ConfigFile, LlamaCppEntry, MockEntry, OpenAIEntry
from .pipeline.admission import Admission
from .pipeline.breaker import Breaker, BreakerPolicy
from .pipeline.router import BackendEntry
from ..models.store import ModelStore, StoreError, default_store_root

T = TypeVar("T")
PhaseSink = Callable[[Any], None]  # receives proto.admin load-phase models; thread-safe

log = logging.getLogger("inferd.loader")

#: A remote that does not answer is asked again after this many seconds, doubling...
PROBE_FIRST_DELAY = 0.5
#: ...up to this.
PROBE_MAX_DELAY = 15.0


class LoadError(Exception):
    """A backend could not be brought up; the message is for the operator."""


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Like asyncio.to_thread, but the thread never keeps the process alive."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_set_exception, fut, exc)
        else:
            loop.call_soon_threadsafe(_set_result, fut, result)

    threading.Thread(target=target, name=f"inferd-load-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return await fut


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class VerifiedModel:
    """A model file as verified, and the path llama.cpp should load it from.

    THREAT_MODEL F-6: between hashing a file and mapping it, another process could
    swap the file at that path. So the file is opened once, hashed through that
    descriptor, and (on Linux) llama.cpp loads `/proc/self/fd/N`: the very inode
    that was hashed, whatever the path names by then. No copy is made (upstream's
    copy-to-temp filled small disks).
    """

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self._fd = fd

    @property
    def load_path(self) -> Path:
        if self._fd is not None:
            return Path(f"/proc/self/fd/{self._fd}")
        return self.path

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _hash_pinned(path: Path) -> tuple[str, int | None]:
    """The sha256 of `path`, read through a descriptor kept open when /proc allows it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    except BaseException:
        os.close(fd)
        raise
    if os.path.isdir("/proc/self/fd"):
        return digest.hexdigest(), fd
    os.close(fd)
    return digest.hexdigest(), None


async def resolve_model_file(entry: LlamaCppEntry, cfg: ConfigFile, phase: PhaseSink) -> VerifiedModel:
    """Find (download if needed) and verify the GGUF for one llamacpp entry."""
    if entry.model is not None:
        store = ModelStore(default_store_root(cfg.models_home))
        try:
            return VerifiedModel(await run_in_daemon_thread(store.ensure, entry.model, phase, cfg.auto_pull))
        except StoreError as exc:
            raise LoadError(f"backend {entry.name!r}: {exc}") from None
    assert entry.model_path is not None
    path = Path(entry.model_path).expanduser()
    phase(CheckingLocal(path=str(path)))
    if not path.is_file():
        raise LoadError(f"backend {entry.name!r}: model file {path} does not exist")
    if not entry.model_sha256:
        return VerifiedModel(path)  # operator-trusted: nothing pinned, nothing to hold
    phase(Verify(path=str(path)))
    actual, fd = await run_in_daemon_thread(_hash_pinned, path)
    model = VerifiedModel(path, fd)
    expected = entry.model_sha256.lower()
    # F-5: constant-time comparison of the digests.
    if not hmac.compare_digest(actual, expected):
        model.close()
        raise LoadError(
            f"backend {entry.name!r}: sha256 mismatch for {path}: expected {expected}, got {actual}; "
            "the file is not the model the config names (nothing was loaded)"
        )
    return model


def _steps(script: list[Any] | None) -> list[ScriptStep] | None:
    if script is None:
        return None
    return [ScriptStep(text=s.text, thinking=s.thinking,
                       tool_name=None if s.tool_call is None else s.tool_call.name,
                       tool_input=None if s.tool_call is None else s.tool_call.input)
            for s in script]


def _mock(entry: MockEntry) -> MockBackend:
    return MockBackend(
        MockConfig(
            tokens=list(entry.tokens),
            token_delay_ms=entry.token_delay_ms,
            drop_after=entry.drop_after,
            pre_stream_error=entry.pre_stream_error,
            ready_delay_ms=entry.ready_delay_ms,
            embed=entry.embed,
            raise_after=entry.raise_after,
            emit_tool_use=entry.emit_tool_use,
            script=_steps(entry.script),
            script_after_tools=_steps(entry.script_after_tools),
            prompt_tokens=entry.prompt_tokens,
            cached_tokens=entry.cached_tokens,
            n_ctx=entry.n_ctx,
            prefill_chunk=entry.prefill_chunk,
        )
    )


class RemoteDown(LoadError):
    """A remote that did not answer within the attempts it was given."""


async def prepare_remote(entry: OpenAIEntry, phase: PhaseSink, attempts: int | None = None) -> Backend:
    """An OpenAIBackend whose remote has answered its probe (retried until it does, or
    `attempts` probes: then RemoteDown)."""
    try:
        from ..engine.remote import OpenAIBackend
    except ImportError as exc:
        raise LoadError(
            f"backend {entry.name!r} needs httpx ({exc}); install it with `pip install 'inferd[remote]'`"
        ) from None
    settings = entry.settings()
    phase(CheckingLocal(path=settings.base_url))
    if settings.api_key_env is not None and not os.environ.get(settings.api_key_env, "").strip():
        # The daemon's environment cannot change under it: no point in waiting.
        raise LoadError(f"backend {entry.name!r}: environment variable {settings.api_key_env} (api_key_env) "
                        "is not set in the daemon's environment")
    try:
        backend = OpenAIBackend(settings)
    except ValueError as exc:
        raise LoadError(f"backend {entry.name!r}: {exc}") from None
    try:
        await probe_until_ready(backend, entry.name, settings.base_url, phase, attempts)
    except BaseException:
        await stop_quietly(backend, 1.0)
        raise
    return backend


async def probe_until_ready(backend: Any, name: str, url: str, phase: PhaseSink,
                            attempts: int | None = None) -> None:
    """Call `backend.probe()` until it succeeds, publishing why it did not each time;
    after `attempts` failures (None: never) raise RemoteDown."""
    attempt = 0
    while True:
        try:
            await backend.probe()
            return
        except BackendError as exc:
            reason = exc.message
        attempt += 1
        if attempts is not None and attempt >= attempts:
            raise RemoteDown(f"backend {name!r}: remote {url} not answering ({reason})")
        delay = min(PROBE_FIRST_DELAY * 2 ** min(attempt - 1, 30), PROBE_MAX_DELAY)
        log.warning("backend %s: remote %s not answering (%s); attempt %d, retrying in %g s",
                    name, url, reason, attempt, delay)
        phase(WaitingRemote(path=url, reason=reason, attempt=attempt, retry_in_ms=round(delay * 1000)))
        await asyncio.sleep(delay)


@dataclass
class Planned:
    """A config entry whose model file is found (downloaded if need be) and verified,
    not yet loaded - or, for a remote, whose server has answered. Preparing is the
    slow, interruptible part of a (re)load that needs no quiet daemon: a reload
    prepares while the old model keeps serving."""

    entry: MockEntry | LlamaCppEntry | OpenAIEntry
    model: VerifiedModel | None = None
    remote: Backend | None = None
    #: The config's circuit-breaker policy, which the constructed entry gets.
    breaker: BreakerPolicy = BreakerPolicy()

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None
        remote, self.remote = self.remote, None
        if remote is not None:
            # Prepared but never installed (a reload abandoned): close its HTTP client.
            try:
                task = asyncio.get_running_loop().create_task(stop_quietly(remote, 1.0))
            except RuntimeError:
                return  # no loop left: the process is ending anyway
            _closing.add(task)
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


async def prepare_all(cfg: ConfigFile, phase: PhaseSink,
                      deferred: list[OpenAIEntry] | None = None) -> list[Planned]:
    """Every entry of `cfg` prepared. With `deferred` (at boot), a remote that does not
    answer its first probe while a local entry is there goes into it instead of keeping
    the daemon loading (issue 20): it joins once it answers."""
    planned: list[Planned] = []
    policy = breaker_policy(cfg)
    local = any(not isinstance(e, OpenAIEntry) for e in cfg.backends)
    try:
        for entry in cfg.backends:
            if isinstance(entry, OpenAIEntry) and deferred is not None and local:
                try:
                    planned.append(Planned(entry, remote=await prepare_remote(entry, phase, 1), breaker=policy))
                except RemoteDown as exc:
                    log.warning("%s; the daemon starts without it and it joins when it answers", exc)
                    deferred.append(entry)
                continue
            planned.append(await prepare(entry, cfg, phase))
    except BaseException:
        for p in planned:
            p.close()
        raise
    return planned


async def prepare(entry: MockEntry | LlamaCppEntry | OpenAIEntry, cfg: ConfigFile, phase: PhaseSink) -> Planned:
    """One entry prepared: its model file found and verified, or its remote answering."""
    policy = breaker_policy(cfg)
    if isinstance(entry, MockEntry):
        phase(CheckingLocal(path="(mock)"))
        return Planned(entry, breaker=policy)
    if isinstance(entry, OpenAIEntry):
        return Planned(entry, remote=await prepare_remote(entry, phase), breaker=policy)
    return Planned(entry, await resolve_model_file(entry, cfg, phase), breaker=policy)


async def construct(plan: Planned, phase: PhaseSink) -> Backend:
    """Bring up one prepared backend (the model load blocks, so it runs on a thread)."""
    entry = plan.entry
    if isinstance(entry, MockEntry):
        return _mock(entry)
    if isinstance(entry, OpenAIEntry):
        remote, plan.remote = plan.remote, None  # the entry now owns it
        assert remote is not None
        return remote
    model = plan.model
    assert model is not None
    from ..engine.llamacpp import LlamaCppSettings

    # The daemon itself need not load llama.cpp (its runners do): only ask whether it is there.
    if importlib.util.find_spec("llama_cpp") is None:
        raise LoadError(
            f"backend {entry.name!r} needs llama-cpp-python; install it with `pip install 'inferd[llamacpp]'`")
    settings = LlamaCppSettings.from_options(entry.options(), model_path=str(model.load_path),
                                             source_path=str(model.path))
    phase(Mmap(path=str(model.path)))
    # llama.cpp pads the context to a multiple of 256; say what it will allocate
    # (for each of the `parallel` sequences, ADR 0018).
    phase(KvCache(n_ctx=-(-entry.n_ctx // 256) * 256))
    try:
        if settings.runner:
            from ..engine.llamacpp.supervised import RunnerBackend

            return await RunnerBackend.start(settings, entry.name)
        from ..engine.llamacpp.backend import LlamaCppBackend

        return await run_in_daemon_thread(LlamaCppBackend, settings)
    except (ValueError, RuntimeError, OSError) as exc:
        raise LoadError(f"backend {entry.name!r}: could not load {model.path}: {exc}") from None


async def construct_all(planned: list[Planned], phase: PhaseSink, *, permits: int | None = None,
                        queue_depth: int = 10) -> list[BackendEntry]:
    """Every prepared backend, each behind its own admission gate.

    A gate runs as many requests at once as its backend can (`Backend.concurrency`)
    unless the operator fixed `permits` (--active-permits) for all of them. The
    verified model descriptors are closed here, whatever happens: llama.cpp holds
    its own mapping of the verified inode once loaded (F-6).
    """
    entries: list[BackendEntry] = []
    try:
        for plan in planned:
            backend = await construct(plan, phase)
            plan.close()
            gate = Admission(permits or backend.concurrency, queue_depth)
            entries.append(BackendEntry(label=plan.entry.name, backend=backend, caps=backend.capabilities(),
                                        admission=gate, breaker=Breaker(plan.entry.name, plan.breaker)))
    except BaseException:
        for e in entries:
            await stop_quietly(e.backend, 5.0)
        raise
    finally:
        for plan in planned:
            plan.close()
    return entries


async def build_all(cfg: ConfigFile, phase: PhaseSink, *, permits: int | None = None,
                    queue_depth: int = 10, deferred: list[OpenAIEntry] | None = None) -> list[BackendEntry]:
    return await construct_all(await prepare_all(cfg, phase, deferred), phase, permits=permits,
                               queue_depth=queue_depth)


async def build_one(entry: MockEntry | LlamaCppEntry | OpenAIEntry, cfg: ConfigFile, phase: PhaseSink, *,
                    permits: int | None = None, queue_depth: int = 10) -> BackendEntry:
    """One model brought up on demand (issue 20): prepared, then constructed."""
    return (await construct_all([await prepare(entry, cfg, phase)], phase, permits=permits,
                                queue_depth=queue_depth))[0]


def boot_config(cfg: ConfigFile) -> ConfigFile:
    """The entries loaded at boot: all but those marked `on_demand`."""
    return cfg.model_copy(update={"backends": [e for e in cfg.backends if not getattr(e, "on_demand", False)]})


def breaker_policy(cfg: ConfigFile) -> BreakerPolicy:
    b = cfg.breaker
    return BreakerPolicy(failures=b.failures, cooldown=b.cooldown_secs, max_cooldown=b.max_cooldown_secs)


async def stop_quietly(backend: Backend, timeout: float) -> None:
    try:
        await backend.stop(timeout)
    except Exception:  # noqa: BLE001 - best-effort release at shutdown
        pass
