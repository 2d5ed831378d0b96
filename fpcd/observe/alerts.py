"""Performance checks: thresholds over the window since the last run.

A breach logs one warning when it starts (and one info line when it clears), marks the
component it belongs to degraded in /health, and counts in `fpcd_alerts_total`. The
latency checks read the same histograms /metrics exposes, with the estimate
Prometheus' `histogram_quantile` uses, so docs/alerts.md's rules agree with them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from fpcd.observe.stats import LatencyHistogram
from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.alerts")


@dataclass
class Check:
    name: str
    #: The /health component a breach degrades.
    component: str
    #: The value over the current window; None when there is nothing to judge.
    measure: Callable[[], float | None]
    #: The limit, or 0 for off; read on every run, so a SIGHUP applies at once.
    threshold: Callable[[], float]
    #: A breach is a value above the threshold (False: below it).
    above: bool = True
    unit: str = ""


@dataclass
class HistogramWindow:
    """The p99 of the observations made since the last call."""

    histogram: Callable[[], LatencyHistogram | None]
    scale: float = 1000.0  # seconds -> ms
    _last: dict[int, list[int]] = field(default_factory=dict)

    def __call__(self) -> float | None:
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
    minimum: Callable[[], int]
    _last: tuple[int, int] = (0, 0)

    def __call__(self) -> float | None:
        hits, misses = self.counts()
        dh, dm = hits - self._last[0], misses - self._last[1]
        if dh + dm < self.minimum():
            return None  # too few to judge: keep counting into this window
        self._last = (hits, misses)
        return dh / (dh + dm)


class Alerts:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        #: Check name -> what is wrong, while it is wrong.
        self.active: dict[str, str] = {}
        #: Check name -> breaches started since start-up.
        self.fired: Counter[str] = Counter()

    def add(self, check: Check) -> None:
        self.checks.append(check)

    async def run(self) -> None:
        for check in self.checks:
            limit = check.threshold()
            value = check.measure() if limit else None
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
