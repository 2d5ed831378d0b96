"""Replication through a private Postgres and Redis, several daemons standing in for hosts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from fpcd.app import Daemon, StartupError
from tests.conftest import (
    DaemonProcess,
    api_session,
    auth,
    eventually,
    make_settings,
    run_cli,
    secret_value,
)

KEY = base64.b64encode(bytes(range(32))).decode()


def upstream_settings(pg_url: str, redis_url: str | None, channel: str) -> dict[str, Any]:
    return {
        "postgres_url": pg_url,
        "redis_url": redis_url or "",
        "channel": channel,
        "poll_interval": "300ms",
        "startup_timeout": "5s",
        "batch_size": 50,
    }


class Host:
    """One daemon and an HTTP session to it."""

    def __init__(self, daemon: Daemon, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.http = http

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.request(method, path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def put(
        self, service: str, config: dict[str, Any], env: str = "prod", **extra: Any
    ) -> tuple[int, Any]:
        return await self.call(
            "PUT", f"/api/config/{service}", {"environment": env, "config": config, **extra}
        )


@pytest.fixture
async def cluster(
    tmp_path: Path, pg_url: str, redis_server: Any, request: Any
) -> AsyncIterator[Callable[..., Awaitable[Host]]]:
    channel = f"fpcd:test:{request.node.name}"
    hosts: list[Host] = []

    async def start(name: str, *, redis: bool = True, **sections: Any) -> Host:
        settings = make_settings(
            tmp_path / name,
            upstream=upstream_settings(pg_url, redis_server.url if redis else None, channel),
            secrets={"encryption_key": KEY},
            **sections,
        )
        daemon = Daemon(settings)
        await daemon.start()
        http = api_session(daemon)
        host = Host(daemon, http)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        await host.http.close()
        if host.daemon.started:
            await host.daemon.stop()


async def history(host: Host, service: str, env: str = "prod") -> list[Any]:
    status, page = await host.call(
        "GET", f"/api/config/{service}/history?environment={env}&limit=1000"
    )
    if status == 404:
        return []
    return [(v["version"], v["checksum"], v["createdBy"]) for v in page["items"]]


async def audit_hashes(host: Host) -> list[str]:
    _, page = await host.call("GET", "/api/audit?limit=1000")
    return [e["hash"] for e in page["items"]]


async def converged(*hosts: Host) -> bool:
    for host in hosts:  # secret reads recorded on a host are pushed in the background
        if await host.daemon.components.secrets.pending_reads():
            return False
    cursors = {h.daemon.components.store.upstream_cursor for h in hosts}
    return len(cursors) == 1


async def assert_same_everywhere(hosts: list[Host], services: list[str]) -> None:
    await eventually(lambda: converged(*hosts))
    for service in services:
        histories = [await history(h, service) for h in hosts]
        assert all(h == histories[0] for h in histories), histories
        versions = [v for v, _, _ in histories[0]]
        assert versions == list(range(len(versions), 0, -1))  # no gaps
    audits = [await audit_hashes(h) for h in hosts]
    assert all(a == audits[0] for a in audits)
    for host in hosts:
        assert (await host.call("GET", "/api/audit/verify"))[1]["ok"] is True


async def test_every_kind_of_change_reaches_the_other_hosts(cluster: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    value = secret_value("replicated")
    assert (await a.put("shop", {"port": 80}, secrets={"PW": value}))[0] == 200
    assert (await a.call("PUT", "/api/config/shop/schema", {"type": "object"}))[0] == 200
    assert (await a.call("POST", "/api/features", {"name": "dark mode", "enabled": True}))[0] == 201
    assert (await a.call("POST", "/api/services/register", {"name": "shop"}))[0] == 201
    await a.call("POST", "/api/config/shop/reload", {"environment": "prod", "force": True})

    async def arrived() -> bool:
        status, doc = await b.call("GET", "/api/config/shop?environment=prod")
        return status == 200 and bool(doc["config"] == {"port": 80})

    await eventually(arrived)
    await eventually(lambda: converged(a, b))
    assert (await b.call("GET", "/api/config/shop/schema"))[0] == 200
    assert (await b.call("GET", "/api/features/dark_mode"))[1]["enabled"] is True
    assert (await b.call("GET", "/api/services/shop"))[0] == 200
    connector = aiohttp.UnixConnector(path=b.daemon.addresses["socket"])
    async with (
        aiohttp.ClientSession(connector=connector) as unix,
        unix.get("http://fpcd/api/secrets/shop/PW?environment=prod") as r,
    ):
        assert (await r.json())["value"] == value  # decrypted with the shared master key
    await assert_same_everywhere([a, b], ["shop"])
    # Ciphertext only, upstream.
    conn = await asyncpg.connect(a.daemon.settings.upstream.postgres_url)
    try:
        payloads = [r["payload"] for r in await conn.fetch("SELECT payload FROM fpcd_changes")]
    finally:
        await conn.close()
    assert payloads and all(value.encode() not in p for p in payloads)


async def test_websocket_subscribers_on_other_hosts_get_the_change(cluster: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(b.daemon.addresses["ws"] + "/", headers=auth(b.daemon))
        await ws.send_str(
            json.dumps(
                {
                    "type": "SUBSCRIBE",
                    "serviceName": "svc",
                    "environment": "prod",
                    "subscriptions": ["config-updates"],
                }
            )
        )
        assert json.loads((await ws.receive()).data)["type"] == "SUBSCRIBED"
        await a.put("svc", {"from": "a"})
        update = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        assert update["type"] == "CONFIGURATION_UPDATE" and update["config"] == {"from": "a"}
        await ws.close()


async def test_a_new_host_catches_up_before_it_is_ready(cluster: Any) -> None:
    a = await cluster("a")
    for n in range(120):
        await a.put("svc", {"n": n})
    c = await cluster("c")  # start() returns once caught up
    assert await history(c, "svc") == await history(a, "svc")
    assert (await c.call("GET", "/health/ready"))[0] == 200


async def test_redis_down_then_back(cluster: Any, redis_server: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    await a.put("svc", {"n": 0})
    await eventually(lambda: converged(a, b))
    redis_server.stop()
    try:
        await a.put("svc", {"n": 1})  # writes do not need Redis

        async def b_has(n: int) -> bool:
            config = (await b.call("GET", "/api/config/svc?environment=prod"))[1]["config"]
            return bool(config == {"n": n})

        await eventually(lambda: b_has(1), 10)  # by polling

        async def redis_down() -> bool:
            _, health = await b.call("GET", "/health")
            return bool(health["components"]["redis"]["status"] == "down")

        await eventually(redis_down, 15)
        _, health = await b.call("GET", "/health")
        assert health["status"] == "degraded"
    finally:
        redis_server.start()

    async def redis_up() -> bool:
        _, health = await b.call("GET", "/health")
        return bool(health["components"]["redis"]["status"] == "ok")

    await eventually(redis_up, 20)
    await a.put("svc", {"n": 2})
    await eventually(lambda: converged(a, b))


async def test_postgres_down_then_back(cluster: Any, postgres: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    await a.put("svc", {"n": 1})
    await eventually(lambda: converged(a, b))
    postgres.stop()
    try:
        status, doc = await a.call("GET", "/api/config/svc?environment=prod")
        assert status == 200 and doc["config"] == {"n": 1}  # reads from the local copy
        status, problem = await a.put("svc", {"n": 2})
        assert status == 503 and "upstream" in problem["detail"]
        assert (
            "Retry-After"
            in (
                await a.http.put(
                    "/api/config/svc", json={"environment": "prod", "config": {"n": 3}}
                )
            ).headers
        )

        async def degraded() -> bool:
            _, health = await b.call("GET", "/health")
            return bool(
                health["components"]["upstream"]["status"] == "down"
                and health["status"] == "degraded"
            )

        await eventually(degraded, 15)
        status, _ = await b.call("POST", "/api/features", {"name": "x"})
        assert status == 503
    finally:
        postgres.start()

    async def writable() -> bool:
        return bool((await a.put("svc", {"n": 4}))[0] == 200)

    await eventually(writable, 20)  # no restart needed
    await eventually(lambda: converged(a, b), 20)
    assert (await b.call("GET", "/api/config/svc?environment=prod"))[1]["config"] == {"n": 4}
    await assert_same_everywhere([a, b], ["svc"])


async def test_reads_never_wait_for_the_upstream(
    cluster: Any, postgres: Any, tmp_path: Path
) -> None:
    """Decrypting reads are recorded on the host and pushed later: with Postgres down
    every read answers, and a daemon with a secret file restarts."""
    target = tmp_path / "out" / "shop.env"
    files = [
        {
            "service": "shop",
            "environment": "prod",
            "path": str(target),
            "format": "env",
            "include_secrets": True,
            "mode": "0600",
        }
    ]
    a, b = await cluster("a", files=files), await cluster("b")
    value = secret_value("offline")

    async def written() -> bool:
        return target.exists() and value in target.read_text()

    assert (await a.put("shop", {"port": 80}, secrets={"PW": value}))[0] == 200
    await eventually(written)
    await eventually(lambda: converged(a, b))
    postgres.stop()
    try:
        before = time.time()
        unix = aiohttp.UnixConnector(path=a.daemon.addresses["socket"])
        async with aiohttp.ClientSession(base_url="http://fpcd", connector=unix) as session:
            headers = {"X-Request-Id": "offline-read"}
            async with session.get("/api/secrets/shop/PW?environment=prod", headers=headers) as r:
                assert r.status == 200, await r.text()
                secret = await r.json()
            assert secret["value"] == value
            # The answer counts this read (not the one before).
            last = datetime.fromisoformat(secret["lastAccessedAt"]).timestamp()
            assert last >= before - 1
            async with session.get("/api/config/shop?environment=prod&includeSecrets=true") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["secrets"]["PW"]["value"] == value
            async with session.get("/api/secrets/shop?environment=prod") as r:
                listed = (await r.json())["items"][0]
            assert listed["accessCount"] == secret["accessCount"] + 1
            async with session.get("/api/audit") as r:
                assert r.status == 200  # the audit log reads too, without the new entries
        _, health = await a.call("GET", "/health")
        assert health["components"]["secret_reads"]["counts"]["pending"] >= 2

        # A restart with a file that includes secrets, the upstream still down.
        await a.daemon.stop()
        target.unlink()
        a = await cluster("a", files=files)
        await eventually(written)
        assert (await a.call("GET", "/api/config/shop?environment=prod"))[0] == 200
    finally:
        postgres.start()

    # Back: the reads enter the audit chain, the same on every host, as they happened.
    await eventually(lambda: converged(a, b), 30)

    async def reads_on(host: Host) -> list[Any]:
        _, page = await host.call("GET", "/api/audit?target=secret:shop/prod&limit=1000")
        return [e for e in page["items"] if e["action"] == "secret.read"]

    reads = await reads_on(b)
    offline = [e for e in reads if e["requestId"] == "offline-read"]
    assert len(offline) == 1 and offline[0]["actor"].startswith("unix:")
    assert datetime.fromisoformat(offline[0]["at"]).timestamp() >= before - 1
    assert len(reads) >= 4  # start-up file write, the two API reads, the restart's write
    assert reads == await reads_on(a)
    await assert_same_everywhere([a, b], ["shop"])
    # Each read counted once, on every host.
    async with (
        aiohttp.ClientSession(
            base_url="http://fpcd",
            connector=aiohttp.UnixConnector(path=b.daemon.addresses["socket"]),
        ) as session,
        session.get("/api/secrets/shop?environment=prod") as r,
    ):
        counted_on_b = (await r.json())["items"][0]["accessCount"]
    _, listed_a = await a.call("GET", "/api/secrets/shop?environment=prod")
    assert counted_on_b == listed_a["items"][0]["accessCount"] == len(reads)


async def test_concurrent_writers_on_three_hosts(cluster: Any) -> None:
    hosts = [await cluster(name) for name in ("a", "b", "c")]
    results = await asyncio.gather(
        *(
            host.put("shared", {"writer": i, "n": n})
            for n in range(15)
            for i, host in enumerate(hosts)
        )
    )
    acknowledged = [body["version"] for status, body in results if status == 200]
    assert len(acknowledged) == 45 and sorted(acknowledged) == list(range(1, 46))
    await assert_same_everywhere(hosts, ["shared"])


async def test_if_match_conflict_across_hosts(cluster: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    await a.put("svc", {"n": 0})
    await eventually(lambda: converged(a, b))
    results = await asyncio.gather(
        a.put("svc", {"by": "a"}, expectedVersion=1),
        b.put("svc", {"by": "b"}, expectedVersion=1),
    )
    assert sorted(status for status, _ in results) == [200, 412]
    await assert_same_everywhere([a, b], ["svc"])


async def test_analytics_add_up_every_host(cluster: Any) -> None:
    a, b = await cluster("a"), await cluster("b")
    await a.call("POST", "/api/features", {"name": "counted", "enabled": True})
    await eventually(lambda: converged(a, b))
    for host, n in ((a, 3), (b, 5)):
        for i in range(n):
            await host.call(
                "POST",
                "/api/features/evaluate",
                {"flags": ["counted"], "context": {"userId": str(i)}},
            )
        await host.daemon.components.flags.analytics.flush()
    for host in (a, b):
        _, report = await host.call("GET", "/api/features/counted/analytics")
        assert report["total"] == 8


async def test_health_shows_replication(cluster: Any) -> None:
    a = await cluster("a")
    await a.put("svc", {"n": 1})
    _, health = await a.call("GET", "/health")
    upstream = health["components"]["upstream"]
    assert upstream["status"] == "ok"
    assert upstream["counts"]["cursor"] >= 2 and upstream["counts"]["lag"] == 0
    assert health["components"]["redis"]["status"] == "ok"


async def test_standalone_history_seeds_an_empty_upstream(
    tmp_path: Path, pg_url: str, postgres: Any
) -> None:
    alone = Daemon(make_settings(tmp_path / "alone", secrets={"encryption_key": KEY}))
    await alone.start()
    async with (
        api_session(alone) as http,
        http.put("/api/config/svc", json={"environment": "prod", "config": {"seed": 1}}) as r,
    ):
        assert r.status == 200
    await alone.stop()
    upstream = upstream_settings(pg_url, None, "fpcd:seed")
    seeded = Daemon(
        make_settings(tmp_path / "alone", upstream=upstream, secrets={"encryption_key": KEY})
    )
    await seeded.start()
    joiner = Daemon(
        make_settings(tmp_path / "joiner", upstream=upstream, secrets={"encryption_key": KEY})
    )
    await joiner.start()
    try:
        async with (
            api_session(joiner) as http,
            http.get("/api/config/svc?environment=prod") as r,
        ):
            assert (await r.json())["config"] == {"seed": 1}
    finally:
        await joiner.stop()
        await seeded.stop()
    other = Daemon(make_settings(tmp_path / "other", secrets={"encryption_key": KEY}))
    await other.start()  # a standalone history of its own...
    await other.stop()
    refused = Daemon(
        make_settings(tmp_path / "other", upstream=upstream, secrets={"encryption_key": KEY})
    )
    with pytest.raises(StartupError, match="empty data dir"):
        await refused.start()  # ...cannot join an upstream that has one


async def test_new_host_without_upstream_fails_clearly(tmp_path: Path, postgres: Any) -> None:
    dead = upstream_settings(f"postgresql://postgres@127.0.0.1:{postgres.port + 1}/x", None, "c")
    dead["startup_timeout"] = "1s"
    daemon = Daemon(make_settings(tmp_path, upstream=dead, secrets={"encryption_key": KEY}))
    with pytest.raises(StartupError, match="no copy to serve"):
        await daemon.start()


def test_killed_mid_batch_applies_nothing_twice(spawn: Any, pg_url: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": pg_url,
        "CONFIG_ENCRYPTION_KEY": KEY,
        "FPCD_UPSTREAM__BATCH_SIZE": "1",
        "FPCD_UPSTREAM__POLL_INTERVAL": "200ms",
    }
    writer: DaemonProcess = spawn("writer", env=env).start()
    import urllib.request

    def put(n: int) -> None:
        req = urllib.request.Request(
            writer.url + "/api/config/svc",
            method="PUT",
            data=json.dumps({"environment": "prod", "config": {"n": n}}).encode(),
            headers=writer.auth,
        )
        urllib.request.urlopen(req, timeout=10).close()

    for n in range(300):
        put(n)
    reader: DaemonProcess = spawn("reader", env=env)
    db = reader.data_dir / "fpcd.db"

    def cursor() -> int:
        if not db.exists():
            return 0
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'upstream_cursor'").fetchone()
            return int(row[0]) if row else 0
        return 0

    cursors = []
    for target in (30, 120, 220):
        # SIGKILL as soon as the catch-up passes `target`: midway, however fast the machine.
        reader.start(wait=False)
        deadline = time.monotonic() + 30
        while cursor() < target and time.monotonic() < deadline:
            time.sleep(0.005)
        reader.kill()
        cursors.append(cursor())
    reader.start()
    with sqlite3.connect(reader.data_dir / "fpcd.db") as conn:
        seqs = [
            r[0] for r in conn.execute("SELECT upstream_seq FROM changes ORDER BY seq").fetchall()
        ]
        versions = [
            r[0]
            for r in conn.execute("SELECT version FROM config_versions ORDER BY version").fetchall()
        ]
    assert seqs == list(range(1, len(seqs) + 1))  # each change once, in order
    assert versions == list(range(1, 301))
    assert any(0 < c < len(seqs) for c in cursors), cursors  # really killed midway
    r = run_cli("status", "--socket", str(reader.socket))
    assert r.returncode == 0 and "upstream" in r.stdout and "lag=0" in r.stdout


def test_migrate_upstream_command(pg_url: str, tmp_path: Path) -> None:
    r = run_cli("migrate", "--upstream", "--data-dir", str(tmp_path), env={"DATABASE_URL": pg_url})
    from fpcd.upstream.log import LATEST

    assert r.returncode == 0 and f"upstream: schema upgraded from version 0 to {LATEST}" in r.stdout
    r = run_cli("migrate", "--upstream", "--data-dir", str(tmp_path), env={"DATABASE_URL": pg_url})
    assert "upstream: schema is current" in r.stdout


async def test_ready_waits_for_catch_up_after_an_offline_start(
    tmp_path: Path, pg_url: str, postgres: Any
) -> None:
    settings = make_settings(
        tmp_path / "a",
        upstream=upstream_settings(pg_url, None, "fpcd:test:ready"),
        secrets={"encryption_key": KEY},
    )
    first = Daemon(settings)
    await first.start()
    async with api_session(first) as http:
        r = await http.put("/api/config/svc", json={"environment": "prod", "config": {"n": 1}})
        assert r.status == 200
    await first.stop()

    postgres.stop()
    again = Daemon(settings)
    try:
        await again.start()  # serves its local copy after startup_timeout
        async with api_session(again) as http:
            r = await http.get("/health/ready")
            assert r.status == 503
            assert (await r.json())["waitingFor"] == ["catch-up with the upstream"]
            r = await http.get("/api/config/svc?environment=prod")
            assert r.status == 200 and (await r.json())["config"] == {"n": 1}
            metrics = await (await http.get("/metrics")).text()
            assert "fpcd_replication_up 0.0" in metrics
            assert "fpcd_replication_errors_total 0.0" not in metrics
            postgres.start()

            async def ready() -> bool:
                return (await http.get("/health/ready")).status == 200

            await eventually(ready, 20)
            metrics = await (await http.get("/metrics")).text()
            assert "fpcd_replication_up 1.0" in metrics
            assert "fpcd_replication_lag_changes 0.0" in metrics
    finally:
        postgres.start()
        await again.stop()


async def test_an_unreadable_upstream_change_waits_visibly(cluster: Any, pg_url: str) -> None:
    """A row this release cannot read (a newer release's value, or damage) neither stops a
    host from starting nor is skipped: replication waits at it, /health names it, reads
    serve what came before it and writes get a clear 503."""
    a = await cluster("a")
    assert (await a.put("svc", {"n": 1}))[0] == 200
    conn = await asyncpg.connect(pg_url)
    try:
        head = await conn.fetchval("SELECT max(seq) FROM fpcd_changes")
        row = await conn.fetchrow("SELECT * FROM fpcd_changes WHERE seq = $1", head)
        doc = json.loads(row["payload"])
        doc["payload"]["action"] = "restore"  # a config action no release of this one knows
        await conn.execute(
            "INSERT INTO fpcd_changes (seq, entity, key, op, actor, at, origin, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            head + 1,
            *(row["entity"], row["key"], row["op"], row["actor"], row["at"], row["origin"]),
            json.dumps(doc).encode(),
        )
    finally:
        await conn.close()
    b = await cluster("b")  # start() returns once caught up as far as it can read
    assert await history(b, "svc") == await history(a, "svc")
    _, health = await b.call("GET", "/health")
    records = health["components"]["records"]
    assert records["status"] == "degraded"
    assert f"upstream change {head + 1}" in records["detail"]
    status, problem = await b.put("svc", {"n": 2})
    assert status == 503 and f"upstream change {head + 1}" in problem["detail"]
    assert b.daemon.components.store.upstream_cursor == head  # waiting, not skipped
