"""The WebSocket door: the seed's protocol (`fpcd.wire.live`) on the WS port (at `/` and
`/ws`) and at `/ws` on the API port.

Client: `SUBSCRIBE {serviceName, environment, subscriptions, lastVersion?}`,
`UNSUBSCRIBE {serviceName, environment}`, `PING`, `AUTH {token}`. Server: `SUBSCRIBED`,
`CONFIGURATION_UPDATE`, `FEATURE_FLAG_UPDATE`, `CONFIGURATION_RELOAD`, `UNSUBSCRIBED`,
`PONG`, `AUTHENTICATED`, `ERROR {code, message}`. A bad frame gets ERROR and the
connection lives on.
A message is framed once for all its subscribers and written straight to each socket
that has taken everything so far; a connection whose socket is backed up writes from its
own bounded queue instead, and one that falls behind is closed with code 4001 so it
never delays anyone else. Each connection is also read no faster than
its rate limits (messages, and SUBSCRIBE/UNSUBSCRIBE): a message beyond them is taken on
credit and the connection is not read again until the debt is paid back, so a flood
stalls in the client's own TCP buffers and costs the daemon nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import weakref
from dataclasses import dataclass
from time import perf_counter
from typing import assert_never

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from fpcd.api.http import AUTHENTICATOR, PUBLIC_CALLER, caller
from fpcd.api.ws_frames import StrictWebSocketResponse
from fpcd.clock import Clock
from fpcd.domain.errors import Forbidden, FpcdError
from fpcd.domain.model import Caller
from fpcd.domain.names import valid_name
from fpcd.services.environments import Environments
from fpcd.services.live import LiveHub, LiveStats
from fpcd.wire.live import (
    TOPICS,
    Auth,
    Authenticated,
    ErrorCode,
    ErrorMessage,
    Ping,
    Pong,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    encode,
)

log = logging.getLogger("fpcd.ws")

#: Close codes (4000-4999 are the application's own).
CLOSE_SLOW_CONSUMER = 4001
CLOSE_IDLE = 4002
#: The token behind the session expired (4000 + HTTP 401); reconnect with a fresh one.
CLOSE_TOKEN_EXPIRED = 4401
TOKEN_EXPIRED_REASON = b"token expired: reconnect with a fresh token"


@dataclass(frozen=True)
class WebSocketLimits:
    heartbeat: float = 30.0
    idle_timeout: float = 60.0
    max_queue: int = 256
    max_subscriptions: int = 64
    max_message_bytes: int = 65536
    max_connections: int = 10_000
    #: Messages per second one connection may send, in bursts of `message_burst`.
    message_rate: float = 100.0
    message_burst: int = 200
    #: SUBSCRIBE and UNSUBSCRIBE messages per second, in bursts of `subscribe_burst`.
    subscribe_rate: float = 10.0
    subscribe_burst: int = 64


class Pace:
    """A token bucket that paces instead of refusing: a message beyond the rate is taken
    on credit, and `take` says how long to stop reading the connection to pay it back."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Spend one token: 0, or the seconds until the balance is back at zero."""
        if self.rate <= 0:  # no limit
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - 1
        self.stamp = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


HUB = web.AppKey("live_hub", LiveHub)
WS_LIMITS = web.AppKey("ws_limits", WebSocketLimits)
DEFAULT_ENVIRONMENT = web.AppKey("ws_default_environment", str)
ENVIRONMENTS = web.AppKey("ws_environments", Environments)


