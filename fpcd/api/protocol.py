"""HTTP requests that never reach the pipeline: parser errors as problem+json.

aiohttp answers a request it cannot parse (a bad header line, a bad method, an encoding
it cannot decode) from its `RequestHandler.handle_error`, as text/plain, and logs it at
error level. A client's garbage is not the daemon's error: here the answer is a problem
document like every other, and the log line is informational. aiohttp builds its request
handlers in `web.Server.__call__`, with no option for the class, so the runner's server
becomes a `ProblemServer` (same state, one method more) once the runner made it.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from fpcd.api.connections import ConnectionGuard
from fpcd.api.http import problem_response

log = logging.getLogger("fpcd.api")


def _detail(status: int, message: str | None) -> str:
    if status >= 500 or not message:
        return "the request could not be handled"
    first = message.strip().splitlines()[0].strip().rstrip(":")
    return first[:200] or "the request could not be parsed"


class ProblemRequestHandler(RequestHandler):
    """aiohttp's handler, answering unparseable requests as problems; on a TCP port, its
    connection is counted and held to a deadline for its first request head by the
    port's guard (api/connections.py), which costs nothing per request."""

    __slots__ = ("_guard", "_head_timer")

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard | None = None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard is not None:
            self._head_timer = self._guard.opened(transport, self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._guard is not None:
            self._guard.closed(self._head_timer)
            self._guard = self._head_timer = None
        super().connection_lost(exc)

    def awaiting_first_head(self) -> bool:
        """No complete request head has been read on this connection yet."""
        return self._request_count == 0

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.info(
                "malformed request refused",
                extra={"status": status, "error": _detail(status, message), "peer": request.remote},
            )
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        response = problem_response(status, title, _detail(status, message))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            # A body that does not decode (answered 400 by the pipeline), met again when
            # aiohttp drains it afterwards: the client's fault, not an error here.
            log.info("request body could not be decoded; connection closed")
            return
        super().log_exception(*args, **kw)


class ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)

    def guarded(self, guard: ConnectionGuard) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, guard=guard, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer
        return server
