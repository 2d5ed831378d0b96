"""The composition root: builds the daemon from Settings and owns its lifecycle.

Nothing else constructs infrastructure. Components start in dependency order
(store -> services -> servers) and stop in reverse; start-up that fails half way
closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from fpcd import __version__
from fpcd.api.auth import Authenticator, TokenVerifier
from fpcd.api.connections import (
    ConnectionGuard,
    ConnectionStats,
    GuardedTCPSite,
    descriptor_limit,
    tcp_connection_cap,
)
from fpcd.api.flag_socket import FlagSocketServer
from fpcd.api.http import RequestLimits
from fpcd.api.permissions import RateLimiter
from fpcd.api.protocol import ProblemAppRunner
from fpcd.api.server import build_api_app, build_ws_app
from fpcd.api.ws import WebSocketLimits
from fpcd.domain.errors import (
    DiskFull,
    FpcdError,
    SettingsError,
    Unavailable,
)
from fpcd.domain.model import Caller
from fpcd.observe.alerts import Alerts, Check, HistogramWindow, RatioWindow
from fpcd.observe.changelog import log_change
from fpcd.observe.health import Health
from fpcd.observe.logging import AccessLogger, configure_logging
from fpcd.observe.metrics import Metrics, Sources
from fpcd.observe.stats import HttpStats
from fpcd.observe.systemd import Watchdog, notify
from fpcd.services.analytics import FlagAnalytics
from fpcd.services.audit import AuditService
from fpcd.services.changes import Committer, LocalCommitter
from fpcd.services.configs import ConfigLimits, ConfigService
from fpcd.services.environments import Environments
from fpcd.services.events import EventBus
from fpcd.services.flags import FlagService
from fpcd.services.keyring import MasterKeyError, open_keyring
from fpcd.services.live import LiveHub
from fpcd.services.portability import PortabilityService
from fpcd.services.registry import RegistryService
from fpcd.services.scheduler import Scheduler
from fpcd.services.secrets import SecretService
from fpcd.settings import RELOADABLE, AlertSettings, Settings, changed_keys, load_settings
from fpcd.store.lock import DataDirInUse, DataDirLock
from fpcd.store.sqlite import DatabaseCorrupt, Store
from fpcd.sync.files import FileSync
from fpcd.wire import ComponentHealth

if TYPE_CHECKING:
    # Imported where they are used: a standalone daemon never loads asyncpg, redis or
    # watchdog for the source dir (issue 18: idle memory).
    from fpcd.sync.source import SourceImporter
    from fpcd.upstream.log import UpstreamLog
    from fpcd.upstream.replicator import Replicator

log = logging.getLogger("fpcd")


class StartupError(Exception):
    """The daemon cannot start (port taken, socket in use, unreadable data dir)."""

    #: The exit status of `fpcd serve`: 1, a failure a restart may get past.
    exit_code = 1


#: sysexits' EX_CONFIG; the systemd unit has `RestartPreventExitStatus=78`.
EXIT_UNFIXABLE = 78


class FatalStartupError(StartupError):
    """A failure no restart can fix (settings, keys, a corrupt database, the data dir held
    by another daemon): `fpcd serve` exits 78 so that systemd stops restarting it."""

    exit_code = EXIT_UNFIXABLE


class KeyStartupError(FatalStartupError):
    """The master key is missing, weak or wrong: a restart cannot fix it (exit 78)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def config_limits(settings: Settings) -> ConfigLimits:
    return ConfigLimits(
        max_depth=settings.limits.max_json_depth,
        max_keys=settings.limits.max_json_keys,
        validation_timeout=settings.limits.schema_validation_timeout,
    )


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


