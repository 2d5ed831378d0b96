"""ConfigurationClient: a service's live copy of its configuration and of every flag.

At start the client reads its cache file (if it has one), then asks the daemon for the
configuration and all flag definitions; if the daemon is down, the cache is served.
A background task holds a WebSocket subscription (`config-updates` and `feature-flags`)
and reconnects with exponential backoff and jitter; each SUBSCRIBE carries
`lastVersion`, so the daemon replays the versions missed, and the flags are fetched
again (every flag document carries its version, so nothing goes backwards).

Flags are evaluated locally with `fpcd.domain.flags.evaluate`, the daemon's own code:
no round trip, and the same answer the daemon gives for the same context and time.
Evaluation counts are sent back (`POST /api/features/evaluations`) every
`analytics_interval` seconds and at close.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, assert_never, cast
from urllib.parse import quote

import aiohttp
import msgspec

from fpcd.aio import Backoff, TaskSet
from fpcd.client.cache import read_cache, write_cache
from fpcd.client.model import (
    CacheFile,
    Configuration,
    ConfigurationReload,
    ContextLike,
    FlagTable,
    FlagUpdate,
    to_context,
    views_of,
)
from fpcd.domain.flags import EvaluationResult, active, evaluate
from fpcd.wire import EvaluationCount, EvaluationCounts, Page, Reason
from fpcd.wire.live import (
    CONFIG_UPDATES,
    FEATURE_FLAGS,
    Authenticated,
    ConfigurationUpdate,
    ErrorMessage,
    FeatureFlagUpdate,
    FlagUpdateReason,
    Pong,
    Subscribe,
    Subscribed,
    Topic,
    Unsubscribed,
    decode_server_message,
    encode,
)
from fpcd.wire.live import ConfigurationReload as ReloadMessage

log = logging.getLogger("fpcd.client")

#: Events a callback can be registered for with `on`, and what the callback receives.
EVENTS = {
    "configurationUpdate": "Configuration",
    "featureFlagUpdate": "FlagUpdate",
    "configurationReload": "ConfigurationReload",
    "connected": "None: the subscription is (again) live",
    "disconnected": "None: the daemon is unreachable; the last known values are served",
}
Callback = Callable[[Any], object]
#: Evaluation counts by (flag, hour, variant, enabled, reason).
Counts = defaultdict[tuple[str, int, str | None, bool, str], int]

#: Failures that mean "the daemon cannot be reached right now".
UNREACHABLE: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
#: At most this many evaluation counts per request (the daemon's limit).
_COUNTS_PER_REQUEST = 10_000
#: Unsent count cells kept while the daemon is away; more are dropped (and logged).
_MAX_PENDING_CELLS = 100_000

T = TypeVar("T")

_decode = msgspec.json.decode
_encode = msgspec.json.encode


class _Kind(msgspec.Struct):
    """Just the `type` of a server message this client could not read."""

    type: str = ""


class FpcdUnavailable(Exception):
    """Neither the daemon nor a cache file could provide the configuration."""


class FpcdClientError(Exception):
    """The daemon refused a request (a bad token, a missing permission, ...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"fpcd answered {status}: {detail}")
        self.status = status
        self.detail = detail


#: The daemon's close code for a session whose token expired (fpcd.api.ws).
TOKEN_EXPIRED = 4401

#: Failures the client retries later (the daemon may come back, or be fixed).
_RETRYABLE: tuple[type[BaseException], ...] = (*UNREACHABLE, FpcdClientError)


