"""Change-to-delivery latency: from a PUT to 1, 100 and 1,000 WebSocket subscribers.

Run: python -m benchmarks.ws_fanout
The daemon runs pinned to CPU 0; the subscribers and the writer run in one client
process on CPU 1 (see benchmarks/README.md). Each latency is from just before the PUT
is sent to the moment a subscriber's client has the CONFIGURATION_UPDATE decoded.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import uvloop

from benchmarks.common import fpcd_daemon, pinned, write_results

WRITES = 50
SERVER_CPU, CLIENT_CPU = 0, 1


async def _arrival(ws: aiohttp.ClientWebSocketResponse, arrived: list[float]) -> None:
    msg = await ws.receive()
    json.loads(msg.data)
    arrived.append(time.perf_counter())


async def measure(ws_url: str, api_url: str, subscribers: int, token: str) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        clients = await asyncio.gather(
            *(session.ws_connect(ws_url, autoping=True) for _ in range(subscribers))
        )
        subscribe = json.dumps(
            {
                "type": "SUBSCRIBE",
                "serviceName": "bench",
                "environment": "prod",
                "subscriptions": ["config-updates"],
            }
        )
        for ws in clients:
            await ws.send_str(subscribe)
        for ws in clients:
            await ws.receive()
        latencies: list[float] = []
        last_arrivals: list[float] = []
        for n in range(WRITES):
            arrived: list[float] = []

            waiters = [asyncio.create_task(_arrival(ws, arrived)) for ws in clients]
            await asyncio.sleep(0)
            start = time.perf_counter()
            async with session.put(
                api_url + "/api/config/bench", json={"environment": "prod", "config": {"n": n}}
            ) as r:
                assert r.status == 200
            await asyncio.gather(*waiters)
            latencies += [(t - start) * 1000 for t in arrived]
            last_arrivals.append((max(arrived) - start) * 1000)
            await asyncio.sleep(0.02)
        await asyncio.gather(*(ws.close() for ws in clients))
    latencies.sort()
    return {
        "subscribers": subscribers,
        "deliveries": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "last_subscriber_p50_ms": round(statistics.median(last_arrivals), 2),
    }


def client_main() -> None:
    ws_url, api_url, subscribers = sys.argv[2], sys.argv[3], int(sys.argv[4])
    token = os.environ["FPCD_TOKEN"]
    print(json.dumps(uvloop.run(measure(ws_url, api_url, subscribers, token))))


def main() -> None:
    results = []
    with fpcd_daemon(env={"FPCD_LOG__ACCESS": "false"}, cpu=SERVER_CPU) as d:
        for subscribers in (1, 100, 1000):
            out = subprocess.run(
                [
                    *pinned(CLIENT_CPU),
                    sys.executable,
                    "-m",
                    "benchmarks.ws_fanout",
                    "client",
                    d["ws_url"] + "/",
                    d["url"],
                    str(subscribers),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "FPCD_TOKEN": d["token"]},
            ).stdout
            results.append(json.loads(out))
    targets = {1: "", 100: "p99 < 20 ms", 1000: "p99 < 100 ms"}
    rows = [
        [
            r["subscribers"],
            r["deliveries"],
            r["p50_ms"],
            r["p99_ms"],
            r["last_subscriber_p50_ms"],
            targets[r["subscribers"]],
        ]
        for r in results
    ]
    write_results(
        "ws_fanout",
        "WebSocket change-to-delivery latency",
        {"writes": WRITES, "results": results},
        rows,
        ["subscribers", "deliveries", "p50 ms", "p99 ms", "last subscriber p50 ms", "target"],
        [
            f"{WRITES} PUTs per row, 20 ms apart; latency from just before each PUT to the "
            "decoded message at each subscriber (so it includes the write's SQLite commit and "
            "the client process's own receive loop). Daemon on CPU 0, client process on CPU 1."
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main()
    else:
        main()
