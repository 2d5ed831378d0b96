"""`/metrics` (Prometheus text or OpenMetrics, by Accept) and `/api/status`."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from aiohttp import web

from fpcd.api.http import caller, json_response
from fpcd.api.routes_config import CONFIGS
from fpcd.api.routes_flags import FLAGS
from fpcd.api.routes_health import HEALTH
from fpcd.observe.alerts import Alerts
from fpcd.wire import FlagUsage, StatusDocument


class Exposition(Protocol):
    """The Prometheus exposition of the daemon's counters (`fpcd.metrics.Metrics`)."""

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its Content-Type for this Accept header."""
        ...


METRICS = web.AppKey("metrics", Exposition)
ALERTS = web.AppKey("alerts", Alerts)
TOP_FLAGS = 10


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS].render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type  # carries its own version and charset
    return response


async def status(request: web.Request) -> web.Response:
    app = request.app
    flags = app[FLAGS]
    report = await app[HEALTH].report()
    services, environments, layers = await app[CONFIGS].layer_counts(caller=caller(request))
    evaluations: Counter[str] = Counter()
    enabled: Counter[str] = Counter()
    for (flag, _variant, _reason, on), n in flags.analytics.totals().items():
        evaluations[flag] += n
        enabled[flag] += n if on else 0
    alerts = app[ALERTS].active
    doc = StatusDocument(
        health=report,
        services=services,
        environments=environments,
        config_layers=layers,
        flags=flags.counts()["flags"],
        top_flags=[
            FlagUsage(key=key, evaluations=n, enabled=enabled[key])
            for key, n in evaluations.most_common(TOP_FLAGS)
        ],
        alerts=dict(sorted(alerts.items())),
    )
    return json_response(doc)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/status", status)