class Connection:
    """One WebSocket client: what the hub delivers to, with its own write queue."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        max_queue: int,
        caller: Caller,
        stats: LiveStats,
        limits: WebSocketLimits | None = None,
        *,
        clock: Clock,
    ) -> None:
        limits = limits or WebSocketLimits()
        self.ws = ws
        #: The daemon's clock: the token's expiry is judged at its now.
        self.clock = clock
        #: Who this connection speaks for; PUBLIC_CALLER until it authenticates.
        self.caller = caller
        self._stats = stats
        #: (frame, when it was queued)
        self._queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(max_queue)
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[bool] | None = None
        #: The connection's transport (the one aiohttp's frame writer uses), for `deliver`.
        self._transport: asyncio.Transport | None = None
        self.messages = Pace(limits.message_rate, limits.message_burst)
        self.subscribes = Pace(limits.subscribe_rate, limits.subscribe_burst)
        #: Seconds the handler waits before reading the next message (set by `_handle`).
        self.pause = 0.0
        self._expiry: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport | None = None) -> None:
        self._transport = transport
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def watch_expiry(self) -> None:
        """Close when the caller's token expires; a later AUTH calls this again."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires_at = self.caller.expires_at
        if expires_at is not None:
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - self.clock.time()),
                self.close_soon,
                CLOSE_TOKEN_EXPIRED,
                TOKEN_EXPIRED_REASON,
            )

    def expired(self) -> bool:
        expires_at = self.caller.expires_at
        return expires_at is not None and expires_at <= self.clock.time()

    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        transport = self._transport
        if (
            transport is not None
            and self._queue.empty()
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
            and not self.ws.closed
        ):
            # Nothing queued and the socket took everything so far: write the frame now,
            # with no task switch (a fan-out costs each subscriber just this write).
            transport.write(text_frame(data))
            stats = self._stats
            stats.messages_sent += 1
            stats.delivery.observe(0.0)
            return
        try:
            self._queue.put_nowait((data, perf_counter()))
        except asyncio.QueueFull:
            log.warning("websocket dropped: slow consumer", extra={"queued": self._queue.qsize()})
            self._stats.slow_consumer_drops += 1
            self.close_soon(CLOSE_SLOW_CONSUMER, b"slow consumer")

    def close_soon(self, code: int, reason: bytes) -> None:
        """Close from a callback; the handler's receive loop then ends and cleans up."""
        if self._closing:
            return
        self._closing = True
        self._closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason)
        )

    async def _write_loop(self) -> None:
        stats = self._stats
        while True:
            data, queued = await self._queue.get()
            await self.ws.send_frame(data, WSMsgType.TEXT)
            stats.messages_sent += 1
            stats.delivery.observe(perf_counter() - queued)

    async def stop(self) -> None:
        self._closing = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)


#: The last payload framed and its frame: a message delivered to many connections is
#: framed once (the hub hands every subscriber the same bytes object).
_framed: list[bytes] = [b"", b"\x81\x00"]
_HEADER_SHORT = struct.Struct("!BB").pack
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def text_frame(data: bytes) -> bytes:
    """`data` as one final, unmasked, uncompressed text frame (RFC 6455 section 5.2)."""
    if data is _framed[0]:
        return _framed[1]
    n = len(data)
    if n < 126:
        header = _HEADER_SHORT(0x81, n)
    elif n < 1 << 16:
        header = _HEADER_16(0x81, 126, n)
    else:
        header = _HEADER_64(0x81, 127, n)
    frame = header + data
    _framed[:] = (data, frame)
    return frame


CONNECTIONS: web.AppKey[weakref.WeakSet[Connection]] = web.AppKey("ws_connections")


def _error(code: ErrorCode, message: str) -> bytes:
    return encode(ErrorMessage(code=code, message=message))


def same_identity(old: Caller, new: Caller) -> bool:
    """What a token allows, all but when it expires."""
    return (old.subject, old.roles, old.services, old.environments, old.scopes) == (
        new.subject,
        new.roles,
        new.services,
        new.environments,
        new.scopes,
    )


