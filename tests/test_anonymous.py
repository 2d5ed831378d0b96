"""auth.anonymous_role and metrics.public: the original's clients send no credentials."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from tests.conftest import api_session, make_settings


@pytest.fixture
async def viewer_daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(make_settings(tmp_path, auth={"anonymous_role": "viewer"}))
    await daemon.start()
    try:
        async with (
            api_session(daemon) as admin,
            admin.put(
                "/api/config/user-service",
                json={"environment": "production", "config": {"maxUsers": 100}},
            ) as r,
        ):
            assert r.status == 200
        yield daemon
    finally:
        await daemon.stop()


async def next_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 10)
    return dict(json.loads(msg.data))


SUBSCRIBE = {
    "type": "SUBSCRIBE",
    "serviceName": "user-service",
    "environment": "production",
    "subscriptions": ["config-updates", "feature-flags"],
}


async def test_without_the_setting_a_request_without_token_is_refused(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as anonymous:
        r = await anonymous.get(daemon.addresses["api"] + "/api/config/user-service")
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await anonymous.get(daemon.addresses["api"] + "/metrics")).status == 401
        async with anonymous.ws_connect(daemon.addresses["ws"] + "/") as ws:
            await ws.send_json(SUBSCRIBE)
            error = await next_message(ws)
        assert error["type"] == "ERROR" and error["code"] == "UNAUTHENTICATED"
        assert "?token=" in error["message"] and "AUTH" in error["message"]


async def test_anonymous_role_applies_on_every_door(viewer_daemon: Daemon) -> None:
    api, ws_port = viewer_daemon.addresses["api"], viewer_daemon.addresses["ws"]
    async with aiohttp.ClientSession() as anonymous:
        # REST: a viewer reads ...
        r = await anonymous.get(api + "/api/config/user-service?environment=production")
        assert r.status == 200 and (await r.json())["config"] == {"maxUsers": 100}
        # ... but does not write.
        r = await anonymous.put(
            api + "/api/config/user-service",
            json={"environment": "production", "config": {"maxUsers": 1}},
        )
        assert r.status == 403
        # A token that is given but wrong is still refused: anonymity is for no token only.
        r = await anonymous.get(
            api + "/api/config/user-service", headers={"Authorization": "Bearer nonsense"}
        )
        assert r.status == 401
        # WebSocket, on the WebSocket port and on the API port's /ws.
        for url in (ws_port + "/", api + "/ws"):
            async with anonymous.ws_connect(url) as ws:
                await ws.send_json(SUBSCRIBE)
                assert (await next_message(ws))["type"] == "SUBSCRIBED"
                async with api_session(viewer_daemon) as admin:
                    await admin.put(
                        "/api/config/user-service",
                        json={"environment": "production", "config": {"maxUsers": url[-1]}},
                    )
                update = await next_message(ws)
                assert update["type"] == "CONFIGURATION_UPDATE"
                assert update["config"] == {"maxUsers": url[-1]}
        # A viewer may scrape /metrics.
        assert (await anonymous.get(api + "/metrics")).status == 200


async def test_anonymous_editor_writes_are_audited_as_anonymous(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, auth={"anonymous_role": "editor"}))
    await daemon.start()
    try:
        async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as anonymous:
            r = await anonymous.put(
                "/api/config/user-service",
                json={"environment": "production", "config": {"a": 1}},
            )
            assert r.status == 200
        async with api_session(daemon) as admin:
            page = await (
                await admin.get("/api/audit?target=config:user-service/production")
            ).json()
        assert [e["actor"] for e in page["items"]] == ["anonymous"]
    finally:
        await daemon.stop()


async def test_public_metrics_is_a_plain_scrape(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, metrics={"public": True}))
    await daemon.start()
    try:
        async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as scraper:
            r = await scraper.get("/metrics")
            assert r.status == 200 and "fpcd_build_info" in await r.text()
            # Only the scrape: the rest still wants a token.
            assert (await scraper.get("/api/status")).status == 401
            assert (await scraper.get("/api/config")).status == 401
    finally:
        await daemon.stop()


def test_anonymous_role_must_be_a_role(tmp_path: Path) -> None:
    from fpcd.domain.errors import SettingsError

    with pytest.raises(SettingsError, match=r"auth\.anonymous_role"):
        make_settings(tmp_path, auth={"anonymous_role": "guest"})
