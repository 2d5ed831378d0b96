"""Bad input on every endpoint: a clear problem+json error, and stored data untouched."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from tests.conftest import api_session, make_settings

GOOD = {"environment": "prod", "config": {"port": 80}}


def deep(levels: int) -> bytes:
    return b'{"environment":"prod","config":{"a":' + b"[" * levels + b"]" * levels + b"}}"


# (method, path, raw body or None, headers, status, a path expected in `errors` or None)
CASES: list[tuple[str, str, bytes | None, dict[str, str], int, str | None]] = [
    ("GET", "/api/config/bad%20name", None, {}, 400, "service"),
    ("GET", "/api/config/a..b", None, {}, 400, "service"),
    ("GET", "/api/config/svc?environment=no/pe", None, {}, 400, "environment"),
    ("GET", "/api/config/svc?environment=%24x", None, {}, 400, "environment"),
    ("GET", "/api/config/svc?environment=prod&version=abc", None, {}, 400, "query.version"),
    ("GET", "/api/config/svc?environment=prod&version=0", None, {}, 400, "query.version"),
    ("GET", "/api/config/svc?environment=prod&version=-1", None, {}, 400, "query.version"),
    (
        "GET",
        "/api/config/svc?environment=prod&includeSecrets=maybe",
        None,
        {},
        400,
        "query.includeSecrets",
    ),
    ("GET", "/api/config/svc?environment=prod&raw=2", None, {}, 400, "query.raw"),
    ("PUT", "/api/config/svc", b'{"environment": "prod", "config": {', {}, 400, None),
    ("PUT", "/api/config/svc", b"", {}, 400, None),
    ("PUT", "/api/config/svc", b"[1, 2]", {}, 422, "$"),
    ("PUT", "/api/config/svc", b'{"environment": "prod"}', {}, 422, "$.config"),
    ("PUT", "/api/config/svc", b'{"environment": "prod", "config": [1]}', {}, 422, "$.config"),
    ("PUT", "/api/config/svc", b'{"environment": "prod", "config": "x"}', {}, 422, "$.config"),
    ("PUT", "/api/config/svc", b'{"environment": 5, "config": {}}', {}, 422, "$.environment"),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "tags": [1]}',
        {},
        422,
        "$.tags[0]",
    ),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "tags": [""]}',
        {},
        422,
        "$.tags[0]",
    ),
    ("PUT", "/api/config/svc", b'{"enviroment": "prod", "config": {}}', {}, 422, "$.enviroment"),
    ("PUT", "/api/config/svc", b'{"environment": "pr od", "config": {}}', {}, 400, "environment"),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "secrets": {"a b": "x"}}',
        {},
        422,
        '$.secrets["a b"]',
    ),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "secrets": {"a": 1}}',
        {},
        422,
        "$.secrets.a",
    ),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "expectedVersion": -1}',
        {},
        422,
        "$.expectedVersion",
    ),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}}',
        {"If-Match": "3"},
        400,
        "header.If-Match",
    ),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment": "prod", "config": {}, "expectedVersion": 1}',
        {"If-Match": '"2"'},
        400,
        "$.expectedVersion",
    ),
    ("PUT", "/api/config/svc", deep(40), {}, 422, "$.config.a" + "[0]" * 31),
    ("PUT", "/api/config/svc", deep(5000), {}, 400, None),
    (
        "PUT",
        "/api/config/svc",
        b'{"environment":"prod","config":{"x":"' + b"a" * 1_100_000 + b'"}}',
        {},
        413,
        None,
    ),
    ("PUT", "/api/config/bad!", b'{"environment": "prod", "config": {}}', {}, 400, "service"),
    ("POST", "/api/config/svc/rollback", b'{"environment": "prod"}', {}, 422, "$.version"),
    (
        "POST",
        "/api/config/svc/rollback",
        b'{"environment": "prod", "version": 0}',
        {},
        422,
        "$.version",
    ),
    (
        "POST",
        "/api/config/svc/rollback",
        b'{"environment": "prod", "version": "1"}',
        {},
        422,
        "$.version",
    ),
    ("POST", "/api/config/svc/rollback", b"nope", {}, 400, None),
    (
        "POST",
        "/api/config/svc/reload",
        b'{"environment": "prod", "force": "yes"}',
        {},
        422,
        "$.force",
    ),
    ("POST", "/api/config/svc/reload", b'{"environment": "prod", "extra": 1}', {}, 422, "$.extra"),
    ("GET", "/api/config/svc/history?environment=prod&limit=0", None, {}, 400, "query.limit"),
    ("GET", "/api/config/svc/history?environment=prod&limit=5000", None, {}, 400, "query.limit"),
    ("GET", "/api/config/svc/history?environment=prod&offset=-3", None, {}, 400, "query.offset"),
    ("GET", "/api/config/svc/diff?environment=prod&from=x", None, {}, 400, "query.from"),
    ("GET", "/api/config/svc/diff?environment=prod&to=0", None, {}, 400, "query.to"),
    ("PUT", "/api/config/svc/schema", b"{]", {}, 400, None),
    ("PUT", "/api/config/svc/schema", b"[]", {}, 422, "$"),
    ("PUT", "/api/config/svc/schema", b'{"type": 12}', {}, 422, "$.schema.type"),
    ("PUT", "/api/config/s%2Fx/schema", b'{"type": "object"}', {}, 400, "service"),
    ("DELETE", "/api/config/svc2/schema", None, {}, 404, None),
    ("GET", "/api/audit?limit=abc", None, {}, 400, "query.limit"),
    ("GET", "/api/nothing-here", None, {}, 404, None),
    ("DELETE", "/api/config/svc", None, {}, 405, None),
]


@pytest.fixture
async def seeded(http: aiohttp.ClientSession) -> aiohttp.ClientSession:
    async with http.put("/api/config/svc", json=GOOD) as r:
        assert r.status == 200
    async with http.put("/api/config/svc/schema", json={"type": "object"}) as r:
        assert r.status == 200
    return http


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "where"), CASES)
async def test_bad_input_gets_a_problem_and_changes_nothing(
    seeded: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    where: str | None,
) -> None:
    http = seeded
    async with http.get("/api/audit") as r:
        audit_before = (await r.json())["total"]
    # aiohttp warns about large bytes bodies (they are copied on the loop): a stream.
    data = io.BytesIO(body) if body is not None and len(body) > 1_000_000 else body
    async with http.request(method, path, data=data, headers=headers) as r:
        assert r.status == status, await r.text()
        assert r.content_type == "application/problem+json"
        problem: dict[str, Any] = await r.json(content_type=None)
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    assert problem["requestId"] == r.headers["X-Request-Id"]
    if where is not None:
        paths = [e["path"] for e in problem["errors"]]
        assert where in paths or (
            where.startswith("$.config.a[0]") and paths[0].startswith(where)
        ), problem
    async with http.get("/api/config/svc?environment=prod") as r:
        doc = await r.json()
    assert doc["version"] == 1 and doc["config"] == {"port": 80}
    async with http.get("/api/audit") as r:
        assert (await r.json())["total"] == audit_before


async def test_limits_come_from_settings(tmp_path: Any) -> None:
    daemon = Daemon(
        make_settings(
            tmp_path, limits={"max_body_bytes": 200, "max_json_depth": 3, "max_json_keys": 4}
        )
    )
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            ok = {"environment": "e", "config": {"a": {"b": 1}}}
            async with http.put("/api/config/s", json=ok) as r:
                assert r.status == 200
            too_deep = {"environment": "e", "config": {"a": {"b": {"c": {"d": 1}}}}}
            async with http.put("/api/config/s", json=too_deep) as r:
                assert r.status == 422
                assert (await r.json())["errors"][0]["path"] == "$.config.a.b.c"
            too_many = {"environment": "e", "config": {k: 1 for k in "abcde"}}
            async with http.put("/api/config/s", json=too_many) as r:
                assert r.status == 422
            async with http.put(
                "/api/config/s", json={"environment": "e", "config": {"a": "x" * 300}}
            ) as r:
                assert r.status == 413

            # Chunked bodies (no Content-Length) are cut off at the limit too.
            async def chunks() -> Any:
                yield b'{"environment": "e", "config": {"a": "'
                yield b"x" * 300
                yield b'"}}'

            async with http.put("/api/config/s", data=chunks()) as r:
                assert r.status == 413
    finally:
        await daemon.stop()


async def test_no_route_is_a_problem_on_both_ports_and_counted(daemon: Daemon) -> None:
    """404 and 405 come from the pipeline (not aiohttp's plain text) on the API port and
    the WebSocket port, with the allowed methods and a request id, and /metrics counts
    them under the `unmatched` route."""
    ws_port = daemon.addresses["ws"].replace("ws://", "http://")
    async with aiohttp.ClientSession() as plain:
        for url, method, status in (
            (ws_port + "/", "POST", 405),
            (ws_port + "/nothing", "GET", 404),
            (daemon.addresses["api"] + "/health/live", "DELETE", 405),
            (daemon.addresses["api"] + "/nothing/here", "GET", 404),
        ):
            async with plain.request(method, url) as r:
                assert r.status == status
                assert r.content_type == "application/problem+json"
                problem = await r.json(content_type=None)
                assert problem["status"] == status
                assert problem["requestId"] == r.headers["X-Request-Id"]
                if status == 405:
                    assert "GET" in r.headers["Allow"]
    stats = daemon.components.http_stats
    assert stats.requests[("unmatched", "GET", 404)] >= 2
    assert stats.requests[("unmatched", "POST", 405)] == 1


def test_the_byte_count_shortcut_never_lets_a_body_past_the_limits() -> None:
    """Bodies that skip the depth/key walk (`_within_limits`) are exactly ones the walk
    would pass: checked on nested, wide and string-laden documents around the limits."""
    import json
    import random

    from fpcd.api.http import RequestLimits, _within_limits
    from fpcd.domain.configs import check_limits

    limits = RequestLimits(max_json_depth=3, max_json_keys=4)
    rng = random.Random(18)

    def document(depth: int) -> Any:
        kind = rng.random()
        if depth > 6 or kind < 0.3:
            return rng.choice([1, "a:{[", None, "x" * rng.randint(0, 5)])
        if kind < 0.65:
            return {f"k{i}": document(depth + 1) for i in range(rng.randint(0, 3))}
        return [document(depth + 1) for _ in range(rng.randint(0, 3))]

    skipped = 0
    for _ in range(3000):
        body = json.dumps(document(0)).encode()
        if _within_limits(body, limits):
            skipped += 1
            errors = check_limits(
                json.loads(body),
                max_depth=limits.max_json_depth + 2,
                max_keys=limits.max_json_keys + 64,
                path="$",
            )
            assert errors == [], body
    assert skipped > 100  # the shortcut is taken, not just safe
