"""What goes over the wire for the responses fpcd writes in one call (api/encoded.py):
the same status line, headers and body a client got from aiohttp's own response path,
for HTTP/1.1, HTTP/1.0, HEAD, `Connection: close` and problem documents."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fpcd.app import Daemon
from tests.conftest import admin_token


class Reply:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))
        self.body = body

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]

    def one(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, (name, self.headers)
        return values[0]


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        reply = Reply(head[:-4], b"")
        if not head_only:
            reply.body = await reader.readexactly(int(reply.one("Content-Length")))
    return reply


async def connect(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = daemon.addresses["api"].split("://", 1)[1].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def request(method: str, path: str, token: str, *, version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/{version}\r\nHost: fpcd\r\nAuthorization: Bearer {token}\r\n"
        f"{extra}\r\n"
    ).encode()


@pytest.fixture
async def stored(daemon: Daemon, http: Any) -> str:
    async with http.put(
        "/api/config/web", json={"environment": "production", "config": {"port": 8080}}
    ) as r:
        assert r.status == 200
    return admin_token(daemon.settings.data_dir)


CONFIG = "/api/config/web?environment=production"


async def test_a_config_read_on_http_1_1_keeps_the_connection_and_every_header(
    daemon: Daemon, stored: str
) -> None:
    reader, writer = await connect(daemon)
    try:
        first_ids = []
        for _ in range(2):  # the second on the same connection: keep-alive held
            writer.write(request("GET", CONFIG, stored))
            reply = await read_reply(reader)
            assert reply.status_line == "HTTP/1.1 200 OK"
            assert json.loads(reply.body)["config"] == {"port": 8080}
            assert reply.one("Content-Type") == "application/json"
            assert reply.one("Cache-Control") == "no-cache"
            assert reply.one("ETag").startswith('"')
            assert reply.one("Date").endswith(" GMT")
            assert reply.one("Server").startswith("Python/")
            assert reply.all("Connection") == []
            first_ids.append(reply.one("X-Request-Id"))
        assert first_ids[0] != first_ids[1]
        writer.write(request("GET", CONFIG, stored, extra="X-Request-Id: trace-7\r\n"))
        assert (await read_reply(reader)).one("X-Request-Id") == "trace-7"
    finally:
        writer.close()


async def test_connection_close_is_answered_and_honoured(daemon: Daemon, stored: str) -> None:
    reader, writer = await connect(daemon)
    try:
        writer.write(request("GET", CONFIG, stored, extra="Connection: close\r\n"))
        reply = await read_reply(reader)
        assert reply.status_line == "HTTP/1.1 200 OK"
        assert reply.one("Connection") == "close"
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # the server closed it
    finally:
        writer.close()


async def test_http_1_0_and_head_take_aiohttps_own_rules(daemon: Daemon, stored: str) -> None:
    reader, writer = await connect(daemon)
    try:
        writer.write(request("GET", CONFIG, stored, version="1.0"))
        reply = await read_reply(reader)
        assert reply.status_line == "HTTP/1.0 200 OK"
        length = int(reply.one("Content-Length"))
        assert json.loads(reply.body)["config"] == {"port": 8080}
        assert reply.one("ETag").startswith('"')
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # HTTP/1.0 without keep-alive: closed
    finally:
        writer.close()
    reader, writer = await connect(daemon)
    try:
        writer.write(request("HEAD", CONFIG, stored))
        head = await read_reply(reader, head_only=True)
        assert head.status_line == "HTTP/1.1 200 OK"
        assert int(head.one("Content-Length")) == length
        assert head.one("Content-Type") == "application/json"
        head.one("X-Request-Id")
        writer.write(request("GET", "/health/live", stored))  # no body came before it
        live = await read_reply(reader)
        assert (live.status_line, live.body) == ("HTTP/1.1 200 OK", b'{"status":"ok"}')
    finally:
        writer.close()


async def test_problems_and_json_answers_carry_their_headers(daemon: Daemon, stored: str) -> None:
    reader, writer = await connect(daemon)
    try:
        writer.write(request("GET", "/api/config/nosuch?environment=production", "not-a-token"))
        reply = await read_reply(reader)
        assert reply.status_line == "HTTP/1.1 401 Unauthorized"
        assert reply.one("Content-Type") == "application/problem+json"
        assert reply.one("WWW-Authenticate").startswith("Bearer")
        assert json.loads(reply.body)["requestId"] == reply.one("X-Request-Id")
        writer.write(request("DELETE", "/health/live", stored))
        reply = await read_reply(reader)
        assert reply.status_line == "HTTP/1.1 405 Method Not Allowed"
        assert "GET" in reply.one("Allow")
        writer.write(request("GET", "/api/features", stored))
        reply = await read_reply(reader)
        assert reply.status_line == "HTTP/1.1 200 OK"
        assert reply.one("Content-Type") == "application/json"
        assert isinstance(json.loads(reply.body), (list, dict))
    finally:
        writer.close()


async def test_the_router_remembers_no_path_longer_than_a_valid_one(
    daemon: Daemon, stored: str
) -> None:
    """Paths are remembered before anyone is authenticated: a stranger's long paths must
    not fill the memory (no valid name makes a path over 512 characters)."""
    reader, writer = await connect(daemon)
    try:
        for path in (CONFIG, "/api/config/" + "x" * 600):
            writer.write(request("GET", path, "not-a-token"))
            assert (await read_reply(reader)).status_line == "HTTP/1.1 401 Unauthorized"
    finally:
        writer.close()
    remembered = daemon.components.api_app.router._resolved  # type: ignore[attr-defined]
    assert ("GET", "/api/config/web") in remembered
    assert all(len(path) <= 512 for _, path in remembered)
