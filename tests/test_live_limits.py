"""WebSocket replays and re-subscribing are bounded: a client asking for history again and
again never delays anyone else's updates (issue 14, item 8)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from fpcd.client import ConfigurationClient
from tests.conftest import DaemonProcess, admin_token, eventually, make_settings
from tests.test_live import Client, connect, put, ws_url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


async def limited_daemon(tmp_path: Path, **websocket: Any) -> Daemon:
    daemon = Daemon(make_settings(tmp_path / "data", websocket=websocket))
    await daemon.start()
    return daemon


async def test_a_replay_larger_than_the_limit_gets_an_error_and_live_updates_go_on(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon = await limited_daemon(tmp_path, max_replay=3)
    try:
        for n in range(1, 6):
            await put(session, daemon, "svc", "prod", {"n": n})
        client = await connect(session, ws_url(daemon))
        await client.subscribe("svc", topics=["config-updates"], lastVersion=0)
        error = await client.next()
        assert error["type"] == "ERROR" and error["code"] == "REPLAY_TOO_LARGE", error
        assert (error["serviceName"], error["environment"]) == ("svc", "prod")
        assert "5 versions after 0, at most 3" in error["message"]
        assert "GET /api/config/svc?environment=prod" in error["message"]
        await client.quiet()
        # The subscription holds: what comes next arrives.
        await put(session, daemon, "svc", "prod", {"n": 6})
        assert (await client.next())["version"] == 6
        # Within the limit, the replay runs as before.
        again = await connect(session, ws_url(daemon))
        await again.subscribe("svc", topics=["config-updates"], lastVersion=3)
        assert [(await again.next())["version"] for _ in range(3)] == [4, 5, 6]
        await again.quiet()
        assert (
            daemon.components.hub.stats.replays_refused == 1
            and daemon.components.hub.stats.replays == 1
        )
        async with session.get(daemon.addresses["api"] + "/metrics", headers=auth(daemon)) as r:
            metrics = await r.text()
        assert "fpcd_websocket_replays_refused_total 1.0" in metrics
    finally:
        await daemon.stop()


def auth(daemon: Daemon) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(daemon.settings.data_dir)}"}


async def test_subscribing_is_paced_per_connection(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon = await limited_daemon(tmp_path, subscribe_rate=2, subscribe_burst=3)
    try:
        client = await connect(session, ws_url(daemon))
        started = time.monotonic()
        for n in range(7):
            await client.send(
                type="SUBSCRIBE",
                serviceName=f"svc{n}",
                environment="prod",
                subscriptions=["config-updates"],
                lastVersion=0,
            )
        # The first three at once (a burst, e.g. every stream at connect)...
        for n in range(3):
            assert (await client.next())["serviceName"] == f"svc{n}"
        # ...then the connection is read at two a second: SUBSCRIBED for svc3 comes at
        # once, but the next waits while svc0 (subscribed) still gets its updates.
        assert (await client.next())["serviceName"] == "svc3"
        await put(session, daemon, "svc0", "prod", {"n": 1})
        update = await client.next()
        assert update["type"] == "CONFIGURATION_UPDATE" and update["serviceName"] == "svc0"
        for n in range(4, 7):
            assert (await client.next())["serviceName"] == f"svc{n}"
        assert time.monotonic() - started >= 1.4  # three more at two a second
        # Another connection has its own allowance.
        other = await connect(session, ws_url(daemon))
        await other.subscribe("svc0", topics=["config-updates"])
        assert daemon.components.hub.stats.throttled == 4
    finally:
        await daemon.stop()


async def test_any_message_flood_is_paced(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    daemon = await limited_daemon(tmp_path, message_rate=5, message_burst=2)
    try:
        client = await connect(session, ws_url(daemon))
        started = time.monotonic()
        for _ in range(4):
            await client.send(type="PING")
        await client.ws.send_bytes(b"binary counts too")
        await client.send(type="PING")
        kinds = [(await client.next())["type"] for _ in range(6)]
        assert kinds == ["PONG"] * 4 + ["ERROR", "PONG"]
        assert time.monotonic() - started >= 0.5  # four past the burst at five a second
        assert daemon.components.hub.stats.throttled == 4
    finally:
        await daemon.stop()


async def test_a_replay_of_a_replaced_subscription_stops(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Subscribing again to the same stream replaces it: the old replay sends no more."""
    daemon = await limited_daemon(tmp_path)
    try:
        for n in range(1, 41):
            await put(session, daemon, "svc", "prod", {"n": n})
        client = await connect(session, ws_url(daemon))
        await client.send(
            type="SUBSCRIBE",
            serviceName="svc",
            environment="prod",
            subscriptions=["config-updates"],
            lastVersion=0,
        )
        await client.send(
            type="SUBSCRIBE",
            serviceName="svc",
            environment="prod",
            subscriptions=["config-updates"],
            lastVersion=38,
        )
        seen: list[tuple[str, int]] = []
        while ("u", 40) not in seen or seen.count(("s", 0)) < 2:
            message = await client.next()
            seen.append(("s", 0) if message["type"] == "SUBSCRIBED" else ("u", message["version"]))
        await client.quiet()
        # After the second SUBSCRIBED, exactly the versions after 38, once each.
        second = len(seen) - 1 - seen[::-1].index(("s", 0))
        assert seen[second + 1 :] == [("u", 39), ("u", 40)]
        first = [v for kind, v in seen[:second] if kind == "u"]
        assert first == list(range(1, len(first) + 1))  # in order, however far it got
    finally:
        await daemon.stop()