async def _ready(component: ComponentHealth) -> ComponentHealth:
    return component


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        settings_path: str | None = None,
        overrides: dict[str, dict[str, object]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self._settings_path = settings_path
        self._overrides = overrides or {}
        self._clock = clock
        self._stack = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()
        #: Where each door listens, filled in by start(): "api", "ws", "socket".
        self.addresses: dict[str, str] = {}
        self.store: Store | None = None
        self.configs: ConfigService | None = None
        self.flags: FlagService | None = None
        self.secrets: SecretService | None = None
        self.registry: RegistryService | None = None
        self.hub: LiveHub | None = None
        self.files: FileSync | None = None
        self.replicator: Replicator | None = None
        self.source: SourceImporter | None = None
        self.bus: EventBus | None = None
        self.committer: Committer | None = None
        self.scheduler: Scheduler | None = None
        self.health: Health | None = None
        self.request_limits = RequestLimits(
            max_body_bytes=settings.limits.max_body_bytes,
            max_json_depth=settings.limits.max_json_depth,
            max_json_keys=settings.limits.max_json_keys,
        )
        self.rate_limiter = RateLimiter(settings.rate_limit)
        #: The aiohttp applications serving the API and the WebSocket port.
        self.apps: list[web.Application] = []
        self.verifier: TokenVerifier | None = None
        self.metrics: Metrics | None = None
        #: Open, refused and timed-out TCP connections per port ("api", "ws").
        self.connection_stats = ConnectionStats()

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
        settings = self.settings
        for directory in (settings.data_dir, settings.runtime_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            except OSError as error:
                raise StartupError(f"cannot create {directory}: {error.strerror}") from None
        lock = DataDirLock(settings.data_dir)
        try:
            lock.acquire()
        except DataDirInUse as error:
            raise FatalStartupError(str(error)) from None
        except OSError as error:
            raise StartupError(f"cannot lock {lock.path}: {error.strerror}") from None
        self._stack.callback(lock.release)

        store = Store(settings.database, synchronous=settings.storage.synchronous)
        try:
            await store.open()
        except DatabaseCorrupt as error:
            raise FatalStartupError(str(error)) from None
        except FpcdError as error:  # e.g. a schema newer than this fpcd
            raise FatalStartupError(f"cannot open {settings.database}: {error}") from None
        except Exception as error:
            raise StartupError(f"cannot open {settings.database}: {error}") from error
        self._stack.push_async_callback(store.close)
        self.store = store
        node_id = await store.meta_get("node_id")
        if node_id is None:
            node_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
            await store.meta_set("node_id", node_id)

        bus = self.bus = EventBus()
        committer: Committer
        upstream: UpstreamLog | None = None
        if settings.upstream.postgres_url:
            upstream, self.replicator = await self._open_upstream(store, bus)
            committer = self.replicator
        else:
            if settings.upstream.redis_url:
                log.warning("upstream.redis_url without upstream.postgres_url does nothing")
            committer = LocalCommitter(store, bus)
        self.committer = committer  # group commit counts (tests, benchmarks)
        self._stack.push_async_callback(committer.drain)
        scheduler = self.scheduler = Scheduler()
        scheduler.start()
        self._stack.push_async_callback(scheduler.stop)
        try:
            keyring, master = await open_keyring(
                store, committer, settings, clock=self._clock, node_id=node_id
            )
        except MasterKeyError as error:
            raise KeyStartupError(str(error)) from None
        environments = Environments(settings.environments, settings.server.default_environment)
        self.secrets = SecretService(
            store,
            committer,
            bus,
            keyring=keyring,
            master=master,
            scheduler=scheduler,
            node_id=node_id,
            clock=self._clock,
            max_value_bytes=settings.secrets.max_value_bytes,
            rewrap_batch=settings.secrets.rewrap_batch,
            time_source=lambda: self._clock().timestamp(),
            environments=environments,
        )
        await self.secrets.start()
        self._stack.push_async_callback(self.secrets.stop)
        scheduler.every(
            "secrets:cleanup", settings.secrets.cleanup_interval, self.secrets.expire_due
        )
        scheduler.every(
            "secrets:push-reads", settings.secrets.read_push_interval, self.secrets.push_reads
        )
        self.configs = ConfigService(
            store,
            committer,
            bus,
            node_id=node_id,
            clock=self._clock,
            default_environment=settings.server.default_environment,
            limits=config_limits(settings),
            secrets=self.secrets,
            environments=environments,
            max_service_labels=settings.metrics.max_service_labels,
        )
        self._stack.push_async_callback(self.configs.close)  # its schema validator process
        await self.configs.load()
        analytics = FlagAnalytics(store, time.time, upstream=upstream, node_id=node_id)
        self.flags = FlagService(
            store,
            committer,
            bus,
            node_id=node_id,
            clock=self._clock,
            default_environment=settings.server.default_environment,
            analytics=analytics,
            scheduler=scheduler,
        )
        await self.flags.load()
        scheduler.every("analytics:flush", settings.flags.analytics_flush_interval, analytics.flush)
        self._stack.push_async_callback(analytics.flush)  # the last counts, after the doors close
        self.registry = RegistryService(
            store,
            committer,
            bus,
            self.configs,
            node_id=node_id,
            clock=self._clock,
            check_interval=settings.registry.check_interval,
            check_timeout=settings.registry.check_timeout,
            health_check_hosts=list(settings.registry.health_check_hosts),
            enforce_required_configs=settings.registry.enforce_required_configs,
            time_source=lambda: self._clock().timestamp(),
        )
        await self.registry.start()
        self._stack.push_async_callback(self.registry.stop)
        wsl = settings.websocket
        ws_limits = WebSocketLimits(
            heartbeat=wsl.heartbeat,
            idle_timeout=wsl.idle_timeout,
            max_queue=wsl.max_queue,
            max_subscriptions=wsl.max_subscriptions,
            max_message_bytes=wsl.max_message_bytes,
            max_connections=wsl.max_connections,
            message_rate=wsl.message_rate,
            message_burst=wsl.message_burst,
            subscribe_rate=wsl.subscribe_rate,
            subscribe_burst=wsl.subscribe_burst,
        )
        hub = self.hub = LiveHub(
            bus,
            self.configs,
            self.flags,
            max_subscriptions=wsl.max_subscriptions,
            max_replay=wsl.max_replay,
            replay_concurrency=wsl.replay_concurrency,
        )
        hub.start()
        self._stack.push_async_callback(hub.stop)
        self.files = FileSync(
            list(settings.files),
            self.configs,
            committer,
            bus,
            node_id=node_id,
            clock=self._clock,
        )
        await self.files.start()
        self._stack.push_async_callback(self.files.stop)
        source: SourceImporter | None = None
        if settings.sync.source_dir:
            from fpcd.sync.source import SourceImporter

            source = self.source = SourceImporter(
                Path(settings.sync.source_dir), self.configs, self.flags
            )
            await source.start()
            self._stack.push_async_callback(source.stop)
        audit = AuditService(store, settle=self.secrets.settle_reads)
        health = self.health = Health(node_id)
        alerts = Alerts()
        health.alerts = alerts
        http_stats = HttpStats()
        flag_socket = FlagSocketServer(self.flags, max_line=settings.flags.max_line_bytes)
        self.metrics = Metrics(
            Sources(
                store=store,
                http=http_stats,
                configs=self.configs,
                flags=self.flags,
                secrets=self.secrets,
                hub=hub,
                files=self.files,
                scheduler=scheduler,
                alerts=alerts,
                replicator=self.replicator,
                flag_socket=flag_socket.stats,
                registry=self.registry,
            )
        )
        self._add_health_checks(health, source)
        self._add_alert_checks(alerts, http_stats)
        scheduler.every("alerts:check", settings.alerts.interval, alerts.run)
        if settings.storage.integrity_check_interval > 0:
            scheduler.every(
                "sqlite:quick_check",
                settings.storage.integrity_check_interval,
                store.check_integrity,
            )
        bus.subscribe(log_change)

        authenticator = Authenticator(
            self._token_verifier(), anonymous_role=settings.auth.anonymous_role or None
        )
        api_app = build_api_app(
            configs=self.configs,
            flags=self.flags,
            secrets=self.secrets,
            registry=self.registry,
            audit=audit,
            health=health,
            hub=hub,
            ws_limits=ws_limits,
            authenticator=authenticator,
            limits=self.request_limits,
            rate_limiter=self.rate_limiter,
            metrics=self.metrics,
            public_metrics=settings.metrics.public,
            portability=PortabilityService(
                store,
                committer,
                self.flags,
                analytics,
                node_id=node_id,
                clock=self._clock,
                limits=config_limits(settings),
            ),
        )
        await self._serve_api(api_app)
        await self._serve_ws(
            build_ws_app(
                health=health,
                hub=hub,
                ws_limits=ws_limits,
                default_environment=settings.server.default_environment,
                authenticator=authenticator,
                rate_limiter=self.rate_limiter,
                http_stats=http_stats,
                environments=self.configs.environments,
            )
        )
        await self._serve_flag_socket(flag_socket)
        health.ready = True
        watchdog = Watchdog()
        watchdog.start()
        self._stack.push_async_callback(watchdog.stop)
        notify("READY=1", f"STATUS=serving on {self.addresses['api']}")
        # Objects built at start-up live as long as the daemon: keep them out of the
        # collector's scans so collections on the request path stay short.
        gc.collect()
        gc.freeze()
        log.info(
            "fpcd ready",
            extra={"version": __version__, "node_id": node_id, **self.addresses},
        )

    def _add_health_checks(self, health: Health, source: SourceImporter | None) -> None:
        """Every component in /health; only SQLite being down makes the daemon down."""
        assert self.store and self.configs and self.flags and self.secrets
        assert self.hub and self.files and self.scheduler
        store, configs, flags, secrets_ = self.store, self.configs, self.flags, self.secrets
        hub, files, scheduler = self.hub, self.files, self.scheduler

        async def sqlite_health() -> ComponentHealth:
            await store.ping()
            if store.corrupt is not None:
                detail = f"integrity check failed, writes refused: {store.corrupt}"
                return ComponentHealth(status="degraded", detail=detail)
            return ComponentHealth(status="ok")

        async def records_health() -> ComponentHealth:
            problems = store.problems
            if problems.open:
                return ComponentHealth(
                    status="degraded",
                    detail=problems.summary(),
                    counts={"problems": len(problems.open)},
                )
            return ComponentHealth(status="ok", counts={"problems": 0})

        async def config_health() -> ComponentHealth:
            return ComponentHealth(
                status="ok",
                counts={"cacheHits": configs.cache_hits, "cacheMisses": configs.cache_misses},
            )

        async def flags_health() -> ComponentHealth:
            return ComponentHealth(status="ok", counts=flags.counts())

        async def websocket_health() -> ComponentHealth:
            return ComponentHealth(status="ok", counts=hub.counts)

        async def scheduler_health() -> ComponentHealth:
            if not scheduler.running:
                return ComponentHealth(status="down", detail="the scheduler is not running")
            failed = sum(n for (_, result), n in scheduler.runs.items() if result == "failed")
            return ComponentHealth(status="ok", counts={"jobs": scheduler.count, "failed": failed})

        async def files_health() -> ComponentHealth:
            status, detail = files.health()
            return ComponentHealth(
                status=status,
                detail=detail if files.targets else "no files configured",
                counts={"files": len(files.targets), "commandFailures": files.command_failures},
            )

        async def keyring_health() -> ComponentHealth:
            state = await secrets_.status(Caller.system("fpcd:health"))
            counts = {
                "keys": sum(1 for k in state.keys if k.state != "retired"),
                "rotationRemaining": state.rotation.remaining,
            }
            if secrets_.keyring.primary is None:
                return ComponentHealth(status="down", detail="no primary key", counts=counts)
            if state.rotation.failed or secrets_.tampered:
                problem = "ciphertexts failed their integrity check"
                return ComponentHealth(status="degraded", detail=problem, counts=counts)
            running = "rotation running" if state.rotation.running else None
            return ComponentHealth(status="ok", detail=running, counts=counts)

        health.add("sqlite", sqlite_health)
        health.add("records", records_health, critical=False)
        health.add("config", config_health, critical=False)
        health.add("flags", flags_health, critical=False)
        health.add("websocket", websocket_health, critical=False)
        health.add("scheduler", scheduler_health, critical=False)
        health.add("files", files_health, critical=False)
        health.add("keyring", keyring_health, critical=False)
        health.add("secret_reads", self._secret_reads_health, critical=False)

        if source is not None:
            importer = source

            async def source_health() -> ComponentHealth:
                if importer.rejected:
                    problems = "; ".join(sorted(importer.rejected.values()))
                    return ComponentHealth(status="degraded", detail=problems)
                return ComponentHealth(status="ok")

            health.add("source_dir", source_health, critical=False)

        standalone = ComponentHealth(status="ok", detail="not configured (standalone)")
        if self.replicator is None:
            health.add("upstream", lambda: _ready(standalone), critical=False)
            health.add("redis", lambda: _ready(standalone), critical=False)
            return
        replicator = self.replicator
        health.add("upstream", lambda: _ready(replicator.health()), critical=False)
        health.gates.append(
            lambda: None if replicator.caught_up.is_set() else "catch-up with the upstream"
        )
        doorbell = replicator.doorbell
        if doorbell is None:
            health.add(
                "redis",
                lambda: _ready(ComponentHealth(status="ok", detail="not configured (polling)")),
                critical=False,
            )
            return
        bell = doorbell
        health.add(
            "redis",
            lambda: _ready(
                ComponentHealth(status="ok")
                if bell.connected
                else ComponentHealth(status="down", detail=bell.last_error)
            ),
            critical=False,
        )

    def _add_alert_checks(self, alerts: Alerts, http_stats: HttpStats) -> None:
        assert self.configs and self.flags and self.hub
        configs, flags, hub = self.configs, self.flags, self.hub

        def limits() -> AlertSettings:
            return self.settings.alerts

        alerts.add(
            Check(
                "config_read_p99",
                "config",
                HistogramWindow(lambda: http_stats.latency.get(("/api/config/{service}", "GET"))),
                lambda: limits().config_read_p99_ms,
                unit="ms",
            )
        )
        alerts.add(
            Check(
                "cache_hit_ratio",
                "config",
                RatioWindow(
                    lambda: (configs.cache_hits, configs.cache_misses),
                    lambda: limits().cache_min_reads,
                ),
                lambda: limits().cache_hit_ratio_min,
                above=False,
            )
        )
        alerts.add(
            Check(
                "flag_eval_p99",
                "flags",
                HistogramWindow(lambda: flags.latency),
                lambda: limits().flag_eval_p99_ms,
                unit="ms",
            )
        )
        alerts.add(
            Check(
                "ws_delivery_p99",
                "websocket",
                HistogramWindow(lambda: hub.stats.delivery),
                lambda: limits().ws_delivery_p99_ms,
                unit="ms",
            )
        )
        if self.replicator is not None:
            replicator = self.replicator

            def staleness() -> float | None:
                last = replicator.last_sync
                return None if last is None else self._clock().timestamp() - last

            alerts.add(
                Check(
                    "replication_lag",
                    "upstream",
                    staleness,
                    lambda: limits().replication_lag_seconds,
                    unit="s",
                )
            )

    async def _open_upstream(self, store: Store, bus: EventBus) -> tuple[UpstreamLog, Replicator]:
        """Connect the upstream, catch up (or start from the local copy), ring the doorbell."""
        from fpcd.upstream.doorbell import Doorbell
        from fpcd.upstream.log import UPSTREAM_ERRORS, UpstreamLog
        from fpcd.upstream.replicator import Replicator

        unreachable: tuple[type[BaseException], ...] = (TimeoutError, *UPSTREAM_ERRORS)
        settings = self.settings.upstream
        upstream = UpstreamLog(settings.postgres_url, pool_size=settings.pool_size)
        try:
            await upstream.open()
        except Exception as error:  # a malformed URL; an unreachable server is not an error
            raise FatalStartupError(f"upstream.postgres_url: {error}") from None
        self._stack.push_async_callback(upstream.close)
        replicator = Replicator(
            store,
            bus,
            upstream,
            poll_interval=settings.poll_interval,
            batch_size=settings.batch_size,
            time_source=lambda: self._clock().timestamp(),
        )

        async def first_sync() -> None:
            if settings.auto_migrate:
                await upstream.migrate()
            await replicator.bootstrap()
            await replicator.sync_once()

        try:
            await asyncio.wait_for(first_sync(), settings.startup_timeout)
        except (DiskFull, Unavailable) as error:
            raise StartupError(str(error)) from None
        except FpcdError as error:  # two histories, a newer upstream schema
            raise FatalStartupError(str(error)) from None
        except unreachable as error:
            replicator.errors += 1
            if not store.upstream_cursor:
                raise StartupError(
                    "the upstream (Postgres) is unreachable and this host has no copy to"
                    f" serve yet: {error.__class__.__name__}"
                ) from None
            log.warning(
                "upstream unreachable at start: serving this host's copy until it is back",
                extra={"cursor": store.upstream_cursor, "error": error.__class__.__name__},
            )
        if settings.redis_url:
            replicator.doorbell = Doorbell(settings.redis_url, settings.channel, replicator.ring)
            replicator.doorbell.start()
            self._stack.push_async_callback(replicator.doorbell.stop)
        replicator.start()
        self._stack.push_async_callback(replicator.stop)
        return upstream, replicator

    def _token_verifier(self) -> TokenVerifier | None:
        """Token auth for TCP callers; on first start, an admin token file for the CLI."""
        settings = self.settings
        if not settings.auth.enabled:
            log.warning("token auth is off: TCP callers are not asked who they are")
            return None
        try:
            verifier = self.verifier = TokenVerifier(settings)
        except (OSError, ValueError) as error:
            raise FatalStartupError(f"auth: cannot load the token keys: {error}") from None
        created = verifier.ensure_admin_token(settings.data_dir)
        if created is not None:
            log.warning(
                "created an admin token for this host (the CLI uses it; keep it private)",
                extra={"path": str(created)},
            )
            print(f"fpcd: admin token written to {created} (mode 0600)", file=sys.stderr)
        return verifier

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not tls.cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as error:
            raise FatalStartupError(f"tls: cannot load {tls.cert} / {tls.key}: {error}") from None
        return context

    def _runner(self, app: web.Application) -> web.AppRunner:
        return ProblemAppRunner(
            app,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("fpcd.access") if self.settings.log.access else None,
            shutdown_timeout=self.settings.server.shutdown_timeout,
            keepalive_timeout=self.settings.server.idle_timeout,
        )

    def _tcp_site(self, runner: web.AppRunner, name: str, host: str, port: int) -> GuardedTCPSite:
        """A TCP site whose connections are capped and must send a head in time."""
        server = self.settings.server
        limit = descriptor_limit()
        cap = tcp_connection_cap(server.max_connections, 2, limit)
        if cap < server.max_connections:
            log.info(
                "TCP connections per port lowered to fit the descriptor limit",
                extra={"port": name, "max_connections": cap, "descriptor_limit": limit},
            )
        if self.metrics is not None:
            self.metrics.sources.connections = self.connection_stats
        guard = ConnectionGuard(
            name, limit=cap, header_timeout=server.header_timeout, stats=self.connection_stats
        )
        return GuardedTCPSite(runner, host, port, ssl_context=self._tls(), guard=guard)

    async def _serve_api(self, app: web.Application) -> None:
        settings = self.settings
        self.apps.append(app)
        runner = self._runner(app)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        host, port = settings.server.api_host, settings.server.api_port
        try:
            await self._tcp_site(runner, "api", host, port).start()
        except OSError as error:
            raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        bound = runner.addresses[-1]
        scheme = "https" if settings.tls.cert else "http"
        self.addresses["api"] = f"{scheme}://{bound[0]}:{bound[1]}"

        path = settings.api_socket
        _claim_socket(path)
        try:
            await web.UnixSite(runner, str(path)).start()
        except OSError as error:
            raise StartupError(f"cannot listen on {path}: {error.strerror}") from None
        self._stack.callback(path.unlink, missing_ok=True)
        _set_socket_access(path, settings.socket_mode, settings.server.socket_group)
        self.addresses["socket"] = str(path)

    async def _serve_flag_socket(self, server: FlagSocketServer) -> None:
        settings = self.settings
        path = settings.flags_socket
        _claim_socket(path)
        try:
            await server.start(str(path))
        except OSError as error:
            raise StartupError(f"cannot listen on {path}: {error.strerror}") from None
        self._stack.callback(path.unlink, missing_ok=True)
        self._stack.push_async_callback(server.stop)
        _set_socket_access(path, settings.flags_socket_mode, settings.flags.socket_group)
        self.addresses["flags"] = str(path)

    async def _secret_reads_health(self) -> ComponentHealth:
        """Reads recorded here and not yet in the audited change log (the upstream is down,
        or they are on their way)."""
        assert self.secrets is not None
        pending = await self.secrets.pending_reads()
        detail = "reads wait on this host for the upstream" if pending else None
        return ComponentHealth(status="ok", detail=detail, counts={"pending": pending})

    async def _serve_ws(self, app: web.Application) -> None:
        settings = self.settings
        self.apps.append(app)
        runner = self._runner(app)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        host, port = settings.server.api_host, settings.server.ws_port
        try:
            await self._tcp_site(runner, "ws", host, port).start()
        except OSError as error:
            raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        bound = runner.addresses[-1]
        scheme = "wss" if settings.tls.cert else "ws"
        self.addresses["ws"] = f"{scheme}://{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and commits, then close the store."""
        notify("STOPPING=1")
        started = self.health is not None and self.health.ready
        if self.health:
            self.health.ready = False
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
        self.request_limits.max_body_bytes = new.limits.max_body_bytes
        self.request_limits.max_json_depth = new.limits.max_json_depth
        self.request_limits.max_json_keys = new.limits.max_json_keys
        self.rate_limiter.configure(new.rate_limit)
        if self.configs is not None:
            self.configs.limits = config_limits(new)
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
