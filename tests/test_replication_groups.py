"""Group commit through the upstream: writers queued on a host share one Postgres
transaction (and one local one), yet every acknowledged write is in the upstream log,
numbered without a gap, and on every host."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from fpcd.upstream.replicator import Replicator
from tests.conftest import eventually
from tests.test_replication import (  # noqa: F401  (fixtures)
    Host,
    assert_same_everywhere,
    cluster,
)


def replicator(host: Host) -> Replicator:
    replicator = host.daemon.components.replicator
    assert replicator is not None
    return replicator


async def upstream_seqs(pg_url: str) -> list[int]:
    conn = await asyncpg.connect(pg_url)
    try:
        return [r["seq"] for r in await conn.fetch("SELECT seq FROM fpcd_changes ORDER BY seq")]
    finally:
        await conn.close()


async def test_grouped_writers_on_three_hosts_lose_nothing_and_leave_no_gap(
    cluster: Any,  # noqa: F811
    pg_url: str,
) -> None:
    hosts = [await cluster(name) for name in ("a", "b", "c")]
    before = sum(replicator(h).groups for h in hosts)
    writes = [(i, f"svc-{n % 3}", n) for n in range(40) for i in range(3)]
    results = await asyncio.gather(
        *(hosts[i].put(service, {"host": i, "n": n}) for i, service, n in writes)
    )
    assert [status for status, _ in results] == [200] * len(writes)
    for service in ("svc-0", "svc-1", "svc-2"):
        versions = sorted(
            body["version"]
            for (_, s, _), (_, body) in zip(writes, results, strict=True)
            if s == service
        )
        assert versions == list(range(1, sum(s == service for _, s, _ in writes) + 1))
    # Writers were grouped: fewer upstream transactions than writes.
    assert sum(replicator(h).groups for h in hosts) - before < len(writes)
    seqs = await upstream_seqs(pg_url)
    assert seqs == list(range(1, len(seqs) + 1))  # gapless, in commit order
    await assert_same_everywhere(hosts, ["svc-0", "svc-1", "svc-2"])
    # Every acknowledged write is on every host, with the version it was acknowledged as.
    for host in hosts:
        for service in ("svc-0", "svc-1", "svc-2"):
            _, page = await host.call(
                "GET", f"/api/config/{service}/history?environment=prod&limit=100"
            )
            stored = {(v["config"]["host"], v["config"]["n"]): v["version"] for v in page["items"]}
            for (i, s, n), (_, body) in zip(writes, results, strict=True):
                if s == service:
                    assert stored[(i, n)] == body["version"]


async def test_a_refused_writer_leaves_the_rest_of_its_upstream_group(
    cluster: Any,  # noqa: F811
) -> None:
    a, b = await cluster("a"), await cluster("b")
    assert (await a.put("svc", {"n": -1}))[0] == 200
    results = await asyncio.gather(
        *(
            a.put("svc", {"n": n}, expectedVersion=999) if n % 2 else a.put("svc", {"n": n})
            for n in range(30)
        )
    )
    assert [status for status, _ in results] == [412 if n % 2 else 200 for n in range(30)]
    assert sorted(body["version"] for status, body in results if status == 200) == list(
        range(2, 17)
    )
    await assert_same_everywhere([a, b], ["svc"])


async def test_writers_during_a_postgres_outage_lose_no_acknowledged_write(
    cluster: Any,  # noqa: F811
    postgres: Any,
    pg_url: str,
) -> None:
    a, b = await cluster("a"), await cluster("b")
    acknowledged: list[tuple[int, int]] = []
    stop = asyncio.Event()

    async def writer(w: int, host: Host) -> None:
        n = 0
        while not stop.is_set():
            status, _ = await host.put(f"w{w}", {"n": n})
            assert status in (200, 503)
            if status == 200:
                acknowledged.append((w, n))
            n += 1

    writers = [asyncio.create_task(writer(w, (a, b)[w % 2])) for w in range(8)]
    try:
        await eventually(lambda: _at_least(acknowledged, 40), 20)
        postgres.stop()
        count = len(acknowledged)
        await eventually(lambda: _refused_now(a), 15)
        postgres.start()
        await eventually(lambda: _at_least(acknowledged, count + 40), 30)
    finally:
        stop.set()
        postgres.start()
        await asyncio.gather(*writers)
    await assert_same_everywhere([a, b], [f"w{w}" for w in range(8)])
    seqs = await upstream_seqs(pg_url)
    assert seqs == list(range(1, len(seqs) + 1))
    for host in (a, b):
        for w in range(8):
            _, page = await host.call(
                "GET", f"/api/config/w{w}/history?environment=prod&limit=1000"
            )
            stored = {v["config"]["n"] for v in page["items"]}
            assert {n for ww, n in acknowledged if ww == w} <= stored


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _refused_now(host: Host) -> bool:
    status, _ = await host.put("probe", {"at": "outage"})
    return status == 503
