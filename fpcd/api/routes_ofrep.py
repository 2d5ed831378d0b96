"""The OpenFeature Remote Evaluation Protocol (OFREP, open-feature/protocol
service/openapi.yaml), so any OpenFeature SDK with an OFREP provider can use fpcd.

`POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag, `POST /ofrep/v1/evaluate/flags`
every active flag (with an `ETag`; `If-None-Match` gives 304), `GET /ofrep/v1/configuration`
describes what the daemon supports. Evaluation is `FlagService.evaluate`, as for every
other door (and counted the same way).

OFREP has one value per flag and the request does not say which type the caller wants,
so the value is `fpcd.domain.openfeature.untyped_value`: the served variant's
`configuration` when it has one, else the variant's id; with no variant served,
`enabled` (then `variant` is "on" or "off"). Errors use OFREP's
own body (`{key, errorCode, errorDetails}`), not problem+json: OFREP providers read it.
Authentication and rate limits are the pipeline's, as everywhere (a Bearer token).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from aiohttp import web

from fpcd.api.http import CALLER, REQUEST_LIMITS, etag_matches, json_response, read_body
from fpcd.api.routes_flags import FLAGS
from fpcd.domain.configs import check_limits
from fpcd.domain.flags import EvaluationContext, EvaluationResult
from fpcd.domain.openfeature import (
    InvalidContext,
    context_from,
    metadata_of,
    untyped_value,
    variant_of,
)


class OfrepError(Exception):
    """A request OFREP answers with 400 and an error code."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


async def _context(request: web.Request) -> EvaluationContext:
    body = await read_body(request)
    if not body.strip():
        return EvaluationContext()
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise OfrepError("PARSE_ERROR", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OfrepError("PARSE_ERROR", 'the body must be an object: {"context": {...}}')
    limits = request.app[REQUEST_LIMITS]
    errors = check_limits(
        doc, max_depth=limits.max_json_depth + 2, max_keys=limits.max_json_keys, path="$"
    )
    if errors:
        raise OfrepError("INVALID_CONTEXT", f"{errors[0].path}: {errors[0].message}")
    raw = doc.get("context")
    if raw is not None and not isinstance(raw, dict):
        raise OfrepError("INVALID_CONTEXT", "context must be an object")
    try:
        return context_from(raw)
    except InvalidContext as error:
        raise OfrepError("INVALID_CONTEXT", str(error)) from None


def success(result: EvaluationResult) -> dict[str, Any]:
    return {
        "key": result.flag_key,
        "value": untyped_value(result),
        "reason": result.reason,
        "variant": variant_of(result),
        "metadata": metadata_of(result),
    }


def _failure(status: int, key: str | None, code: str, details: str) -> web.Response:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return json_response(body, status=status)


async def evaluate_flag(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    try:
        context = await _context(request)
    except OfrepError as error:
        return _failure(400, key, error.code, error.details)
    result = request.app[FLAGS].evaluate_one(key, context, request[CALLER])
    if result.error_code == "FLAG_NOT_FOUND":
        return _failure(404, key, "FLAG_NOT_FOUND", f"no flag {key!r}")
    return json_response(success(result))


async def evaluate_all(request: web.Request) -> web.Response:
    try:
        context = await _context(request)
    except OfrepError as error:
        return _failure(400, None, error.code, error.details)
    results = request.app[FLAGS].evaluate(None, context, request[CALLER])
    body = msgspec.json.encode({"flags": [success(r) for r in results.values()]})
    # The answer depends on the context, the flags and the time (date windows): the ETag
    # is the answer's own digest, so a 304 means exactly "the same answer".
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    match = request.headers.get("If-None-Match")
    if match is not None and etag_matches(match, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


CONFIGURATION = {
    "name": "fpcd",
    "capabilities": {
        "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": 1000}},
        "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
    },
}


async def configuration(request: web.Request) -> web.Response:
    return json_response(CONFIGURATION)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ofrep/v1/configuration", configuration)
    app.router.add_post("/ofrep/v1/evaluate/flags", evaluate_all)
    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", evaluate_flag)
