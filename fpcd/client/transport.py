"""A small blocking HTTP transport over a Unix socket or TCP (stdlib only: fast CLI start)."""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from typing import Any

import msgspec


class TransportError(Exception):
    """The daemon could not be reached at all."""


class Response(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Transport:
    """Requests to one daemon, by `socket_path` (default) or `url` with an optional token."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not socket_path and not url:
            raise ValueError("a socket path or a URL is required")
        self.socket_path = socket_path
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.timeout = timeout

    @property
    def where(self) -> str:
        return self.url or f"unix socket {self.socket_path}"

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        if self.url:
            parts = urllib.parse.urlsplit(self.url)
            if parts.scheme == "https":
                return http.client.HTTPSConnection(parts.netloc, timeout=self.timeout), parts.path
            if parts.scheme != "http":
                raise TransportError(f"unsupported URL scheme in {self.url}")
            return http.client.HTTPConnection(parts.netloc, timeout=self.timeout), parts.path
        assert self.socket_path
        return _UnixConnection(self.socket_path, self.timeout), ""

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn, prefix = self._connection()
        params = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in (query or {}).items()
            if v is not None
        }
        target = prefix + path + ("?" + urllib.parse.urlencode(params) if params else "")
        sent = dict(headers or {})
        payload = None
        if body is not None:
            payload = msgspec.json.encode(body)
            sent["Content-Type"] = "application/json"
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, target, body=payload, headers=sent)
            raw = conn.getresponse()
            data = raw.read()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        except (OSError, http.client.HTTPException) as error:
            raise TransportError(f"cannot reach fpcd at {self.where}: {error}") from None
        finally:
            conn.close()
