"""The composition root: `build(settings)` turns Settings into the daemon's Components.

Nothing else constructs infrastructure. Building reads only what components are built
from: the data dir's lock, the store (migrated at open) and its node id, the upstream's
history (the first catch-up) and the keyring. Every component gets everything it needs
when it is constructed and is not changed afterwards; each reports its own `health()`.
What build opens it registers on the caller's exit stack, so a build that fails half way
closes what it opened. Starting, serving, reloading and stopping are `fpcd.app.Daemon`'s
(flagd's from_config.go beside runtime.go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from fpcd.api.auth import Authenticator
from fpcd.api.connections import ConnectionStats
from fpcd.api.flag_socket import FlagSocketServer
from fpcd.api.http import RequestLimits
from fpcd.api.permissions import RateLimiter
from fpcd.api.server import build_api_app, build_ws_app
from fpcd.api.ws import WebSocketLimits
from fpcd.clock import SYSTEM_CLOCK, Clock
from fpcd.domain.errors import DiskFull, FpcdError, Unavailable
from fpcd.metrics import Metrics, Sources
from fpcd.observe.alerts import Alerts, daemon_checks
from fpcd.observe.health import Check, Health
from fpcd.observe.stats import HttpStats
from fpcd.services.analytics import FlagAnalytics
from fpcd.services.audit import AuditService
from fpcd.services.changelog import log_change
from fpcd.services.changes import Committer, LocalCommitter
from fpcd.services.configs import ConfigLimits, ConfigService
from fpcd.services.environments import Environments
from fpcd.services.events import EventBus
from fpcd.services.flags import FlagService
from fpcd.services.keyring import MasterKeyError, open_keyring
from fpcd.services.live import LiveHub
from fpcd.services.portability import PortabilityService
from fpcd.services.registry import Registered, RegistryService
from fpcd.services.scheduler import Scheduler
from fpcd.services.secrets import SecretService
from fpcd.services.tokens import TokenVerifier
from fpcd.settings import Settings
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


#: /health's answer for the replication parts of a daemon without an upstream.
STANDALONE = ComponentHealth(status="ok", detail="not configured (standalone)")
#: /health's `redis` with an upstream but no upstream.redis_url.
POLLING = ComponentHealth(status="ok", detail="not configured (polling)")


@dataclass(frozen=True, slots=True)
class Components:
    """Everything the daemon is made of, fully built. Optional only where a
    configuration may lack the part."""

    node_id: str
    clock: Clock
    store: Store
    bus: EventBus
    #: LocalCommitter, or the Replicator with an upstream.
    committer: Committer
    #: Only with upstream.postgres_url (its doorbell only with upstream.redis_url).
    replicator: Replicator | None
    scheduler: Scheduler
    secrets: SecretService
    configs: ConfigService
    analytics: FlagAnalytics
    flags: FlagService
    registry: RegistryService
    hub: LiveHub
    files: FileSync
    #: Only with sync.source_dir.
    source: SourceImporter | None
    audit: AuditService
    portability: PortabilityService
    #: Requests by route, method and status; open, refused and timed-out TCP connections.
    http_stats: HttpStats
    connection_stats: ConnectionStats
    alerts: Alerts
    health: Health
    metrics: Metrics
    #: None with auth.enabled = false (TCP callers are not asked who they are).
    verifier: TokenVerifier | None
    #: Settings a SIGHUP applies at once (with the configs' and alerts' limits).
    request_limits: RequestLimits
    rate_limiter: RateLimiter
    flag_socket: FlagSocketServer
    #: The REST API (TCP port and Unix socket), and the WebSocket port.
    api_app: web.Application
    ws_app: web.Application


def config_limits(settings: Settings) -> ConfigLimits:
    return ConfigLimits(
        max_depth=settings.limits.max_json_depth,
        max_keys=settings.limits.max_json_keys,
        validation_timeout=settings.limits.schema_validation_timeout,
    )


def request_limits(settings: Settings) -> RequestLimits:
    return RequestLimits(
        max_body_bytes=settings.limits.max_body_bytes,
        max_json_depth=settings.limits.max_json_depth,
        max_json_keys=settings.limits.max_json_keys,
    )


def websocket_limits(settings: Settings) -> WebSocketLimits:
    wsl = settings.websocket
    return WebSocketLimits(
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


async def build(
    settings: Settings, stack: contextlib.AsyncExitStack, *, clock: Clock = SYSTEM_CLOCK
) -> Components:
    """Every component of a daemon for `settings`, in dependency order; what it opens is
    closed by `stack`. Raises StartupError (or FatalStartupError) saying what is wrong."""
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
    stack.callback(lock.release)

    store = await _open_store(settings, stack)
    node_id = await store.meta_get("node_id")
    if node_id is None:
        node_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        await store.meta_set("node_id", node_id)

    bus = EventBus()
    committer: Committer
    upstream: UpstreamLog | None = None
    replicator: Replicator | None = None
    if settings.upstream.postgres_url:
        upstream, replicator = await _open_upstream(settings, store, bus, stack, clock)
        committer = replicator
    else:
        if settings.upstream.redis_url:
            log.warning("upstream.redis_url without upstream.postgres_url does nothing")
        committer = LocalCommitter(store, bus)
    scheduler = Scheduler(clock)
    try:
        keyring, master = await open_keyring(
            store, committer, settings, clock=clock, node_id=node_id
        )
    except MasterKeyError as error:
        raise KeyStartupError(str(error)) from None

    environments = Environments(settings.environments, settings.server.default_environment)
    secrets_ = SecretService(
        store,
        committer,
        bus,
        keyring=keyring,
        master=master,
        scheduler=scheduler,
        node_id=node_id,
        clock=clock,
        max_value_bytes=settings.secrets.max_value_bytes,
        rewrap_batch=settings.secrets.rewrap_batch,
        environments=environments,
    )
    registered = Registered(enforce_required_configs=settings.registry.enforce_required_configs)
    configs = ConfigService(
        store,
        committer,
        bus,
        node_id=node_id,
        clock=clock,
        default_environment=settings.server.default_environment,
        limits=config_limits(settings),
        secrets=secrets_,
        environments=environments,
        max_service_labels=settings.metrics.max_service_labels,
        required_configs=registered.required_configs,
    )
    stack.push_async_callback(configs.close)  # its schema validator process
    analytics = FlagAnalytics(store, upstream=upstream, node_id=node_id)
    flags = FlagService(
        store,
        committer,
        bus,
        node_id=node_id,
        clock=clock,
        default_environment=settings.server.default_environment,
        analytics=analytics,
        scheduler=scheduler,
    )
    registry = RegistryService(
        store,
        committer,
        bus,
        configs,
        node_id=node_id,
        clock=clock,
        check_interval=settings.registry.check_interval,
        check_timeout=settings.registry.check_timeout,
        health_check_hosts=list(settings.registry.health_check_hosts),
        registered=registered,
    )
    ws_limits = websocket_limits(settings)
    hub = LiveHub(
        bus,
        configs,
        flags,
        max_subscriptions=ws_limits.max_subscriptions,
        max_replay=settings.websocket.max_replay,
        replay_concurrency=settings.websocket.replay_concurrency,
        clock=clock,
    )
    files = FileSync(list(settings.files), configs, committer, bus, node_id=node_id, clock=clock)
    source: SourceImporter | None = None
    if settings.sync.source_dir:
        from fpcd.sync.source import SourceImporter

        source = SourceImporter(Path(settings.sync.source_dir), configs, flags)
    bus.subscribe(log_change)
    audit = AuditService(store, settle=secrets_.settle_reads)
    portability = PortabilityService(
        store,
        committer,
        flags,
        analytics,
        node_id=node_id,
        clock=clock,
        limits=config_limits(settings),
    )

    http_stats = HttpStats()
    connection_stats = ConnectionStats()
    alerts = Alerts(
        settings.alerts,
        daemon_checks(
            http=http_stats,
            cache=configs,
            flag_latency=flags.latency,
            ws_delivery=hub.stats.delivery,
            replication=replicator,
            clock=clock,
        ),
    )
    checks: dict[str, Check] = {
        "sqlite": store.health,
        "records": store.problems.health,
        "config": configs.health,
        "flags": flags.health,
        "websocket": hub.health,
        "scheduler": scheduler.health,
        "files": files.health,
        "keyring": secrets_.keyring_health,
        "secret_reads": secrets_.reads_health,
    }
    if source is not None:
        checks["source_dir"] = source.health
    if replicator is None:
        checks.update(upstream=STANDALONE, redis=STANDALONE)
    else:
        doorbell = replicator.doorbell
        checks.update(
            upstream=replicator.health, redis=POLLING if doorbell is None else doorbell.health
        )
    # Only SQLite being down makes the daemon down; every other part degrades it.
    health = Health(
        node_id,
        checks,
        critical={"sqlite"},
        gates=[replicator.waiting_for] if replicator is not None else [],
        alerts=alerts,
    )
    flag_socket = FlagSocketServer(flags, max_line=settings.flags.max_line_bytes)
    metrics = Metrics(
        Sources(
            store=store,
            http=http_stats,
            configs=configs,
            flags=flags,
            secrets=secrets_,
            hub=hub,
            files=files,
            scheduler=scheduler,
            alerts=alerts,
            flag_socket=flag_socket.stats,
            connections=connection_stats,
            registry=registry,
            replicator=replicator,
        )
    )

    scheduler.every("secrets:cleanup", settings.secrets.cleanup_interval, secrets_.expire_due)
    scheduler.every("secrets:push-reads", settings.secrets.read_push_interval, secrets_.push_reads)
    scheduler.every("analytics:flush", settings.flags.analytics_flush_interval, analytics.flush)
    scheduler.every("alerts:check", settings.alerts.interval, alerts.run)
    if settings.storage.integrity_check_interval > 0:
        scheduler.every(
            "sqlite:quick_check", settings.storage.integrity_check_interval, store.check_integrity
        )

    verifier = _token_verifier(settings, clock)
    authenticator = Authenticator(
        verifier, anonymous_role=settings.auth.anonymous_role or None, clock=clock
    )
    limits = request_limits(settings)
    rate_limiter = RateLimiter(settings.rate_limit)
    api_app = build_api_app(
        configs=configs,
        flags=flags,
        secrets=secrets_,
        registry=registry,
        audit=audit,
        health=health,
        hub=hub,
        ws_limits=ws_limits,
        authenticator=authenticator,
        limits=limits,
        rate_limiter=rate_limiter,
        metrics=metrics,
        alerts=alerts,
        http_stats=http_stats,
        public_metrics=settings.metrics.public,
        portability=portability,
    )
    ws_app = build_ws_app(
        health=health,
        hub=hub,
        ws_limits=ws_limits,
        default_environment=settings.server.default_environment,
        authenticator=authenticator,
        rate_limiter=rate_limiter,
        http_stats=http_stats,
        environments=configs.environments,
    )
    return Components(
        node_id=node_id,
        clock=clock,
        store=store,
        bus=bus,
        committer=committer,
        replicator=replicator,
        scheduler=scheduler,
        secrets=secrets_,
        configs=configs,
        analytics=analytics,
        flags=flags,
        registry=registry,
        hub=hub,
        files=files,
        source=source,
        audit=audit,
        portability=portability,
        http_stats=http_stats,
        connection_stats=connection_stats,
        alerts=alerts,
        health=health,
        metrics=metrics,
        verifier=verifier,
        request_limits=limits,
        rate_limiter=rate_limiter,
        flag_socket=flag_socket,
        api_app=api_app,
        ws_app=ws_app,
    )


async def _open_store(settings: Settings, stack: contextlib.AsyncExitStack) -> Store:
    store = Store(settings.database, synchronous=settings.storage.synchronous)
    try:
        await store.open()
    except DatabaseCorrupt as error:
        raise FatalStartupError(str(error)) from None
    except FpcdError as error:  # e.g. a schema newer than this fpcd
        raise FatalStartupError(f"cannot open {settings.database}: {error}") from None
    except Exception as error:
        raise StartupError(f"cannot open {settings.database}: {error}") from error
    stack.push_async_callback(store.close)
    return store


async def _open_upstream(
    settings: Settings,
    store: Store,
    bus: EventBus,
    stack: contextlib.AsyncExitStack,
    clock: Clock,
) -> tuple[UpstreamLog, Replicator]:
    """Connect the upstream and catch up (or start from the local copy): the components
    are built from the state the upstream says is current."""
    from fpcd.upstream.log import UPSTREAM_ERRORS, UpstreamLog
    from fpcd.upstream.replicator import Replicator

    unreachable: tuple[type[BaseException], ...] = (TimeoutError, *UPSTREAM_ERRORS)
    config = settings.upstream
    upstream = UpstreamLog(config.postgres_url, pool_size=config.pool_size)
    try:
        await upstream.open()
    except Exception as error:  # a malformed URL; an unreachable server is not an error
        raise FatalStartupError(f"upstream.postgres_url: {error}") from None
    stack.push_async_callback(upstream.close)
    replicator = Replicator(
        store,
        bus,
        upstream,
        poll_interval=config.poll_interval,
        batch_size=config.batch_size,
        clock=clock,
        redis_url=config.redis_url,
        channel=config.channel,
    )

    async def first_sync() -> None:
        if config.auto_migrate:
            await upstream.migrate()
        await replicator.bootstrap()
        await replicator.sync_once()

    try:
        await asyncio.wait_for(first_sync(), config.startup_timeout)
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
    return upstream, replicator


def _token_verifier(settings: Settings, clock: Clock) -> TokenVerifier | None:
    """Token auth for TCP callers; on first start, an admin token file for the CLI."""
    if not settings.auth.enabled:
        log.warning("token auth is off: TCP callers are not asked who they are")
        return None
    try:
        verifier = TokenVerifier(settings, clock=clock)
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
