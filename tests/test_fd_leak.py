"""Starting and stopping a daemon gives back every file descriptor it took (in the style
of datasette's test_fd_leak.py): a daemon started and stopped in-process several times,
with its doors used each time, leaves the process's descriptor count where it was."""

from __future__ import annotations

import asyncio
import gc
import json
import os
from pathlib import Path

import aiohttp

from fpcd.app import Daemon
from tests.conftest import api_session, make_settings

ROUNDS = 4


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def use_every_door(daemon: Daemon, n: int) -> None:
    """A write, a schema (its validator process), a cached read, the Unix socket, a
    WebSocket subscription and a flag-socket lookup."""
    async with api_session(daemon) as http:
        body = {"environment": "prod", "config": {"n": n}}
        async with http.put("/api/config/web", json=body) as r:
            assert r.status == 200, await r.text()
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        async with http.put("/api/config/web/schema", json=schema) as r:
            assert r.status == 200, await r.text()
        for _ in range(2):
            async with http.get("/api/config/web?environment=prod") as r:
                assert (await r.json())["config"] == {"n": n}
        async with http.ws_connect(daemon.addresses["api"] + "/ws") as ws:
            await ws.send_json({"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"})
            assert (await ws.receive_json(timeout=10))["type"] == "SUBSCRIBED"
    connector = aiohttp.UnixConnector(path=daemon.addresses["socket"])
    async with (
        aiohttp.ClientSession(connector=connector) as unix,
        unix.get("http://fpcd/api/config/web?environment=prod") as r,
    ):
        assert r.status == 200
    reader, writer = await asyncio.open_unix_connection(daemon.addresses["flags"])
    writer.write(b'{"id": 1, "flag": "none", "context": {}}\n')
    assert json.loads(await reader.readline())["id"] == 1
    writer.close()
    await writer.wait_closed()


async def test_starting_and_stopping_leaks_no_descriptor(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    counts: list[int] = []
    for n in range(ROUNDS):
        daemon = Daemon(settings)
        await daemon.start()
        try:
            await use_every_door(daemon, n)
        finally:
            await daemon.stop()
        gc.collect()
        counts.append(open_descriptors())
    # The first round opens what lives as long as the process (imports, the loop's own
    # descriptors); every round after it must give back all it took.
    assert counts[1:] == [counts[0]] * (ROUNDS - 1), counts
