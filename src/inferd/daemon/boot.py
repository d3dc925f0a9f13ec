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
import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any

from pydantic import BaseModel

from ..proto.admin import Capabilities, CheckingLocal, Draining, LoadingModel, Ready, Restarting, Starting
from ..proto.endpoints import DEFAULT_EMBED_TCP_ADDR, DEFAULT_TCP_ADDR, DEFAULT_V2_TCP_ADDR
from .activity import ActivityLog, NullActivityLog, default_log_dir
from .admin import StatusBroadcaster, serve_admin
from .admission import Admission
from .config import ConfigError, ConfigFile, ServeOptions, effective_config
from .context import DaemonContext
from .embed import serve_embed
from .inference import serve_inference
from .listeners import ConnectionTracker, Listener, ListenerError, ListenerSecurity, bind_pipe, bind_tcp, bind_unix
from .loader import LoadError, build_all, stop_quietly
from .lock import InstanceLock, LockError
from .paths import SocketPathError
from .peercred import PeerPolicy, resolve_group
from .router import Router, Slot

log = logging.getLogger("inferd.daemon")

INFERENCE_SURFACES = {"inference", "v2", "embed"}
READY_POLL_SECS = 0.05


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
        self.admission = Admission(opts.active_permits, opts.queue_depth)
        self.write_timeout = opts.write_timeout_secs if opts.write_timeout_secs > 0 else None
        self.router = Router([])
        self.ctx = DaemonContext(self.admission, self.router, self.broadcaster, self.activity, self.write_timeout)
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
            log.error("%s", exc)
            self.activity.record("error", "lifecycle", "boot_failed", reason=str(exc))
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
                await self._do_reload()
            except Exception as exc:  # noqa: BLE001 - not even the old model came back
                log.exception("reload failed and the previous model could not be restored")
                self.activity.record("error", "lifecycle", "reload_fatal", reason=str(exc))
                await self._drain()
                return 1
        await self._drain()
        return 0

    # ---- boot -------------------------------------------------------------------

    async def _boot(self) -> None:
        opts = self.opts
        if self.write_timeout is None:
            log.warning("--write-timeout-secs 0: a client that stops reading can hold a slot forever (F-17)")
        try:
            self._lock = InstanceLock.acquire(opts.lock_path())
        except LockError as exc:
            raise BootError(f"lock acquire failed: {exc}") from None
        if self._want_signals:
            self._install_signals()
        self.broadcaster.publish(Starting())
        self._security = self._make_security()
        try:
            self._admin = await self._bind_admin()
        except (OSError, SocketPathError, ListenerError) as exc:
            raise BootError(f"cannot bind the admin socket {opts.admin_address()}: {exc}") from None
        log.info("admin socket at %s", self._admin.address)
        self.activity.record("info", "lifecycle", "starting", pid=os.getpid(), admin=self._admin.address)

        try:
            cfg, source = effective_config(opts)
        except ConfigError as exc:
            raise BootError(str(exc)) from None
        log.info("configuration: %s (%s)", source, ", ".join(f"{e.kind}:{e.name}" for e in cfg.backends))
        slots = await self._interruptible(build_all(cfg, self._phase_sink(LoadingModel)))
        self.config = cfg
        self._install(slots)
        await self._await_ready()
        self.broadcaster.publish(Ready())
        self.activity.record("info", "lifecycle", "ready", backends=[s.label for s in slots])
        await self._bind_surfaces()
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
        )

    async def _bind_admin(self) -> Listener:
        addr = self.opts.admin_address()
        broadcaster = self.broadcaster

        async def handler(conn: Any) -> None:
            await serve_admin(conn, broadcaster)

        # The admin socket is the owner's alone: same-uid peers only, mode 0600.
        sec = ListenerSecurity(write_timeout=self.write_timeout or 60.0,
                               peer_policy=self._security.peer_policy and PeerPolicy(uid=os.getuid()),
                               activity=self.activity)
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

    def _install(self, slots: list[Slot]) -> None:
        self.router.slots = slots
        self.broadcaster.clear_capabilities()
        for slot in slots:
            self.broadcaster.publish(Capabilities(backend=slot.label, **dataclasses.asdict(slot.caps)))

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout_secs
        while not self.router.all_ready():
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

        want_embed = opts.embed is not False and self.router.can_embed
        if opts.embed and not self.router.can_embed:
            log.warning("--embed given but no backend can embed; the embed socket is not bound")
        plan: list[tuple[str, Any, str | None, str | None, tuple[str, int]]] = []
        if want_embed:
            plan.append(("embed", embed, opts.embed_address(), opts.embed_tcp, DEFAULT_EMBED_TCP_ADDR))
        if opts.v2:
            from .inference_v2 import serve_inference_v2

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
        except (OSError, SocketPathError, ListenerError) as exc:
            self._close_surfaces()
            raise BootError(f"cannot bind the {surface} endpoint: {exc}") from None

    def _close_surfaces(self) -> None:
        for lst in self._surfaces:
            lst.close()
        self._surfaces.clear()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        if sys.platform == "win32":
            signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(self.request_shutdown))
            return
        loop.add_signal_handler(signal.SIGTERM, self.request_shutdown)
        loop.add_signal_handler(signal.SIGINT, self.request_shutdown)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # ---- drain / reload ---------------------------------------------------------

    async def _quiesce(self) -> None:
        """Stop accepting and let admitted requests finish, within the drain deadline."""
        self.admission.close()
        self._close_surfaces()
        try:
            async with asyncio.timeout(self.opts.drain_timeout_secs):
                await self.admission.wait_idle()
        except TimeoutError:
            log.warning("drain deadline (%gs) passed with %d request(s) still in flight",
                        self.opts.drain_timeout_secs, self.admission.outstanding)
        await self.tracker.cancel(INFERENCE_SURFACES)

    async def _drain(self) -> None:
        log.info("draining")
        self.broadcaster.publish(Draining())
        self.activity.record("info", "lifecycle", "draining", in_flight=self.admission.outstanding)
        await self._quiesce()
        for slot in self.router.slots:
            await stop_quietly(slot.backend, 5.0)
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
        self.activity.close()

    async def _do_reload(self) -> None:
        log.info("reload requested")
        old_cfg, old_slots = self.config, list(self.router.slots)
        try:
            new_cfg, source = effective_config(self.opts)
        except ConfigError as exc:
            self._reload_failed(f"reload refused, still serving the previous model: {exc}")
            return
        sink = self._phase_sink(Restarting)
        # Say so at once: the sockets close now, long before the first load phase.
        self.broadcaster.publish(Restarting(phase=CheckingLocal(path=source)))
        await self._quiesce()
        for slot in old_slots:
            await stop_quietly(slot.backend, 5.0)
        try:
            slots = await build_all(new_cfg, sink)
            self.config = new_cfg
            error = None
        except Exception as exc:  # noqa: BLE001 - keep serving something
            error = f"reload failed, serving the previous model again: {exc}"
            assert old_cfg is not None
            slots = await build_all(old_cfg, sink)
        self._install(slots)
        await self._await_ready()
        self.admission.reopen()
        self.broadcaster.publish(Ready(reload_error=error))
        await self._bind_surfaces()
        if error:
            log.error("%s", error)
            self.activity.record("error", "lifecycle", "reload_failed", reason=error)
        else:
            log.info("reloaded from %s", source)
            self.activity.record("info", "lifecycle", "reloaded", source=source)

    def _reload_failed(self, reason: str) -> None:
        log.error("%s", reason)
        self.activity.record("error", "lifecycle", "reload_failed", reason=reason)
        self.broadcaster.publish(Ready(reload_error=reason))


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
