"""Flag lookups on a Unix socket: newline-delimited JSON, pipelined, answered in order.

`{"id":1,"flag":"k","context":{...}}` -> `{"id":1,"result":{...}}`
`{"id":2,"flags":["a","b"],"context":{...}}` -> `{"id":2,"results":{"a":{...},"b":{...}}}`
(no `flag` and no `flags`: every active flag). A bad line gets
`{"id":..,"error":{"code":..,"message":..}}` and the connection lives on.

Built on an asyncio Protocol rather than streams: each chunk received is split into
lines, answered synchronously and written back with one write (measured in the design
brief: about 3x the throughput of `readline`). Access is governed by the socket file's
owner, group and mode; there is no token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import msgspec

from fpcd.domain.flags import EvaluationContext, EvaluationResult
from fpcd.services.flags import FlagService

log = logging.getLogger("fpcd.flagsocket")


class FlagQuery(msgspec.Struct, kw_only=True):
    id: int | str | None = None
    flag: str | None = None
    flags: list[str] | None = None
    context: EvaluationContext = msgspec.field(default_factory=EvaluationContext)


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class ErrorReply(msgspec.Struct):
    id: Any
    error: ErrorBody


class ResultReply(msgspec.Struct):
    id: Any
    result: EvaluationResult


class ResultsReply(msgspec.Struct):
    id: Any
    results: dict[str, EvaluationResult]


_decode = msgspec.json.Decoder(FlagQuery).decode
_encode = msgspec.json.Encoder().encode


def _error(request_id: Any, code: str, message: str) -> bytes:
    return _encode(ErrorReply(request_id, ErrorBody(code, message))) + b"\n"


def _id_of(line: bytes) -> Any:
    """Best effort to echo the id of a line that failed validation."""
    try:
        doc = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(doc, dict):
        value = doc.get("id")
        if isinstance(value, int | str):
            return value
    return None


class SocketStats:
    """What /metrics reports for the flag socket."""

    __slots__ = ("connections", "connections_total", "lookups", "rejected")

    def __init__(self) -> None:
        self.connections = 0
        self.connections_total = 0
        #: Queries answered with a result, and lines answered with an error object.
        self.lookups = 0
        self.rejected = 0


class FlagProtocol(asyncio.Protocol):
    def __init__(self, flags: FlagService, max_line: int, stats: SocketStats | None = None) -> None:
        self._flags = flags
        self._stats = stats if stats is not None else SocketStats()
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False
        self._transport: asyncio.Transport | None = None
        self._too_long = _error(None, "LINE_TOO_LONG", f"lines are limited to {max_line} bytes")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer.clear()

    # Back-pressure: a client that does not read its answers stops being read from.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        now = self._flags.time()  # one instant for every line of this chunk
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if self._discarding:  # the tail of an over-long line
                self._discarding = False
                continue
            if len(line) > self._max_line:
                self._stats.rejected += 1
                out.append(self._too_long)
            elif line.strip():
                out.append(self._answer(line, now))
        del buffer[:start]
        if len(buffer) > self._max_line:
            buffer.clear()
            if not self._discarding:
                self._stats.rejected += 1
                out.append(self._too_long)
            self._discarding = True
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out))

    def _answer(self, line: bytes, now: float) -> bytes:
        try:
            query = _decode(line)
        except msgspec.ValidationError as error:
            self._stats.rejected += 1
            return _error(_id_of(line), "INVALID_REQUEST", str(error))
        except (msgspec.DecodeError, RecursionError):
            self._stats.rejected += 1
            return _error(None, "PARSE_ERROR", "not valid JSON")
        flags = self._flags
        try:
            if query.flag is not None:
                result = flags.evaluate_one(query.flag, query.context, now)
                reply = _encode(ResultReply(query.id, result)) + b"\n"
            else:
                results = flags.evaluate(query.flags, query.context, now)
                reply = _encode(ResultsReply(query.id, results)) + b"\n"
        except Exception:  # never let one line end the connection
            log.exception("flag socket query failed")
            self._stats.rejected += 1
            return _error(query.id, "INTERNAL", "evaluation failed")
        self._stats.lookups += 1
        return reply


class FlagSocketServer:
    """Owns the listening socket and every connection, so stop() leaves nothing open."""

    def __init__(self, flags: FlagService, *, max_line: int) -> None:
        self._flags = flags
        self._max_line = max_line
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_TrackedProtocol] = set()
        self.stats = SocketStats()

    def _protocol(self) -> FlagProtocol:
        return _TrackedProtocol(self._flags, self._max_line, self._connections, self.stats)

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._protocol, path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()
        self._server = None


class _TrackedProtocol(FlagProtocol):
    def __init__(
        self,
        flags: FlagService,
        max_line: int,
        registry: set[_TrackedProtocol],
        stats: SocketStats,
    ) -> None:
        super().__init__(flags, max_line, stats)
        self._registry = registry

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._registry.add(self)
        self._stats.connections_total += 1
        self._stats.connections = len(self._registry)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._registry.discard(self)
        self._stats.connections = len(self._registry)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
