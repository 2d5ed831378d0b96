"""Counters the hot paths keep: plain numbers, no locks, read when /metrics is scraped.

prometheus-client's own Histogram costs 2 µs an observation, 6 µs with labels (its
lock and label lookup; measured here), which is 5 % of a cached config GET and more than
a flag evaluation. Components keep these instead and `fpcd.metrics` turns them
into prometheus-client metric families at scrape time, so the exposition format stays
the library's.
"""

from __future__ import annotations

from bisect import bisect_left

#: Seconds: 50 µs to 10 s, for everything from a flag lookup to a file command.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Fixed buckets (le), a count per bucket plus +Inf, and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def observe_many(self, seconds: float, n: int) -> None:
        """`n` observations of `seconds` each (a batch's mean, recorded in one step)."""
        self.counts[bisect_left(self.bounds, seconds)] += n
        self.total += seconds * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> list[int]:
        return list(self.counts)

    def quantile(self, q: float, since: list[int] | None = None) -> float | None:
        """The q-quantile of the observations made after `since` (a snapshot), estimated
        as Prometheus' histogram_quantile() does: linear within the bucket, the highest
        bound when it falls in +Inf. None when nothing was observed."""
        counts = (
            self.counts
            if since is None
            else [a - b for a, b in zip(self.counts, since, strict=True)]
        )
        n = sum(counts)
        if n == 0:
            return None
        rank = q * n
        seen = 0
        for i, c in enumerate(counts):
            if c and seen + c >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (self.bounds[i] - lower) * (rank - seen) / c
            seen += c
        return self.bounds[-1]

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, +Inf last: a prometheus-client bucket list."""
        out, running = [], 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            running += c
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class RouteStats:
    """One route and method: requests by status, and their latency."""

    __slots__ = ("counts", "latency")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.latency = LatencyHistogram()

    def record(self, status: int, seconds: float | None) -> None:
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        if seconds is not None:  # None: a WebSocket session, which has no latency
            latency = self.latency
            latency.counts[bisect_left(latency.bounds, seconds)] += 1
            latency.total += seconds


class HttpStats:
    """Requests by (route, method, status) and latency by (route, method): the request
    pipeline's counters. Routes are the router's templates, so the label set is bounded.
    The pipeline keeps each route's `RouteStats` and counts into it directly."""

    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteStats] = {}

    def route(self, route: str, method: str) -> RouteStats:
        stats = self.routes.get((route, method))
        if stats is None:
            stats = self.routes[(route, method)] = RouteStats()
        return stats

    @property
    def requests(self) -> dict[tuple[str, str, int], int]:
        return {
            (route, method, status): n
            for (route, method), stats in list(self.routes.items())
            for status, n in list(stats.counts.items())
        }

    @property
    def latency(self) -> dict[tuple[str, str], LatencyHistogram]:
        """The routes that have latencies (WebSocket sessions have none)."""
        return {key: s.latency for key, s in list(self.routes.items()) if s.latency.count}
