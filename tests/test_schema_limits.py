"""JSON Schemas are the user's program: they may not freeze the daemon or break writes.

Regular expressions run on RE2 (linear time), validation runs in a worker process under
a time budget while every other door keeps answering, and a schema that could never
validate (a reference that does not resolve, a remote one, one that loops) is refused
when it is stored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from fpcd.domain.model import Change, SchemaRecord
from tests.conftest import api_session, make_settings


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(make_settings(tmp_path / "data", limits={"schema_validation_timeout": "1s"}))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with api_session(daemon) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as r:
        return r.status, await r.json()


def exponential_schema(levels: int = 24) -> dict[str, Any]:
    """About 1.7 KB: each level tries two references to the next, and the last one fails,
    so a naive validator visits 2^levels leaves for one string."""
    defs: dict[str, Any] = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(levels)
    }
    defs[f"d{levels}"] = {"type": "integer"}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs}


async def health_latencies_while(
    http: aiohttp.ClientSession, task: asyncio.Task[Any]
) -> list[float]:
    latencies: list[float] = []
    while not task.done():
        started = time.monotonic()
        async with http.get("/health/live") as r:
            assert r.status == 200
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return latencies


async def test_catastrophic_regex_runs_in_linear_time(http: aiohttp.ClientSession) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "integer"}},
        "additionalProperties": {"type": "string"},
    }
    assert (await call(http, "PUT", "/api/config/re/schema", schema))[0] == 200
    evil = "a" * 27 + "!"  # 28 bytes: seconds of backtracking for Python's re
    started = time.monotonic()
    status, problem = await call(http, "PUT", "/api/config/re", {"config": {"name": evil}})
    assert status == 422
    assert problem["errors"] == [
        {"path": "$.config.name", "message": f"'{evil}' does not match '^(a+)+$'"}
    ]
    status, _ = await call(http, "PUT", "/api/config/re", {"config": {"b" * 40 + "!": "v"}})
    assert status == 200  # not a "b" key: a string, as additionalProperties asks
    assert time.monotonic() - started < 5
    status, _ = await call(http, "PUT", "/api/config/re", {"config": {"name": "a" * 28}})
    assert status == 200


async def test_exponential_schema_is_cut_off_and_health_keeps_answering(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    schema = exponential_schema()
    assert 1500 < len(str(schema)) < 2000
    assert (await call(http, "PUT", "/api/config/slow/schema", schema))[0] == 200
    assert (await call(http, "PUT", "/api/config/slow", {"config": {"x": 1}}))[0] == 200
    write = asyncio.create_task(call(http, "PUT", "/api/config/slow", {"config": {"x": "s"}}))
    latencies = await health_latencies_while(http, write)
    status, problem = await write
    assert status == 422
    assert "longer than 1 s" in problem["detail"]
    assert "schema_validation_timeout" in problem["detail"]
    assert len(latencies) >= 10, "the write finished before health was asked"
    assert max(latencies) < 0.1, f"health took {max(latencies) * 1000:.0f} ms"
    # The worker was replaced: the next write validates as usual.
    assert (await call(http, "PUT", "/api/config/slow", {"config": {"x": 2}}))[0] == 200
    assert daemon.components.configs.schema_runner.timeouts == 1


async def test_a_schema_too_slow_for_the_current_configs_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    assert (await call(http, "PUT", "/api/config/late", {"config": {"x": "s"}}))[0] == 200
    status, problem = await call(http, "PUT", "/api/config/late/schema", exponential_schema())
    assert status == 422 and "longer than 1 s" in problem["detail"]
    async with http.get("/api/config/late/schema") as r:
        assert r.status == 404


@pytest.fixture
def remote_schema_server() -> Iterator[tuple[str, list[str]]]:
    """A schema server on loopback that records every request it gets."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("schema", "path", "message"),
    [
        ({"$ref": "#/$defs/missing"}, '$.schema["$ref"]', "does not resolve"),
        ({"$ref": "#"}, '$.schema["$ref"]', "would never end"),
        (
            {
                "properties": {"a": {"$ref": "#/$defs/x"}},
                "$defs": {"x": {"anyOf": [{"$ref": "#/$defs/y"}]}, "y": {"$ref": "#/$defs/x"}},
            },
            '$.schema["$defs"].y["$ref"]',
            "would never end",
        ),
        ({"properties": {"a": {"pattern": "(?=a)b"}}}, "$.schema.properties.a.pattern", "RE2"),
        ({"patternProperties": {"(a)\\1": {}}}, '$.schema.patternProperties["(a)\\\\1"]', "RE2"),
        ({"type": "objekt"}, "$.schema.type", "is not valid"),
    ],
)
async def test_a_schema_that_can_never_validate_is_refused(
    http: aiohttp.ClientSession, schema: dict[str, Any], path: str, message: str
) -> None:
    status, problem = await call(http, "PUT", "/api/config/never/schema", schema)
    assert status == 422, problem
    assert problem["errors"][0]["path"] == path
    assert message in problem["errors"][0]["message"]
    async with http.get("/api/config/never/schema") as r:
        assert r.status == 404
    assert (await call(http, "PUT", "/api/config/never", {"config": {"a": 1}}))[0] == 200


