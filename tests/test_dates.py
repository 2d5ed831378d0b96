"""Out-of-range dates: refused at the door, and never a reason for a start to fail.

`9999-12-31T23:59:59-14:00` is valid ISO 8601 but the year 10000 in UTC. It used to be
accepted (a flag's endDate, a secret's expiresAt), and from then on every start of every
host of the cluster failed with `ValueError: year 10000 is out of range`.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from fpcd.app import Daemon
from fpcd.domain.model import Caller, Change, FlagRecord
from fpcd.upstream.log import UpstreamLog
from tests.conftest import LOG_LINES, DaemonProcess, api_session, eventually, make_settings
from tests.test_daemon_process import request
from tests.test_replication import KEY, upstream_settings

ATTACK = "9999-12-31T23:59:59-14:00"
ATTACK_EPOCH = datetime.fromisoformat(ATTACK).timestamp()


def paths(problem: Any) -> list[str]:
    return [e["path"] for e in problem.get("errors", [])]


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, path, json=body) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def records_health(http: aiohttp.ClientSession) -> dict[str, Any]:
    _, doc = await call(http, "GET", "/health")
    return dict(doc["components"]["records"])


# -- at the door ------------------------------------------------------------------------


def test_out_of_range_dates_get_422_naming_the_field_and_restart_works(spawn: Any) -> None:
    proc: DaemonProcess = spawn("dates").start()
    url = proc.url
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "POST",
            "/api/features",
            {"name": "a", "rollout": {"endDate": ATTACK}},
            "$.rollout.endDate",
        ),
        (
            "POST",
            "/api/features",
            {"name": "b", "rollout": {"startDate": ATTACK}},
            "$.rollout.startDate",
        ),
        (
            "POST",
            "/api/features",
            {"name": "c", "environments": {"prod": {"rollout": {"endDate": ATTACK}}}},
            "$.environments.prod.rollout.endDate",
        ),
        (
            "POST",
            "/api/features",
            {
                "name": "d",
                "rules": [{"attribute": "signup", "operator": "before", "values": [ATTACK]}],
            },
            "$.rules[0].values[0]",
        ),
        (
            "POST",
            "/api/features",
            {"name": "e", "rollout": {"startDate": "1969-12-31T23:59:59Z"}},
            "$.rollout.startDate",
        ),
        ("PUT", "/api/secrets/app/TOKEN", {"value": "x", "expiresAt": ATTACK}, "$.expiresAt"),
        (
            "PUT",
            "/api/secrets/app/TOKEN",
            {"value": "x", "expiresAt": "10000-01-01T00:00:00Z"},
            "$.expiresAt",
        ),
    ]
    for method, path, body, field in cases:
        status, problem = request(method, url + path, body)
        assert status == 422, (body, status, problem)
        assert field in paths(problem), (body, problem)
    status, problem = request("PUT", url + "/api/features/f", {"name": "f"})
    assert status in (200, 201)
    status, problem = request("PATCH", url + "/api/features/f", {"rollout": {"endDate": ATTACK}})
    assert status == 422 and "$.rollout.endDate" in paths(problem)
    assert "out of range" in json.dumps(problem)
    status, problem = request("GET", url + f"/api/features/f/analytics?endDate={ATTACK}")
    assert status == 422 and "query.endDate" in paths(problem)
    assert request("GET", url + "/api/secrets/app/TOKEN")[0] == 404  # nothing stored

    # Dates are kept in UTC.
    body = {"name": "g", "rollout": {"startDate": "2030-01-01T02:00:00+02:00"}}
    status, flag = request("POST", url + "/api/features", body)
    assert status == 201 and flag["rollout"]["startDate"] == "2030-01-01T00:00:00Z"
    body = {"value": "x", "expiresAt": "2030-01-01T02:00:00+02:00"}
    status, secret = request("PUT", url + "/api/secrets/app/TOKEN", body)
    assert status == 200 and secret["secret"]["expiresAt"] == "2030-01-01T00:00:00Z"

    assert proc.stop() == 0
    proc.start()  # the attack used to make every later start fail
    assert request("GET", url + "/health")[1]["components"]["records"]["status"] == "ok"


# -- a data dir that already holds such records -------------------------------------------


async def test_data_dir_with_out_of_range_records_starts_and_the_api_fixes_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    daemon = Daemon(make_settings(data))
    await daemon.start()
    async with api_session(daemon) as http:
        flag = {"name": "Sale", "enabled": True, "rollout": {"endDate": "2030-01-01T00:00:00Z"}}
        assert (await call(http, "POST", "/api/features", flag))[0] == 201
        secret = {"value": "v", "expiresAt": "2099-01-01T00:00:00Z"}
        assert (await call(http, "PUT", "/api/secrets/app/TOKEN", secret))[0] in (200, 201)
    await daemon.stop()

    # What an earlier release stored when it accepted the attack.
    with sqlite3.connect(data / "fpcd.db") as db:
        (raw,) = db.execute("SELECT record FROM flag_versions WHERE key = 'sale'").fetchone()
        record = json.loads(raw)
        record["definition"]["rollout"]["endDate"] = ATTACK
        db.execute(
            "UPDATE flag_versions SET record = ? WHERE key = 'sale'", (json.dumps(record).encode(),)
        )
        db.execute("UPDATE secret_versions SET expires_at = ?", (ATTACK_EPOCH,))
        db.execute(  # and a row no release can read
            "INSERT INTO flag_versions (key, version, change_seq, record) VALUES (?, ?, ?, ?)",
            ("broken", 1, 10**6, b'{"key": "broken", "version": '),
        )

    LOG_LINES.clear()
    daemon = Daemon(make_settings(data))
    await daemon.start()  # used to fail: ValueError: year 10000 is out of range
    try:
        async with api_session(daemon) as http:
            records = await records_health(http)
            assert records["status"] == "degraded"
            assert "flag:sale:*:end" in records["detail"]
            assert "secret:app/development/TOKEN v1" in records["detail"]
            assert "flag:broken:record: version 1 does not decode" in records["detail"]
            _, health = await call(http, "GET", "/health")
            assert health["status"] == "degraded"
            async with http.get("/metrics") as r:
                metrics = await r.text()
            assert "fpcd_record_problems 3.0" in metrics
            assert 'fpcd_record_problems_reported_total{kind="schedule"} 2.0' in metrics
            assert 'fpcd_record_problems_reported_total{kind="load"} 1.0' in metrics
            assert sum("stored record unusable: flag:sale" in line for line in LOG_LINES) == 1

            # Everything else works, and these records can be read...
            status, doc = await call(http, "GET", "/api/features/sale")
            assert status == 200 and doc["rollout"]["endDate"] == ATTACK
            status, result = await call(
                http, "POST", "/api/features/evaluate", {"flags": ["sale"], "context": {}}
            )
            assert status == 200 and result["results"]["sale"]["enabled"] is True
            status, doc = await call(http, "GET", "/api/secrets/app/TOKEN")
            assert status == 200 and doc["expiresAt"].startswith("9999-12-31T23:59:59")
            status, doc = await call(http, "GET", "/api/config/app")
            assert status in (200, 404)

            # ...and fixed through the API.
            patch = {"rollout": {"endDate": "2031-01-01T00:00:00Z"}}
            status, doc = await call(http, "PATCH", "/api/features/sale", patch)
            assert status == 200, doc
            assert (await call(http, "DELETE", "/api/secrets/app/TOKEN"))[0] in (200, 204)
            records = await records_health(http)
            assert records["detail"].startswith("flag:broken:record"), records  # only that
    finally:
        await daemon.stop()
    with sqlite3.connect(data / "fpcd.db") as db:
        db.execute("DELETE FROM flag_versions WHERE key = 'broken'")
    daemon = Daemon(make_settings(data))
    await daemon.start()
    try:
        assert not daemon.components.store.problems.open
    finally:
        await daemon.stop()


# -- a replicated change ------------------------------------------------------------------


async def test_replicated_out_of_range_change_neither_stops_a_host_nor_a_new_one(
    tmp_path: Path, pg_url: str
) -> None:
    def settings(name: str) -> Any:
        upstream = upstream_settings(pg_url, None, f"fpcd:test:dates:{name}")
        return make_settings(tmp_path / name, upstream=upstream, secrets={"encryption_key": KEY})

    first = Daemon(settings("one"))
    await first.start()
    joiner: Daemon | None = None
    try:
        async with api_session(first) as http:
            flag = {"name": "Promo", "enabled": True}
            assert (await call(http, "POST", "/api/features", flag))[0] == 201
            _, doc = await call(http, "GET", "/api/features/promo")

            # A host of an older release (or a hostile one) ships a change with the attack.
            current = first.components.flags.get("promo", Caller.system("test"))
            definition = current.definition
            bad = FlagRecord(
                key="promo",
                version=current.version + 1,
                definition=type(definition)(
                    key="promo",
                    name="Promo",
                    enabled=True,
                    rollout=type(definition.rollout)(start_date=ATTACK),
                ),
                created_at=current.created_at,
                updated_at=datetime.now(UTC),
                updated_by="old-host",
            )
            change = Change(
                key="promo",
                op="update",
                payload=bad,
                actor="old-host",
                at=datetime.now(UTC),
                origin="old-host",
            )
            conn = await asyncpg.connect(pg_url)
            try:
                async with conn.transaction():
                    await UpstreamLog.append(conn, [change])
            finally:
                await conn.close()

            async def applied() -> bool:
                _, doc = await call(http, "GET", "/api/features/promo")
                return bool(doc["version"] == bad.version)

            await eventually(applied)
            records = await records_health(http)
            assert records["status"] == "degraded"
            assert "flag:promo:*:start" in records["detail"]
            _, result = await call(
                http, "POST", "/api/features/evaluate", {"flags": ["promo"], "context": {}}
            )
            assert result["results"]["promo"]["enabled"] is False  # starts in the year 10000
        await first.stop()

        # The host restarts, and a new host joins the cluster.
        await first.start()
        joiner = Daemon(settings("two"))
        await joiner.start()
        async with api_session(joiner) as http:
            records = await records_health(http)
            assert "flag:promo:*:start" in records["detail"]
            patch = {"rollout": {"startDate": None}}
            status, doc = await call(http, "PATCH", "/api/features/promo", patch)
            assert status == 200, doc
            assert (await records_health(http))["status"] == "ok"
        async with api_session(first) as http:

            async def fixed() -> bool:
                return bool((await records_health(http))["status"] == "ok")

            await eventually(fixed)
    finally:
        if joiner is not None:
            await joiner.stop()
        await first.stop()


@pytest.mark.parametrize(
    "value",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z"],
)
def test_domain_refuses_out_of_range_instants(value: str) -> None:
    from fpcd.domain.errors import Invalid
    from fpcd.domain.instants import checked_utc

    with pytest.raises(Invalid) as caught:
        checked_utc(datetime.fromisoformat(value), "$.expiresAt")
    assert caught.value.errors[0].path == "$.expiresAt"
