"""REST routes for the audit log."""

from __future__ import annotations

from aiohttp import web

from fpcd.api.http import caller, json_response, page_params
from fpcd.services.audit import AuditService

AUDIT = web.AppKey("audit", AuditService)


async def audit_log(request: web.Request) -> web.Response:
    limit, offset = page_params(request)
    target = request.query.get("target") or None
    page = await request.app[AUDIT].page(caller(request), target=target, limit=limit, offset=offset)
    return json_response(page)


async def audit_verify(request: web.Request) -> web.Response:
    result = await request.app[AUDIT].verify(caller(request))
    return json_response(result, status=200 if result.ok else 409)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/audit", audit_log)
    app.router.add_get("/api/audit/verify", audit_verify)
