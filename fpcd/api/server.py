"""Builds the aiohttp application that serves the REST API on TCP and the Unix socket."""

from __future__ import annotations

from aiohttp import web

from fpcd.api import (
    routes_audit,
    routes_config,
    routes_flags,
    routes_health,
    routes_metrics,
    routes_ofrep,
    routes_portability,
    routes_secrets,
    routes_services,
    routes_ui,
    ws,
)
from fpcd.api.auth import Authenticator
from fpcd.api.http import (
    AUTHENTICATOR,
    HTTP_STATS,
    JSON,
    PUBLIC_METRICS,
    RATE_LIMITER,
    REQUEST_LIMITS,
    RequestLimits,
    install_pipeline,
)
from fpcd.api.openapi import encoded_document
from fpcd.api.permissions import RateLimiter
from fpcd.observe.alerts import Alerts
from fpcd.observe.health import Health
from fpcd.observe.stats import HttpStats
from fpcd.services.audit import AuditService
from fpcd.services.configs import ConfigService
from fpcd.services.environments import Environments
from fpcd.services.flags import FlagService
from fpcd.services.live import LiveHub
from fpcd.services.portability import PortabilityService
from fpcd.services.registry import RegistryService
from fpcd.services.secrets import SecretService

#: aiohttp's own cap; the configurable limit is enforced while reading (see read_body).
_HARD_BODY_CAP = 64 * 1024 * 1024


def build_api_app(
    *,
    configs: ConfigService,
    flags: FlagService,
    secrets: SecretService,
    registry: RegistryService,
    audit: AuditService,
    health: Health,
    hub: LiveHub,
    ws_limits: ws.WebSocketLimits,
    authenticator: Authenticator,
    limits: RequestLimits,
    rate_limiter: RateLimiter,
    metrics: routes_metrics.Exposition,
    alerts: Alerts,
    http_stats: HttpStats,
    public_metrics: bool = False,
    portability: PortabilityService | None = None,
) -> web.Application:
    app = web.Application(client_max_size=_HARD_BODY_CAP)
    app[AUTHENTICATOR] = authenticator
    app[PUBLIC_METRICS] = public_metrics
    app[HTTP_STATS] = http_stats
    app[routes_metrics.METRICS] = metrics
    app[routes_metrics.ALERTS] = alerts
    app[REQUEST_LIMITS] = limits
    app[RATE_LIMITER] = rate_limiter
    app[routes_config.CONFIGS] = configs
    app[routes_flags.FLAGS] = flags
    app[routes_secrets.SECRETS] = secrets
    app[routes_secrets.ENVIRONMENT] = configs.default_environment
    app[routes_services.REGISTRY] = registry
    app[routes_audit.AUDIT] = audit
    app[routes_health.HEALTH] = health
    routes_health.add_routes(app)
    routes_config.add_routes(app)
    routes_flags.add_routes(app)
    routes_ofrep.add_routes(app)
    routes_secrets.add_routes(app)
    routes_services.add_routes(app)
    ws.add_routes(
        app,
        hub,
        ws_limits,
        configs.default_environment,
        paths=("/ws",),
        environments=configs.environments,
    )
    routes_audit.add_routes(app)
    routes_metrics.add_routes(app)
    if portability is not None:
        app[routes_portability.PORTABILITY] = portability
        routes_portability.add_routes(app)
    app.router.add_get("/openapi.json", openapi)
    routes_ui.add_routes(app)  # the web console at /ui/
    install_pipeline(app)
    return app


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=encoded_document(), content_type=JSON)


def build_ws_app(
    *,
    health: Health,
    hub: LiveHub,
    ws_limits: ws.WebSocketLimits,
    default_environment: str,
    authenticator: Authenticator,
    rate_limiter: RateLimiter,
    http_stats: HttpStats | None = None,
    environments: Environments | None = None,
) -> web.Application:
    """The WebSocket port (the seed's CONFIG_WS_PORT): the protocol at `/` and `/ws`."""
    app = web.Application()
    app[AUTHENTICATOR] = authenticator
    app[HTTP_STATS] = http_stats if http_stats is not None else HttpStats()
    app[REQUEST_LIMITS] = RequestLimits()
    app[RATE_LIMITER] = rate_limiter
    app[routes_health.HEALTH] = health
    routes_health.add_routes(app)
    ws.add_routes(
        app, hub, ws_limits, default_environment, paths=("/", "/ws"), environments=environments
    )
    install_pipeline(app)
    return app
