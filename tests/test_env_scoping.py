"""One rule for tokens limited to some environments, at every door (docs/security.md,
"Environment scoping"): reading environment E is reading E's effective view, the
`default` layer included, secrets too; reading or changing the `default` layer itself,
or what binds every environment (a schema), needs `default` in scope; a registration
belongs to its environment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from tests.conftest import api_session, issue_token, run_cli


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


SHARED, OWN = "shared-db-password-1f3a", "prod-only-api-key-9c2e"


@pytest.fixture
async def seeded(daemon: Daemon) -> AsyncIterator[Daemon]:
    async with api_session(daemon) as admin:
        for env, config in (("default", {"db": {"host": "db"}}), ("production", {"x": 1})):
            body = {"environment": env, "config": config}
            assert (await call(admin, "PUT", "/api/config/web", body))[0] == 200
        for env, name, value in (("default", "SHARED", SHARED), ("production", "OWN", OWN)):
            path = f"/api/secrets/web/{name}?environment={env}"
            assert (await call(admin, "PUT", path, {"value": value}))[0] == 200
    yield daemon


def prod_reader(daemon: Daemon) -> str:
    return issue_token(
        daemon, "viewer", services=["web"], environments=["production"], scopes=["secrets:read"]
    )


async def test_a_production_token_reads_production_the_same_at_every_rest_door(
    seeded: Daemon,
) -> None:
    async with api_session(seeded, prod_reader(seeded)) as s:
        # The effective view of production: the default layer's secret is production's.
        status, doc = await call(
            s, "GET", "/api/config/web?environment=production&includeSecrets=true"
        )
        assert status == 200
        assert doc["config"] == {"db": {"host": "db"}, "x": 1}
        assert {n: m["value"] for n, m in doc["secrets"].items()} == {"SHARED": SHARED, "OWN": OWN}
        # The direct door gives the same answer for the same environment (404 before).
        status, secret = await call(s, "GET", "/api/secrets/web/SHARED?environment=production")
        assert status == 200 and secret["value"] == SHARED and secret["environment"] == "default"
        assert (await call(s, "GET", "/api/secrets/web/OWN?environment=production"))[1][
            "value"
        ] == OWN
        # The default layer itself is another environment: refused at both doors.
        assert (await call(s, "GET", "/api/secrets/web/SHARED?environment=default"))[0] == 403
        assert (await call(s, "GET", "/api/config/web?environment=default"))[0] == 403
        assert (await call(s, "GET", "/api/config/web?environment=staging"))[0] == 403
        assert (await call(s, "GET", "/api/secrets/web/SHARED?environment=staging"))[0] == 403
        # raw=true is production's own layer: nothing of default's.
        _, raw = await call(
            s, "GET", "/api/config/web?environment=production&raw=true&includeSecrets=true"
        )
        assert raw["config"] == {"x": 1} and set(raw["secrets"]) == {"OWN"}
    async with api_session(seeded) as admin:
        _, audit = await call(admin, "GET", "/api/audit?action=secret.read")
    read = [e for e in audit["items"] if e["actor"] == "test-viewer"]
    assert any(e["target"].startswith("secret:web/default") for e in read), read


async def test_the_cli_door_follows_the_same_rule(seeded: Daemon) -> None:
    token = prod_reader(seeded)
    base = ["--url", seeded.addresses["api"], "--token", token]
    got = await asyncio.to_thread(
        run_cli, "secret", "get", "web", "SHARED", "--env", "production", *base
    )
    assert got.returncode == 0 and got.stdout == SHARED + "\n", got.stderr
    refused = await asyncio.to_thread(
        run_cli, "secret", "get", "web", "SHARED", "--env", "default", *base
    )
    assert refused.returncode != 0 and SHARED not in refused.stdout + refused.stderr


async def test_the_websocket_door_follows_the_same_rule(seeded: Daemon) -> None:
    url = seeded.addresses["ws"] + "/ws?token=" + prod_reader(seeded)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for env, expected in (
            ("default", "ERROR"),
            ("staging", "ERROR"),
            ("production", "SUBSCRIBED"),
        ):
            await ws.send_json(
                {
                    "type": "SUBSCRIBE",
                    "serviceName": "web",
                    "environment": env,
                    "subscriptions": ["config-updates"],
                }
            )
            reply = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            assert reply["type"] == expected, reply
        async with api_session(seeded) as admin:
            body = {"environment": "default", "config": {"db": {"host": "db2"}}}
            assert (await call(admin, "PUT", "/api/config/web", body))[0] == 200
        update = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        # production's effective view changed, and that is what the token sees.
        assert update["environment"] == "production" and update["config"]["db"] == {"host": "db2"}


async def test_schemas_need_the_default_environment(seeded: Daemon) -> None:
    schema = {"type": "object"}
    prod_editor = issue_token(seeded, "editor", services=["web"], environments=["production"])
    async with api_session(seeded, prod_editor) as s:
        assert (await call(s, "PUT", "/api/config/web/schema", schema))[0] == 403
        assert (await call(s, "DELETE", "/api/config/web/schema"))[0] == 403
        assert (await call(s, "GET", "/api/config/web/schema"))[0] in (200, 404)
    both = issue_token(seeded, "editor", services=["web"], environments=["production", "default"])
    async with api_session(seeded, both) as s:
        assert (await call(s, "PUT", "/api/config/web/schema", schema))[0] == 200
    async with api_session(seeded, issue_token(seeded, "editor")) as s:
        assert (await call(s, "DELETE", "/api/config/web/schema"))[0] == 200


async def test_a_registration_belongs_to_its_environment(seeded: Daemon) -> None:
    async with api_session(seeded) as admin:
        body = {"name": "api", "environment": "staging"}
        assert (await call(admin, "POST", "/api/services/register", body))[0] == 201
    prod_service = issue_token(
        seeded, "service", services=["api", "web"], environments=["production"]
    )
    async with api_session(seeded, prod_service) as s:
        status, _ = await call(
            s, "POST", "/api/services/register", {"name": "web", "environment": "production"}
        )
        assert status == 201
        status, _ = await call(
            s, "POST", "/api/services/register", {"name": "web", "environment": "staging"}
        )
        assert status == 403
        # staging's registration of `api` is not production's to replace or remove.
        status, _ = await call(
            s, "POST", "/api/services/register", {"name": "api", "environment": "production"}
        )
        assert status == 403
        assert (await call(s, "DELETE", "/api/services/api"))[0] == 403
        assert (await call(s, "POST", "/api/services/api/heartbeat"))[0] == 403
        assert (await call(s, "POST", "/api/services/web/heartbeat"))[0] == 200
    async with api_session(seeded) as admin:
        _, api = await call(admin, "GET", "/api/services/api")
    assert api["environment"] == "staging"
