"""REST routes for the service registry."""

from __future__ import annotations

from aiohttp import web

from fpcd.api.http import body_as, caller, json_response
from fpcd.domain.errors import BadRequest, FieldError
from fpcd.domain.names import check_name
from fpcd.services.registry import (
    DEGRADED,
    HEALTHY,
    STALE,
    UNHEALTHY,
    UNKNOWN,
    RegistryService,
)
from fpcd.wire import ServiceRegister

REGISTRY = web.AppKey("registry", RegistryService)
_STATUSES = (HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN, STALE)


def _name(request: web.Request) -> str:
    return check_name("service", request.match_info["name"])


async def register(request: web.Request) -> web.Response:
    body = await body_as(request, ServiceRegister)
    result, created = await request.app[REGISTRY].register(body, caller(request))
    return json_response(result, status=201 if created else 200)


async def list_services(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in _STATUSES:
        raise BadRequest(
            "status must be one of " + ", ".join(_STATUSES),
            errors=[FieldError("query.status", "unknown status")],
        )
    page = request.app[REGISTRY].list_services(
        caller(request),
        tag=request.query.get("tag") or None,
        environment=request.query.get("environment") or None,
        status=status,
    )
    return json_response(page)


async def get_service(request: web.Request) -> web.Response:
    return json_response(request.app[REGISTRY].get(_name(request), caller(request)))


async def deregister(request: web.Request) -> web.Response:
    await request.app[REGISTRY].deregister(_name(request), caller(request))
    return web.Response(status=204)


async def heartbeat(request: web.Request) -> web.Response:
    return json_response(request.app[REGISTRY].heartbeat(_name(request), caller(request)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/services/register", register)
    app.router.add_get("/api/services", list_services)
    app.router.add_get("/api/services/{name}", get_service)
    app.router.add_delete("/api/services/{name}", deregister)
    app.router.add_post("/api/services/{name}/heartbeat", heartbeat)
