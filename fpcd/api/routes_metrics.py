"""`/metrics` (Prometheus text or OpenMetrics, by Accept) and `/api/status`."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from fpcd.api.http import caller, json_response
from fpcd.api.routes_health import HEALTH
from fpcd.observe.metrics import Metrics
from fpcd.wire import FlagUsage, StatusDocument

METRICS = web.AppKey("metrics", Metrics)
TOP_FLAGS = 10


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS].render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type  # carries its own version and charset
    return response


async def status(request: web.Request) -> web.Response:
    sources = request.app[METRICS].sources
    report = await request.app[HEALTH].report()
    services, environments, layers = await sources.configs.layer_counts(caller=caller(request))
    evaluations: Counter[str] = Counter()
    enabled: Counter[str] = Counter()
    for (flag, _variant, _reason, on), n in sources.flags.analytics.totals().items():
        evaluations[flag] += n
        enabled[flag] += n if on else 0
    alerts = sources.alerts.active
    doc = StatusDocument(
        health=report,
        services=services,
        environments=environments,
        config_layers=layers,
        flags=sources.flags.counts()["flags"],
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
