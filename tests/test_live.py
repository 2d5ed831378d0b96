"""WebSocket live updates with real clients against a running daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from tests.conftest import admin_token, auth, make_settings


def ws_url(daemon: Daemon, path: str = "/") -> str:
    """The WebSocket URL with the admin token in the query (as browsers must send it)."""
    return daemon.addresses["ws"] + path + "?token=" + admin_token(daemon.settings.data_dir)


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def next(self, wait: float = 5) -> dict[str, Any]:
        # wait_for, not receive(timeout=): aiohttp restarts that timeout on every ping.
        msg = await asyncio.wait_for(self.ws.receive(), wait)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return dict(json.loads(msg.data))

    async def subscribe(
        self, service: str, environment: str = "prod", topics: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        await self.send(
            type="SUBSCRIBE",
            serviceName=service,
            environment=environment,
            subscriptions=topics or ["config-updates", "feature-flags"],
            **extra,
        )
        reply = await self.next()
        assert reply["type"] == "SUBSCRIBED", reply
        return reply

    async def quiet(self, seconds: float = 0.3) -> None:
        """Nothing more arrives."""
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.receive(), seconds)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No connection limit: each WebSocket holds one for its whole life.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


async def connect(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Client:
    return Client(await session.ws_connect(url, **kwargs))


async def put(
    session: aiohttp.ClientSession, daemon: Daemon, service: str, env: str, config: dict[str, Any]
) -> dict[str, Any]:
    async with session.put(
        daemon.addresses["api"] + f"/api/config/{service}",
        headers=auth(daemon),
        json={"environment": env, "config": config},
    ) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_config_updates_on_both_ports(daemon: Daemon, session: aiohttp.ClientSession) -> None:
    on_ws_port = await connect(session, ws_url(daemon))
    on_api_port = await connect(
        session, daemon.addresses["api"] + "/ws", headers=auth(daemon)
    )  # the token in a header this time
    for client in (on_ws_port, on_api_port):
        reply = await client.subscribe("checkout")
        assert reply == {
            "type": "SUBSCRIBED",
            "serviceName": "checkout",
            "environment": "prod",
            "subscriptions": ["config-updates", "feature-flags"],
        }
    await put(session, daemon, "checkout", "prod", {"db": {"host": "a"}})
    for client in (on_ws_port, on_api_port):
        update = await client.next()
        assert update == {
            "type": "CONFIGURATION_UPDATE",
            "serviceName": "checkout",
            "environment": "prod",
            "version": 1,
            "config": {"db": {"host": "a"}},
            "checksum": update["checksum"],
        }
    # Other services and environments are not sent.
    await put(session, daemon, "checkout", "staging", {"x": 1})
    await put(session, daemon, "other", "prod", {"x": 1})
    await on_ws_port.quiet()


async def test_default_layer_changes_reach_environment_subscribers(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    await put(session, daemon, "web", "prod", {"db": {"host": "prod"}})
    client = await connect(session, ws_url(daemon, "/ws"))
    await client.subscribe("web", topics=["config-updates"])
    await put(session, daemon, "web", "default", {"db": {"port": 5432}, "debug": False})
    update = await client.next()
    assert update["version"] == 1 and update["baseVersion"] == 1
    assert update["config"] == {"db": {"host": "prod", "port": 5432}, "debug": False}


async def test_versions_arrive_in_order_and_once(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    clients = [await connect(session, ws_url(daemon)) for _ in range(3)]
    for client in clients:
        await client.subscribe("busy", topics=["config-updates"])
    await asyncio.gather(*(put(session, daemon, "busy", "prod", {"n": n}) for n in range(30)))
    await put(session, daemon, "busy", "default", {"base": True})
    for client in clients:
        seen: list[tuple[int, int]] = []
        while len(seen) < 31:
            update = await client.next()
            seen.append((update["version"], update.get("baseVersion") or 0))
        assert seen == sorted(set(seen)) and seen[-1] == (30, 1)
        await client.quiet()


async def test_reconnect_with_last_version_replays_what_was_missed(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    for n in range(1, 6):
        await put(session, daemon, "svc", "prod", {"n": n})
    client = await connect(session, ws_url(daemon))
    await client.subscribe("svc", topics=["config-updates"], lastVersion=2)
    replayed = [await client.next() for _ in range(3)]
    assert [u["version"] for u in replayed] == [3, 4, 5]
    assert [u["config"]["n"] for u in replayed] == [3, 4, 5]
    await client.quiet()
    await put(session, daemon, "svc", "prod", {"n": 6})
    assert (await client.next())["version"] == 6
    # Up to date: nothing to replay.
    fresh = await connect(session, ws_url(daemon))
    await fresh.subscribe("svc", topics=["config-updates"], lastVersion=6)
    await fresh.quiet()


async def test_replay_and_live_writes_do_not_interleave(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    for n in range(1, 21):
        await put(session, daemon, "svc", "prod", {"n": n})
    client = await connect(session, ws_url(daemon))
    writes = asyncio.gather(
        *(put(session, daemon, "svc", "prod", {"n": 100 + i}) for i in range(10))
    )
    await client.subscribe("svc", topics=["config-updates"], lastVersion=0)
    await writes
    versions: list[int] = []
    while len(versions) < 30:
        try:
            versions.append((await client.next())["version"])
        except TimeoutError:
            raise AssertionError(f"got only {versions}") from None
    assert versions == list(range(1, 31))
    await client.quiet()


async def test_flag_changes_and_scheduled_switches(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    client = await connect(session, ws_url(daemon))
    await client.subscribe("checkout", topics=["feature-flags"])
    api = daemon.addresses["api"]
    async with session.post(
        api + "/api/features",
        headers=auth(daemon),
        json={"name": "dark mode", "enabled": True, "environments": {"prod": {"enabled": False}}},
    ) as r:
        assert r.status == 201
    update = await client.next()
    assert update["type"] == "FEATURE_FLAG_UPDATE" and update["flagKey"] == "dark_mode"
    assert update["enabled"] is False and update["environment"] == "prod"
    assert update["flag"]["version"] == 1 and update["reason"] == "changed"
    start = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    async with session.post(
        api + "/api/features",
        headers=auth(daemon),
        json={"name": "launch", "enabled": True, "rollout": {"startDate": start}},
    ) as r:
        assert r.status == 201
    created = await client.next()
    assert created["flagKey"] == "launch" and created["enabled"] is False
    switched = await client.next(wait=10)
    assert switched["flagKey"] == "launch" and switched["reason"] == "schedule_start"
    assert switched["enabled"] is True
    async with session.delete(api + "/api/features/launch", headers=auth(daemon)) as r:
        assert r.status == 200
    archived = await client.next()
    assert archived["reason"] == "archived" and archived["enabled"] is False
    # A config-only subscriber hears nothing of flags.
    configs_only = await connect(session, ws_url(daemon))
    await configs_only.subscribe("checkout", topics=["config-updates"])
    async with session.patch(
        api + "/api/features/dark_mode", headers=auth(daemon), json={"enabled": False}
    ) as r:
        assert r.status == 200
    assert (await client.next())["flagKey"] == "dark_mode"
    await configs_only.quiet()


async def test_reload_is_pushed(daemon: Daemon, session: aiohttp.ClientSession) -> None:
    await put(session, daemon, "svc", "prod", {"a": 1})
    client = await connect(session, ws_url(daemon))
    await client.subscribe("svc")
    api = daemon.addresses["api"]
    async with session.post(
        api + "/api/config/svc/reload", headers=auth(daemon), json={"environment": "prod"}
    ) as r:
        assert (await r.json())["reloaded"] is True
    assert await client.next() == {
        "type": "CONFIGURATION_RELOAD",
        "serviceName": "svc",
        "environment": "prod",
        "version": 1,
    }
    async with session.post(
        api + "/api/config/svc/reload", headers=auth(daemon), json={"environment": "prod"}
    ) as r:
        assert (await r.json())["reloaded"] is False
    await client.quiet()
    async with session.post(
        api + "/api/config/svc/reload",
        headers=auth(daemon),
        json={"environment": "prod", "force": True},
    ) as r:
        assert r.status == 200
    assert (await client.next())["force"] is True


async def test_ping_unsubscribe_and_bad_frames(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    client = await connect(session, ws_url(daemon))
    await client.send(type="PING")
    pong = await client.next()
    assert pong["type"] == "PONG" and pong["timestamp"] > 0
    bad: list[tuple[str | bytes, str]] = [
        ("{nope", "BAD_JSON"),
        (json.dumps({"type": "DANCE"}), "UNKNOWN_TYPE"),
        (json.dumps({"type": "SUBSCRIBE"}), "BAD_MESSAGE"),
        (json.dumps({"type": "SUBSCRIBE", "serviceName": "a/b"}), "BAD_MESSAGE"),
        (
            json.dumps({"type": "SUBSCRIBE", "serviceName": "a", "subscriptions": ["x"]}),
            "BAD_MESSAGE",
        ),
        (json.dumps({"type": "SUBSCRIBE", "serviceName": "a", "lastVersion": -1}), "BAD_MESSAGE"),
        (json.dumps([1, 2]), "BAD_MESSAGE"),
        (b"\x00\x01binary", "BAD_MESSAGE"),
    ]
    for frame, code in bad:
        if isinstance(frame, bytes):
            await client.ws.send_bytes(frame)
        else:
            await client.ws.send_str(frame)
        error = await client.next()
        assert error["type"] == "ERROR" and error["code"] == code, (frame, error)
        assert error["message"]
    await client.subscribe("svc")  # still alive
    await client.send(type="UNSUBSCRIBE", serviceName="svc", environment="prod")
    assert (await client.next())["type"] == "UNSUBSCRIBED"
    await put(session, daemon, "svc", "prod", {"a": 1})
    await client.quiet()


async def ws_daemon(tmp_path: Path, **websocket: Any) -> Daemon:
    daemon = Daemon(make_settings(tmp_path, websocket=websocket))
    await daemon.start()
    return daemon


async def test_subscription_limit(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    daemon = await ws_daemon(tmp_path, max_subscriptions=2)
    try:
        client = await connect(session, ws_url(daemon))
        await client.subscribe("a")
        await client.subscribe("b")
        await client.send(type="SUBSCRIBE", serviceName="c", environment="prod")
        error = await client.next()
        assert error["code"] == "TOO_MANY_SUBSCRIPTIONS"
        await client.subscribe("a", topics=["config-updates"])  # re-subscribing is fine
    finally:
        await daemon.stop()


async def test_idle_and_dead_connections_are_closed(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon = await ws_daemon(tmp_path, idle_timeout=0.5, heartbeat=1)
    try:
        idle = await connect(session, ws_url(daemon))
        msg = await asyncio.wait_for(idle.ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4002
        dead = await connect(session, ws_url(daemon), autoping=False)
        await dead.subscribe("svc")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = await asyncio.wait_for(dead.ws.receive(), 5)
            if msg.type != aiohttp.WSMsgType.PING:  # never answered
                break
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        )
        alive = await connect(session, ws_url(daemon))  # answers pings: stays
        await alive.subscribe("svc")
        await alive.quiet(1.5)  # reading, so its client answers the pings
        await put(session, daemon, "svc", "prod", {"still": "here"})
        assert (await alive.next())["config"] == {"still": "here"}
    finally:
        await daemon.stop()


async def test_slow_consumer_is_dropped_and_never_delays_others(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon = await ws_daemon(tmp_path, max_queue=4)
    try:
        slow = await connect(session, ws_url(daemon), max_msg_size=0)
        await slow.subscribe("big", topics=["config-updates"])
        fast = await connect(session, ws_url(daemon))
        await fast.subscribe("big", topics=["config-updates"])
        payload = "x" * 200_000
        received = 0
        for n in range(60):
            await put(session, daemon, "big", "prod", {"n": n, "blob": payload})
            update = await fast.next()
            assert update["version"] == n + 1
            received += 1
        assert received == 60
        closes = []
        while True:  # the slow client finally reads: some updates, then the close
            msg = await asyncio.wait_for(slow.ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                continue
            closes.append(msg)
            break
        assert closes[0].type == aiohttp.WSMsgType.CLOSE and closes[0].data == 4001
    finally:
        await daemon.stop()


async def test_five_hundred_subscribers_all_get_the_update(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    clients = await asyncio.gather(*(connect(session, ws_url(daemon)) for _ in range(500)))
    await asyncio.gather(*(c.subscribe("fanout", topics=["config-updates"]) for c in clients))
    async with session.get(daemon.addresses["api"] + "/health") as r:
        counts = (await r.json())["components"]["websocket"]["counts"]
    assert counts == {"connections": 500, "subscriptions": 500}
    await put(session, daemon, "fanout", "prod", {"hello": "everyone"})
    updates = await asyncio.gather(*(c.next(wait=20) for c in clients))
    assert all(u["config"] == {"hello": "everyone"} for u in updates)
    await asyncio.gather(*(c.ws.close() for c in clients))


async def test_shutdown_closes_clients_with_going_away(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon = await ws_daemon(tmp_path)
    client = await connect(session, ws_url(daemon))
    await client.subscribe("svc")
    stopping = asyncio.create_task(daemon.stop())
    msg = await asyncio.wait_for(client.ws.receive(), 10)
    await stopping
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001


async def test_checksum_means_the_effective_config_in_writes_reads_and_updates(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    """One meaning per name: `checksum` is the effective config's everywhere (write result,
    GET, history, WebSocket); `layerChecksum` is the stored layer's."""
    client = await connect(session, ws_url(daemon))
    await client.subscribe("shop")
    await put(session, daemon, "shop", "default", {"db": {"host": "a"}})
    assert (await client.next())["type"] == "CONFIGURATION_UPDATE"  # the base layer moved
    written = await put(session, daemon, "shop", "prod", {"db": {"port": 1}})
    update = await client.next()
    api = daemon.addresses["api"]
    async with session.get(f"{api}/api/config/shop?environment=prod", headers=auth(daemon)) as r:
        doc = await r.json()
    assert doc["config"] == update["config"] == {"db": {"host": "a", "port": 1}}
    assert written["checksum"] == doc["checksum"] == update["checksum"]
    assert written["layerChecksum"] != written["checksum"]  # the layer alone differs
    history_url = f"{api}/api/config/shop/history?environment=prod"
    async with session.get(history_url, headers=auth(daemon)) as r:
        (entry,) = (await r.json())["items"]
    assert entry["checksum"] == doc["checksum"]
    assert entry["layerChecksum"] == written["layerChecksum"]

    # The base moves on: history keeps the effective checksum as it was at version 1.
    await put(session, daemon, "shop", "default", {"db": {"host": "b"}})
    moved = await client.next()
    assert moved["checksum"] != doc["checksum"]
    async with session.get(history_url, headers=auth(daemon)) as r:
        assert (await r.json())["items"][0]["checksum"] == doc["checksum"]
    async with session.get(
        f"{api}/api/config/shop?environment=prod&version=1", headers=auth(daemon)
    ) as r:
        assert (await r.json())["checksum"] == doc["checksum"]

    # A rollback answers with the checksum the next GET and update carry.
    await put(session, daemon, "shop", "prod", {"db": {"port": 2}})
    await client.next()
    async with session.post(
        f"{api}/api/config/shop/rollback",
        headers=auth(daemon),
        json={"environment": "prod", "version": 1},
    ) as r:
        assert r.status == 200, await r.text()
        rolled = await r.json()
    update = await client.next()
    assert rolled["checksum"] == update["checksum"] == moved["checksum"]
    assert rolled["layerChecksum"] == written["layerChecksum"]


