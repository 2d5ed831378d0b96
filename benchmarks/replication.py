"""Replication lag and write throughput through the upstream.

Run: python -m benchmarks.replication  (needs postgresql and redis-server installed; it
starts private instances in temp dirs, as the tests do)

Three daemons (processes) share a private Postgres (and Redis). Writes go to daemon A at
a steady rate; WebSocket subscribers on B and C note when each CONFIGURATION_UPDATE
arrives. Lag = arrival - the moment A's PUT was sent. Then sustained throughput: many
concurrent writers on A, and on all three daemons at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import aiohttp
import uvloop

from benchmarks.common import fpcd_daemon, write_results
from tests.servers import PostgresServer, RedisServer

KEY = base64.b64encode(bytes(range(32))).decode()


@contextmanager
def daemon(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """One host: benchmarks.common's daemon with the shared key, URLs for this benchmark."""
    with fpcd_daemon(
        env={"CONFIG_ENCRYPTION_KEY": KEY, "FPCD_LOG__ACCESS": "false", **env}, ready_timeout=60
    ) as host:
        yield {
            "url": host["url"],
            "ws": f"{host['ws_url']}/?token={host['token']}",
            "auth": f"Bearer {host['token']}",
        }


async def lag(
    writer: dict[str, str],
    readers: list[dict[str, str]],
    writes: int,
    interval: float,
    service: str,
) -> dict[str, Any]:
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    arrived: list[tuple[int, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for reader in readers:
            ws = await session.ws_connect(reader["ws"])
            await ws.send_str(
                json.dumps(
                    {
                        "type": "SUBSCRIBE",
                        "serviceName": service,
                        "environment": "production",
                        "subscriptions": ["config-updates"],
                    }
                )
            )
            await ws.receive()
            sockets.append(ws)

        async def listen(ws: aiohttp.ClientWebSocketResponse) -> None:
            mine = 0
            while mine < writes:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                update = json.loads(msg.data)
                if update.get("type") == "CONFIGURATION_UPDATE":
                    arrived.append((update["config"]["n"], time.perf_counter()))
                    mine += 1

        listeners = [asyncio.create_task(listen(ws)) for ws in sockets]

        async def write(n: int) -> None:
            sent[n] = time.perf_counter()
            async with session.put(
                writer["url"] + f"/api/config/{service}",
                headers={"Authorization": writer["auth"]},
                json={"environment": "production", "config": {"n": n}},
            ) as r:
                assert r.status == 200, await r.text()
            acked[n] = time.perf_counter()

        pending = []
        for n in range(writes):
            pending.append(asyncio.create_task(write(n)))
            await asyncio.sleep(interval)
        await asyncio.gather(*pending)
        try:
            await asyncio.wait_for(asyncio.gather(*listeners), 60)
        except TimeoutError:
            raise RuntimeError(
                f"only {len(arrived)} of {writes * len(readers)} updates arrived"
            ) from None
        for ws in sockets:
            await ws.close()
    lags = sorted((t - sent[n]) * 1000 for n, t in arrived)
    write_ms = sorted((acked[n] - sent[n]) * 1000 for n in sent)
    return {
        "writes": writes,
        "deliveries": len(lags),
        "lag_p50_ms": round(statistics.median(lags), 2),
        "lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1], 2),
        "write_p50_ms": round(statistics.median(write_ms), 2),
    }


async def throughput(
    targets: list[dict[str, str]], writers: int, seconds: float, service: str
) -> dict[str, Any]:
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def loop(target: dict[str, str], i: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < deadline:
                async with session.put(
                    target["url"] + f"/api/config/{service}-{i % 4}",
                    headers={"Authorization": target["auth"]},
                    json={"environment": "production", "config": {"w": i, "n": n}},
                ) as r:
                    assert r.status == 200
                done += 1
                n += 1

        started = time.monotonic()
        await asyncio.gather(*(loop(targets[i % len(targets)], i) for i in range(writers)))
        elapsed = time.monotonic() - started
    return {
        "writers": writers,
        "hosts": len(targets),
        "writes": done,
        "writes_per_s": round(done / elapsed, 1),
    }


def main() -> None:
    results: dict[str, Any] = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    }
    with ExitStack() as stack:
        postgres = PostgresServer()
        stack.callback(postgres.destroy)
        redis = RedisServer()
        stack.callback(redis.destroy)

        url = postgres.create_database("bench_redis")
        env = {"DATABASE_URL": url, "REDIS_URL": redis.url}
        hosts = [stack.enter_context(daemon(env)) for _ in range(3)]
        results["redis_up"] = uvloop.run(lag(hosts[0], hosts[1:], 1000, 0.02, "lag"))
        results["throughput_one_host"] = uvloop.run(throughput(hosts[:1], 16, 10, "tp1"))
        results["throughput_three_hosts"] = uvloop.run(throughput(hosts, 24, 10, "tp3"))

        url = postgres.create_database("bench_polling")
        env = {"DATABASE_URL": url}  # no Redis: polling every 2 s only
        polling = [stack.enter_context(daemon(env)) for _ in range(3)]
        results["redis_down"] = uvloop.run(lag(polling[0], polling[1:], 200, 0.02, "lag"))

    up, down = results["redis_up"], results["redis_down"]
    one, three = results["throughput_one_host"], results["throughput_three_hosts"]
    rows = [
        [
            "lag, Redis up (1,000 writes, 2 readers)",
            f"p50 {up['lag_p50_ms']} ms, p99 {up['lag_p99_ms']} ms",
            "p99 < 50 ms",
        ],
        [
            "lag, Redis down: polling every 2 s (200 writes)",
            f"p50 {down['lag_p50_ms']} ms, p99 {down['lag_p99_ms']} ms",
            "",
        ],
        ["write latency on the writer (PUT acknowledged)", f"p50 {up['write_p50_ms']} ms", ""],
        ["sustained writes, 16 writers on one host", f"{one['writes_per_s']} writes/s", ""],
        [
            "sustained writes, 24 writers on three hosts",
            f"{three['writes_per_s']} writes/s",
            ">= 1,000 writes/s",
        ],
    ]
    write_results(
        "replication",
        "Replication lag and upstream write throughput",
        results,
        rows,
        ["what", "measured", "target"],
        [
            f"Commit {results['commit']}. "
            "Three daemon processes, a private Postgres 15 (fsync off) and Redis on the same "
            "2-core machine. Lag runs from the moment A's PUT is sent to the WebSocket update "
            "decoded on B and C, so it includes A's commit to Postgres. Writes hold the "
            "upstream advisory lock, so they are serialized cluster-wide by design; the "
            "writers waiting for it on a host go upstream together, in one transaction."
        ],
    )


if __name__ == "__main__":
    main()
