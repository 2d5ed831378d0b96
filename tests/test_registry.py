"""Service registry: registration, discovery, heartbeats, health checks, requiredConfigs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fpcd.app import Daemon
from fpcd.services.events import ServiceStatusChanged
from tests.conftest import api_session, eventually, issue_token, make_settings


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


class Upstream:
    """A real local HTTP health endpoint the test can turn sick or off."""

    def __init__(self) -> None:
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.Response(status=self.status, text="ok" if self.status < 400 else "no")

        app = web.Application()
        app.router.add_get("/healthz", health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        host, bound = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{bound}/healthz"
        self.port = bound

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(
        make_settings(tmp_path, registry={"check_interval": "100ms", "check_timeout": "500ms"})
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


@pytest.fixture
async def fast_http(fast: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with api_session(fast) as http:
        yield http


async def wait_status(http: aiohttp.ClientSession, name: str, status: str) -> dict[str, Any]:
    return await wait_view(http, name, lambda doc: doc["status"] == status)


async def test_register_with_the_seed_body(http: aiohttp.ClientSession) -> None:
    await call(
        http,
        "PUT",
        "/api/config/user-service",
        {"environment": "production", "config": {"database": {"host": "db"}}},
    )
    body = {
        "name": "user-service",
        "version": "1.4.2",
        "host": "10.0.0.5",
        "port": 8080,
        "healthCheck": "http://10.0.0.5:8080/health",
        "tags": ["api", "users"],
        "environment": "production",
        "requiredConfigs": ["database.host", "database.port", "jwt.secret"],
        "metadata": {"team": "identity"},
    }
    status, result = await call(http, "POST", "/api/services/register", body)
    assert status == 201
    assert result["missingConfigs"] == ["database.port", "jwt.secret"]
    service = result["service"]
    assert service["serviceName"] == "user-service" and service["version"] == "1.4.2"
    assert "name" not in service  # one name per field: the original's
    assert service["tags"] == ["api", "users"] and service["metadata"] == {"team": "identity"}
    status, again = await call(http, "POST", "/api/services/register", {**body, "version": "1.5"})
    assert status == 200 and again["service"]["version"] == "1.5"
    _, audit = await call(http, "GET", "/api/audit?target=service:user-service")
    assert [e["action"] for e in audit["items"]] == ["service.register", "service.register"]


async def test_discovery_filters_and_deregister(http: aiohttp.ClientSession) -> None:
    for name, tags, env in (
        ("a", ["api"], "prod"),
        ("b", ["worker"], "prod"),
        ("c", ["api"], "staging"),
    ):
        await call(
            http, "POST", "/api/services/register", {"name": name, "tags": tags, "environment": env}
        )

    def names(page: dict[str, Any]) -> list[str]:
        return [s["serviceName"] for s in page["items"]]

    assert names((await call(http, "GET", "/api/services?tag=api"))[1]) == ["a", "c"]
    assert names((await call(http, "GET", "/api/services?environment=prod"))[1]) == ["a", "b"]
    assert names((await call(http, "GET", "/api/services?tag=api&environment=prod"))[1]) == ["a"]
    assert names((await call(http, "GET", "/api/services?status=unknown"))[1]) == ["a", "b", "c"]
    assert (await call(http, "DELETE", "/api/services/b"))[0] == 204
    assert (await call(http, "GET", "/api/services/b"))[0] == 404
    assert (await call(http, "DELETE", "/api/services/b"))[0] == 404
    assert (await call(http, "POST", "/api/services/b/heartbeat"))[0] == 404
    assert names((await call(http, "GET", "/api/services"))[1]) == ["a", "c"]


async def test_health_checks_follow_a_real_endpoint(
    fast: Daemon, fast_http: aiohttp.ClientSession
) -> None:
    changes: list[ServiceStatusChanged] = []
    fast.components.bus.subscribe(
        lambda e: changes.append(e) if isinstance(e, ServiceStatusChanged) else None
    )
    upstream = Upstream()
    await upstream.start()
    try:
        status, result = await call(
            fast_http,
            "POST",
            "/api/services/register",
            {
                "name": "api",
                "host": "127.0.0.1",
                "port": upstream.port,
                "healthCheck": {"url": upstream.url},
            },
        )
        assert status == 201 and result["service"]["status"] == "healthy"
        upstream.status = 503
        doc = await wait_status(fast_http, "api", "unhealthy")
        assert doc["lastError"] == "HTTP 503" and doc["lastCheck"]
        _, page = await call(fast_http, "GET", "/api/services?status=unhealthy")
        assert [s["serviceName"] for s in page["items"]] == ["api"]
        upstream.status = 200
        await wait_status(fast_http, "api", "healthy")
        port = upstream.port
        await upstream.stop()  # down entirely: connection refused
        doc = await wait_status(fast_http, "api", "unhealthy")
        assert doc["lastError"]
        await upstream.start(port)
        await wait_status(fast_http, "api", "healthy")
    finally:
        await upstream.stop()
    moves = [(c.old, c.new) for c in changes if c.name == "api"]
    assert ("healthy", "unhealthy") in moves and ("unhealthy", "healthy") in moves


async def test_heartbeat_ttl_turns_stale(fast: Daemon, fast_http: aiohttp.ClientSession) -> None:
    status, result = await call(
        fast_http, "POST", "/api/services/register", {"name": "worker", "ttlSeconds": 1}
    )
    assert result["service"]["status"] == "healthy"
    await wait_status(fast_http, "worker", "stale")
    status, doc = await call(fast_http, "POST", "/api/services/worker/heartbeat")
    assert status == 200 and doc["status"] == "healthy" and doc["lastHeartbeat"]
    await wait_status(fast_http, "worker", "stale")


async def test_a_status_change_logs_no_error(
    fast: Daemon, fast_http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Every listener on the bus takes a status change in its stride (alerting on error
    logs must not page anyone when a service turns stale and back)."""
    changes: list[ServiceStatusChanged] = []
    fast.components.bus.subscribe(
        lambda e: changes.append(e) if isinstance(e, ServiceStatusChanged) else None
    )
    caplog.set_level(logging.DEBUG)
    await call(fast_http, "POST", "/api/services/register", {"name": "beat", "ttlSeconds": 1})
    await wait_status(fast_http, "beat", "stale")
    await call(fast_http, "POST", "/api/services/beat/heartbeat")
    await wait_status(fast_http, "beat", "healthy")
    assert [(c.old, c.new) for c in changes if c.name == "beat"][-2:] == [
        ("healthy", "stale"),
        ("stale", "healthy"),
    ]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage(), r.exc_text) for r in errors]