async def test_updates_of_every_frame_size_arrive_whole_and_in_order(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    """Updates are framed once and written straight to each socket: short, 16-bit and 64-bit
    length frames must decode the same on every subscriber, in order, over either port."""
    clients = [await connect(session, ws_url(daemon)) for _ in range(3)]
    clients.append(
        await connect(
            session, daemon.addresses["api"] + "/ws?token=" + admin_token(daemon.settings.data_dir)
        )
    )
    for client in clients:
        await client.subscribe("sizes", topics=["config-updates"])
    sizes = [0, 50, 120, 125, 126, 1000, 65_400, 65_536, 70_000, 300_000]
    for n, size in enumerate(sizes):
        await put(session, daemon, "sizes", "prod", {"n": n, "blob": "y" * size})
    for client in clients:
        for n, size in enumerate(sizes):
            update = await client.next()
            assert update["config"] == {"n": n, "blob": "y" * size}
            assert update["version"] == n + 1
        await client.quiet()


async def test_a_flag_change_reaches_each_subscriber_once_per_environment(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    """Three streams in two environments: one FEATURE_FLAG_UPDATE for each environment, with
    that environment's state; a config-only stream and a second connection count apart."""
    client = await connect(session, ws_url(daemon))
    await client.subscribe("a", "prod", topics=["feature-flags"])
    await client.subscribe("b", "prod", topics=["feature-flags"])
    await client.subscribe("c", "staging", topics=["feature-flags"])
    await client.subscribe("d", "dev", topics=["config-updates"])
    other = await connect(session, ws_url(daemon))
    await other.subscribe("a", "prod", topics=["feature-flags"])
    async with session.post(
        daemon.addresses["api"] + "/api/features",
        headers=auth(daemon),
        json={"name": "beta", "enabled": True, "environments": {"staging": {"enabled": False}}},
    ) as r:
        assert r.status == 201
    updates = [await client.next(), await client.next()]
    await client.quiet()
    assert {(u["environment"], u["enabled"]) for u in updates} == {
        ("prod", True),
        ("staging", False),
    }
    assert all(u["type"] == "FEATURE_FLAG_UPDATE" and u["flagKey"] == "beta" for u in updates)
    assert (await other.next())["environment"] == "prod"
    await other.quiet()
