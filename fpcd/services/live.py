"""Live updates: who is subscribed to what, and turning change events into messages.

Every change reaches subscribers through the one event bus, whatever door or host it
came from. One dispatcher task handles events and subscription requests in order; each
message is encoded once and handed to every subscriber's own bounded queue (a slow
subscriber is dropped by its connection, never waited for).

A `lastVersion` replay never runs on the dispatcher: it runs in its connection's own
replay task (one replay at a time per connection, a few at a time in all), bounded in
versions, while live updates for that stream are held back and sent after it, so a
replay and the live updates behind it never interleave and one client asking for history
never delays anyone else's updates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from fpcd.clock import Clock
from fpcd.domain.access import CONFIG_READ, FLAGS_READ, may
from fpcd.domain.configs import BASE_ENVIRONMENT
from fpcd.domain.errors import Forbidden, FpcdError, NotFound
from fpcd.domain.model import Caller, ConfigVersion, FlagRecord, ReloadRequest
from fpcd.observe.stats import LatencyHistogram
from fpcd.services.configs import ConfigService
from fpcd.services.events import ChangeApplied, Event, EventBus, FlagSwitched
from fpcd.services.flags import FlagService
from fpcd.wire import ComponentHealth, FlagView
from fpcd.wire.live import (
    CONFIG_UPDATES,
    FEATURE_FLAGS,
    ConfigurationReload,
    ConfigurationUpdate,
    ErrorMessage,
    FeatureFlagUpdate,
    FlagUpdateReason,
    Subscribed,
    Topic,
    Unsubscribed,
    encode,
)

log = logging.getLogger("fpcd.live")

#: What a subscription to each topic needs.
_NEEDS = {CONFIG_UPDATES: CONFIG_READ, FEATURE_FLAGS: FLAGS_READ}
#: How the hub reads for its subscribers: each subscription was authorized when made.
_HUB = Caller.system("fpcd:live")


class LiveStats:
    """What /metrics reports for WebSocket delivery; the connections count into it."""

    __slots__ = (
        "connections_total",
        "delivery",
        "messages_sent",
        "replayed",
        "replays",
        "replays_refused",
        "slow_consumer_drops",
        "throttled",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.messages_sent = 0
        self.slow_consumer_drops = 0
        #: `lastVersion` replays run, the versions they sent, and those refused as too large.
        self.replays = 0
        self.replayed = 0
        self.replays_refused = 0
        #: Client messages beyond a connection's rate limits (its reading paused).
        self.throttled = 0
        #: Seconds from a message handed to a connection to its frame written.
        self.delivery = LatencyHistogram()


class Subscriber(Protocol):
    """A connection, as the hub sees it: `deliver` must not block (queue or drop)."""

    def deliver(self, data: bytes) -> None: ...


Position = tuple[int, int]


class Stream:
    """One subscriber's subscription to one (service, environment)."""

    __slots__ = ("configs", "flags", "held", "last", "overflow")

    def __init__(self, topics: set[Topic]) -> None:
        self.configs = CONFIG_UPDATES in topics
        self.flags = FEATURE_FLAGS in topics
        #: (version, base version) of the last CONFIGURATION_UPDATE sent: never older, never twice.
        self.last: Position = (-1, -1)
        #: While a replay runs: the live messages that arrived meanwhile (position, frame),
        #: sent after it in order. None when no replay runs.
        self.held: list[tuple[Position | None, bytes]] | None = None
        #: More live messages arrived during the replay than `held` may keep.
        self.overflow = False


Key = tuple[str, str]
Job = Callable[[], Awaitable[None]]
#: A replay waiting for its connection's replay task: (stream key, stream, lastVersion).
Replay = tuple[Key, Stream, int]


