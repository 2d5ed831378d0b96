"""`/metrics`: every component's counters as Prometheus metric families, built at scrape.

It reads every component, so it sits beside the composition root (`fpcd.components`),
not among the parts it reads.

Components count in plain attributes (see `fpcd.observe.stats`); this collector reads
them when Prometheus scrapes, so nothing on a request path touches prometheus-client.
Each daemon has its own CollectorRegistry (several daemons can share a process in
tests), with the library's process, platform and GC collectors beside ours.

Label sets are bounded: routes are the router's templates, flags are the flags that
exist (an evaluation of an unknown key counts only as an error by code), job kinds
are the id's first part.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fpcd import __version__
from fpcd.api.connections import ConnectionStats
from fpcd.api.flag_socket import SocketStats
from fpcd.domain.model import Caller
from fpcd.observe.alerts import Alerts
from fpcd.observe.stats import HttpStats, LatencyHistogram
from fpcd.services.configs import OTHER_SERVICE, ConfigService
from fpcd.services.flags import FlagService
from fpcd.services.live import LiveHub
from fpcd.services.registry import RegistryService
from fpcd.services.scheduler import Scheduler
from fpcd.services.secrets import SecretService
from fpcd.store.sqlite import Store
from fpcd.sync.files import FileSync

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

    from fpcd.upstream.replicator import Replicator

#: The collector reads the keyring's rotation progress as the daemon itself.
_METRICS = Caller.system("fpcd:metrics")


def _load_prometheus() -> None:
    """prometheus-client, imported at the first scrape: a daemon nobody scrapes never
    loads it (issue 18: idle memory). The metric family names become module globals."""
    from prometheus_client import core

    globals().update(
        CounterMetricFamily=core.CounterMetricFamily,
        GaugeMetricFamily=core.GaugeMetricFamily,
        HistogramMetricFamily=core.HistogramMetricFamily,
    )


@dataclass(frozen=True, slots=True)
class Sources:
    """The components the collector reads (built by `fpcd.components.build`)."""

    store: Store
    http: HttpStats
    configs: ConfigService
    flags: FlagService
    secrets: SecretService
    hub: LiveHub
    files: FileSync
    scheduler: Scheduler
    alerts: Alerts
    flag_socket: SocketStats
    #: TCP connections per port ("api", "ws").
    connections: ConnectionStats
    registry: RegistryService
    #: Only with an upstream.
    replicator: Replicator | None


@dataclass(slots=True)
class _Queried:
    """What needs a query, refreshed before each scrape."""

    #: Ciphertexts still under an old key, and whether a rewrap runs.
    rotation_remaining: int = 0
    rotation_running: bool = False
    secret_reads_pending: int = 0


def _histogram(
    name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], LatencyHistogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.total)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _connection_families(stats: ConnectionStats) -> Iterator[Metric]:
    for cls, name, doc, values in (
        (GaugeMetricFamily, "fpcd_tcp_connections", "Open TCP connections", stats.open),
        (
            GaugeMetricFamily,
            "fpcd_tcp_connection_limit",
            "TCP connections a port holds at most (server.max_connections, fitted to the"
            " descriptor limit)",
            stats.limit,
        ),
        (
            CounterMetricFamily,
            "fpcd_tcp_connections_refused",
            "TCP connections refused (503, closed) because the port was full",
            stats.refused,
        ),
        (
            CounterMetricFamily,
            "fpcd_tcp_header_timeouts",
            "TCP connections closed for sending no complete request head in time",
            stats.header_timeouts,
        ),
    ):
        family = cls(name, doc, labels=["port"])
        for port, value in sorted(values.items()):
            family.add_metric([port], value)
        yield family


class DaemonCollector:  # a prometheus_client Collector: it has collect()
    def __init__(self, sources: Sources, queried: _Queried) -> None:
        self.sources = sources
        self._queried = queried

    @staticmethod
    def _missing_configs(registry: RegistryService, cap: int) -> GaugeMetricFamily:
        """Registered services' missing configs: the first `cap` services by name get
        their own label, the rest are summed under service="_other"."""
        family = GaugeMetricFamily(
            "fpcd_service_missing_configs",
            "requiredConfigs (kind=required) and optionalConfigs (kind=optional) a registered"
            " service lacks in its environment's config and secrets",
            labels=["service", "kind"],
        )
        other = [0, 0]
        for i, (service, counts) in enumerate(sorted(registry.missing_counts().items())):
            if i < cap:
                family.add_metric([service, "required"], counts[0])
                family.add_metric([service, "optional"], counts[1])
            else:
                other[0] += counts[0]
                other[1] += counts[1]
        if any(other):
            family.add_metric([OTHER_SERVICE, "required"], other[0])
            family.add_metric([OTHER_SERVICE, "optional"], other[1])
        return family

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        info = GaugeMetricFamily("fpcd_build_info", "fpcd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        # HTTP
        requests = CounterMetricFamily(
            "fpcd_http_requests",
            "HTTP requests by route template, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(s.http.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        yield _histogram(
            "fpcd_http_request_duration_seconds",
            "Time from request received to response ready (WebSocket sessions excluded)",
            ["route", "method"],
            ((list(k), h) for k, h in sorted(s.http.latency.items(), key=lambda kv: kv[0])),
        )

        # Config reads
        reads = CounterMetricFamily(
            "fpcd_config_reads",
            "Encoded config reads, served from the cache (hit) or built (miss)",
            labels=["result"],
        )
        reads.add_metric(["hit"], s.configs.cache_hits)
        reads.add_metric(["miss"], s.configs.cache_misses)
        yield reads
        validations = CounterMetricFamily(
            "fpcd_schema_validations",
            "JSON Schema checks in the validator process: answered, or past their time budget",
            labels=["result"],
        )
        validations.add_metric(["done"], s.configs.schema_runner.validations)
        validations.add_metric(["timeout"], s.configs.schema_runner.timeouts)
        yield validations
        by_service = CounterMetricFamily(
            "fpcd_config_service_reads",
            "Config GETs by service (known services up to metrics.max_service_labels;"
            " the rest, and unknown names, as _other)",
            labels=["service"],
        )
        for service, n in sorted(s.configs.reads_by_service.items()):
            by_service.add_metric([service], n)
        yield by_service
        yield self._missing_configs(s.registry, s.configs.max_service_labels)

        # Flags
        evaluations = CounterMetricFamily(
            "fpcd_flag_evaluations",
            "Flag evaluations by flag, variant and reason (every door)",
            labels=["flag", "variant", "reason"],
        )
        by_label: Counter[tuple[str, str, str]] = Counter()
        for (flag, variant, reason, _enabled), n in s.flags.analytics.totals().items():
            by_label[(flag, variant, reason)] += n
        for labels, n in sorted(by_label.items()):
            evaluations.add_metric(list(labels), n)
        yield evaluations
        errors = CounterMetricFamily(
            "fpcd_flag_evaluation_errors",
            "Flag lookups answered with an error, by code (unknown flags land here)",
            labels=["code"],
        )
        for code, n in sorted(s.flags.errors.items()):
            errors.add_metric([code], n)
        yield errors
        yield _histogram(
            "fpcd_flag_evaluation_duration_seconds",
            "Time per evaluation call (one flag, or one request's batch)",
            [],
            [([], s.flags.latency)],
        )
        yield _gauge("fpcd_flags", "Flags defined and not archived", s.flags.counts()["flags"])

        # WebSocket
        counts = s.hub.counts
        live = s.hub.stats
        yield _gauge(
            "fpcd_websocket_connections", "Open WebSocket connections", counts["connections"]
        )
        yield _counter(
            "fpcd_websocket_connections_opened",
            "WebSocket connections accepted",
            live.connections_total,
        )
        yield _gauge(
            "fpcd_websocket_subscriptions",
            "Active WebSocket subscriptions",
            counts["subscriptions"],
        )
        yield _counter(
            "fpcd_websocket_messages_sent", "WebSocket messages written", live.messages_sent
        )
        yield _counter(
            "fpcd_websocket_slow_consumer_drops",
            "WebSocket clients disconnected because their queue overflowed",
            live.slow_consumer_drops,
        )
        yield _counter(
            "fpcd_websocket_replays", "lastVersion replays run (one per SUBSCRIBE)", live.replays
        )
        yield _counter(
            "fpcd_websocket_replayed_versions",
            "Configuration versions sent by lastVersion replays",
            live.replayed,
        )
        yield _counter(
            "fpcd_websocket_replays_refused",
            "Replays refused as larger than websocket.max_replay (ERROR REPLAY_TOO_LARGE)",
            live.replays_refused,
        )
        yield _counter(
            "fpcd_websocket_throttled",
            "Client messages beyond a connection's rate limits (reading it paused)",
            live.throttled,
        )
        yield _histogram(
            "fpcd_websocket_delivery_seconds",
            "Time from a message queued for a client to its frame written",
            [],
            [([], live.delivery)],
        )

        # TCP connections
        yield from _connection_families(s.connections)

        # Flag socket
        sock = s.flag_socket
        yield _gauge(
            "fpcd_flag_socket_connections", "Open flag-socket connections", sock.connections
        )
        yield _counter(
            "fpcd_flag_socket_connections_opened",
            "Flag-socket connections accepted",
            sock.connections_total,
        )
        yield _counter("fpcd_flag_socket_lookups", "Flag-socket queries answered", sock.lookups)
        yield _counter(
            "fpcd_flag_socket_rejected",
            "Flag-socket lines answered with an error object",
            sock.rejected,
        )

        # SQLite
        yield _histogram(
            "fpcd_sqlite_query_duration_seconds",
            "SQLite read queries and write transactions",
            ["op"],
            [(["read"], s.store.read_latency), (["write"], s.store.write_latency)],
        )
        yield _counter(
            "fpcd_sqlite_commits",
            "Write transactions committed with changes (group commit: several writers each)",
            s.store.commits,
        )
        yield _counter(
            "fpcd_sqlite_committed_changes",
            "Changes committed; divided by fpcd_sqlite_commits, the average group size",
            s.store.committed_changes,
        )
        yield _gauge(
            "fpcd_sqlite_damaged",
            "1 once SQLite found the database file damaged (writes are refused)",
            int(s.store.corrupt is not None),
        )
        yield _counter(
            "fpcd_integrity_failures",
            "Reads of stored data that failed its checksum (never served)",
            s.store.integrity_failures,
        )
        yield _gauge(
            "fpcd_record_problems",
            "Stored records that cannot be loaded, scheduled or verified now (see /health)",
            len(s.store.problems.open),
        )
        reported = CounterMetricFamily(
            "fpcd_record_problems_reported",
            "Problems with stored records reported since start, by kind",
            labels=["kind"],
        )
        for kind, n in sorted(s.store.problems.reported.items()):
            reported.add_metric([kind], n)
        yield reported

        # Replication
        if s.replicator is not None:
            r = s.replicator
            cursor = s.store.upstream_cursor
            yield _gauge("fpcd_replication_up", "1 while the upstream answers", int(r.available))
            yield _gauge("fpcd_replication_cursor", "Last upstream change applied here", cursor)
            yield _gauge(
                "fpcd_replication_head", "Newest upstream change seen", max(r.head, cursor)
            )
            yield _gauge(
                "fpcd_replication_lag_changes",
                "Upstream changes seen but not applied here",
                max(r.head - cursor, 0),
            )
            if r.last_sync is not None:
                yield _gauge(
                    "fpcd_replication_last_sync_timestamp_seconds",
                    "When this host last confirmed it holds every upstream change",
                    r.last_sync,
                )
            yield _counter(
                "fpcd_replication_errors", "Failed exchanges with the upstream", r.errors
            )

        # Secrets
        sec, q = s.secrets, self._queried
        yield _counter("fpcd_secret_reads", "Secret values decrypted for a caller", sec.reads)
        yield _counter("fpcd_secret_expiries", "Secret versions destroyed at expiry", sec.expired)
        yield _counter(
            "fpcd_secret_integrity_failures",
            "Ciphertexts that failed authentication (tampered or moved)",
            sec.tampered,
        )
        yield _counter(
            "fpcd_secret_rewrapped", "Ciphertexts rewrapped under a new primary key", sec.rewrapped
        )
        yield _gauge(
            "fpcd_secret_rotation_remaining",
            "Ciphertexts still under an older key",
            q.rotation_remaining,
        )
        yield _gauge(
            "fpcd_secret_rotation_running", "1 while a rewrap runs", int(q.rotation_running)
        )
        yield _gauge(
            "fpcd_secret_reads_pending",
            "Secret reads recorded on this host, not yet in the audited change log",
            q.secret_reads_pending,
        )

        # Files
        f = s.files
        yield _gauge("fpcd_files", "Files materialized from configurations", len(f.targets))
        yield _counter("fpcd_file_writes", "Files written with new content", f.writes)
        yield _counter(
            "fpcd_file_write_failures",
            "Files that could not be rendered or written",
            f.write_failures,
        )
        yield _counter(
            "fpcd_file_drift_detected", "Files found changed outside fpcd", f.drift_detected
        )
        yield _counter("fpcd_file_drift_repairs", "Drifted files restored", f.drift_repairs)
        yield _counter("fpcd_file_command_runs", "Reload commands run", f.command_runs)
        yield _counter(
            "fpcd_file_command_failures", "Reload commands that failed", f.command_failures
        )

        # Scheduler
        jobs = CounterMetricFamily(
            "fpcd_scheduler_jobs", "Scheduled job runs by kind and result", labels=["job", "result"]
        )
        for (kind, result), n in sorted(s.scheduler.runs.items()):
            jobs.add_metric([kind, result], n)
        yield jobs

        # Alerts
        fired = CounterMetricFamily(
            "fpcd_alerts", "Performance threshold breaches started", labels=["check"]
        )
        active = GaugeMetricFamily(
            "fpcd_alert_active", "1 while a performance check is breached", labels=["check"]
        )
        for check in s.alerts.checks:
            fired.add_metric([check.name], s.alerts.fired[check.name])
            active.add_metric([check.name], int(check.name in s.alerts.active))
        yield fired
        yield active


class Metrics:
    """/metrics: the exposition of a per-daemon registry (`fpcd.api.routes_metrics`)."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self._queried = _Queried()
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import (
                GC_COLLECTOR,
                PLATFORM_COLLECTOR,
                PROCESS_COLLECTOR,
                CollectorRegistry,
            )

            _load_prometheus()
            registry = CollectorRegistry(auto_describe=False)
            # The library's process/platform/GC collectors, on our registry, not its global one.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
            registry.register(DaemonCollector(self.sources, self._queried))
            self._registry = registry
        return self._registry

    async def refresh(self) -> None:
        """What needs a query before a scrape."""
        status = await self.sources.secrets.status(_METRICS)
        self._queried.rotation_remaining = status.rotation.remaining
        self._queried.rotation_running = status.rotation.running
        self._queried.secret_reads_pending = await self.sources.secrets.pending_reads()

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        if self._registry is None:  # the first scrape imports the library off the loop
            await asyncio.to_thread(lambda: self.registry)
        await self.refresh()
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
