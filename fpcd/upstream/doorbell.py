"""Redis pub/sub as a doorbell: `PUBLISH fpcd:changes <seq>` after a commit.

Only a hint: the replicator pulls from Postgres on every ring and on a timer anyway,
so a lost message or a Redis outage delays a change by at most one poll interval.
Both directions reconnect with backoff on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from fpcd.aio import Backoff
from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.doorbell")


class Doorbell:
    def __init__(self, url: str, channel: str, on_ring: Callable[[int], None]) -> None:
        self._url = url
        self._channel = channel
        self._on_ring = on_ring
        self._listener: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._to_publish: int | None = None
        self._wake = asyncio.Event()
        self.connected = False
        self.last_error: str | None = None

    def health(self) -> ComponentHealth:
        """/health's `redis`: down (with the last error) while the subscriber is not
        connected; peers still poll meanwhile."""
        if self.connected:
            return ComponentHealth(status="ok")
        return ComponentHealth(status="down", detail=self.last_error)

    def _client(self, *, listening: bool = False) -> redis.Redis:
        # A listener waits for messages indefinitely; a dead Redis closes the socket.
        return redis.from_url(
            self._url, socket_connect_timeout=2, socket_timeout=None if listening else 2
        )

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="doorbell-listen")
        self._publisher = asyncio.create_task(self._publish_loop(), name="doorbell-publish")

    async def stop(self) -> None:
        for task in (self._listener, self._publisher):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._listener, self._publisher) if t), return_exceptions=True
        )

    def ring(self, seq: int) -> None:
        """Announce `seq` soon; never blocks the write that made it."""
        self._to_publish = max(seq, self._to_publish or 0)
        self._wake.set()

    async def _publish_loop(self) -> None:
        client = self._client()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                seq, self._to_publish = self._to_publish, None
                if seq is None:
                    continue
                try:
                    await client.publish(self._channel, str(seq))
                except (RedisError, OSError) as error:
                    self.last_error = error.__class__.__name__
                    log.debug(
                        "doorbell publish failed; peers will poll", extra={"error": self.last_error}
                    )
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _listen(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            client = self._client(listening=True)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(self._channel)
                self.connected, self.last_error = True, None
                backoff.reset()
                log.info("doorbell connected", extra={"channel": self._channel})
                self._on_ring(0)  # catch up on anything rung while we were away
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        self._on_ring(int(message["data"]))
                    except (TypeError, ValueError):
                        self._on_ring(0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                if self.connected or self.last_error is None:
                    log.warning(
                        "doorbell lost; polling only until Redis is back",
                        extra={"error": error.__class__.__name__},
                    )
                self.connected, self.last_error = False, error.__class__.__name__
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff.next())
