"""The daemon process: boot, serve, reload and drain, in one place.

Boot order (THREAT_MODEL F-13): lock -> admin socket (`starting`) -> config ->
model resolve/verify (`loading_model` phases) -> backends -> `capabilities` -> wait
ready -> `ready` -> bind embed, v2, v1 inference sockets. Before `ready` no inference
socket file exists, so a connect fails with ENOENT/ECONNREFUSED.

Shutdown (SIGTERM/SIGINT): `draining` -> stop accepting and remove the inference
socket files -> admitted requests finish (bounded by the drain deadline) -> backends
stop -> admin closes -> exit 0. Reload (SIGHUP): `restarting` with load phases,
inference sockets closed once in-flight work is done, new backends, `capabilities`,
`ready`, sockets bound again; a broken new config leaves the old model serving.
"""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import os
import sys
import time
from typing import Any

from pydantic import BaseModel

from .. import __version__
from ..proto.admin import (BackendState, Capabilities, CheckingLocal, Draining, LoadingModel, Ready, Restarting,
                           RunnerRestart, Starting)
from ..proto.endpoints import DEFAULT_EMBED_TCP_ADDR, DEFAULT_TCP_ADDR, DEFAULT_V2_TCP_ADDR
from .observe.activity import (ActivityLog, NullActivityLog, activity_record, add_literal_secret, default_log_dir,
                               remove_literal_secret)
from .status import StatusBroadcaster
from .surfaces.admin import serve_admin
from .config import ConfigError, ConfigFile, ServeOptions, effective_config
from .context import DaemonContext
from .surfaces.embed import serve_embed
from .surfaces.v1 import serve_inference
from .net.listeners import (MAX_ADMIN_CONNECTIONS, ConnectionTracker, Listener, ListenerError, ListenerSecurity, bind_pipe,
                            bind_tcp, bind_unix)
from .loader import LoadError, Planned, boot_config, build_all, build_one, construct_all, prepare_all, stop_quietly
from .models.catalog import Model
from .lock import InstanceLock, LockError
from .net.buffers import ByteBudget
from .net.paths import SocketPathError
from .net.peercred import PeerPolicy, resolve_group
from .pipeline import run as pipeline
from .pipeline.router import BackendEntry, Router
from .signals import SignalHandlers

log = logging.getLogger("inferd.daemon")

INFERENCE_SURFACES = {"inference", "v2", "embed", "http"}
READY_POLL_SECS = 0.05
# After a reload's drain deadline, how long evicted requests get to end before the old
# backends are stopped anyway.
EVICT_GRACE_SECS = 5.0
RELOAD_EVICTED = "cancelled: the model is being reloaded and the drain deadline passed"
SHUTDOWN_EVICTED = "cancelled: the daemon is shutting down and the drain deadline passed"


class BootError(Exception):
    """Startup failed; the message is for the operator and the exit code is 1."""


