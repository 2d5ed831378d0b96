"""Responses whose bytes are ready before the request comes: one write per response.

aiohttp's `Response` works out its headers for every request (a header multidict, the
Content-Length and Connection rules, serialization, a separate buffer for the head);
for the few fixed shapes fpcd answers most (a JSON body with a known type; a cached
config with its ETag) that is most of what a request costs. An `EncodedResponse`
holds the status line and fixed headers encoded once (`EncodedHead`) and the encoded
body, and writes head and body with one call, adding only what changes per request:
Date, Content-Length, the headers set on it after it was made (the pipeline's
X-Request-Id) and `Connection: close` when the connection closes.

It takes that path for HTTP/1.1 requests other than HEAD; anything else (HTTP/1.0, a
HEAD, compression, cookies) goes through aiohttp's own `Response`, with the same headers
and body, so every rule aiohttp applies there still holds. Response-prepare signals run
on both paths, and what they set is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:  # no header injection, ever
        raise ValueError("a header value holds a line break")
    return value


class EncodedHead:
    """A status line and the headers that never change for it, encoded once."""

    __slots__ = ("encoded", "headers", "reason", "status")

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        self.reason = HTTPStatus(status).phrase
        self.headers = dict(headers)
        lines = [f"HTTP/1.1 {status} {self.reason}\r\n"]
        lines += [f"{name}: {_header_value(value)}\r\n" for name, value in self.headers.items()]
        self.encoded = "".join(lines).encode("latin-1") + _SERVER


#: Date headers change once a second: the last one, encoded.
_date: tuple[str, bytes] = ("", b"")


def _date_line() -> bytes:
    global _date
    text = rfc822_formatted_time()
    if text is not _date[0]:  # aiohttp keeps the same string for the whole second
        _date = (text, f"Date: {text}\r\n".encode())
    return _date[1]


class EncodedResponse(web.Response):
    """A complete response, `head` and `body`, written in one call (module docstring).

    A `web.Response` (routes and tests see its `body`), made without `Response.__init__`:
    its header multidict starts empty and holds only what is set on it afterwards."""

    _zlib_executor_size = MAX_SYNC_CHUNK_SIZE
    _zlib_executor = None
    #: A per-response ETag (a cached config's version), beside the fixed headers.
    _etag: str | None = None
    #: X-Request-Id, set by the request pipeline.
    request_id: str | None = None

    def __init__(self, head: EncodedHead, body: bytes, *, etag: str | None = None) -> None:
        # What StreamResponse.__init__ and Response.__init__ set, without working out
        # a status, a reason and headers that `head` already holds (the rest of the
        # state has class-level defaults in aiohttp's classes).
        self._state = {}
        self._headers = CIMultiDict()
        self._status = head.status
        self._reason = head.reason
        self._body = body
        self._head = head
        if etag is not None:
            self._etag = etag

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._payload_writer is not None:
            return self._payload_writer
        if (
            request.version != HttpVersion11
            or request.method == "HEAD"
            or self._cookies
            or self._compression
            or self._chunked
        ):
            headers = self._headers  # aiohttp's own path, with the same headers
            for name, value in self._head.headers.items():
                headers.setdefault(name, value)
            if self._etag is not None:
                headers.setdefault("ETag", self._etag)
            if self.request_id is not None:
                headers["X-Request-Id"] = self.request_id
            return await super().prepare(request)
        await request._prepare_hook(self)  # on_response_prepare: its headers are sent too
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        body = cast(bytes, self._body)
        parts = [self._head.encoded, _date_line(), b"Content-Length: %d\r\n" % len(body)]
        if self._etag is not None:
            parts.append(f"ETag: {_header_value(self._etag)}\r\n".encode("latin-1"))
        if self.request_id is not None:
            parts.append(f"X-Request-Id: {_header_value(self.request_id)}\r\n".encode("latin-1"))
        if self._headers:
            extra = "".join(
                f"{name}: {_header_value(value)}\r\n" for name, value in self._headers.items()
            )
            parts.append(extra.encode("latin-1"))
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts += (b"\r\n", body)
        writer = request._payload_writer
        await writer.write_eof(b"".join(parts))
        self._eof_sent = True
        self._body_length = writer.output_size
        return None
