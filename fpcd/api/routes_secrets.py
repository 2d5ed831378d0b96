"""REST routes for secrets and the data-key ring."""

from __future__ import annotations

from aiohttp import web

from fpcd.api.http import body_as, caller, json_response, query_int
from fpcd.domain.crypto import Secret
from fpcd.services.secrets import SecretService
from fpcd.wire import SecretPut

SECRETS = web.AppKey("secrets", SecretService)
ENVIRONMENT = web.AppKey("default_environment", str)


def _where(request: web.Request) -> tuple[str, str]:
    """(service, environment) of a secrets route; the service checks both."""
    environment = request.query.get("environment") or request.app[ENVIRONMENT]
    return request.match_info["service"], environment


async def put_secret(request: web.Request) -> web.Response:
    service, environment = _where(request)
    body = await body_as(request, SecretPut)
    view, changed = await request.app[SECRETS].put(
        service,
        environment,
        request.match_info["name"],
        Secret(body.value),
        caller(request),
        expires_at=body.expires_at,
        ttl_seconds=body.ttl_seconds,
        description=body.description,
    )
    return json_response({"secret": view, "changed": changed}, status=200)


async def get_secret(request: web.Request) -> web.Response:
    service, environment = _where(request)
    view = await request.app[SECRETS].get(
        service,
        environment,
        request.match_info["name"],
        caller(request),
        version=query_int(request, "version", minimum=1),
    )
    return json_response(view, headers={"Cache-Control": "no-store"})


async def delete_secret(request: web.Request) -> web.Response:
    service, environment = _where(request)
    await request.app[SECRETS].delete(
        service, environment, request.match_info["name"], caller(request)
    )
    return web.Response(status=204)


async def list_secrets(request: web.Request) -> web.Response:
    service, environment = _where(request)
    return json_response(
        await request.app[SECRETS].list_secrets(service, environment, caller(request))
    )


async def secret_versions(request: web.Request) -> web.Response:
    service, environment = _where(request)
    page = await request.app[SECRETS].versions(
        service, environment, request.match_info["name"], caller(request)
    )
    return json_response(page)


async def rotate_key(request: web.Request) -> web.Response:
    return json_response(await request.app[SECRETS].rotate(caller(request)), status=202)


async def keyring_status(request: web.Request) -> web.Response:
    return json_response(await request.app[SECRETS].status(caller(request)))


async def retire_key(request: web.Request) -> web.Response:
    status = await request.app[SECRETS].retire(request.match_info["key_id"], caller(request))
    return json_response(status)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/secrets/rotate-key", rotate_key)
    app.router.add_get("/api/keyring", keyring_status)
    app.router.add_post("/api/keyring/rotate", rotate_key)
    app.router.add_post("/api/keyring/{key_id}/retire", retire_key)
    app.router.add_get("/api/secrets/{service}", list_secrets)
    app.router.add_put("/api/secrets/{service}/{name}", put_secret)
    app.router.add_get("/api/secrets/{service}/{name}", get_secret)
    app.router.add_delete("/api/secrets/{service}/{name}", delete_secret)
    app.router.add_get("/api/secrets/{service}/{name}/versions", secret_versions)
