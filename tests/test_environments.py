"""server.environments: a typo'd environment is an error naming the known ones, never
the `default` layer at version 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from fpcd.domain.errors import SettingsError
from fpcd.settings import load_settings
from tests.conftest import api_session, make_settings

KNOWN = "default, development, production, staging"


def declared(data_dir: Path, environments: Any = "development,staging,production") -> Daemon:
    """A daemon with the shipped declaration (conftest declares more for other tests)."""
    return Daemon(make_settings(data_dir, server={"environments": environments}))


@pytest.fixture
async def shipped(tmp_path: Path) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    daemon = declared(tmp_path)
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            for env, config in (("default", {"db": {"host": "localhost"}}), ("production", {})):
                async with http.put(
                    "/api/config/web", json={"environment": env, "config": config}
                ) as r:
                    assert r.status == 200
            yield daemon, http
    finally:
        await daemon.stop()


async def problem(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == "application/problem+json"
    return dict(await response.json())


async def test_reading_an_undeclared_environment_is_404_naming_the_known_ones(
    shipped: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    _, http = shipped
    async with http.get("/api/config/web?environment=production") as r:
        assert r.status == 200
    for path in ("/api/config/web", "/api/config/web/history", "/api/config/web/diff"):
        async with http.get(path + "?environment=prod") as r:
            assert r.status == 404, path
            doc = await problem(r)
        assert doc["detail"] == f"unknown environment 'prod'; known: {KNOWN}"
        assert doc["errors"][0]["path"] == "query.environment"
    # Declared but never written: the ordinary answer (here, the default layer).
    async with http.get("/api/config/web?environment=staging") as r:
        assert r.status == 200 and (await r.json())["version"] == 0
    async with http.get("/api/secrets/web?environment=prod") as r:
        assert r.status == 404


async def test_writing_an_undeclared_environment_is_422(
    shipped: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    _, http = shipped
    async with http.put("/api/config/web", json={"environment": "prod", "config": {}}) as r:
        assert r.status == 422
        doc = await problem(r)
    assert doc["detail"].startswith(f"unknown environment 'prod'; known: {KNOWN}")
    assert doc["errors"] == [
        {"path": "$.environment", "message": "not a declared or written environment"}
    ]
    async with http.put("/api/secrets/web/PW?environment=prod", json={"value": "x"}) as r:
        assert r.status == 422
        assert (await problem(r))["errors"][0]["path"] == "query.environment"
    async with http.post(
        "/api/services/register", json={"serviceName": "web", "environment": "prod"}
    ) as r:
        assert r.status == 422
    # Nothing was written: prod stays unknown.
    async with http.get("/api/config/web?environment=prod") as r:
        assert r.status == 404


async def test_websocket_subscribe_to_an_undeclared_environment_is_an_error(
    shipped: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    daemon, _ = shipped
    token = (daemon.settings.data_dir / "admin.token").read_text().strip()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.addresses["ws"] + "/") as ws,
    ):  # no token: refused before the environment is looked at
        await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"})
        reply = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        assert reply["code"] == "UNAUTHENTICATED"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.addresses["ws"] + f"/?token={token}") as ws,
    ):
        await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"})
        reply = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        assert reply == {
            "type": "ERROR",
            "code": "UNKNOWN_ENVIRONMENT",
            "message": f"unknown environment 'prod'; known: {KNOWN}",
        }
        await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "production"})
        assert json.loads((await asyncio.wait_for(ws.receive(), 10)).data)["type"] == "SUBSCRIBED"


async def test_written_environments_stay_known(tmp_path: Path) -> None:
    """Data in an environment the declaration no longer names stays readable and writable."""
    daemon = declared(tmp_path, "*")
    await daemon.start()
    async with api_session(daemon) as http:
        async with http.put("/api/config/web", json={"environment": "qa-7", "config": {}}) as r:
            assert r.status == 200
        async with http.put(
            "/api/secrets/other/PW?environment=legacy", json={"value": "x" * 8}
        ) as r:
            assert r.status == 200
    await daemon.stop()
    daemon = declared(tmp_path)
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            async with http.get("/api/config/web?environment=qa-7") as r:
                assert r.status == 200 and (await r.json())["version"] == 1
            async with http.get("/api/secrets/other?environment=legacy") as r:
                assert r.status == 200
                assert [s["name"] for s in (await r.json())["items"]] == ["PW"]
            async with http.put(
                "/api/config/web", json={"environment": "qa-7", "config": {"a": 1}}
            ) as r:
                assert r.status == 200
            async with http.get("/api/config/web?environment=qa-8") as r:
                detail = (await problem(r))["detail"]
        assert detail == (
            "unknown environment 'qa-8'; known: default, development, legacy, production,"
            " qa-7, staging"
        )
    finally:
        await daemon.stop()


def test_environments_from_the_environment_variable() -> None:
    settings = load_settings(None, environ={"FPCD_SERVER__ENVIRONMENTS": "dev, qa,prod"})
    assert settings.environments == ["dev", "qa", "prod"]
    assert load_settings(None, environ={}).environments == ["development", "staging", "production"]
    with pytest.raises(SettingsError, match=r"server\.environments"):
        load_settings(None, environ={"FPCD_SERVER__ENVIRONMENTS": "dev,no/pe"})
