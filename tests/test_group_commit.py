"""Group commit: concurrent writers share SQLite transactions, each write keeps its own
version and audit entry, a refused write leaves the rest of its group alone, and every
acknowledged write is on disk."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from fpcd.app import Daemon
from fpcd.services.changes import LocalCommitter
from tests.conftest import api_session, make_settings
from tests.test_storage_safety import _fill_disk, small_disk  # noqa: F401  (fixture)


async def put(
    http: aiohttp.ClientSession, path: str, body: dict[str, Any], **kwargs: Any
) -> tuple[int, Any]:
    async with http.put(path, json=body, **kwargs) as r:
        return r.status, await r.json()


def committer(daemon: Daemon) -> LocalCommitter:
    assert isinstance(daemon.components.committer, LocalCommitter)
    return daemon.components.committer


async def test_concurrent_writers_share_groups_and_every_ack_is_on_disk(
    http: aiohttp.ClientSession, daemon: Daemon
) -> None:
    before = committer(daemon).groups
    writes = [(f"svc-{n % 8}", n) for n in range(240)]
    results = await asyncio.gather(
        *(
            put(http, f"/api/config/{service}", {"environment": "prod", "config": {"n": n}})
            for service, n in writes
        )
    )
    assert [status for status, _ in results] == [200] * len(writes)
    for i in range(8):
        versions = sorted(
            body["version"]
            for (s, _), (_, body) in zip(writes, results, strict=True)
            if s == f"svc-{i}"
        )
        assert versions == list(range(1, 31))  # 30 writers each, no number shared or skipped
    # Fewer transactions than writes: writers that queued up were committed together.
    assert committer(daemon).groups - before < len(writes)
    async with http.get("/metrics") as r:
        metrics = await r.text()
    commits = re.search(r"^fpcd_sqlite_commits_total (\S+)$", metrics, re.M)
    changes = re.search(r"^fpcd_sqlite_committed_changes_total (\S+)$", metrics, re.M)
    assert commits and changes and float(changes[1]) > float(commits[1]) > 0
    # What was acknowledged is in the file, as a fresh connection reads it.
    with sqlite3.connect(daemon.settings.database) as db:
        stored = db.execute(
            "SELECT count(*) FROM config_versions WHERE service LIKE 'svc-%'"
        ).fetchone()[0]
        entries = db.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'config.update'"
        ).fetchone()[0]
    assert stored == entries == len(writes)
    async with http.get("/api/audit/verify") as r:
        verified = await r.json()
    assert verified["ok"] is True and verified["breaks"] == []


async def test_a_refused_writer_leaves_the_rest_of_its_group(
    http: aiohttp.ClientSession, daemon: Daemon
) -> None:
    status, _ = await put(
        http,
        "/api/config/guarded/schema",
        {"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    assert status == 200
    bodies: list[tuple[dict[str, Any], dict[str, str]]] = []
    for n in range(60):
        if n % 3 == 0:
            bodies.append(({"environment": "prod", "config": {"n": f"not a number {n}"}}, {}))
        elif n % 3 == 1:
            bodies.append(({"environment": "prod", "config": {"n": n}}, {"If-Match": '"999"'}))
        else:
            bodies.append(({"environment": "prod", "config": {"n": n}}, {}))
    results = await asyncio.gather(
        *(put(http, "/api/config/guarded", body, headers=h) for body, h in bodies)
    )
    statuses = [status for status, _ in results]
    assert statuses == [[422, 412, 200][n % 3] for n in range(60)]
    accepted = sorted(body["version"] for status, body in results if status == 200)
    assert accepted == list(range(1, 21))
    async with http.get("/api/config/guarded/history?environment=prod&limit=100") as r:
        history = await r.json()
    assert sorted(v["config"]["n"] for v in history["items"]) == list(range(2, 60, 3))
    async with http.get("/api/audit/verify") as r:
        assert (await r.json())["ok"] is True


async def test_flags_and_configs_written_together_keep_their_own_versions(
    http: aiohttp.ClientSession, daemon: Daemon
) -> None:
    async with http.post("/api/features", json={"key": "f", "name": "F", "enabled": False}) as r:
        assert r.status == 201
    flag_writes = [
        http.patch("/api/features/f", json={"description": f"edit {n}"}) for n in range(20)
    ]

    async def patch(request: Any) -> tuple[int, Any]:
        async with request as r:
            return r.status, await r.json()

    results = await asyncio.gather(
        *(patch(w) for w in flag_writes),
        *(
            put(http, "/api/config/mixed", {"environment": "prod", "config": {"n": n}})
            for n in range(20)
        ),
    )
    flags, configs = results[:20], results[20:]
    assert sorted(body["version"] for _, body in flags) == list(range(2, 22))
    assert sorted(body["version"] for _, body in configs) == list(range(1, 21))
    async with http.get("/api/features/f") as r:
        assert (await r.json())["version"] == 21
    async with http.get("/api/audit/verify") as r:
        assert (await r.json())["ok"] is True


async def test_a_group_that_hits_a_full_disk_acknowledges_nothing_it_lost(
    small_disk: Path,  # noqa: F811
) -> None:
    """Writers grouped when the disk fills: each gets 200 or 507, and after the space is
    freed and the daemon restarted, exactly the acknowledged writes are there."""
    data = small_disk / "data"
    daemon = Daemon(make_settings(data))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            filler = _fill_disk(small_disk)
            blob = "x" * 60_000

            async def write(n: int) -> tuple[int, int]:
                body = {"environment": "prod", "config": {"n": n, "blob": blob}}
                status, _ = await put(http, f"/api/config/full-{n % 4}", body)
                return n, status

            results = await asyncio.gather(*(write(n) for n in range(40)))
            filler.unlink()
    finally:
        await daemon.stop()
    statuses = {status for _, status in results}
    assert statuses <= {200, 507} and 507 in statuses
    acknowledged = {n for n, status in results if status == 200}
    daemon = Daemon(make_settings(data))
    await daemon.start()
    try:
        stored = set()
        async with api_session(daemon) as http:
            for service in range(4):
                async with http.get(
                    f"/api/config/full-{service}/history?environment=prod&limit=100"
                ) as r:
                    if r.status == 200:
                        stored |= {v["config"]["n"] for v in (await r.json())["items"]}
            async with http.get("/api/audit/verify") as r:
                assert (await r.json())["ok"] is True
        assert stored == acknowledged
    finally:
        await daemon.stop()
