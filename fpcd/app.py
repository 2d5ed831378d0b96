"""The runtime: `Daemon` starts the Components, serves them, reloads and stops them.

`fpcd.components.build` makes the parts; this module only runs them (flagd's
runtime.go beside from_config.go). Components start in dependency order (replication,
services, file sync, the scheduler, then the doors) and stop in reverse; a start that
fails half way closes what it opened. SIGTERM/SIGINT stop, SIGHUP reloads the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import signal
import socket
import ssl
from pathlib import Path

from aiohttp import web

from fpcd import __version__
from fpcd.api.connections import (
    ConnectionGuard,
    GuardedTCPSite,
    descriptor_limit,
    tcp_connection_cap,
)
from fpcd.api.protocol import ProblemAppRunner
from fpcd.clock import SYSTEM_CLOCK, Clock
from fpcd.components import (
    EXIT_UNFIXABLE,
    Components,
    FatalStartupError,
    KeyStartupError,
    StartupError,
    build,
    config_limits,
)
from fpcd.domain.errors import DiskFull, SettingsError
from fpcd.observe.logging import AccessLogger, configure_logging
from fpcd.observe.systemd import Watchdog, notify
from fpcd.settings import RELOADABLE, Settings, changed_keys, load_settings
from fpcd.store.sqlite import DatabaseCorrupt

__all__ = [
    "EXIT_UNFIXABLE",
    "Daemon",
    "FatalStartupError",
    "KeyStartupError",
    "StartupError",
]

log = logging.getLogger("fpcd")


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file, but never one a running daemon still answers on."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"{path} is in use: is another fpcd running with this runtime dir?")


def _set_socket_access(path: Path, mode: int, group: str) -> None:
    os.chmod(path, mode)
    if group:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, PermissionError) as error:
            raise FatalStartupError(f"cannot give {path} to group {group}: {error}") from None


def return_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim): start-up
    (migrations, the integrity check, the audit chain, the keyring's scrypt) leaves them
    free but resident, and glibc would only return them once much more is free at the
    top of the heap. False where the C library has no malloc_trim (not glibc)."""
    import ctypes  # only here: a daemon calls this once

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def _tls(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as error:
        raise FatalStartupError(f"tls: cannot load {tls.cert} / {tls.key}: {error}") from None
    return context


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        settings_path: str | None = None,
        overrides: dict[str, dict[str, object]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self._settings_path = settings_path
        self._overrides = overrides or {}
        self._clock = clock
        self._stack = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()
        #: Where each door listens, filled in by start(): "api", "ws", "socket", "flags".
        self.addresses: dict[str, str] = {}
        self._components: Components | None = None

    @property
    def components(self) -> Components:
        """The parts of the running daemon (built by start())."""
        if self._components is None:
            raise RuntimeError("the daemon is not started")
        return self._components

    @property
    def started(self) -> bool:
        """start() built the components (it may have failed after that)."""
        return self._components is not None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException as error:
            await self._stack.aclose()
            if isinstance(error, DiskFull):  # freeing space and starting again will work
                raise StartupError(str(error)) from None
            if isinstance(error, DatabaseCorrupt):  # SQLite found damage quick_check missed
                raise FatalStartupError(str(error)) from None
            raise

    async def _start(self) -> None:
        stack = self._stack
        c = self._components = await build(self.settings, stack, clock=self._clock)
        if c.replicator is not None:
            if c.replicator.doorbell is not None:
                c.replicator.doorbell.start()
                stack.push_async_callback(c.replicator.doorbell.stop)
            c.replicator.start()
            stack.push_async_callback(c.replicator.stop)
        stack.push_async_callback(c.committer.drain)  # commits in flight finish
        await c.secrets.start()
        stack.push_async_callback(c.secrets.stop)
        await c.configs.load()
        await c.flags.load()
        stack.push_async_callback(c.analytics.flush)  # the last counts, after the doors close
        await c.registry.start()
        stack.push_async_callback(c.registry.stop)
        c.hub.start()
        stack.push_async_callback(c.hub.stop)
        await c.files.start()
        stack.push_async_callback(c.files.stop)
        if c.source is not None:
            await c.source.start()
            stack.push_async_callback(c.source.stop)
        c.scheduler.start()  # date and periodic jobs, once what they call is running
        stack.push_async_callback(c.scheduler.stop)
        await self._serve(c)
        c.health.ready = True
        watchdog = Watchdog()
        watchdog.start()
        stack.push_async_callback(watchdog.stop)
        notify("READY=1", f"STATUS=serving on {self.addresses['api']}")
        # Objects built at start-up live as long as the daemon: keep them out of the
        # collector's scans so collections on the request path stay short.
        gc.collect()
        gc.freeze()
        return_free_heap()  # what start-up freed no longer counts in the daemon's memory
        log.info(
            "fpcd ready",
            extra={"version": __version__, "node_id": c.node_id, **self.addresses},
        )

    # -- the doors ------------------------------------------------------------------

    async def _serve(self, c: Components) -> None:
        """The API on its TCP port and Unix socket, the WebSocket port, the flag socket."""
        settings = self.settings
        tls = _tls(settings)
        secure = tls is not None
        api = await self._serve_tcp(
            c, c.api_app, "api", settings.server.api_port, "https" if secure else "http", tls
        )
        path = settings.api_socket
        _claim_socket(path)
        try:
            await web.UnixSite(api, str(path)).start()
        except OSError as error:
            raise StartupError(f"cannot listen on {path}: {error.strerror}") from None
        self._stack.callback(path.unlink, missing_ok=True)
        _set_socket_access(path, settings.socket_mode, settings.server.socket_group)
        self.addresses["socket"] = str(path)
        await self._serve_tcp(
            c, c.ws_app, "ws", settings.server.ws_port, "wss" if secure else "ws", tls
        )
        path = settings.flags_socket
        _claim_socket(path)
        try:
            await c.flag_socket.start(str(path))
        except OSError as error:
            raise StartupError(f"cannot listen on {path}: {error.strerror}") from None
        self._stack.callback(path.unlink, missing_ok=True)
        self._stack.push_async_callback(c.flag_socket.stop)
        _set_socket_access(path, settings.flags_socket_mode, settings.flags.socket_group)
        self.addresses["flags"] = str(path)

    async def _serve_tcp(
        self,
        c: Components,
        app: web.Application,
        name: str,
        port: int,
        scheme: str,
        tls: ssl.SSLContext | None,
    ) -> web.AppRunner:
        """An application on a TCP port of `server.api_host`, its connections capped and
        held to a deadline for their first request head; its address as "<name>"."""
        server = self.settings.server
        runner = ProblemAppRunner(
            app,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("fpcd.access") if self.settings.log.access else None,
            shutdown_timeout=server.shutdown_timeout,
            keepalive_timeout=server.idle_timeout,
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        limit = descriptor_limit()
        cap = tcp_connection_cap(server.max_connections, 2, limit)
        if cap < server.max_connections:
            log.info(
                "TCP connections per port lowered to fit the descriptor limit",
                extra={"port": name, "max_connections": cap, "descriptor_limit": limit},
            )
        guard = ConnectionGuard(
            name, limit=cap, header_timeout=server.header_timeout, stats=c.connection_stats
        )
        site = GuardedTCPSite(runner, server.api_host, port, ssl_context=tls, guard=guard)
        try:
            await site.start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {server.api_host}:{port}: {error.strerror}"
            ) from None
        bound = runner.addresses[-1]
        self.addresses[name] = f"{scheme}://{bound[0]}:{bound[1]}"
        return runner

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and commits, then close the store."""
        notify("STOPPING=1")
        health = self._components.health if self._components is not None else None
        started = health is not None and health.ready
        if health is not None:
            health.ready = False
        await self._stack.aclose()
        if started:  # a start that failed said why in one line; nothing more to add
            log.info("fpcd stopped")

    # -- signals ----------------------------------------------------------------

    def reload_settings(self) -> None:
        """SIGHUP: re-read the settings file and environment; keep command-line values."""
        notify("RELOADING=1")
        try:
            new = load_settings(self._settings_path, overrides=self._overrides)
        except SettingsError as error:
            log.error(
                "settings reload refused; keeping the running settings", extra={"error": str(error)}
            )
            notify("READY=1")
            return
        changed = changed_keys(self.settings, new)
        applied, pending = [], []
        for key in changed:
            section, _, name = key.partition(".")
            if (section, name) in RELOADABLE or (section, "*") in RELOADABLE:
                applied.append(key)
            else:
                pending.append(key)
        configure_logging(new.log.level, new.log.format)
        if self._components is not None:
            c = self._components
            c.request_limits.max_body_bytes = new.limits.max_body_bytes
            c.request_limits.max_json_depth = new.limits.max_json_depth
            c.request_limits.max_json_keys = new.limits.max_json_keys
            c.rate_limiter.configure(new.rate_limit)
            c.configs.limits = config_limits(new)
            c.alerts.limits = new.alerts
        self.settings = new
        log.info("settings reloaded", extra={"applied": applied, "need_restart": pending})
        notify("READY=1")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop; SIGHUP reloads settings."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_settings)
        try:
            await self.start()
            await self._stopping.wait()
            log.info("shutting down")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
