"""One clock: moving the daemon's clock moves flag schedules, secret expiry and token
expiry together (the daemon reads wall time through `fpcd.clock.Clock` only)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from fpcd.app import Daemon
from tests.clocks import MovableClock
from tests.conftest import api_session, issue_token, make_settings, secret_value


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, path, json=body) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def test_a_moved_clock_starts_a_flag_expires_a_secret_and_a_token(tmp_path: Path) -> None:
    clock = MovableClock()
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        unix = aiohttp.ClientSession(
            base_url="http://fpcd",
            connector=aiohttp.UnixConnector(path=daemon.addresses["socket"]),
        )
        # In the daemon's time: the flag starts in 1 h, the secret expires in 1.5 h and
        # the viewer's token in 2 h.
        start = clock.now() + timedelta(hours=1)
        flag = {
            "key": "launch",
            "name": "Launch",
            "enabled": True,
            "rollout": {"startDate": start.isoformat()},
        }
        secret = {"value": secret_value("clock"), "ttlSeconds": 5400}
        token = issue_token(daemon, "viewer", ttl_seconds=7200)
        async with unix, api_session(daemon, token) as viewer:
            assert (await call(unix, "POST", "/api/features", flag))[0] == 201
            assert (await call(unix, "PUT", "/api/secrets/app/KEY", secret))[0] == 200

            async def launch() -> tuple[int, Any]:
                status, body = await call(
                    viewer, "POST", "/api/features/evaluate", {"flags": ["launch"]}
                )
                return status, body["results"]["launch"] if status == 200 else body

            status, result = await launch()
            assert status == 200 and (result["enabled"], result["detail"]) == (False, "scheduled")
            assert (await call(unix, "GET", "/api/secrets/app/KEY"))[0] == 200

            clock.offset = timedelta(minutes=75)  # past the start date
            status, result = await launch()
            assert status == 200 and result["enabled"] is True
            assert (await call(unix, "GET", "/api/secrets/app/KEY"))[0] == 200

            clock.offset = timedelta(minutes=105)  # past the secret's expiry
            status, body = await call(unix, "GET", "/api/secrets/app/KEY")
            assert status == 410, body
            assert (await launch())[0] == 200

            clock.offset = timedelta(minutes=135)  # past the token's expiry
            status, problem = await launch()
            assert status == 401 and "expired" in problem["detail"]
    finally:
        await daemon.stop()
