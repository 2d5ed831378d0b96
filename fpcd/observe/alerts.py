"""Performance checks: thresholds over the window since the last run.

A breach logs one warning when it starts (and one info line when it clears), marks the
component it belongs to degraded in /health, and counts in `fpcd_alerts_total`. The
latency checks read the same histograms /metrics exposes, with the estimate
Prometheus' `histogram_quantile` uses, so docs/alerts.md's rules agree with them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from fpcd.clock import Clock
from fpcd.observe.stats import HttpStats, LatencyHistogram
from fpcd.settings import AlertSettings
from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.alerts")


@dataclass
class Check:
    name: str
    #: The /health component a breach degrades.
    component: str
    #: The value over the current window; None when there is nothing to judge.
    measure: Callable[[AlertSettings], float | None]
    #: The limit, or 0 for off; read from the current settings on every run, so a SIGHUP
    #: applies at once.
    threshold: Callable[[AlertSettings], float]
    #: A breach is a value above the threshold (False: below it).
    above: bool = True
    unit: str = ""


@dataclass
class HistogramWindow:
    """The p99 of the observations made since the last call."""

    histogram: Callable[[], LatencyHistogram | None]
    scale: float = 1000.0  # seconds -> ms
    _last: dict[int, list[int]] = field(default_factory=dict)

    def __call__(self, limits: AlertSettings) -> float | None:
        histogram = self.histogram()
        if histogram is None:
            return None
        since = self._last.get(id(histogram))
        self._last = {id(histogram): histogram.snapshot()}
        value = histogram.quantile(0.99, since)
        return None if value is None else value * self.scale


@dataclass
class RatioWindow:
    """hits / (hits + misses) since the last call, once there are enough of them."""

    counts: Callable[[], tuple[int, int]]
    minimum: Callable[[AlertSettings], int]
    _last: tuple[int, int] = (0, 0)

    def __call__(self, limits: AlertSettings) -> float | None:
        hits, misses = self.counts()
        dh, dm = hits - self._last[0], misses - self._last[1]
        if dh + dm < self.minimum(limits):
            return None  # too few to judge: keep counting into this window
        self._last = (hits, misses)
        return dh / (dh + dm)


class CacheCounts(Protocol):
    """The encoded-read cache's counters (ConfigService)."""

    cache_hits: int
    cache_misses: int


class Synced(Protocol):
    """When this host last confirmed it holds every upstream change (Replicator)."""

    last_sync: float | None


def daemon_checks(
    *,
    http: HttpStats,
    cache: CacheCounts,
    flag_latency: LatencyHistogram,
    ws_delivery: LatencyHistogram,
    replication: Synced | None,
    clock: Clock,
) -> list[Check]:
    """The daemon's checks (docs/alerts.md): config read and flag evaluation p99, the
    cache hit ratio, WebSocket delivery p99 and, with an upstream, replication lag."""
    checks = [
        Check(
            "config_read_p99",
            "config",
            HistogramWindow(lambda: http.latency.get(("/api/config/{service}", "GET"))),
            lambda limits: limits.config_read_p99_ms,
            unit="ms",
        ),
        Check(
            "cache_hit_ratio",
            "config",
            RatioWindow(
                lambda: (cache.cache_hits, cache.cache_misses),
                lambda limits: limits.cache_min_reads,
            ),
            lambda limits: limits.cache_hit_ratio_min,
            above=False,
        ),
        Check(
            "flag_eval_p99",
            "flags",
            HistogramWindow(lambda: flag_latency),
            lambda limits: limits.flag_eval_p99_ms,
            unit="ms",
        ),
        Check(
            "ws_delivery_p99",
            "websocket",
            HistogramWindow(lambda: ws_delivery),
            lambda limits: limits.ws_delivery_p99_ms,
            unit="ms",
        ),
    ]
    if replication is not None:
        synced = replication

        def staleness(limits: AlertSettings) -> float | None:
            last = synced.last_sync
            return None if last is None else clock.time() - last

        checks.append(
            Check(
                "replication_lag",
                "upstream",
                staleness,
                lambda limits: limits.replication_lag_seconds,
                unit="s",
            )
        )
    return checks


class Alerts:
    def __init__(self, limits: AlertSettings, checks: Sequence[Check]) -> None:
        #: The thresholds (settings' [alerts]); a SIGHUP replaces them.
        self.limits = limits
        self.checks = tuple(checks)
        #: Check name -> what is wrong, while it is wrong.
        self.active: dict[str, str] = {}
        #: Check name -> breaches started since start-up.
        self.fired: Counter[str] = Counter()

    async def run(self) -> None:
        limits = self.limits
        for check in self.checks:
            limit = check.threshold(limits)
            value = check.measure(limits) if limit else None
            if value is None:  # off, or nothing to judge in this window: nothing is wrong
                if self.active.pop(check.name, None) is not None:
                    log.info("performance check clear: no data", extra={"check": check.name})
                continue
            breached = value > limit if check.above else value < limit
            if breached:
                word = "above" if check.above else "below"
                message = f"{check.name} {value:.3g}{check.unit} {word} {limit:g}{check.unit}"
                if check.name not in self.active:
                    self.fired[check.name] += 1
                    log.warning(
                        "performance threshold breached",
                        extra={
                            "check": check.name,
                            "component": check.component,
                            "value": round(value, 4),
                            "threshold": limit,
                        },
                    )
                self.active[check.name] = message
            elif self.active.pop(check.name, None) is not None:
                log.info(
                    "performance back within threshold",
                    extra={"check": check.name, "value": round(value, 4), "threshold": limit},
                )

    def overlay(self, component: str, result: ComponentHealth) -> ComponentHealth:
        """A component whose check is breached reports degraded (down stays down)."""
        breaches = [
            self.active[c.name]
            for c in self.checks
            if c.component == component and c.name in self.active
        ]
        if not breaches or result.status == "down":
            return result
        detail = "; ".join(([result.detail] if result.detail else []) + breaches)
        return msgspec.structs.replace(result, status="degraded", detail=detail)