class LiveHub:
    def __init__(
        self,
        bus: EventBus,
        configs: ConfigService,
        flags: FlagService,
        *,
        max_subscriptions: int,
        max_replay: int = 256,
        replay_concurrency: int = 2,
        clock: Clock,
    ) -> None:
        self._configs = configs
        self._flags = flags
        #: The daemon's clock: flag updates are judged at its now, and the WebSocket door
        #: checks tokens' expiry against it.
        self.clock = clock
        self.max_subscriptions = max_subscriptions
        #: Most versions one replay sends (more: REPLAY_TOO_LARGE, read over REST instead).
        self.max_replay = max_replay
        #: Replays running at once, over all connections; the others wait their turn.
        self._replay_slots = asyncio.Semaphore(replay_concurrency)
        self._replays: dict[Subscriber, deque[Replay]] = {}
        self._replayers: dict[Subscriber, asyncio.Task[None]] = {}
        self._streams: dict[Key, dict[Subscriber, Stream]] = {}
        self._by_subscriber: dict[Subscriber, dict[Key, Stream]] = {}
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.stats = LiveStats()
        bus.subscribe(self._on_event)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch(), name="live-dispatch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        replayers = list(self._replayers.values())
        self._replayers.clear()
        self._replays.clear()
        for pending in (task, *replayers):
            if pending is not None:
                pending.cancel()
        await asyncio.gather(*(t for t in (task, *replayers) if t), return_exceptions=True)

    async def _dispatch(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live update failed")

    # -- subscriptions --------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        return {
            "connections": len(self._by_subscriber),
            "subscriptions": sum(len(s) for s in self._by_subscriber.values()),
        }

    def health(self) -> ComponentHealth:
        """/health's `websocket`: connections and subscriptions."""
        return ComponentHealth(status="ok", counts=self.counts)

    def connect(self, subscriber: Subscriber) -> None:
        self._by_subscriber.setdefault(subscriber, {})
        self.stats.connections_total += 1

    def disconnect(self, subscriber: Subscriber) -> None:
        self._replays.pop(subscriber, None)
        replayer = self._replayers.pop(subscriber, None)
        if replayer is not None:
            replayer.cancel()
        for key in self._by_subscriber.pop(subscriber, {}):
            streams = self._streams.get(key)
            if streams is not None:
                streams.pop(subscriber, None)
                if not streams:
                    del self._streams[key]

    @staticmethod
    def authorize(caller: Caller, service: str, environment: str, topics: list[Topic]) -> None:
        """May `caller` subscribe to `topics` of (service, environment)? 403 if not."""
        for topic in topics:
            if not may(caller, _NEEDS[topic], service=service, environment=environment):
                raise Forbidden(f"this token does not allow {topic} for {service}/{environment}")

    def subscribe(
        self,
        subscriber: Subscriber,
        service: str,
        environment: str,
        topics: list[Topic],
        last_version: int | None,
    ) -> None:
        """Queue the subscription so it takes its place among the live events."""
        self._queue.put_nowait(
            lambda: self._subscribe(subscriber, service, environment, topics, last_version)
        )

    async def _subscribe(
        self,
        subscriber: Subscriber,
        service: str,
        environment: str,
        topics: list[Topic],
        last_version: int | None,
    ) -> None:
        mine = self._by_subscriber.get(subscriber)
        if mine is None:  # it went away while queued
            return
        key = (service, environment)
        if key not in mine and len(mine) >= self.max_subscriptions:
            subscriber.deliver(
                encode(
                    ErrorMessage(
                        code="TOO_MANY_SUBSCRIPTIONS",
                        message=f"at most {self.max_subscriptions} subscriptions per connection",
                    )
                )
            )
            return
        stream = Stream(set(topics))
        mine[key] = stream
        self._streams.setdefault(key, {})[subscriber] = stream
        subscriber.deliver(
            encode(
                Subscribed(
                    service_name=service, environment=environment, subscriptions=sorted(set(topics))
                )
            )
        )
        if last_version is not None and stream.configs:
            # Live updates from here on wait in `held` until the replay has run.
            stream.held = []
            self._replays.setdefault(subscriber, deque()).append((key, stream, last_version))
            if subscriber not in self._replayers:
                self._replayers[subscriber] = asyncio.create_task(
                    self._replayer(subscriber), name="live-replay"
                )

    def unsubscribe(self, subscriber: Subscriber, service: str, environment: str) -> None:
        async def job() -> None:
            mine = self._by_subscriber.get(subscriber, {})
            if mine.pop((service, environment), None) is not None:
                streams = self._streams.get((service, environment), {})
                streams.pop(subscriber, None)
                if not streams:
                    self._streams.pop((service, environment), None)
            subscriber.deliver(encode(Unsubscribed(service_name=service, environment=environment)))

        self._queue.put_nowait(job)

    def _current(self, subscriber: Subscriber, key: Key, stream: Stream) -> bool:
        """The stream is still subscribed (not replaced, unsubscribed or disconnected)."""
        return self._by_subscriber.get(subscriber, {}).get(key) is stream

    async def _replayer(self, subscriber: Subscriber) -> None:
        """One connection's replays, one after the other, each in a shared slot."""
        try:
            while queue := self._replays.get(subscriber):
                key, stream, last_version = queue.popleft()
                if not self._current(subscriber, key, stream):
                    continue
                async with self._replay_slots:
                    try:
                        await self._replay_stream(subscriber, key, stream, last_version)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("replay failed", extra={"service": key[0], "env": key[1]})
                    finally:
                        self._release(subscriber, key, stream)
        finally:
            if self._replayers.get(subscriber) is asyncio.current_task():
                del self._replayers[subscriber]
                self._replays.pop(subscriber, None)

    def _release(self, subscriber: Subscriber, key: Key, stream: Stream) -> None:
        """After a replay: send the live messages held back meanwhile, in order."""
        held, stream.held = stream.held, None
        if not self._current(subscriber, key, stream):
            return
        if stream.overflow:
            stream.overflow = False
            self._too_large(subscriber, key, "live updates arrived faster than it could be sent")
            return
        for position, data in held or ():
            if position is None:
                subscriber.deliver(data)
            elif position > stream.last:
                stream.last = position
                subscriber.deliver(data)

    def _too_large(self, subscriber: Subscriber, key: Key, why: str) -> None:
        self.stats.replays_refused += 1
        service, environment = key
        subscriber.deliver(
            encode(
                ErrorMessage(
                    code="REPLAY_TOO_LARGE",
                    message=f"cannot replay {service}/{environment}: {why}; read the"
                    f" configuration (GET /api/config/{service}?environment={environment})"
                    " and subscribe again with its version as lastVersion",
                    service_name=service,
                    environment=environment,
                )
            )
        )

    async def _replay_stream(
        self, subscriber: Subscriber, key: Key, stream: Stream, last_version: int
    ) -> None:
        service, environment = key
        versions = await self._configs.versions_after(
            service, environment, last_version, caller=_HUB
        )
        if len(versions) > self.max_replay:
            stream.held = []  # the client re-reads: what was held is older than that
            why = f"{len(versions)} versions after {last_version}, at most {self.max_replay}"
            self._too_large(subscriber, key, why)
            return
        self.stats.replays += 1
        await self._replay(subscriber, stream, service, environment, last_version, versions)

    async def _replay(
        self,
        subscriber: Subscriber,
        stream: Stream,
        service: str,
        environment: str,
        last_version: int,
        versions: list[int],
    ) -> None:
        """Every version after `last_version`, in order, then the current state."""
        key = (service, environment)
        for version in versions:
            if not self._current(subscriber, key, stream):
                return
            update = await self._update(service, environment, version)
            if self._send_config(subscriber, stream, update):
                self.stats.replayed += 1
        try:
            current = await self._update(service, environment, None)
        except NotFound:
            return
        # The default layer may have moved on since the last version replayed: send the
        # current merge, unless a newer version of the layer exists (its live event,
        # held behind this replay, will bring it in order).
        newest = versions[-1] if versions else last_version
        if current.version != newest:
            return
        if newest == 0:  # the client has nothing: the inherited default is news
            self._send_config(subscriber, stream, current)
            return
        had = await self._update(service, environment, newest)  # merged as of that version
        if (current.base_version or 0) > (had.base_version or 0):
            stream.last = max(stream.last, (had.version, had.base_version or 0))
            self._send_config(subscriber, stream, current)

    # -- events -------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, FlagSwitched):
            reason: FlagUpdateReason = (
                "schedule_start" if event.boundary == "start" else "schedule_end"
            )
            self._queue.put_nowait(lambda: self._flag_update(event.key, reason))
            return
        if not isinstance(event, ChangeApplied):  # e.g. ServiceStatusChanged: nothing to send
            return
        payload = event.change.payload
        match payload:
            case ConfigVersion():
                # Queued even with no subscriber yet: a SUBSCRIBE queued before it must
                # still see it (or find it already in the store when it replays).
                self._queue.put_nowait(lambda: self._config_changed(payload))
            case ReloadRequest():
                self._queue.put_nowait(lambda: self._reload(payload))
            case FlagRecord():
                changed: FlagUpdateReason = "archived" if payload.archived else "changed"
                self._queue.put_nowait(lambda: self._flag_update(payload.key, changed))

    async def _update(
        self, service: str, environment: str, version: int | None
    ) -> ConfigurationUpdate:
        doc = await self._configs.document(service, environment, caller=_HUB, version=version)
        return ConfigurationUpdate(
            service_name=service,
            environment=environment,
            version=doc.version,
            config=doc.config,
            base_version=doc.base_version,
            checksum=doc.checksum,
        )

    @staticmethod
    def _send_config(subscriber: Subscriber, stream: Stream, update: ConfigurationUpdate) -> bool:
        position = (update.version, update.base_version or 0)
        if position <= stream.last:
            return False
        stream.last = position
        subscriber.deliver(encode(update))
        return True

    async def _config_changed(self, change: ConfigVersion) -> None:
        service = change.service
        if change.environment == BASE_ENVIRONMENT:
            keys = [k for k in self._streams if k[0] == service]
        else:
            keys = [(service, change.environment)]
        for key in keys:
            if not any(st.configs for st in self._streams.get(key, {}).values()):
                continue
            try:
                if key[1] == change.environment:  # exactly the version the change wrote
                    update = await self._update(service, key[1], change.version)
                else:  # an environment over a new default: its current effective config
                    update = await self._update(service, key[1], None)
            except FpcdError:
                continue
            data = encode(update)
            position = (update.version, update.base_version or 0)
            # Read again after the await: only a disconnect can have changed it (subscribing
            # is a job of this dispatcher). Iterated in place, allocating nothing per
            # subscriber: a fan-out to thousands leaves nothing for the GC.
            for subscriber, stream in self._streams.get(key, {}).items():
                if not stream.configs:
                    continue
                if stream.held is not None:
                    self._hold(stream, position, data)
                elif position > stream.last:
                    stream.last = position
                    subscriber.deliver(data)

    def _hold(self, stream: Stream, position: Position | None, data: bytes) -> None:
        assert stream.held is not None
        if len(stream.held) < self.max_replay:
            stream.held.append((position, data))
        else:
            stream.overflow = True

    async def _reload(self, reload: ReloadRequest) -> None:
        data = encode(
            ConfigurationReload(
                service_name=reload.service,
                environment=reload.environment,
                version=reload.version,
                force=reload.force,
            )
        )
        for subscriber, stream in self._streams.get(
            (reload.service, reload.environment), {}
        ).items():
            if stream.held is not None:
                self._hold(stream, None, data)
            elif stream.configs:
                subscriber.deliver(data)

    async def _flag_update(self, key: str, reason: FlagUpdateReason) -> None:
        record = self._flags.get_record(key)
        doc = FlagView.of(record) if record is not None else None
        now = self.clock.time()
        # One message per environment, to each subscriber once however many of its streams
        # are in that environment; encoded only if someone gets it.
        by_environment: dict[str, list[dict[Subscriber, Stream]]] = {}
        for (_, environment), streams in self._streams.items():
            by_environment.setdefault(environment, []).append(streams)
        for environment, groups in by_environment.items():
            data: bytes | None = None
            sent: set[Subscriber] = set()
            for streams in groups:
                for subscriber, stream in streams.items():
                    if not stream.flags or subscriber in sent:
                        continue
                    sent.add(subscriber)
                    if data is None:
                        data = encode(
                            FeatureFlagUpdate(
                                flag_key=key,
                                enabled=self._flags.active(key, environment, now),
                                environment=environment,
                                flag=doc,
                                reason=reason,
                            )
                        )
                    subscriber.deliver(data)
