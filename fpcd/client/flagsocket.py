"""A thin helper for the daemon's flag socket (`flags.sock`): for processes that want a
flag answer without a WebSocket, a cache or a token.

Each call is one round trip of newline-delimited JSON over a kept-open Unix socket
(access is the socket file's mode). For in-process evaluation with no round trip at all,
use ConfigurationClient.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import msgspec

from fpcd.domain.flags import EvaluationContext, EvaluationResult
from fpcd.wire.flagsocket import FlagQuery, FlagReply


class FlagSocketError(Exception):
    """The daemon answered a line with an error (`code` as in the protocol)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_decode = msgspec.json.Decoder(FlagReply).decode
_encode = msgspec.json.Encoder().encode


class FlagSocketClient:
    """Blocking lookups on `flags.sock`; one connection, reopened after a failure.
    Safe to share between threads (calls are serialized)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._next_id = 0

    def __enter__(self) -> FlagSocketClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buffer = None, b""

    def evaluate(
        self, flag: str, context: EvaluationContext | dict[str, Any] | None = None
    ) -> EvaluationResult:
        """One flag for `context` (wire names in a dict: `userId`, `customAttributes`...)."""
        reply = self._ask(FlagQuery(flag=flag, context=_context(context)))
        assert reply.result is not None
        return reply.result

    def evaluate_many(
        self,
        flags: Iterable[str] | None = None,
        context: EvaluationContext | dict[str, Any] | None = None,
    ) -> dict[str, EvaluationResult]:
        """Several flags (every active flag when None) for one context."""
        query = FlagQuery(flags=None if flags is None else list(flags), context=_context(context))
        reply = self._ask(query)
        assert reply.results is not None
        return reply.results

    def _ask(self, query: FlagQuery) -> FlagReply:
        with self._lock:
            self._next_id += 1
            query.id = self._next_id
            line = _encode(query) + b"\n"
            try:
                sock = self._connected()
                sock.sendall(line)
                reply = _decode(self._read_line(sock))
            except (OSError, msgspec.DecodeError):
                self._drop()
                raise
            if reply.error is not None:
                raise FlagSocketError(reply.error.code, reply.error.message)
            return reply

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _read_line(self, sock: socket.socket) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("fpcd closed the flag socket")
            self._buffer += chunk
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        return line


def _context(context: EvaluationContext | dict[str, Any] | None) -> EvaluationContext:
    if context is None:
        return EvaluationContext()
    if isinstance(context, EvaluationContext):
        return context
    try:
        return msgspec.convert(context, EvaluationContext)
    except msgspec.ValidationError as error:  # as the daemon would answer it
        raise FlagSocketError("INVALID_REQUEST", str(error)) from None