async def test_remote_references_are_never_fetched(
    http: aiohttp.ClientSession, remote_schema_server: tuple[str, list[str]]
) -> None:
    base, requests = remote_schema_server
    schema = {"properties": {"a": {"$ref": f"{base}/a.json"}}}
    status, problem = await call(http, "PUT", "/api/config/far/schema", schema)
    assert status == 422
    assert problem["errors"][0]["path"] == '$.schema.properties.a["$ref"]'
    assert "remote references are not fetched" in problem["errors"][0]["message"]
    assert requests == []


async def test_recursion_that_descends_into_the_document_is_fine(
    http: aiohttp.ClientSession,
) -> None:
    tree = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"items": {"$ref": "#"}}},
        "additionalProperties": False,
    }
    assert (await call(http, "PUT", "/api/config/tree/schema", tree))[0] == 200
    good = {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}
    assert (await call(http, "PUT", "/api/config/tree", {"config": good}))[0] == 200
    bad = {"name": "a", "children": [{"name": 2}]}
    status, problem = await call(http, "PUT", "/api/config/tree", {"config": bad})
    assert status == 422 and problem["errors"][0]["path"] == "$.config.children[0].name"


@pytest.mark.parametrize("where", ["#/$defs/missing", "remote"])
async def test_a_broken_schema_already_stored_gives_422_not_500(
    daemon: Daemon,
    http: aiohttp.ClientSession,
    remote_schema_server: tuple[str, list[str]],
    where: str,
) -> None:
    """One stored before these checks existed (or replicated from an older host)."""
    base, requests = remote_schema_server
    ref = f"{base}/a.json" if where == "remote" else where
    record = SchemaRecord(
        service="old",
        schema={"properties": {"a": {"$ref": ref}}},
        version=1,
        updated_at=datetime.now(UTC),
        updated_by="old-fpcd",
    )

    async def plan() -> list[Change]:
        return [
            Change(
                key="old",
                op="put",
                payload=record,
                actor="old-fpcd",
                at=datetime.now(UTC),
                origin="n",
            )
        ]

    await daemon.components.configs._committer.commit(plan)
    status, problem = await call(http, "PUT", "/api/config/old", {"config": {"a": 1}})
    assert status == 422 and "could not be validated" in problem["detail"]
    assert requests == []  # validation never fetches either


async def test_checking_a_large_schema_keeps_health_answering(http: aiohttp.ClientSession) -> None:
    """The meta-schema check of a big schema takes seconds in jsonschema: off the loop."""
    schema = {
        "type": "object",
        "properties": {
            f"p{i}": {"anyOf": [{"$ref": "#/$defs/s"}, {"type": "integer"}]} for i in range(800)
        },
        "$defs": {"s": {"type": "string", "pattern": "^[a-z]+$"}},
    }
    put = asyncio.create_task(call(http, "PUT", "/api/config/big/schema", schema))
    latencies = await health_latencies_while(http, put)
    status, _ = await put
    assert status == 200
    assert max(latencies) < 0.1, f"health took {max(latencies) * 1000:.0f} ms"
    status, problem = await call(http, "PUT", "/api/config/big", {"config": {"p1": "A"}})
    assert status == 422 and problem["errors"][0]["path"] == "$.config.p1"


async def test_timeouts_are_counted_in_metrics(http: aiohttp.ClientSession) -> None:
    assert (await call(http, "PUT", "/api/config/m/schema", exponential_schema()))[0] == 200
    assert (await call(http, "PUT", "/api/config/m", {"config": {"x": "s"}}))[0] == 422
    async with http.get("/metrics") as r:
        text = await r.text()
    assert 'fpcd_schema_validations_total{result="timeout"} 1.0' in text
