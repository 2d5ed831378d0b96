"""REST routes for feature flags: thin translations from HTTP to FlagService."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from fpcd.api.http import (
    CALLER,
    REQUEST_LIMITS,
    body_as,
    caller,
    decode_json,
    expected_version,
    json_response,
    page_params,
    query_bool,
    read_body,
)
from fpcd.domain.errors import BadRequest, FieldError
from fpcd.domain.flags import FlagDefinition
from fpcd.domain.instants import checked_utc, parse_iso
from fpcd.domain.names import FLAG_KEY_PATTERN, check_name, valid_flag_key
from fpcd.services.flags import FlagService
from fpcd.wire import EvaluateRequest, EvaluateResponse, EvaluationCounts, FlagView

FLAGS = web.AppKey("flags", FlagService)


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not valid_flag_key(key):
        raise BadRequest(
            "invalid flag key: use 1-128 of a-z, 0-9, '_', '.', '-'",
            errors=[FieldError("key", f"must match {FLAG_KEY_PATTERN}")],
        )
    return key


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


async def list_flags(request: web.Request) -> web.Response:
    flags = request.app[FLAGS]
    environment = request.query.get("environment") or None
    if environment:
        check_name("environment", environment)
    enabled = query_bool(request, "enabled") if request.query.get("enabled") else None
    tags = [t for t in request.query.get("tags", "").split(",") if t]
    page = flags.list_flags(
        caller(request),
        environment=environment,
        enabled=enabled,
        tags=tags,
        include_archived=query_bool(request, "includeArchived"),
    )
    return json_response(page)


async def create_flag(request: web.Request) -> web.Response:
    definition = await body_as(request, FlagDefinition)
    record = await request.app[FLAGS].create(definition, caller(request))
    headers = {**_etag(record.version), "Location": f"/api/features/{record.key}"}
    return json_response(FlagView.of(record), status=201, headers=headers)


async def get_flag(request: web.Request) -> web.Response:
    record = request.app[FLAGS].get(
        _key(request), caller(request), include_archived=query_bool(request, "includeArchived")
    )
    return json_response(FlagView.of(record), headers=_etag(record.version))


async def put_flag(request: web.Request) -> web.Response:
    key = _key(request)
    definition = await body_as(request, FlagDefinition)
    record, changed = await request.app[FLAGS].put(
        key, definition, caller(request), expected_version=expected_version(request, None)
    )
    status = 201 if changed and record.version == 1 else 200
    doc = FlagView.of(record, changed=changed)
    return json_response(doc, status=status, headers=_etag(record.version))


async def patch_flag(request: web.Request) -> web.Response:
    key = _key(request)
    patch = decode_json(await read_body(request), dict[str, Any], request.app[REQUEST_LIMITS])
    record, changed = await request.app[FLAGS].patch(
        key, patch, caller(request), expected_version=expected_version(request, None)
    )
    return json_response(FlagView.of(record, changed=changed), headers=_etag(record.version))


async def archive_flag(request: web.Request) -> web.Response:
    record = await request.app[FLAGS].archive(
        _key(request), caller(request), expected_version=expected_version(request, None)
    )
    return json_response(FlagView.of(record), headers=_etag(record.version))


async def flag_history(request: web.Request) -> web.Response:
    limit, offset = page_params(request)
    page = await request.app[FLAGS].history(
        _key(request), caller(request), limit=limit, offset=offset
    )
    return json_response(page)


def _date(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    moment = parse_iso(raw)
    if moment is None:
        raise BadRequest(
            f"query parameter {name} must be an ISO 8601 date or time",
            errors=[FieldError(f"query.{name}", "expected a date such as 2026-11-01")],
        )
    return checked_utc(moment, f"query.{name}")


async def flag_analytics(request: web.Request) -> web.Response:
    report = await request.app[FLAGS].analytics_report(
        _key(request),
        caller(request),
        start=_date(request, "startDate"),
        end=_date(request, "endDate"),
    )
    return json_response(report)


async def evaluate_flags(request: web.Request) -> web.Response:
    flags = request.app[FLAGS]
    body = await body_as(request, EvaluateRequest)
    context = body.context
    if context.environment is None and request.query.get("environment"):
        context = msgspec.structs.replace(
            context, environment=check_name("environment", request.query["environment"])
        )
    elif context.environment is not None:
        check_name("environment", context.environment)
    results = flags.evaluate(body.flags, context, request[CALLER])
    return json_response(EvaluateResponse(results=results))


async def record_evaluations(request: web.Request) -> web.Response:
    """Counts of evaluations a client made locally, so analytics stay complete."""
    body = await body_as(request, EvaluationCounts)
    return json_response(request.app[FLAGS].record_counts(body.counts, caller(request)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/features", list_flags)
    app.router.add_post("/api/features", create_flag)
    app.router.add_post("/api/features/evaluate", evaluate_flags)
    app.router.add_post("/api/features/evaluations", record_evaluations)
    app.router.add_get("/api/features/{key}", get_flag)
    app.router.add_put("/api/features/{key}", put_flag)
    app.router.add_patch("/api/features/{key}", patch_flag)
    app.router.add_delete("/api/features/{key}", archive_flag)
    app.router.add_get("/api/features/{key}/history", flag_history)
    app.router.add_get("/api/features/{key}/analytics", flag_analytics)
