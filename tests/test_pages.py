"""History and audit pages are key ranges: the same items and totals at any offset,
and a target filter matches the target and what lies under it, nothing else."""

from __future__ import annotations

from typing import Any

import aiohttp


async def get(http: aiohttp.ClientSession, path: str) -> Any:
    async with http.get(path) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_history_pages_at_any_offset(http: aiohttp.ClientSession) -> None:
    for n in range(1, 31):
        async with http.put("/api/config/deep", json={"environment": "prod", "config": {"n": n}}):
            pass
    page = await get(http, "/api/config/deep/history?environment=prod&limit=10&offset=25")
    assert [v["version"] for v in page["items"]] == [5, 4, 3, 2, 1]
    assert page["total"] == 30 and page["offset"] == 25 and page["limit"] == 10
    page = await get(http, "/api/config/deep/history?environment=prod&limit=3&offset=10")
    assert [v["config"]["n"] for v in page["items"]] == [20, 19, 18]
    page = await get(http, "/api/config/deep/history?environment=prod&limit=10&offset=30")
    assert page["items"] == [] and page["total"] == 30


async def test_flag_history_pages(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/features", json={"key": "paged", "name": "Paged"}) as r:
        assert r.status == 201
    for n in range(9):
        async with http.patch("/api/features/paged", json={"description": f"v{n + 2}"}) as r:
            assert r.status == 200
    page = await get(http, "/api/features/paged/history?limit=4&offset=7")
    assert [v["version"] for v in page["items"]] == [3, 2, 1] and page["total"] == 10


async def test_audit_pages_and_target_filter(http: aiohttp.ClientSession) -> None:
    writes = (("app", "prod"), ("app", "dev"), ("app2", "prod"), ("app", "prod"))
    for n, (service, env) in enumerate(writes):
        async with http.put(
            f"/api/config/{service}", json={"environment": env, "config": {"n": n}}
        ) as r:
            assert r.status == 200
    everything = await get(http, "/api/audit?limit=1000")
    total = everything["total"]
    assert total == len(everything["items"])
    assert [e["id"] for e in everything["items"]] == list(range(total, 0, -1))
    page = await get(http, f"/api/audit?limit=2&offset={total - 1}")
    assert [e["id"] for e in page["items"]] == [1] and page["total"] == total
    page = await get(http, "/api/audit?limit=2&offset=1")
    assert [e["id"] for e in page["items"]] == [total - 1, total - 2]
    # `config:app` covers app's environments, not app2; an exact target only itself.
    app = await get(http, "/api/audit?target=config:app")
    assert sorted(e["target"] for e in app["items"]) == [
        "config:app/dev",
        "config:app/prod",
        "config:app/prod",
    ]
    assert app["total"] == 3
    prod = await get(http, "/api/audit?target=config:app/prod&limit=1&offset=1")
    assert prod["total"] == 2 and [e["target"] for e in prod["items"]] == ["config:app/prod"]
    assert (await get(http, "/api/audit?target=config:ap"))["total"] == 0
