"""Service registry: registration, discovery, heartbeats, health checks, requiredConfigs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fpcd.app import Daemon
from fpcd.services.events import ServiceStatusChanged
from tests.conftest import api_session, make_settings


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
    for _ in range(100):
        _, doc = await call(http, "GET", f"/api/services/{name}")
        if doc["status"] == status:
            return dict(doc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never became {status}: {doc}")


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
    assert service["name"] == "user-service" and service["version"] == "1.4.2"
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
    names = lambda page: [s["name"] for s in page["items"]]  # noqa: E731
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
    assert fast.bus is not None
    changes: list[ServiceStatusChanged] = []
    fast.bus.subscribe(lambda e: changes.append(e) if isinstance(e, ServiceStatusChanged) else None)
    upstream = Upstream()
    await upstream.start()
    try:
        status, result = await call(
            fast_http,
            "POST",
            "/api/services/register",
            {"name": "api", "healthCheck": {"url": upstream.url}},
        )
        assert status == 201 and result["service"]["status"] == "healthy"
        upstream.status = 503
        doc = await wait_status(fast_http, "api", "unhealthy")
        assert doc["lastError"] == "HTTP 503" and doc["lastCheck"]
        _, page = await call(fast_http, "GET", "/api/services?status=unhealthy")
        assert [s["name"] for s in page["items"]] == ["api"]
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
    fast.bus.subscribe(lambda e: changes.append(e) if isinstance(e, ServiceStatusChanged) else None)
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


async def test_required_configs_are_enforced_on_writes(http: aiohttp.ClientSession) -> None:
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


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({}, 422, "$.name"),
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