async def test_the_client_reads_over_rest_when_it_missed_too_much(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    from fpcd.api import ws

    daemon = await limited_daemon(tmp_path, max_replay=1)
    try:
        await put(session, daemon, "web", "prod", {"n": 1})
        client = ConfigurationClient(
            api_url=daemon.addresses["api"],
            ws_url=daemon.addresses["ws"],
            token=admin_token(daemon.settings.data_dir),
            service_name="web",
            environment="prod",
            subscribe_flags=False,
            reconnect_delay=4.0,  # reconnects 2-6 s after a drop: the writes land first
            max_reconnect_delay=4.0,
        )
        async with client:
            await eventually(lambda: client.connected)
            await ws.close_all(daemon.components.ws_app)  # the WebSocket port drops every client
            await eventually(lambda: not client.connected)
            for n in (2, 3, 4):  # while it is away: more than one version to replay
                await put(session, daemon, "web", "prod", {"n": n})
            await eventually(
                lambda: client.configuration is not None and client.configuration.version == 4
            )
            assert await client.get_configuration() == {"n": 4}
            assert daemon.components.hub.stats.replays_refused == 1
            await put(session, daemon, "web", "prod", {"n": 5})  # and live again
            await eventually(
                lambda: client.configuration is not None and client.configuration.version == 5
            )
    finally:
        await daemon.stop()


# -- the flood, as the issue describes it ------------------------------------------------

#: A hostile viewer in its own process: `connections` WebSockets that re-send SUBSCRIBE
#: with lastVersion 0 as fast as they can, read everything they get, and reconnect when
#: dropped, until stdin closes. Prints counts of what came back.
ATTACKER = r"""
import asyncio, json, os, sys
import aiohttp

async def main(url, service, connections):
    counts = {"updates": 0, "connections": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    frame = json.dumps({"type": "SUBSCRIBE", "serviceName": service, "environment": "prod",
                        "subscriptions": ["config-updates"], "lastVersion": 0})

    async def read(ws):
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            if '"CONFIGURATION_UPDATE"' in message.data:
                counts["updates"] += 1

    async def flood(session):
        while not stop.is_set():
            try:
                async with session.ws_connect(url, max_msg_size=0) as ws:
                    counts["connections"] += 1
                    reader = asyncio.create_task(read(ws))
                    while not stop.is_set() and not reader.done():
                        for _ in range(20):
                            await ws.send_str(frame)
                        await asyncio.sleep(0.002)
                    reader.cancel()
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(flood(session)) for _ in range(connections)]
        print("flooding", flush=True)
        await stop.wait()
        print(json.dumps(counts), flush=True)
        os._exit(0)  # no goodbyes: the daemon may not be reading these connections

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_replay_flood_does_not_delay_other_subscribers(spawn: Any) -> None:
    proc: DaemonProcess = spawn(env={"FPCD_STORAGE__SYNCHRONOUS": "normal", "LOG_LEVEL": "warning"})
    await asyncio.to_thread(proc.start)
    headers = proc.auth
    async with aiohttp.ClientSession(
        base_url=proc.url, headers=headers, connector=aiohttp.TCPConnector(limit=0)
    ) as http:

        async def write(service: str, n: int) -> None:
            body = {"environment": "prod", "config": {"n": n, "pad": "x" * 60}}
            async with http.put(f"/api/config/{service}", json=body) as r:
                assert r.status == 200, await r.text()

        for n in range(200):  # the history the attacker asks for, again and again
            await write("history", n)
        ws_url_ = f"ws://127.0.0.1:{proc.ws_port}/?token={proc.token}"
        victim = Client(await http.ws_connect(ws_url_))
        await victim.subscribe("victim", topics=["config-updates"])

        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ATTACKER,
            ws_url_,
            "history",
            "4",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert attacker.stdin is not None and attacker.stdout is not None
        try:
            line = await asyncio.wait_for(attacker.stdout.readline(), 30)
            assert line.strip() == b"flooding"
            await eventually(lambda: proc_counts(proc, "fpcd_websocket_replays_total") >= 4)
            delays = []
            for n in range(1, 201):
                started = time.perf_counter()
                await write("victim", n)
                try:
                    update = await victim.next(wait=30)
                except TimeoutError:
                    raise AssertionError(f"update {n} never came") from None
                assert update["version"] == n, update
                delays.append(time.perf_counter() - started)
        finally:
            attacker.stdin.close()
            out = await asyncio.wait_for(attacker.stdout.read(), 30)
            await attacker.wait()
        counts = json.loads(out.splitlines()[-1])
        replays = proc_counts(proc, "fpcd_websocket_replays_total")
        throttled = proc_counts(proc, "fpcd_websocket_throttled_total")
    delays.sort()
    p99 = delays[197]
    # The flood was real: whole histories went out, and the flooding connections were
    # read no faster than their limits.
    assert counts["updates"] >= 400 and replays >= 5, (counts, replays)
    assert throttled > 0
    assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms, median {delays[100] * 1000:.1f} ms, {counts}"


def proc_counts(proc: DaemonProcess, name: str) -> float:
    """One counter from the daemon's /metrics."""
    import urllib.request

    request = urllib.request.Request(proc.url + "/metrics", headers=proc.auth)
    with urllib.request.urlopen(request, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0
