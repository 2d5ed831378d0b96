"""The configuration REST API end to end, against a running daemon on a real SQLite file."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from fpcd.app import Daemon
from tests.conftest import api_session, issue_token


async def put(
    http: aiohttp.ClientSession, service: str, body: dict[str, Any], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.put(f"/api/config/{service}", json=body, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def get(http: aiohttp.ClientSession, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(path, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def test_put_then_get_returns_the_seed_shape(http: aiohttp.ClientSession) -> None:
    status, written = await put(
        http,
        "checkout",
        {
            "environment": "production",
            "config": {"db": {"host": "db1", "port": 5432}, "features": ["a"]},
            "description": "first",
            "tags": ["initial"],
        },
    )
    assert status == 200
    assert written["changed"] is True and written["version"] == 1

    async with http.get("/api/config/checkout?environment=production") as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"1"'
        doc = await r.json()
    assert doc["serviceName"] == "checkout"
    assert doc["environment"] == "production"
    assert doc["version"] == 1
    assert doc["config"] == {"db": {"host": "db1", "port": 5432}, "features": ["a"]}
    assert doc["description"] == "first" and doc["tags"] == ["initial"]
    assert doc["createdBy"] == "admin"
    assert len(doc["checksum"]) == 64
    assert doc["secrets"] == {}


async def test_unchanged_write_creates_no_version(http: aiohttp.ClientSession) -> None:
    body = {"environment": "dev", "config": {"a": 1, "b": {"c": [1, 2]}}}
    assert (await put(http, "svc", body))[1]["version"] == 1
    status, again = await put(http, "svc", {**body, "config": {"b": {"c": [1, 2]}, "a": 1}})
    assert status == 200 and again["changed"] is False and again["version"] == 1
    _, history = await get(http, "/api/config/svc/history?environment=dev")
    assert history["total"] == 1


async def test_secrets_count_as_content(http: aiohttp.ClientSession, daemon: Daemon) -> None:
    body = {"environment": "dev", "config": {"a": 1}, "secrets": {"TOKEN": "one"}}
    await put(http, "svc", body)
    _, same = await put(http, "svc", body)
    assert same["changed"] is False and same["version"] == 1
    _, second = await put(http, "svc", {**body, "secrets": {"TOKEN": "two"}})
    assert second["changed"] is True and second["version"] == 2
    _, doc = await get(http, "/api/config/svc?environment=dev")
    assert doc["secrets"] == {"TOKEN": {"version": 2}}  # names and metadata only
    # A token without secrets:read gets metadata only, even with includeSecrets...
    async with api_session(daemon, issue_token(daemon, "editor")) as editor:
        _, no_values = await get(editor, "/api/config/svc?environment=dev&includeSecrets=true")
    assert no_values["secrets"] == {"TOKEN": {"version": 2}}
    # ...an admin token, or the Unix socket (guarded by its file mode), gets the value.
    _, with_values = await get(http, "/api/config/svc?environment=dev&includeSecrets=true")
    assert with_values["secrets"]["TOKEN"] == {"version": 2, "value": "two"}
    connector = aiohttp.UnixConnector(path=daemon.addresses["socket"])
    async with (
        aiohttp.ClientSession(connector=connector) as unix,
        unix.get("http://fpcd/api/config/svc?environment=dev&includeSecrets=true") as r,
    ):
        assert (await r.json())["secrets"]["TOKEN"] == {"version": 2, "value": "two"}


async def test_default_is_the_base_layer(http: aiohttp.ClientSession) -> None:
    await put(
        http,
        "web",
        {
            "environment": "default",
            "config": {"db": {"host": "localhost", "port": 5432}, "debug": True, "list": [1, 2]},
        },
    )
    await put(
        http,
        "web",
        {
            "environment": "production",
            "config": {"db": {"host": "prod-db"}, "debug": False, "list": [3]},
        },
    )
    _, doc = await get(http, "/api/config/web?environment=production")
    assert doc["config"] == {"db": {"host": "prod-db", "port": 5432}, "debug": False, "list": [3]}
    assert doc["version"] == 1 and doc["baseVersion"] == 1
    _, raw = await get(http, "/api/config/web?environment=production&raw=true")
    assert raw["config"] == {"db": {"host": "prod-db"}, "debug": False, "list": [3]}
    assert "baseVersion" not in raw or raw["baseVersion"] is None
    # An environment with no layer of its own inherits default, at version 0.
    _, staging = await get(http, "/api/config/web?environment=staging")
    assert staging["version"] == 0 and staging["config"]["db"]["host"] == "localhost"
    # Changing default changes what production reads (and its ETag).
    await put(http, "web", {"environment": "default", "config": {"db": {"port": 6432}}})
    async with http.get("/api/config/web?environment=production") as r:
        assert r.headers["ETag"] == '"1+2"'
        doc = await r.json()
    assert doc["config"]["db"] == {"host": "prod-db", "port": 6432}


async def test_historic_version_merges_with_default_of_its_time(
    http: aiohttp.ClientSession,
) -> None:
    await put(http, "web", {"environment": "default", "config": {"level": "old"}})
    await put(http, "web", {"environment": "production", "config": {"x": 1}})
    await put(http, "web", {"environment": "default", "config": {"level": "new"}})
    await put(http, "web", {"environment": "production", "config": {"x": 2}})
    _, v1 = await get(http, "/api/config/web?environment=production&version=1")
    assert v1["config"] == {"level": "old", "x": 1}
    _, v2 = await get(http, "/api/config/web?environment=production&version=2")
    assert v2["config"] == {"level": "new", "x": 2}
    status, _ = await get(http, "/api/config/web?environment=production&version=9")
    assert status == 404


async def test_rollback_writes_a_new_version(http: aiohttp.ClientSession) -> None:
    for n in (1, 2, 3):
        await put(http, "api", {"environment": "prod", "config": {"n": n}})
    async with http.post(
        "/api/config/api/rollback", json={"environment": "prod", "version": 1}
    ) as r:
        assert r.status == 200
        result = await r.json()
    assert result == {**result, "version": 4, "changed": True, "rolledBackFrom": 1}
    _, doc = await get(http, "/api/config/api?environment=prod")
    assert doc["version"] == 4 and doc["config"] == {"n": 1}
    _, history = await get(http, "/api/config/api/history?environment=prod")
    assert [v["version"] for v in history["items"]] == [4, 3, 2, 1]
    assert history["items"][0]["action"] == "rollback"
    assert history["items"][0]["rolledBackFrom"] == 1
    # Rolling back to content the head already has makes nothing new.
    async with http.post(
        "/api/config/api/rollback", json={"environment": "prod", "version": 1}
    ) as r:
        assert (await r.json())["changed"] is False
    async with http.post(
        "/api/config/api/rollback", json={"environment": "prod", "version": 42}
    ) as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"


async def test_if_match_refuses_a_stale_write(http: aiohttp.ClientSession) -> None:
    await put(http, "svc", {"environment": "prod", "config": {"a": 1}})
    await put(http, "svc", {"environment": "prod", "config": {"a": 2}})
    status, problem = await put(
        http, "svc", {"environment": "prod", "config": {"a": 3}}, headers={"If-Match": '"1"'}
    )
    assert status == 412
    assert problem["status"] == 412 and "version 2" in problem["detail"]
    status, ok = await put(
        http, "svc", {"environment": "prod", "config": {"a": 3}}, headers={"If-Match": '"2"'}
    )
    assert status == 200 and ok["version"] == 3
    # The body form works the same way, and an ETag of a merged view is accepted.
    status, _ = await put(
        http, "svc", {"environment": "prod", "config": {"a": 4}, "expectedVersion": 2}
    )
    assert status == 412
    status, _ = await put(
        http, "svc", {"environment": "prod", "config": {"a": 4}}, headers={"If-Match": '"3+7"'}
    )
    assert status == 200
    # expectedVersion 0 means "create only".
    status, _ = await put(
        http, "fresh", {"environment": "prod", "config": {}, "expectedVersion": 0}
    )
    assert status == 200
    status, _ = await put(
        http, "fresh", {"environment": "prod", "config": {"x": 1}, "expectedVersion": 0}
    )
    assert status == 412
    _, doc = await get(http, "/api/config/svc?environment=prod")
    assert doc["config"] == {"a": 4}


async def test_etag_and_if_none_match(http: aiohttp.ClientSession) -> None:
    await put(http, "svc", {"environment": "prod", "config": {"a": 1}})
    async with http.get("/api/config/svc?environment=prod") as r:
        etag = r.headers["ETag"]
    async with http.get("/api/config/svc?environment=prod", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert await r.read() == b""
    await put(http, "svc", {"environment": "prod", "config": {"a": 2}})
    async with http.get("/api/config/svc?environment=prod", headers={"If-None-Match": etag}) as r:
        assert r.status == 200
        assert (await r.json())["config"] == {"a": 2}


async def test_history_pages(http: aiohttp.ClientSession) -> None:
    for n in range(7):
        await put(
            http, "svc", {"environment": "prod", "config": {"n": n}, "description": f"v{n + 1}"}
        )
    _, page = await get(http, "/api/config/svc/history?environment=prod&limit=3&offset=2")
    assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 2
    assert [v["version"] for v in page["items"]] == [5, 4, 3]
    assert page["items"][0]["config"] == {"n": 4}
    assert page["items"][0]["description"] == "v5"
    status, _ = await get(http, "/api/config/nothing/history?environment=prod")
    assert status == 404


async def test_diff_between_versions(http: aiohttp.ClientSession) -> None:
    await put(
        http,
        "svc",
        {
            "environment": "prod",
            "config": {"keep": 1, "drop": 2, "nested": {"a": 1}},
            "secrets": {"S": "x"},
        },
    )
    await put(
        http,
        "svc",
        {
            "environment": "prod",
            "config": {"keep": 1, "add": 3, "nested": {"a": 2}},
            "secrets": {"S": "y"},
        },
    )
    _, doc = await get(http, "/api/config/svc/diff?environment=prod")
    assert doc["from"] == 1 and doc["to"] == 2
    assert doc["changes"] == [
        {"op": "add", "path": "/add", "value": 3},
        {"op": "remove", "path": "/drop", "oldValue": 2},
        {"op": "replace", "path": "/nested/a", "value": 2, "oldValue": 1},
    ]
    assert doc["secretsChanged"] == ["S"]
    assert "x" not in str(doc) and "y" not in str(doc["secretsChanged"])
    _, first = await get(http, "/api/config/svc/diff?environment=prod&from=0&to=1")
    assert {c["op"] for c in first["changes"]} == {"add"}
    status, _ = await get(http, "/api/config/svc/diff?environment=prod&from=1&to=5")
    assert status == 404


async def test_schema_validation_lists_every_failing_path(http: aiohttp.ClientSession) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "timeout": {"type": "integer"},
            "db": {
                "type": "object",
                "properties": {"host": {"type": "string"}},
                "required": ["host"],
            },
        },
        "required": ["port"],
    }
    async with http.put("/api/config/svc/schema", json={"schema": schema}) as r:
        assert r.status == 200
        assert (await r.json())["version"] == 1
    _, stored = await get(http, "/api/config/svc/schema")
    assert stored["schema"] == schema

    await put(http, "svc", {"environment": "prod", "config": {"port": 80, "db": {"host": "h"}}})
    status, problem = await put(
        http, "svc", {"environment": "prod", "config": {"port": 70000, "db": {"host": 5}}}
    )
    assert status == 422
    paths = sorted(e["path"] for e in problem["errors"])
    assert paths == ["$.config.db.host", "$.config.port"]
    _, doc = await get(http, "/api/config/svc?environment=prod")
    assert doc["version"] == 1 and doc["config"]["port"] == 80

    # A default layer that breaks an environment over it is refused too.
    status, problem = await put(
        http, "svc", {"environment": "default", "config": {"timeout": "slow"}}
    )
    assert status == 422
    assert "prod" in problem["errors"][0]["message"]


async def test_invalid_schema_is_refused(http: aiohttp.ClientSession) -> None:
    async with http.put("/api/config/svc/schema", json={"schema": {"type": "objekt"}}) as r:
        assert r.status == 422
        problem = await r.json()
    assert problem["errors"][0]["path"].startswith("$.schema")
    async with http.get("/api/config/svc/schema") as r:
        assert r.status == 404


async def test_schema_reports_current_violations_and_can_be_removed(
    http: aiohttp.ClientSession,
) -> None:
    await put(http, "svc", {"environment": "prod", "config": {"port": "eighty"}})
    schema = {"type": "object", "properties": {"port": {"type": "integer"}}}
    async with http.put("/api/config/svc/schema", json=schema) as r:
        doc = await r.json()
    assert doc["violations"][0]["environment"] == "prod"
    assert doc["violations"][0]["errors"][0]["path"] == "$.config.port"
    async with http.delete("/api/config/svc/schema") as r:
        assert r.status == 200
    status, _ = await put(http, "svc", {"environment": "prod", "config": {"port": "ninety"}})
    assert status == 200


async def test_list_services_and_environments(http: aiohttp.ClientSession) -> None:
    await put(http, "b-svc", {"environment": "prod", "config": {}})
    await put(http, "a-svc", {"environment": "default", "config": {}})
    await put(http, "a-svc", {"environment": "prod", "config": {"x": 1}})
    await put(http, "a-svc", {"environment": "prod", "config": {"x": 2}})
    _, page = await get(http, "/api/config")
    assert page["total"] == 2
    assert page["items"][0] == {
        "serviceName": "a-svc",
        "environments": [{"name": "default", "version": 1}, {"name": "prod", "version": 2}],
    }


async def test_reload_without_force_is_a_no_op_when_unchanged(
    http: aiohttp.ClientSession,
) -> None:
    await put(http, "svc", {"environment": "prod", "config": {"a": 1}})
    async with http.post("/api/config/svc/reload", json={"environment": "prod"}) as r:
        first = await r.json()
    assert first["reloaded"] is True
    async with http.post("/api/config/svc/reload", json={"environment": "prod"}) as r:
        second = await r.json()
    assert second["reloaded"] is False and "unchanged" in second["message"]
    async with http.post(
        "/api/config/svc/reload", json={"environment": "prod", "force": True}
    ) as r:
        assert (await r.json())["reloaded"] is True
    await put(http, "svc", {"environment": "prod", "config": {"a": 2}})
    async with http.post("/api/config/svc/reload", json={"environment": "prod"}) as r:
        assert (await r.json())["reloaded"] is True
    async with http.post("/api/config/nothing/reload", json={"environment": "prod"}) as r:
        assert r.status == 404
    _, audit = await get(http, "/api/audit?target=config:svc/prod")
    assert [e["action"] for e in audit["items"]].count("config.reload") == 3


async def test_default_environment_comes_from_settings(http: aiohttp.ClientSession) -> None:
    await put(http, "svc", {"config": {"a": 1}})
    _, doc = await get(http, "/api/config/svc")
    assert doc["environment"] == "development" and doc["config"] == {"a": 1}


async def test_racing_writers_get_distinct_versions(http: aiohttp.ClientSession) -> None:
    results = await asyncio.gather(
        *(put(http, "race", {"environment": "prod", "config": {"writer": n}}) for n in range(20))
    )
    versions = sorted(body["version"] for status, body in results if status == 200)
    assert versions == list(range(1, 21))
    _, history = await get(http, "/api/config/race/history?environment=prod&limit=100")
    assert [v["version"] for v in history["items"]] == list(range(20, 0, -1))


async def test_audit_log_records_every_change(http: aiohttp.ClientSession) -> None:
    await put(
        http,
        "svc",
        {"environment": "prod", "config": {"a": 1}},
        headers={"X-Request-Id": "req-123"},
    )
    await put(http, "svc", {"environment": "prod", "config": {"a": 1}})  # unchanged: no entry
    async with http.put("/api/config/svc/schema", json={"type": "object"}) as r:
        assert r.status == 200
    _, page = await get(http, "/api/audit")
    assert page["total"] == 3  # the keyring's first data key, then ours
    newest, oldest = page["items"][:2]
    assert oldest["action"] == "config.update" and oldest["target"] == "config:svc/prod"
    assert oldest["requestId"] == "req-123" and oldest["actor"] == "admin"
    assert page["items"][2]["prevHash"] == "0" * 64 and newest["prevHash"] == oldest["hash"]
    assert newest["action"] == "schema.put"
    _, verified = await get(http, "/api/audit/verify")
    assert verified == {"ok": True, "entries": 3, "breaks": []}


async def test_health_reports_sqlite(http: aiohttp.ClientSession, daemon: Daemon) -> None:
    status, doc = await get(http, "/health")
    assert status == 200
    assert doc["status"] == "ok" and doc["components"]["sqlite"]["status"] == "ok"
    assert doc["version"] and doc["uptimeSeconds"] >= 0
    async with http.get("/health/ready") as r:
        assert r.status == 200


async def test_unix_socket_serves_the_same_api(daemon: Daemon) -> None:
    connector = aiohttp.UnixConnector(path=daemon.addresses["socket"])
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.put(
            "http://fpcd/api/config/svc", json={"environment": "prod", "config": {"via": "socket"}}
        ) as r:
            assert r.status == 200
        async with s.get("http://fpcd/api/config/svc?environment=prod") as r:
            doc = await r.json()
    assert doc["config"] == {"via": "socket"}
    assert doc["createdBy"].startswith("unix:")


async def test_request_id_is_echoed_or_made(http: aiohttp.ClientSession) -> None:
    async with http.get("/health", headers={"X-Request-Id": "abc-1"}) as r:
        assert r.headers["X-Request-Id"] == "abc-1"
    async with http.get("/health", headers={"X-Request-Id": "bad id\u00e9"}) as r:
        assert r.headers["X-Request-Id"] != "bad id\u00e9" and len(r.headers["X-Request-Id"]) == 16
