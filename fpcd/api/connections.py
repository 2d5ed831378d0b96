"""The TCP doors' guard: a connection cap per port, and a deadline for the request head.

Without them, idle or trickling TCP connections (nobody has to authenticate to open one)
use up the process's file descriptors until every door fails, the Unix sockets included.
Each TCP port gets a `ConnectionGuard`: past its cap a new connection is answered 503
and closed at once (counted, logged at most every few seconds); a connection that has
not sent a complete request head `header_timeout` after it opened is closed. The cap is
lowered at start to fit the descriptor limit, so the Unix sockets, the database and the
file watchers always have descriptors left. Idle keep-alive connections are aiohttp's
`keepalive_timeout` (server.idle_timeout).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, cast

from aiohttp import web

from fpcd.api.http import PROBLEM_JSON

log = logging.getLogger("fpcd.connections")

#: Descriptors kept for everything but the TCP ports: a quarter of the limit, at least this.
RESERVED_DESCRIPTORS = 128
#: Refusals are logged at most once in this many seconds (with the count since the last).
LOG_EVERY = 10.0

_BODY = (
    b'{"type":"urn:fpcd:problem:unavailable","title":"Service unavailable","status":503,'
    b'"detail":"too many connections to this port; try again later"}'
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: " + PROBLEM_JSON.encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def tcp_connection_cap(configured: int, ports: int, limit: int | None) -> int:
    """Connections per TCP port: `configured`, lowered so that `ports` full ports leave a
    quarter of the descriptor `limit` (at least RESERVED_DESCRIPTORS) to the rest."""
    if limit is None:
        return configured
    reserve = max(RESERVED_DESCRIPTORS, limit // 4)
    return max(1, min(configured, (limit - reserve) // max(ports, 1)))


class ConnectionStats:
    """Per port ("api", "ws"): open connections, the cap, refusals, header timeouts."""

    __slots__ = ("header_timeouts", "limit", "open", "refused")

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.limit: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.header_timeouts: dict[str, int] = {}


class ConnectionGuard:
    """Wraps a port's protocol factory: counts, caps and times out its connections."""

    def __init__(
        self, name: str, *, limit: int, header_timeout: float, stats: ConnectionStats
    ) -> None:
        self.name = name
        self.limit = limit
        self.header_timeout = header_timeout
        self.stats = stats
        stats.open[name] = 0
        stats.limit[name] = limit
        stats.refused[name] = 0
        stats.header_timeouts[name] = 0
        self._logged_at = -LOG_EVERY
        self._unlogged = 0

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            if self.stats.open[self.name] >= self.limit:
                self._refused()
                return _Refuse()
            return factory()

        return make

    def opened(
        self, transport: asyncio.BaseTransport, connection: Guarded
    ) -> asyncio.TimerHandle | None:
        """Count a connection; the timer that closes it if no request head has come."""
        self.stats.open[self.name] += 1
        if self.header_timeout <= 0:
            return None
        loop = asyncio.get_running_loop()
        return loop.call_later(self.header_timeout, self._expired, transport, connection)

    def closed(self, timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
        self.stats.open[self.name] -= 1

    def _expired(self, transport: asyncio.BaseTransport, connection: Guarded) -> None:
        # Checked when the deadline comes rather than per chunk received: the data path
        # of a connection costs nothing here.
        if connection.awaiting_first_head() and not transport.is_closing():
            self.stats.header_timeouts[self.name] += 1
            transport.close()

    def _refused(self) -> None:
        self.stats.refused[self.name] += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning(
                "refusing TCP connections: the port has as many as it may hold",
                extra={"port": self.name, "limit": self.limit, "refused": self._unlogged},
            )
            self._logged_at, self._unlogged = now, 0


class Guarded(Protocol):
    """A connection's protocol as the guard sees it (api/protocol.py's request handler)."""

    def awaiting_first_head(self) -> bool: ...


class _Refuse(asyncio.Protocol):
    """Past the cap: a 503 and the door shut, before anything is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.WriteTransport, transport)  # uvloop's are not subclasses
        stream.write(REFUSAL)
        stream.close()


class GuardedTCPSite(web.TCPSite):
    """aiohttp's TCPSite whose connections are counted and capped by a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, **kwargs: Any) -> None:
        self.guard: ConnectionGuard = kwargs.pop("guard")
        super().__init__(runner, host, port, **kwargs)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        guarded = getattr(server, "guarded", None)  # api/protocol.py's ProblemServer
        if guarded is None:
            raise TypeError("a GuardedTCPSite needs a runner whose server takes a guard")
        ssl = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.wrap(partial(guarded, self.guard)),
            self._host,
            self._port,
            ssl=ssl,
            ssl_handshake_timeout=(self.guard.header_timeout or None) if ssl else None,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