class ConfigurationClient:
    """The live configuration of one (service, environment) and every flag, kept current.

    Use it as `async with ConfigurationClient(...) as client:`. Without `unix_socket`,
    requests go to `api_url` with `token` as a Bearer token; WebSocket to `ws_url`
    (default: `/ws` on the API port). With `unix_socket` (the daemon's `fpcd.sock`),
    everything goes over that socket and no token is needed. `cache_file`: where to keep
    the last known state, so the service can start while the daemon is down.
    """

    def __init__(
        self,
        *,
        service_name: str,
        environment: str,
        api_url: str | None = None,
        ws_url: str | None = None,
        token: str | Callable[[], str] | None = None,
        unix_socket: str | os.PathLike[str] | None = None,
        cache_file: str | os.PathLike[str] | None = None,
        subscribe_flags: bool = True,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
        heartbeat: float = 15.0,
        analytics_interval: float = 10.0,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not service_name or not environment:
            raise ValueError("service_name and environment are required")
        self.service_name = service_name
        self.environment = environment
        self._unix_socket = os.fspath(unix_socket) if unix_socket is not None else None
        base = "http://fpcd" if self._unix_socket else (api_url or "http://127.0.0.1:3001")
        self._api_url = base.rstrip("/")
        self._ws_url = ws_url or self._api_url + "/ws"
        #: A callable is asked again before every request and reconnect, so a token
        #: that is renewed (a file rewritten by an agent, say) is picked up.
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}"} if isinstance(token, str) else {}
        self._cache_path = Path(cache_file) if cache_file is not None else None
        self._subscribe_flags = subscribe_flags
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._heartbeat = heartbeat
        self._analytics_interval = analytics_interval
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._clock = clock

        self._config: Configuration | None = None
        #: Replaced as a whole on every change: readers on any thread see one snapshot.
        self._flags = FlagTable()
        self._connected = False
        #: "daemon" once it answered; "cache" while serving the cache file only.
        self.source = "none"
        self._handlers: dict[str, list[Callback]] = {name: [] for name in EVENTS}
        # Counted from any thread (the sync client evaluates on the caller's thread).
        self._counts: Counts = defaultdict(int)
        self._counts_lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._tasks = TaskSet(on_done=_log_failure)
        self._loops: list[asyncio.Task[None]] = []
        self._cache_dirty = False
        self._cache_writer: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> ConfigurationClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the cache, fetch the current state, start the live subscription.

        Raises FpcdUnavailable when the daemon cannot be reached and there is no usable
        cache file; FpcdClientError when the daemon refuses (e.g. a bad token).
        """
        if self._closed:
            raise RuntimeError("this client is closed")
        if self._started:
            return
        if self._cache_path is not None:
            cache = await asyncio.to_thread(
                read_cache, self._cache_path, self.service_name, self.environment
            )
            if cache is not None:
                self._config = cache.configuration
                self._flags, _ = FlagTable().with_documents(cache.flags)
                self.source = "cache"
        connector = aiohttp.UnixConnector(path=self._unix_socket) if self._unix_socket else None
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        try:
            await self._fetch(emit=False)
        except UNREACHABLE as error:
            if self.source != "cache":
                await self._session.close()
                raise FpcdUnavailable(
                    f"cannot reach fpcd at {self._where} and no cache file to start from: {error}"
                ) from error
            log.warning(
                "fpcd unreachable: serving the cache file until it answers",
                extra={"where": self._where, "cache": str(self._cache_path)},
            )
        except BaseException:
            await self._session.close()
            raise
        self._started = True
        self._loops = [
            asyncio.create_task(self._live(), name="fpcd-client-live"),
            asyncio.create_task(self._flush_loop(), name="fpcd-client-analytics"),
        ]

    async def close(self) -> None:
        """Stop the subscription, send the last evaluation counts, save the cache.
        Idempotent; the client cannot be started again."""
        if self._closed:
            return
        self._closed = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._started:
            await self.flush()
        if self._cache_writer is not None:
            await asyncio.gather(self._cache_writer, return_exceptions=True)
        await self._tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
        self._connected = False

    @property
    def _where(self) -> str:
        return f"unix socket {self._unix_socket}" if self._unix_socket else self._api_url

    # -- reading --------------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration | None:
        """The current configuration (shared: do not modify `config`); None before start."""
        return self._config

    @property
    def started(self) -> bool:
        return self._started

    @property
    def connected(self) -> bool:
        """True while the live subscription is up; False means values may be stale."""
        return self._connected

    @property
    def flag_keys(self) -> list[str]:
        """Keys of the active (unarchived) flags known."""
        return list(self._flags.compiled)

    async def get_configuration(self) -> dict[str, Any]:
        """A copy of the current configuration (starts the client if needed)."""
        if not self._started:
            await self.start()
        return copy.deepcopy(self._config.config) if self._config is not None else {}

    def evaluate(
        self, key: str, context: ContextLike = None, *, now: float | None = None
    ) -> EvaluationResult:
        """Evaluate one flag locally, in microseconds; safe from any thread.

        `context` is an EvaluationContext or a mapping with the wire names (`userId`,
        `userGroup`, `customAttributes`, ...); its environment defaults to the client's.
        `now` (epoch seconds) defaults to the clock.
        """
        ctx = to_context(context, self.environment)
        if now is None:
            now = self._clock()
        compiled = self._flags.compiled
        result = evaluate(compiled.get(key, key), ctx, now, compiled.get)
        if result.error_code is None:
            self._count(result, now)
        return result

    def is_enabled(self, key: str, context: ContextLike = None) -> bool:
        return self.evaluate(key, context).enabled

    def evaluate_many(
        self,
        context: ContextLike = None,
        flags: Iterable[str] | None = None,
        *,
        now: float | None = None,
    ) -> dict[str, EvaluationResult]:
        """Evaluate `flags` (every active flag when None) at one instant."""
        ctx = to_context(context, self.environment)
        if now is None:
            now = self._clock()
        compiled = self._flags.compiled
        results: dict[str, EvaluationResult] = {}
        for key in compiled if flags is None else flags:
            result = evaluate(compiled.get(key, key), ctx, now, compiled.get)
            if result.error_code is None:
                self._count(result, now)
            results[key] = result
        return results

    async def evaluate_flags(
        self,
        context: ContextLike = None,
        flags: Iterable[str] | None = None,
        *,
        now: float | None = None,
    ) -> dict[str, EvaluationResult]:
        """The seed's `evaluateFlags`: like `evaluate_many` (local), starting the client if
        needed."""
        if not self._started:
            await self.start()
        return self.evaluate_many(context, flags, now=now)

    def _count(self, result: EvaluationResult, now: float) -> None:
        # A defaultdict: about twice as fast as a Counter on this path.
        cell = (result.flag_key, int(now // 3600), result.variant, result.enabled, result.reason)
        with self._counts_lock:
            self._counts[cell] += 1

    # -- events ---------------------------------------------------------------------------

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(payload)` on `event` (see EVENTS); returns a function that removes it.

        Callbacks run on the client's event loop; a coroutine function's result is run
        as a task. An exception in a callback is logged and does not stop the client.
        """
        if event not in self._handlers:
            raise ValueError(f"unknown event {event!r}; use one of {', '.join(EVENTS)}")
        self._handlers[event].append(callback)

        def remove() -> None:
            if callback in self._handlers[event]:
                self._handlers[event].remove(callback)

        return remove

    def _emit(self, event: str, payload: Any) -> None:
        for callback in list(self._handlers[event]):
            try:
                outcome = callback(payload)
                if inspect.isawaitable(outcome):
                    self._spawn(_awaited(outcome))
            except Exception:
                log.exception("fpcd client callback failed", extra={"event": event})

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    # -- state changes ---------------------------------------------------------------------

    def _set_config(self, config: Configuration, *, force: bool = False, emit: bool = True) -> None:
        """Take `config` if it is newer (or, from a full fetch, if it differs at all)."""
        current = self._config
        if current is not None:
            if force:
                if (config.position, config.checksum) == (current.position, current.checksum):
                    return
            elif config.position <= current.position:
                return
        self._config = config
        self._save_soon()
        if emit:
            self._emit("configurationUpdate", config)

    def _set_flags(self, table: FlagTable, changed: list[str], *, emit: bool = True) -> None:
        if not changed:
            return
        self._flags = table
        self._save_soon()
        if emit:
            now = self._clock()
            for key in changed:
                doc = table.documents.get(key)
                enabled = active(table.compiled.get(key), self.environment, now, table.compiled.get)
                archived = doc is None or doc.archived
                self._announce(key, enabled, "archived" if archived else "changed")

    def _announce(self, key: str, enabled: bool, reason: FlagUpdateReason) -> None:
        flag = self._flags.compiled.get(key)
        self._emit(
            "featureFlagUpdate",
            FlagUpdate(
                flag_key=key,
                enabled=enabled,
                reason=reason,
                version=self._flags.version(key),
                definition=flag.definition if flag is not None else None,
            ),
        )

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._emit("connected" if connected else "disconnected", None)

    # -- talking to the daemon ----------------------------------------------------------------

    def _fresh_token(self) -> None:
        """With a token callable: the current token, into the session's headers."""
        if callable(self._token) and self._session is not None:
            self._session.headers["Authorization"] = f"Bearer {self._token()}"

    async def _get(self, path: str, kind: type[T]) -> T | None:
        """The document at `path`; None when the daemon answers 404."""
        assert self._session is not None
        self._fresh_token()
        async with self._session.get(self._api_url + path, timeout=self._timeout) as response:
            body = await response.read()
            if response.status == 404:
                return None
            if response.status >= 400:
                raise FpcdClientError(response.status, _detail(body))
            return msgspec.json.decode(body, type=kind)

    async def _fetch(self, *, emit: bool) -> None:
        """The full current state, taken as it is (it replaces a cache or a stale copy)."""
        service, env = quote(self.service_name, safe=""), quote(self.environment, safe="")
        config = await self._get(f"/api/config/{service}?environment={env}", Configuration)
        if config is None:  # no layer yet: empty until a version is written
            config = Configuration(service_name=self.service_name, environment=self.environment)
        self._set_config(config, force=True, emit=emit)
        if self._subscribe_flags:
            await self._fetch_flags(emit=emit)
        self.source = "daemon"

    async def _fetch_flags(self, *, emit: bool) -> None:
        page = await self._get("/api/features?includeArchived=true", Page[msgspec.Raw])
        if page is None:
            raise FpcdClientError(404, "no flag API at this address")
        table, _ = FlagTable().with_documents(views_of(page.items))
        old = self._flags
        changed = [
            key
            for key in set(old.documents) | set(table.documents)
            if old.version(key) != table.version(key)
        ]
        self._set_flags(table, sorted(changed), emit=emit)

    async def _live(self) -> None:
        """Hold the subscription; reconnect with backoff (and jitter) whenever it drops."""
        assert self._session is not None
        backoff = Backoff(self._reconnect_delay, self._max_reconnect_delay)
        topics: list[Topic] = (
            [CONFIG_UPDATES, FEATURE_FLAGS] if self._subscribe_flags else [CONFIG_UPDATES]
        )
        while True:
            try:
                self._fresh_token()
                async with self._session.ws_connect(
                    self._ws_url,
                    heartbeat=self._heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                ) as ws:
                    subscribe = Subscribe(
                        service_name=self.service_name,
                        environment=self.environment,
                        subscriptions=topics,
                        last_version=self._config.version if self._config else 0,
                    )
                    await ws.send_str(encode(subscribe).decode())
                    while True:
                        message = await ws.receive()
                        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        if await self._on_message(message.data):
                            backoff.reset()
                if message.type == aiohttp.WSMsgType.CLOSE and message.data == TOKEN_EXPIRED:
                    # The daemon closes a session when its token expires: reconnect now,
                    # with the token asked for again (a plain string is simply reused).
                    log.info(
                        "fpcd session token expired; reconnecting", extra={"where": self._where}
                    )
                    self._set_connected(False)
                    backoff.reset()
                    continue
            except asyncio.CancelledError:
                raise
            except _RETRYABLE as error:
                log.info(
                    "fpcd subscription lost", extra={"where": self._where, "error": str(error)}
                )
            except Exception:
                log.exception("fpcd subscription failed")
            self._set_connected(False)
            await asyncio.sleep(backoff.next() * (0.5 + random.random()))

    async def _on_message(self, data: str | bytes) -> bool:
        """Apply one server message; True once the subscription is confirmed."""
        try:
            message = decode_server_message(data)
        except msgspec.ValidationError as error:
            await self._not_understood(data, error)
            return False
        except msgspec.DecodeError:
            log.warning("fpcd sent a frame that is not JSON")
            return False
        match message:
            case ConfigurationUpdate() if self._ours(message):
                self._set_config(
                    Configuration(
                        service_name=message.service_name,
                        environment=message.environment,
                        version=message.version,
                        base_version=message.base_version,
                        config=message.config,
                        checksum=message.checksum,
                    )
                )
            case FeatureFlagUpdate():
                self._flag_message(message)
            case ReloadMessage() if self._ours(message):
                self._emit(
                    "configurationReload",
                    ConfigurationReload(version=message.version, force=message.force),
                )
            case Subscribed() if self._ours(message):
                # Flags have no replay: fetch them all, then the live messages queued behind
                # this one apply on top (by version).
                if self._subscribe_flags:
                    await self._fetch_flags(emit=True)
                self.source = "daemon"
                self._set_connected(True)
                return True
            case ErrorMessage():
                log.warning(
                    "fpcd refused a message",
                    extra={"code": message.code, "detail": message.message},
                )
                if message.code in ("UNAUTHENTICATED", "FORBIDDEN"):
                    raise FpcdClientError(403, message.message)
                if message.code == "REPLAY_TOO_LARGE" and self._ours(message):
                    # Missed more versions than the daemon replays: read the current state;
                    # the subscription stays and brings what comes after.
                    await self._fetch(emit=True)
            case (
                ConfigurationUpdate()
                | ReloadMessage()
                | Subscribed()
                | Unsubscribed()
                | Pong()
                | Authenticated()
            ):
                pass  # another stream's, or nothing to do
            case _:
                assert_never(message)
        return False

    def _ours(
        self, message: ConfigurationUpdate | ReloadMessage | Subscribed | ErrorMessage
    ) -> bool:
        return (message.service_name, message.environment) == (
            self.service_name,
            self.environment,
        )

    async def _not_understood(self, data: str | bytes, error: msgspec.ValidationError) -> None:
        """A message this client cannot read: a newer daemon's. Ignored, except that a
        flag change it may have carried is fetched over REST instead."""
        try:
            kind = msgspec.json.decode(data, type=_Kind).type
        except (msgspec.DecodeError, msgspec.ValidationError):
            kind = ""
        log.info("fpcd sent a message this client does not read", extra={"error": str(error)})
        if kind == "FEATURE_FLAG_UPDATE" and self._subscribe_flags:
            await self._fetch_flags(emit=True)

    def _flag_message(self, message: FeatureFlagUpdate) -> None:
        if message.flag is not None:
            table, changed = self._flags.with_documents([message.flag])
            if changed:
                self._flags = table
                self._save_soon()
        # Announced for every message, also for a date reached (the definition is the same).
        self._announce(message.flag_key, message.enabled, message.reason)

    # -- evaluation counts ------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._analytics_interval)
            try:
                await self.flush()
            except Exception:  # a bug must not end the counting for good
                log.exception("sending evaluation counts failed")

    async def flush(self) -> int:
        """Send the evaluation counts gathered so far; on failure they are kept for the
        next flush. Returns the number of evaluations sent."""
        with self._counts_lock:
            counts, self._counts = self._counts, defaultdict(int)
        if not counts or self._session is None or self._session.closed:
            self._restore(counts)
            return 0
        keys = list(counts)
        cells = [
            EvaluationCount(
                flag=flag,
                variant=variant,
                enabled=enabled,
                reason=cast(Reason, reason),  # counted only when the evaluation succeeded
                hour=hour,
                count=n,
            )
            for (flag, hour, variant, enabled, reason), n in counts.items()
        ]
        sent = 0
        try:
            self._fresh_token()
            for i in range(0, len(cells), _COUNTS_PER_REQUEST):
                chunk = cells[i : i + _COUNTS_PER_REQUEST]
                async with self._session.post(
                    self._api_url + "/api/features/evaluations",
                    data=_encode(EvaluationCounts(counts=chunk)),
                    headers={"Content-Type": "application/json"},
                    timeout=self._timeout,
                ) as response:
                    if response.status >= 400:
                        raise FpcdClientError(response.status, _detail(await response.read()))
                for key in keys[i : i + _COUNTS_PER_REQUEST]:
                    sent += counts.pop(key)
        except _RETRYABLE as error:
            log.info("evaluation counts kept for later", extra={"error": str(error)})
            self._restore(counts)
        return sent

    def _restore(self, counts: Counts) -> None:
        if not counts:
            return
        with self._counts_lock:
            if len(self._counts) + len(counts) > _MAX_PENDING_CELLS:
                log.warning(
                    "too many unsent evaluation counts: dropped", extra={"cells": len(counts)}
                )
                return
            for cell, n in counts.items():
                self._counts[cell] += n

    # -- cache file -----------------------------------------------------------------------

    def _save_soon(self) -> None:
        """Write the cache file after this change; changes in the meantime coalesce."""
        if self._cache_path is None:
            return
        self._cache_dirty = True
        if self._cache_writer is None or self._cache_writer.done():
            self._cache_writer = asyncio.get_running_loop().create_task(self._write_cache())

    async def _write_cache(self) -> None:
        assert self._cache_path is not None
        while self._cache_dirty:
            self._cache_dirty = False
            cache = CacheFile(
                service_name=self.service_name,
                environment=self.environment,
                saved_at=self._clock(),
                configuration=self._config,
                flags=list(self._flags.documents.values()),
            )
            try:
                await asyncio.to_thread(write_cache, self._cache_path, cache)
            except OSError as error:
                log.warning(
                    "cache file not written",
                    extra={"path": str(self._cache_path), "error": str(error)},
                )


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A callback's task ended with an error nobody awaits: log it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("fpcd client callback failed", exc_info=task.exception())


async def _awaited(outcome: Awaitable[Any]) -> None:
    await outcome


def _detail(body: bytes) -> str:
    try:
        doc = _decode(body)
    except msgspec.DecodeError:
        return body[:200].decode(errors="replace")
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("errorDetails") or doc)
    return str(doc)
