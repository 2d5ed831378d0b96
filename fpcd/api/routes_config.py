"""REST routes for configuration: thin translations from HTTP to ConfigService."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from aiohttp import web

from fpcd.api.encoded import EncodedHead, EncodedResponse
from fpcd.api.http import (
    CALLER,
    JSON,
    REQUEST_LIMITS,
    body_as,
    caller,
    decode_json,
    etag_matches,
    expected_version,
    json_response,
    page_params,
    query_bool,
    query_int,
    read_body,
)
from fpcd.services.configs import ConfigService
from fpcd.wire import ConfigPut, ConfigReload, ConfigRollback

CONFIGS = web.AppKey("configs", ConfigService)
_encoder = msgspec.json.Encoder()


def _service(request: web.Request) -> str:
    return request.match_info["service"]


async def list_configs(request: web.Request) -> web.Response:
    """Only the services and environments the caller may read."""
    return json_response(await request.app[CONFIGS].services(caller=caller(request)))


class ReadParams(NamedTuple):
    environment: str
    version: int | None
    raw: bool
    include_secrets: bool


#: Parsed GET query strings. Only valid ones are kept, so a cached GET skips parsing.
_READ_PARAMS = web.AppKey("read_params", dict[str, ReadParams])


def _read_params(request: web.Request) -> ReadParams:
    memo = request.app[_READ_PARAMS]
    query = request.query_string
    params = memo.get(query)
    if params is None:
        params = ReadParams(
            environment=request.app[CONFIGS].environment(request.query.get("environment")),
            version=query_int(request, "version", minimum=1),
            raw=query_bool(request, "raw"),
            include_secrets=query_bool(request, "includeSecrets"),
        )
        if len(memo) >= 4096:
            memo.clear()
        memo[query] = params
    return params


async def get_config(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    service = _service(request)
    params = _read_params(request)
    who = request[CALLER]  # no request id: a read records nothing (`caller()` adds it)
    if params.include_secrets:
        doc = await configs.document(
            service,
            params.environment,
            caller=caller(request),  # an audited secret read
            version=params.version,
            raw=params.raw,
            include_secrets=True,
        )
        return web.Response(
            body=_encoder.encode(doc), content_type=JSON, headers={"Cache-Control": "no-store"}
        )
    # The hot path: a cached read is the encoded body and its ETag, no coroutine, no I/O.
    cached = configs.cached_document_bytes(
        service, params.environment, caller=who, version=params.version, raw=params.raw
    )
    etag, body = cached or await configs.document_bytes(
        service, params.environment, caller=caller(request), version=params.version, raw=params.raw
    )
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    return EncodedResponse(_DOCUMENT_HEAD, body, etag=etag)


_DOCUMENT_HEAD = EncodedHead(200, {"Content-Type": JSON, "Cache-Control": "no-cache"})


async def put_config(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    service = _service(request)
    body = await body_as(request, ConfigPut)
    environment = configs.environment(body.environment)
    result = await configs.put(
        service,
        environment,
        body.config,
        caller=caller(request),
        secrets=body.secrets,
        description=body.description,
        tags=body.tags,
        expected_version=expected_version(request, body.expected_version),
    )
    return json_response(result, headers={"ETag": f'"{result.version}"'})


async def rollback_config(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    body = await body_as(request, ConfigRollback)
    environment = configs.environment(body.environment)
    result = await configs.rollback(
        _service(request),
        environment,
        body.version,
        caller=caller(request),
        description=body.description,
        expected_version=expected_version(request, body.expected_version),
    )
    return json_response(result, headers={"ETag": f'"{result.version}"'})


async def reload_config(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    body = await body_as(request, ConfigReload, empty_ok=True)
    environment = configs.environment(body.environment)
    result = await configs.reload(
        _service(request),
        environment,
        force=body.force,
        caller=caller(request),
    )
    return json_response(result)


async def config_history(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    limit, offset = page_params(request)
    environment = configs.environment(request.query.get("environment"))
    page = await configs.history(
        _service(request), environment, caller=caller(request), limit=limit, offset=offset
    )
    return json_response(page)


async def config_diff(request: web.Request) -> web.Response:
    configs = request.app[CONFIGS]
    environment = configs.environment(request.query.get("environment"))
    doc = await configs.diff(
        _service(request),
        environment,
        caller=caller(request),
        from_=query_int(request, "from", minimum=0),
        to=query_int(request, "to", minimum=1),
    )
    return json_response(doc)


async def get_schema(request: web.Request) -> web.Response:
    return json_response(
        await request.app[CONFIGS].schema(_service(request), caller=caller(request))
    )


async def put_schema(request: web.Request) -> web.Response:
    """Takes `{"schema": {...}}` or the schema document itself."""
    doc = decode_json(await read_body(request), dict[str, Any], request.app[REQUEST_LIMITS])
    schema = doc["schema"] if set(doc) == {"schema"} and isinstance(doc["schema"], dict) else doc
    result = await request.app[CONFIGS].put_schema(
        _service(request), schema, caller=caller(request)
    )
    return json_response(result)


async def delete_schema(request: web.Request) -> web.Response:
    result = await request.app[CONFIGS].put_schema(_service(request), None, caller=caller(request))
    return json_response(result)


def add_routes(app: web.Application) -> None:
    app[_READ_PARAMS] = {}
    app.router.add_get("/api/config", list_configs)
    app.router.add_get("/api/config/{service}", get_config)
    app.router.add_put("/api/config/{service}", put_config)
    app.router.add_post("/api/config/{service}/rollback", rollback_config)
    app.router.add_post("/api/config/{service}/reload", reload_config)
    app.router.add_get("/api/config/{service}/history", config_history)
    app.router.add_get("/api/config/{service}/diff", config_diff)
    app.router.add_get("/api/config/{service}/schema", get_schema)
    app.router.add_put("/api/config/{service}/schema", put_schema)
    app.router.add_delete("/api/config/{service}/schema", delete_schema)
