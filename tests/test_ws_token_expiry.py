"""A WebSocket session lives no longer than its token: at `exp` the daemon closes it
(4401, "reconnect with a fresh token"); an AUTH with a fresh token for the same
identity before then extends it. The Python client reconnects with a fresh token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from fpcd.app import Daemon
from fpcd.client import ConfigurationClient
from tests.conftest import api_session, eventually, issue_token, make_settings

TTL = 2


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[Daemon]:
    """No leeway: a token is done at its `exp`."""
    daemon = Daemon(make_settings(tmp_path / "data", auth={"leeway": "0s"}))
    await daemon.start()
    yield daemon
    await daemon.stop()


def expiry(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def put(daemon: Daemon, version_value: int, service: str = "web") -> None:
    async with (
        api_session(daemon) as http,
        http.put(
            f"/api/config/{service}",
            json={"environment": "prod", "config": {"v": version_value}},
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    # wait_for, not receive(timeout=): aiohttp restarts that timeout on every ping.
    return await asyncio.wait_for(ws.receive(), TTL + 20)


async def texts_until_close(
    ws: aiohttp.ClientWebSocketResponse,
) -> tuple[list[dict[str, Any]], aiohttp.WSMessage]:
    got: list[dict[str, Any]] = []
    while True:
        msg = await receive(ws)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return got, msg
        got.append(json.loads(msg.data))


async def test_an_expired_token_ends_the_session(strict: Daemon) -> None:
    await put(strict, 1)
    token = issue_token(strict, "viewer", ttl_seconds=TTL)
    url = strict.addresses["ws"] + "/ws?token=" + token
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"})
        assert json.loads((await receive(ws)).data)["type"] == "SUBSCRIBED"
        # The attack: keep the connection past `exp`, keep receiving, subscribe to more.
        while time.time() < expiry(token):
            await put(strict, int(time.time() * 1000))
            await asyncio.sleep(0.2)
        late, close = await texts_until_close(ws)
        assert close.type == aiohttp.WSMsgType.CLOSE and close.data == 4401
        assert ws.closed
        # Until the close it was an ordinary session.
        assert all(m["type"] in ("CONFIGURATION_UPDATE", "SUBSCRIBED") for m in late)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)  # nor can the expired token open a new session
        assert refused.value.status == 401


async def test_a_session_closes_with_a_reason_clients_can_act_on(strict: Daemon) -> None:
    token = issue_token(strict, "viewer", ttl_seconds=TTL)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(strict.addresses["ws"] + "/ws?token=" + token) as ws,
    ):
        msg = await receive(ws)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4401 and "reconnect with a fresh token" in (msg.extra or "")


async def test_auth_with_a_fresh_token_extends_the_session(strict: Daemon) -> None:
    short = issue_token(strict, "viewer", subject="app", ttl_seconds=TTL)
    fresh = issue_token(strict, "viewer", subject="app", ttl_seconds=3600)
    other = issue_token(strict, "admin", subject="someone-else", ttl_seconds=3600)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(strict.addresses["ws"] + "/ws?token=" + short) as ws,
    ):
        await ws.send_json({"type": "AUTH", "token": other})  # another identity: refused
        reply = json.loads((await receive(ws)).data)
        assert reply["type"] == "ERROR" and reply["code"] == "FORBIDDEN"
        await ws.send_json({"type": "AUTH", "token": fresh})
        assert json.loads((await receive(ws)).data)["type"] == "AUTHENTICATED"
        await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"})
        assert json.loads((await receive(ws)).data)["type"] == "SUBSCRIBED"
        # Past the first token's expiry the session still works.
        while time.time() < expiry(short) + 0.5:
            await ws.send_json({"type": "PING"})
            assert json.loads((await receive(ws)).data)["type"] == "PONG"
        await put(strict, 7)
        update = json.loads((await receive(ws)).data)
        assert update["type"] == "CONFIGURATION_UPDATE" and update["config"] == {"v": 7}


async def test_the_client_reconnects_with_a_fresh_token(strict: Daemon) -> None:
    await put(strict, 1)
    issued: list[str] = []

    def token() -> str:  # as a client reading a token file an agent keeps renewing
        issued.append(issue_token(strict, "viewer", subject="app", ttl_seconds=TTL))
        return issued[-1]

    async with ConfigurationClient(
        service_name="web",
        environment="prod",
        api_url=strict.addresses["api"],
        token=token,
        subscribe_flags=False,
    ) as client:
        first = issued[-1]
        # Wait for the first session to end and a new one (with a newer token) to start.
        await eventually(
            lambda: client.connected and len(issued) >= 3 and time.time() > expiry(first),
            30,
            what="the client reconnecting with a newer token",
        )
        await put(strict, 2)
        await eventually(
            lambda: client.configuration is not None and client.configuration.config == {"v": 2},
            30,
            what="the update after reconnecting",
        )
