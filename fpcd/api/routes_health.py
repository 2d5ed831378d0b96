"""Health endpoints: the full report, and the cheap liveness/readiness probes."""

from __future__ import annotations

from aiohttp import web

from fpcd.api.encoded import EncodedHead, EncodedResponse
from fpcd.api.http import json_response
from fpcd.observe.health import Health

HEALTH = web.AppKey("health", Health)


async def health(request: web.Request) -> web.Response:
    report = await request.app[HEALTH].report()
    return json_response(report, status=503 if report.status == "down" else 200)


_LIVE = b'{"status":"ok"}'


async def live(request: web.Request) -> web.Response:
    """Liveness: the loop answers. Pre-encoded: the probe measures the pipeline alone."""
    return EncodedResponse(_LIVE_HEAD, _LIVE)


_LIVE_HEAD = EncodedHead(200, {"Content-Type": "application/json"})


async def ready(request: web.Request) -> web.Response:
    """Ready once started, caught up with the upstream and every file written once."""
    waiting = request.app[HEALTH].waiting_for()
    if waiting:
        return json_response({"ready": False, "waitingFor": waiting}, status=503)
    return json_response({"ready": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