@pytest.fixture
async def enforcing(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    daemon = Daemon(make_settings(tmp_path, registry={"enforce_required_configs": True}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            yield http
    finally:
        await daemon.stop()


async def test_required_configs_are_enforced_on_writes_when_asked(
    enforcing: aiohttp.ClientSession,
) -> None:
    http = enforcing
    await call(
        http,
        "POST",
        "/api/services/register",
        {
            "name": "billing",
            "environment": "prod",
            "requiredConfigs": ["database.host", "currency"],
        },
    )
    status, problem = await call(
        http, "PUT", "/api/config/billing", {"environment": "prod", "config": {"currency": "EUR"}}
    )
    assert status == 422
    assert [e["path"] for e in problem["errors"]] == ["$.config.database.host"]
    status, _ = await call(
        http,
        "PUT",
        "/api/config/billing",
        {"environment": "prod", "config": {"currency": "EUR", "database": {"host": "db"}}},
    )
    assert status == 200
    # Other environments are not bound by prod's registration.
    assert (
        await call(http, "PUT", "/api/config/billing", {"environment": "staging", "config": {}})
    )[0] == 200
    # Removing a required key through the default layer's merge is caught too.
    status, _ = await call(
        http, "PUT", "/api/config/billing", {"environment": "default", "config": {"other": 1}}
    )
    assert status == 200  # prod still has its own keys
    _, result = await call(
        http,
        "POST",
        "/api/services/register",
        {
            "name": "billing",
            "environment": "prod",
            "requiredConfigs": ["database.host", "currency"],
        },
    )
    assert result["missingConfigs"] == []


async def test_enforcement_counts_a_secret_as_the_required_key(
    enforcing: aiohttp.ClientSession,
) -> None:
    http = enforcing
    await call(
        http,
        "POST",
        "/api/services/register",
        {"serviceName": "auth", "environment": "production", "requiredConfigs": ["JWT_SECRET"]},
    )
    body = {"environment": "production", "config": {"issuer": "me"}}
    status, problem = await call(http, "PUT", "/api/config/auth", body)
    assert status == 422 and [e["path"] for e in problem["errors"]] == ["$.config.JWT_SECRET"]
    status, _ = await call(
        http, "PUT", "/api/config/auth", {**body, "secrets": {"JWT_SECRET": "s" * 40}}
    )
    assert status == 200
    # Later writes keep passing: the secret is still there.
    status, _ = await call(
        http, "PUT", "/api/config/auth", {"environment": "production", "config": {"issuer": "x"}}
    )
    assert status == 200


async def metric_lines(http: aiohttp.ClientSession, prefix: str) -> list[str]:
    async with http.get("/metrics") as r:
        assert r.status == 200
        return [line for line in (await r.text()).splitlines() if line.startswith(prefix)]


ORIGINAL_BODY = {
    "serviceName": "user-service",
    "displayName": "User Management Service",
    "description": "Handles user authentication and profiles",
    "version": "2.1.0",
    "endpoints": ["http://user-service:3000"],
    "healthCheck": "http://user-service:3000/health",
    "requiredConfigs": ["DATABASE_URL", "JWT_SECRET"],
    "optionalConfigs": ["REDIS_URL", "SENTRY_DSN"],
    "environment": "production",
    "tags": ["core", "auth"],
}


async def test_the_original_body_verbatim(http: aiohttp.ClientSession) -> None:
    """The original's documented example registers as is and answers with its names."""
    status, result = await call(http, "POST", "/api/services/register", ORIGINAL_BODY)
    assert status == 201, result
    service = result["service"]
    for field, value in ORIGINAL_BODY.items():
        assert service[field] == value, field
    assert service["isActive"] is True and service["registeredBy"] == "admin"
    assert result["missingConfigs"] == ["DATABASE_URL", "JWT_SECRET"]
    assert result["missingOptionalConfigs"] == ["REDIS_URL", "SENTRY_DSN"]
    assert service["missingConfigs"] == ["DATABASE_URL", "JWT_SECRET"]
    _, page = await call(http, "GET", "/api/services?tag=auth")
    assert [s["serviceName"] for s in page["items"]] == ["user-service"]
    assert page["items"][0]["displayName"] == "User Management Service"
    _, page = await call(http, "GET", "/api/services?tag=billing")
    assert page["items"] == []
    # Registering again with fpcd's earlier body (`name`) updates the same service.
    status, again = await call(
        http, "POST", "/api/services/register", {"name": "user-service", "version": "2.2.0"}
    )
    assert status == 200 and again["service"]["version"] == "2.2.0"
    assert again["service"]["serviceName"] == "user-service"


async def test_required_configs_are_reported_not_enforced(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    body = {k: v for k, v in ORIGINAL_BODY.items() if k != "healthCheck"}
    status, result = await call(http, "POST", "/api/services/register", body)
    assert status == 201
    assert result["service"]["status"] == "degraded"
    assert await metric_lines(http, "fpcd_service_missing_configs{") == [
        'fpcd_service_missing_configs{kind="required",service="user-service"} 2.0',
        'fpcd_service_missing_configs{kind="optional",service="user-service"} 2.0',
    ]
    # A write without the required keys is stored (the original's behaviour) ...
    status, written = await call(
        http,
        "PUT",
        "/api/config/user-service",
        {"environment": "production", "config": {"DATABASE_URL": "postgres://db/users"}},
    )
    assert status == 200 and written["version"] == 1
    doc = await wait_view(http, "user-service", lambda d: d["missingConfigs"] == ["JWT_SECRET"])
    assert doc["status"] == "degraded"
    # ... and a secret satisfies a requirement, so JWT_SECRET never sits in plain config.
    status, _ = await call(
        http,
        "PUT",
        "/api/secrets/user-service/JWT_SECRET?environment=production",
        {"value": "x" * 40},
    )
    assert status == 200
    doc = await wait_view(http, "user-service", lambda d: d["missingConfigs"] == [])
    assert doc["status"] == "unknown"  # no health check, no TTL: nothing else is known
    assert doc["missingOptionalConfigs"] == ["REDIS_URL", "SENTRY_DSN"]
    # Deleting the secret makes it missing again; writing it back satisfies it again.
    path = "/api/secrets/user-service/JWT_SECRET?environment=production"
    assert (await call(http, "DELETE", path))[0] in (200, 204)
    doc = await wait_view(http, "user-service", lambda d: d["missingConfigs"] == ["JWT_SECRET"])
    assert doc["status"] == "degraded"
    assert (await call(http, "PUT", path, {"value": "y" * 40}))[0] == 200
    await wait_view(http, "user-service", lambda d: d["missingConfigs"] == [])
    # An optional key in the `default` layer counts for every environment over it.
    await call(
        http,
        "PUT",
        "/api/config/user-service",
        {"environment": "default", "config": {"REDIS_URL": "redis://cache"}},
    )
    doc = await wait_view(
        http, "user-service", lambda d: d["missingOptionalConfigs"] == ["SENTRY_DSN"]
    )
    assert await metric_lines(http, "fpcd_service_missing_configs{") == [
        'fpcd_service_missing_configs{kind="required",service="user-service"} 0.0',
        'fpcd_service_missing_configs{kind="optional",service="user-service"} 1.0',
    ]
    _, page = await call(http, "GET", "/api/services?status=degraded")
    assert page["items"] == []


async def wait_view(
    http: aiohttp.ClientSession, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The service's view once `check` holds for it."""
    view: dict[str, Any] = {}

    async def matches() -> bool:
        nonlocal view
        _, view = await call(http, "GET", f"/api/services/{name}")
        return check(view)

    await eventually(matches, 5, what=f"the view of {name}")
    return view


async def test_missing_configs_metric_has_bounded_labels(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, metrics={"max_service_labels": 2}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            for name in ("s1", "s2", "s3", "s4"):
                await call(
                    http,
                    "POST",
                    "/api/services/register",
                    {"serviceName": name, "requiredConfigs": ["A", "B"]},
                )
            lines = await metric_lines(http, 'fpcd_service_missing_configs{kind="required"')
        assert lines == [
            'fpcd_service_missing_configs{kind="required",service="s1"} 2.0',
            'fpcd_service_missing_configs{kind="required",service="s2"} 2.0',
            'fpcd_service_missing_configs{kind="required",service="_other"} 4.0',
        ]
    finally:
        await daemon.stop()


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({}, 422, "$.serviceName"),
        ({"serviceName": "x", "name": "y"}, 422, "$.name"),
        ({"serviceName": "x", "endpoints": ["not a url"]}, 422, "$.endpoints[0]"),
        ({"serviceName": "x", "endpoints": ["//no-scheme"]}, 422, "$.endpoints[0]"),
        ({"serviceName": "x", "endpoints": ["http://a"] * 33}, 422, "$.endpoints"),
        ({"serviceName": "x", "endpoints": ["http://" + "a" * 2048]}, 422, "$.endpoints[0]"),
        ({"serviceName": "x", "displayName": "d" * 257}, 422, "$.displayName"),
        ({"serviceName": "x", "description": "d" * 4097}, 422, "$.description"),
        ({"serviceName": "x", "version": "v" * 129}, 422, "$.version"),
        ({"serviceName": "x", "tags": ["t"] * 33}, 422, "$.tags"),
        ({"serviceName": "x", "tags": [""]}, 422, "$.tags[0]"),
        ({"serviceName": "x", "optionalConfigs": ["k" * 257]}, 422, "$.optionalConfigs[0]"),
        ({"serviceName": "x", "requiredConfigs": ["k"] * 257}, 422, "$.requiredConfigs"),
        ({"serviceName": "x", "optionalConfigs": ["a."]}, 422, "$.optionalConfigs[0]"),
        ({"serviceName": "x", "metadata": {"blob": "x" * 20000}}, 422, "$.metadata"),
        ({"serviceName": "x", "environment": "prdo"}, 422, "$.environment"),
        ({"name": "bad name"}, 400, "service"),
        ({"name": "x", "port": 70000}, 422, "$.port"),
        ({"name": "x", "healthCheck": "ftp://host/x"}, 422, "$.healthCheck"),
        ({"name": "x", "healthCheck": "/relative"}, 422, "$.healthCheck"),
        ({"name": "x", "healthCheck": {"path": "/x"}}, 422, "$.healthCheck"),
        ({"name": "x", "ttlSeconds": 0}, 422, "$.ttlSeconds"),
        ({"name": "x", "requiredConfigs": ["a..b"]}, 422, "$.requiredConfigs[0]"),
        ({"name": "x", "tags": "api"}, 422, "$.tags"),
        ({"name": "x", "environment": "a/b"}, 400, "environment"),
    ],
)
async def test_bad_registrations(
    http: aiohttp.ClientSession, body: dict[str, Any], status: int, path: str
) -> None:
    got, problem = await call(http, "POST", "/api/services/register", body)
    assert got == status, problem
    assert any(e["path"].startswith(path) for e in problem["errors"]), problem
    assert (await call(http, "GET", "/api/services"))[1]["total"] == 0


async def test_bad_queries(http: aiohttp.ClientSession) -> None:
    assert (await call(http, "GET", "/api/services?status=sleepy"))[0] == 400
    assert (await call(http, "GET", "/api/services/bad%20name"))[0] == 400


async def test_registrations_survive_restart(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    async with api_session(daemon) as http:
        await call(http, "POST", "/api/services/register", {"name": "keep", "tags": ["x"]})
    await daemon.stop()
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            status, doc = await call(http, "GET", "/api/services/keep")
        assert status == 200 and doc["tags"] == ["x"]
    finally:
        await daemon.stop()


# -- health checks reach only what the registration declares (no blind SSRF) -----------------


class Internal(Upstream):
    """An internal admin endpoint that must never be probed on a registrant's behalf; it
    counts every request, and /hop redirects to it."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    async def start(self, port: int = 0) -> None:
        async def admin(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            return web.Response(text="secret admin page")

        async def hop(request: web.Request) -> web.Response:
            raise web.HTTPFound(self.url.replace("/healthz", "/internal-admin"))

        app = web.Application()
        app.router.add_get("/internal-admin", admin)
        app.router.add_get("/hop", hop)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        host, self.port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{self.port}/healthz"


async def test_a_registrant_cannot_aim_health_checks_elsewhere(
    fast: Daemon, fast_http: aiohttp.ClientSession
) -> None:
    internal, legit = Internal(), Upstream()
    await internal.start()
    await legit.start()
    try:
        target = internal.url.replace("/healthz", "/internal-admin")
        token = issue_token(fast, "service", services=["evil", "evil-*"])
        async with api_session(fast, token) as evil:
            for body in (
                {"name": "evil", "healthCheck": target},
                {"name": "evil", "host": "127.0.0.1", "port": legit.port, "healthCheck": target},
                {"name": "evil", "host": "127.0.0.2", "healthCheck": target},
            ):
                status, problem = await call(evil, "POST", "/api/services/register", body)
                assert status == 422, problem
                assert problem["errors"][0]["path"] == "$.healthCheck"
            # Its own endpoint is fine; a redirect from there to the admin page is not followed.
            hop = internal.url.replace("/healthz", "/hop")
            body = {
                "name": "evil-hop",
                "host": "127.0.0.1",
                "port": internal.port,
                "healthCheck": hop,
            }
            status, result = await call(evil, "POST", "/api/services/register", body)
            assert status == 201, result
        await call(
            fast_http,
            "POST",
            "/api/services/register",
            {"name": "legit", "host": "127.0.0.1", "port": legit.port, "healthCheck": legit.url},
        )
        # A few check rounds (100 ms apart) have run once `legit` has been probed again.
        first = (await wait_status(fast_http, "legit", "healthy"))["lastCheck"]
        await wait_view(fast_http, "legit", lambda doc: doc["lastCheck"] != first)
        assert internal.hits == []  # never reached, not even through the redirect
        _, hopped = await call(fast_http, "GET", "/api/services/evil-hop")
        assert hopped["status"] == "healthy"  # a 3xx answer is all it reports
        assert set(hopped) & {"body", "location", "headers"} == set()
        assert isinstance(hopped["latencyMs"], float)
    finally:
        await internal.stop()
        await legit.stop()


async def test_operators_may_allow_more_health_check_hosts(tmp_path: Path) -> None:
    internal = Internal()
    await internal.start()
    daemon = Daemon(make_settings(tmp_path, registry={"health_check_hosts": ["127.0.0.1"]}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            body = {
                "name": "mon",
                "healthCheck": internal.url.replace("/healthz", "/internal-admin"),
            }
            status, result = await call(http, "POST", "/api/services/register", body)
            assert status == 201 and result["service"]["status"] == "healthy"
        assert internal.hits == ["/internal-admin"]
    finally:
        await daemon.stop()
        await internal.stop()