def _handle(conn: Connection, app: web.Application, data: str | bytes) -> bool:
    """Act on one frame; True when it was a subscription (the connection is not idle)."""
    hub, default_environment = app[HUB], app[DEFAULT_ENVIRONMENT]
    try:
        message = decode_client_message(data)
    except msgspec.ValidationError as error:
        code: ErrorCode = "UNKNOWN_TYPE" if "`$.type`" in str(error) else "BAD_MESSAGE"
        conn.deliver(_error(code, str(error)))
        return False
    except (msgspec.DecodeError, RecursionError):
        conn.deliver(_error("BAD_JSON", "the frame is not valid JSON"))
        return False
    match message:
        case Auth():
            try:
                fresh = app[AUTHENTICATOR].verify_token(message.token, peer=conn.caller.peer)
            except FpcdError as error:
                conn.deliver(_error("UNAUTHENTICATED", error.detail))
                return False
            if conn.caller.subject != PUBLIC_CALLER.subject and not same_identity(
                conn.caller, fresh
            ):
                # Subscriptions were allowed for the first identity; a new one reconnects.
                conn.deliver(
                    _error("FORBIDDEN", "a new token must carry the same identity; reconnect")
                )
                return False
            conn.caller = fresh
            conn.watch_expiry()
            conn.deliver(encode(Authenticated(subject=conn.caller.subject)))
            return False
        case Ping():
            conn.deliver(encode(Pong(timestamp=int(conn.clock.time() * 1000))))
            return False
        case Subscribe() | Unsubscribe():
            if conn.expired():  # before the timer fires: nothing more under this token
                conn.close_soon(CLOSE_TOKEN_EXPIRED, TOKEN_EXPIRED_REASON)
                return False
            conn.pause = conn.subscribes.take()
            environment = message.environment or default_environment
            if not valid_name(message.service_name) or not valid_name(environment):
                conn.deliver(
                    _error(
                        "BAD_MESSAGE",
                        "serviceName and environment are 1-128 of letters, digits, '.', '_', '-'",
                    )
                )
                return False
            if isinstance(message, Unsubscribe):
                hub.unsubscribe(conn, message.service_name, environment)
                return False
            if not message.subscriptions:
                conn.deliver(_error("BAD_MESSAGE", "subscriptions are any of " + ", ".join(TOPICS)))
                return False
            if conn.caller.subject == PUBLIC_CALLER.subject:
                conn.deliver(
                    _error(
                        "UNAUTHENTICATED",
                        "send a token first: an Authorization"
                        ' header, ?token=, or {"type": "AUTH", "token": ...}',
                    )
                )
                return False
            try:
                hub.authorize(conn.caller, message.service_name, environment, message.subscriptions)
            except Forbidden as error:
                conn.deliver(_error("FORBIDDEN", error.detail))
                return False
            known = app.get(ENVIRONMENTS)
            if known is not None and not known.is_known(environment):
                conn.deliver(_error("UNKNOWN_ENVIRONMENT", known.unknown(environment)))
                return False
            hub.subscribe(
                conn, message.service_name, environment, message.subscriptions, message.last_version
            )
            return True
        case _:
            assert_never(message)


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    limits, hub, connections = app[WS_LIMITS], app[HUB], app[CONNECTIONS]
    if len(connections) >= limits.max_connections:
        raise web.HTTPServiceUnavailable(reason="too many WebSocket connections")
    # Unmasked client frames are refused (1002), and text that is not UTF-8 (1007).
    ws = StrictWebSocketResponse(
        heartbeat=limits.heartbeat,
        max_msg_size=limits.max_message_bytes,
        compress=False,  # every subscriber gets the same bytes, encoded once
    )
    await ws.prepare(request)
    conn = Connection(ws, limits.max_queue, caller(request), hub.stats, limits, clock=hub.clock)
    connections.add(conn)
    hub.connect(conn)
    conn.start(request.transport)
    conn.watch_expiry()
    # A timer, not a receive timeout: aiohttp restarts that on every pong, so a client
    # answering pings would never count as idle.
    idle = asyncio.get_running_loop().call_later(
        limits.idle_timeout, conn.close_soon, CLOSE_IDLE, b"idle: no subscription"
    )
    try:
        while not ws.closed:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                wait = conn.messages.take()
                if msg.type == WSMsgType.BINARY:
                    conn.deliver(_error("BAD_MESSAGE", "send JSON in text frames"))
                elif _handle(conn, app, msg.data):
                    idle.cancel()
                wait, conn.pause = max(wait, conn.pause), 0.0
                if wait:  # beyond a rate limit: read nothing more until it is paid back
                    hub.stats.throttled += 1
                    await asyncio.sleep(wait)
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                break
    finally:
        idle.cancel()
        hub.disconnect(conn)
        await conn.stop()
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


async def close_all(app: web.Application) -> None:
    """on_shutdown: tell every client the server is going away (1001)."""
    connections = app[CONNECTIONS]
    for conn in list(connections):
        with contextlib.suppress(Exception):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def add_routes(
    app: web.Application,
    hub: LiveHub,
    limits: WebSocketLimits,
    default_environment: str,
    paths: tuple[str, ...],
    environments: Environments | None = None,
) -> None:
    app[HUB] = hub
    app[WS_LIMITS] = limits
    app[CONNECTIONS] = weakref.WeakSet()
    app[DEFAULT_ENVIRONMENT] = default_environment
    if environments is not None:
        app[ENVIRONMENTS] = environments
    for path in paths:
        app.router.add_get(path, websocket)
    app.on_shutdown.append(close_all)