class Server:
    def __init__(self, opts: ServeOptions, activity: ActivityLog | NullActivityLog | None = None,
                 install_signals: bool = True) -> None:
        self.opts = opts
        self._want_signals = install_signals
        self.activity = activity if activity is not None else ActivityLog(default_log_dir())
        self.broadcaster = StatusBroadcaster()
        self.tracker = ConnectionTracker()
        self.write_timeout = opts.write_timeout_secs if opts.write_timeout_secs > 0 else None
        self.router = Router([])
        self.ctx = DaemonContext(self.router, self.broadcaster, self.activity)
        self.ctx.metrics.attach(self.router, self.tracker)
        self._signals: SignalHandlers | None = None
        self._secret: str | None = None  # the API key, while registered for redaction (F-3)
        self.config: ConfigFile | None = None
        self._lock: InstanceLock | None = None
        self._admin: Listener | None = None
        self._surfaces: list[Listener] = []
        self._shutdown = asyncio.Event()
        self._reload = asyncio.Event()
        self.is_ready = asyncio.Event()

    # ---- public -----------------------------------------------------------------

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def serve(self) -> int:
        """Run until a shutdown signal; return the process exit code."""
        try:
            await self._boot()
        except BootError as exc:
            self.activity.logger.error("%s", exc, extra=activity_record("lifecycle", "boot_failed", reason=str(exc)))
            await self._teardown()
            return 1
        except _Interrupted:
            log.info("shutdown requested during startup")
            self.broadcaster.publish(Draining())
            await self._teardown()
            return 0
        while True:
            waiters = [asyncio.ensure_future(self._shutdown.wait()), asyncio.ensure_future(self._reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self._shutdown.is_set():
                break
            self._reload.clear()
            try:
                await self._reload_interruptibly()
            except Exception as exc:  # noqa: BLE001 - not even the old model came back
                self.activity.logger.exception("reload failed and the previous model could not be restored",
                                               extra=activity_record("lifecycle", "reload_fatal", reason=str(exc)))
                await self._drain()
                return 1
        await self._drain()
        return 0

    async def _reload_interruptibly(self) -> None:
        """A reload, abandoned (the router reopened) if a shutdown signal arrives meanwhile."""
        task = asyncio.ensure_future(self._do_reload())
        stop = asyncio.ensure_future(self._shutdown.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()
            return
        log.info("shutdown requested during a reload: abandoning it")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.router.resume()  # let waiting requests see the closed admission of the drain

    # ---- boot -------------------------------------------------------------------

    async def _boot(self) -> None:
        opts = self.opts
        if self.write_timeout is None:
            log.warning("--write-timeout-secs 0: a client that stops reading can hold a slot forever (F-17)")
        try:
            self._lock = InstanceLock.acquire(opts.lock_path())
        except (LockError, OSError) as exc:
            # OSError: e.g. a socket directory another user owns (F-2), refused by
            # ensure_private_dir; a boot error like any other (exit 1, boot_failed).
            raise BootError(f"lock acquire failed: {exc}") from None
        # F-3: the daemon's own key is redacted from every log line, whatever it looks like.
        self._secret = opts.api_key if add_literal_secret(opts.api_key) else None
        if opts.api_key and self._secret is None:
            log.warning("the API key is shorter than 4 characters: it cannot be redacted from the logs")
        if self._want_signals:
            self._signals = SignalHandlers(self.request_shutdown, self.request_reload)
            self._signals.install()
        self.broadcaster.publish(Starting())
        self._security = self._make_security()
        try:
            self._admin = await self._bind_admin()
        except (OSError, SocketPathError, ListenerError) as exc:
            raise BootError(f"cannot bind the admin socket {opts.admin_address()}: {exc}") from None
        self.activity.logger.info("admin socket at %s", self._admin.address,
                                  extra=activity_record("lifecycle", "starting", pid=os.getpid(), admin=self._admin.address))

        try:
            cfg, source = effective_config(opts)
        except ConfigError as exc:
            raise BootError(str(exc)) from None
        log.info("configuration: %s (%s)", source, ", ".join(f"{e.kind}:{e.name}" for e in cfg.backends))
        load_started = time.monotonic()
        self.ctx.models.configure(cfg, _ModelHooks(self))
        deferred: list[Any] = []
        entries = await self._interruptible(self._build(cfg, self._phase_sink(LoadingModel), deferred))
        self.config = cfg
        self._install(entries)
        self.ctx.models.adopt(entries)
        self.ctx.models.join_later([m for m in self.ctx.models.catalog.models if m.entry in deferred])
        await self._await_ready()
        self.ctx.metrics.model_loaded(time.monotonic() - load_started)
        self.broadcaster.publish(Ready())
        self.activity.logger.info("ready", extra=activity_record("lifecycle", backends=[e.label for e in entries]))
        await self._bind_surfaces()
        # Everything built so far (modules, schemas, the model's objects) lives as long
        # as the process: keep it out of the collector's full passes, which would
        # otherwise walk it again and again while requests allocate (CPython's gc.freeze).
        gc.collect()
        gc.freeze()
        self.is_ready.set()

    def _make_security(self) -> ListenerSecurity:
        opts = self.opts
        group_gid = None
        if opts.group:
            try:
                group_gid = resolve_group(opts.group)
            except ValueError as exc:
                raise BootError(str(exc)) from None
        policy = None
        if sys.platform != "win32":
            policy = PeerPolicy(uid=os.getuid(), allow_uids=frozenset(opts.allow_uids), group_gid=group_gid)
        return ListenerSecurity(
            write_timeout=self.write_timeout,
            peer_policy=policy,
            api_key=opts.api_key or None,
            group_gid=group_gid,
            activity=self.activity,
            max_connections=opts.max_connections or None,
            read_timeout=opts.read_timeout_secs or None,
            budget=ByteBudget(int(opts.buffer_budget_mib * (1 << 20))),
        )

    async def _bind_admin(self) -> Listener:
        addr = self.opts.admin_address()
        broadcaster = self.broadcaster

        async def handler(conn: Any) -> None:
            await serve_admin(conn, broadcaster)

        # The admin socket is the owner's alone: same-uid peers only, mode 0600.
        sec = ListenerSecurity(write_timeout=self.write_timeout or 60.0,
                               peer_policy=self._security.peer_policy and PeerPolicy(uid=os.getuid()),
                               activity=self.activity, max_connections=MAX_ADMIN_CONNECTIONS,
                               refusals=self._security.refusals)
        if sys.platform == "win32" and (self.opts.pipe or addr.startswith("\\\\.\\pipe\\")):
            return await bind_pipe(addr, "admin", handler, sec=sec, tracker=self.tracker)
        return await bind_unix(addr, "admin", handler, mode=0o600, sec=sec, tracker=self.tracker)

    def _phase_sink(self, wrapper: type[BaseModel]) -> Any:
        """A callback for load phases; the store calls it from its download thread."""
        loop = asyncio.get_running_loop()
        broadcaster = self.broadcaster

        def publish(phase: Any) -> None:
            event = wrapper(phase=phase)
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            # On the loop, publish now: phases must precede the capabilities that follow.
            if on_loop:
                broadcaster.publish(event)
            else:
                broadcaster.publish_threadsafe(loop, event)

        return publish

    async def _interruptible(self, coro: Any) -> Any:
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._shutdown.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            raise _Interrupted()
        try:
            return task.result()
        except LoadError as exc:
            raise BootError(str(exc)) from None

    def _build(self, cfg: ConfigFile, sink: Any, deferred: list[Any] | None = None) -> Any:
        """The models loaded at boot (all but `on_demand` ones, issue 20)."""
        return build_all(boot_config(cfg), sink, permits=self.opts.active_permits,
                         queue_depth=self.opts.queue_depth, deferred=deferred)

    def _install(self, entries: list[BackendEntry]) -> None:
        self.router.entries = entries
        self.broadcaster.clear_capabilities()
        for entry in entries:
            self._announce(entry)

    def _announce(self, entry: BackendEntry) -> None:
        loop = asyncio.get_running_loop()
        self.broadcaster.publish(Capabilities(backend=entry.label, version=__version__, **entry.caps.model_dump()))
        # Running sequences by slot, for `inferd status` (ADR 0018).
        entry.backend.observe_sequences(self.broadcaster.sequence_sink(loop, entry.label))
        entry.backend.watch_lifecycle(self._lifecycle_sink(entry))

    def _lifecycle_sink(self, entry: BackendEntry) -> Any:
        """A runner that ended and comes back (ADR 0025): `restarting`, then `ready` (or
        the backend `failed`), with fresh capabilities that say what happened."""

        def sink(state: str, reason: str) -> None:
            caps = entry.caps = entry.backend.capabilities()
            runner = caps.runner
            if state == "restarting" and runner is not None:
                crash = runner.last_crash
                self.activity.logger.error("engine_crashed", extra=activity_record(
                    "lifecycle", backend=entry.label, reason=reason, uptime_secs=crash.uptime_secs if crash else None,
                    requests=crash.requests if crash else [], profile=runner.profile, restarts=runner.restarts))
                self.broadcaster.publish(Restarting(phase=RunnerRestart(
                    backend=entry.label, reason=reason, attempt=runner.restarts, profile=runner.profile,
                    retry_in_ms=int(getattr(entry.backend, "retry_in", 0.0) * 1000))))
            self.broadcaster.publish(Capabilities(backend=entry.label, version=__version__, **caps.model_dump()))
            if state == "failed":
                self.activity.logger.error("backend_failed", extra=activity_record("lifecycle", backend=entry.label, reason=reason))
                self.broadcaster.publish(BackendState(backend=entry.label, state="failed", reason=reason))
            if state in ("ready", "failed") and not self._shutdown.is_set():
                if state == "ready":
                    self.activity.logger.info("engine_restarted", extra=activity_record(
                        "lifecycle", backend=entry.label, profile=runner.profile if runner else None))
                self.broadcaster.publish(Ready())

        return sink

    async def _await_ready(self, entries: list[BackendEntry] | None = None) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout_secs
        pending = self.router.entries if entries is None else entries
        while not all(e.backend.ready() for e in pending):
            if time.monotonic() >= deadline:
                raise BootError(f"backend ready: backend not ready within {self.opts.ready_timeout_secs:g}s")
            if self._shutdown.is_set():
                raise _Interrupted()
            await asyncio.sleep(READY_POLL_SECS)

    async def _bind_surfaces(self) -> None:
        """Embed, then v2, then v1 - the generation socket appears last."""
        opts = self.opts
        sec = self._security
        ctx = self.ctx

        async def inference(conn: Any) -> None:
            await serve_inference(conn, ctx)

        async def embed(conn: Any) -> None:
            await serve_embed(conn, ctx)

        want_embed = opts.embed is not False and self.ctx.models.can_embed
        if opts.embed and not self.ctx.models.can_embed:
            log.warning("--embed given but no backend can embed; the embed socket is not bound")
        plan: list[tuple[str, Any, str | None, str | None, tuple[str, int]]] = []
        if want_embed:
            plan.append(("embed", embed, opts.embed_address(), opts.embed_tcp, DEFAULT_EMBED_TCP_ADDR))
        if opts.v2:
            from .surfaces.v2 import serve_inference_v2

            async def v2(conn: Any) -> None:
                await serve_inference_v2(conn, ctx)

            plan.append(("v2", v2, opts.v2_address(), opts.v2_tcp, DEFAULT_V2_TCP_ADDR))
        plan.append(("inference", inference, opts.inference_address(), opts.tcp, DEFAULT_TCP_ADDR))
        try:
            for surface, handler, local, tcp, default_tcp in plan:
                if local:
                    if sys.platform == "win32":
                        lst = await bind_pipe(local, surface, handler, sec=sec, tracker=self.tracker)
                    else:
                        lst = await bind_unix(local, surface, handler, mode=0o660, sec=sec, tracker=self.tracker)
                    self._surfaces.append(lst)
                    log.info("%s socket at %s", surface, lst.address)
                if tcp:
                    lst = await bind_tcp(tcp, default_tcp[1], surface, handler, sec=sec, tracker=self.tracker)
                    self._surfaces.append(lst)
                    log.info("%s TCP at %s", surface, lst.address)
            http = opts.http or (self.config.http if self.config is not None else None)
            if http:  # the OpenAI-compatible HTTP surface, bound last (F-13, F-20)
                from .surfaces.http.server import bind_http

                surface = "http"
                lst = await bind_http(http, ctx, sec=sec, tracker=self.tracker)
                self._surfaces.append(lst)
                log.info("http at http://%s/v1", lst.address)
        except (OSError, SocketPathError, ListenerError) as exc:
            self._close_surfaces()
            raise BootError(f"cannot bind the {surface} endpoint: {exc}") from None
        await self._bind_ollama(opts, ctx, sec)

    async def _bind_ollama(self, opts: ServeOptions, ctx: DaemonContext, sec: ListenerSecurity) -> None:
        """The HTTP API again on 127.0.0.1:ollama_port, for clients that only know
        Ollama's address; a port already taken (an Ollama is running) is no failure
        (ADR 0027, THREAT_MODEL F-24: loopback only, the same key and Host/Origin checks)."""
        port = opts.ollama_port if opts.ollama_port is not None else (
            self.config.ollama_port if self.config is not None else None)
        if port is None:
            return
        from .surfaces.http.server import bind_http

        try:
            lst = await bind_http(f"127.0.0.1:{port}", ctx, sec=sec, tracker=self.tracker)
        except (OSError, ListenerError) as exc:
            log.warning("not serving Ollama's address 127.0.0.1:%d: %s", port, exc)
            return
        self._surfaces.append(lst)
        log.info("http (Ollama's address) at http://%s/api", lst.address)

    def _close_surfaces(self) -> None:
        for lst in self._surfaces:
            lst.close()
        self._surfaces.clear()

    # ---- drain / reload ---------------------------------------------------------

    async def _quiesce(self) -> None:
        """Stop accepting and let admitted requests finish, within the drain deadline."""
        self.router.close_admission()
        # The HTTP listener's server task ends once uvicorn has finished its responses.
        http_done = [t for lst in self._surfaces if (t := getattr(lst, "uvicorn_task", None)) is not None]
        self._close_surfaces()
        await self._wait_idle(self.router.entries)
        # Issue 19: what outlived the drain deadline ends with an error its client can
        # read (an error frame, an SSE error event), not with a connection cut mid-stream.
        await self._evict(self.router.entries, SHUTDOWN_EVICTED, "shutdown_evicted")
        if http_done:  # an HTTP response is written by its own task: let it finish (bounded)
            await asyncio.wait(http_done, timeout=EVICT_GRACE_SECS)
        await self.tracker.cancel(INFERENCE_SURFACES)

    async def _wait_idle(self, entries: list[BackendEntry]) -> None:
        try:
            async with asyncio.timeout(self.opts.drain_timeout_secs):
                await self.router.wait_idle(entries)
        except TimeoutError:
            log.warning("drain deadline (%gs) passed with %d request(s) still in flight",
                        self.opts.drain_timeout_secs, sum(e.admission.outstanding for e in entries))

    async def _drain(self) -> None:
        self.broadcaster.publish(Draining())
        self.activity.logger.info("draining", extra=activity_record("lifecycle", in_flight=self.router.outstanding))
        await self._quiesce()
        await self.ctx.models.close()
        for entry in self.router.entries:
            await stop_quietly(entry.backend, 5.0)
        await self._teardown()
        log.info("shutdown complete")

    async def _teardown(self) -> None:
        self._close_surfaces()
        self.broadcaster.close()
        # Give admin subscribers a moment to receive `draining` before EOF.
        deadline = time.monotonic() + 2.0
        while self.tracker.count({"admin"}) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._admin is not None:
            self._admin.close()
        await self.tracker.cancel()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._signals is not None:
            self._signals.restore()
            self._signals = None
        remove_literal_secret(self._secret)
        self._secret = None
        self.activity.close()

    async def _do_reload(self) -> None:
        """Reload without ever leaving the sockets unbound (THREAT_MODEL F-13, issue of
        a SIGHUP handing the TCP port to another user): the new model is downloaded and
        verified while the old one serves; then requests wait at the router while the
        old backends finish their work and stop and the new ones load. A new backend
        that fails to load or to become ready is stopped and the old config is loaded
        again; the daemon never exits for a reload that did not work."""
        log.info("reload requested")
        reload_started = time.monotonic()
        old_cfg, old_entries = self.config, list(self.router.entries)
        try:
            new_cfg, source = effective_config(self.opts)
        except ConfigError as exc:
            self._reload_failed(f"reload refused, still serving the previous model: {exc}")
            return
        sink = self._phase_sink(Restarting)
        self.broadcaster.publish(Restarting(phase=CheckingLocal(path=source)))
        try:
            planned = await prepare_all(boot_config(new_cfg), sink)
        except Exception as exc:  # noqa: BLE001 - nothing was touched: keep serving
            self._reload_failed(f"reload failed, still serving the previous model: {exc}")
            return
        self.router.pause()
        try:
            await self._wait_idle(old_entries)
            await self._evict(old_entries, RELOAD_EVICTED, "reload_evicted")
            self.ctx.models.detach()
            # ...and any model that finished loading on demand since the reload began.
            old_entries += [e for e in self.router.entries if e not in old_entries]
            for entry in old_entries:
                await stop_quietly(entry.backend, 5.0)
            error = None
            try:
                entries = await self._construct_ready(planned, sink)
                self.config = new_cfg
            except Exception as exc:  # noqa: BLE001 - keep serving something
                error = f"reload failed, serving the previous model again: {exc}"
                assert old_cfg is not None
                entries = await self._construct_ready(await prepare_all(boot_config(old_cfg), sink), sink)
            self.ctx.models.configure(self.config, _ModelHooks(self))
            self._install(entries)
            self.ctx.models.adopt(entries)
        finally:
            self.router.resume()
        self.broadcaster.publish(Ready(reload_error=error))
        self.ctx.metrics.reloaded(error is None, time.monotonic() - reload_started)
        if error:
            self.activity.logger.error("%s", error, extra=activity_record("lifecycle", "reload_failed", reason=error))
        else:
            self.activity.logger.info("reloaded from %s", source, extra=activity_record("lifecycle", "reloaded", source=source))

    async def _evict(self, entries: list[BackendEntry], reason: str, record: str) -> None:
        """Past the drain deadline, end what still runs on `entries` (each client gets an
        error frame and keeps its connection): on reload, so that stopping the old
        backends really frees their models instead of leaving one loaded beside the new
        (issue 8 item 7, F-13); on shutdown, so that clients read why (issue 19)."""
        if not any(e.admission.outstanding for e in entries):
            return
        n = pipeline.evict(entries, reason)
        self.activity.logger.warning("cancelled %d request(s) past the drain deadline: %s", n, reason,
                                     extra=activity_record("lifecycle", record, requests=n))
        try:
            async with asyncio.timeout(EVICT_GRACE_SECS):
                await self.router.wait_idle(entries)
        except TimeoutError:
            log.warning("%d request(s) did not end within %gs of being cancelled",
                        sum(e.admission.outstanding for e in entries), EVICT_GRACE_SECS)

    async def _construct_ready(self, planned: list[Planned], sink: Any) -> list[BackendEntry]:
        entries = await construct_all(planned, sink, permits=self.opts.active_permits,
                                      queue_depth=self.opts.queue_depth)
        try:
            await self._await_ready(entries)
        except BaseException:
            for entry in entries:
                await stop_quietly(entry.backend, 5.0)
            raise
        return entries

    def _reload_failed(self, reason: str) -> None:
        self.ctx.metrics.reloaded(False)
        self.activity.logger.error("%s", reason, extra=activity_record("lifecycle", "reload_failed", reason=reason))
        self.broadcaster.publish(Ready(reload_error=reason))


class _ModelHooks:
    """What the model manager asks of the daemon (daemon/models/manager.py's Hooks)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def build(self, model: Model, phase: Any) -> BackendEntry:
        server = self.server
        assert server.config is not None
        entry = await build_one(model.entry, server.config, phase, permits=server.opts.active_permits,
                                queue_depth=server.opts.queue_depth)
        try:
            deadline = time.monotonic() + server.opts.ready_timeout_secs
            while not entry.backend.ready():
                if time.monotonic() >= deadline:
                    raise LoadError(f"not ready within {server.opts.ready_timeout_secs:g}s")
                await asyncio.sleep(READY_POLL_SECS)
        except BaseException:
            await stop_quietly(entry.backend, 5.0)
            raise
        return entry

    def install(self, entry: BackendEntry) -> None:
        self.server.router.add(entry)
        self.server._announce(entry)

    def uninstall(self, entry: BackendEntry) -> None:
        self.server.router.remove(entry)
        entry.backend.observe_sequences(None)
        entry.backend.watch_lifecycle(None)
        self.server.broadcaster.forget(entry.label)

    async def stop(self, entry: BackendEntry) -> None:
        entry.admission.close()
        await stop_quietly(entry.backend, 5.0)


class _Interrupted(Exception):
    """A shutdown signal arrived before the daemon was ready."""


def run(opts: ServeOptions) -> int:
    """Entry point for `inferd serve`: uvloop where available, exit code returned."""
    async def main() -> int:
        return await Server(opts).serve()

    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
