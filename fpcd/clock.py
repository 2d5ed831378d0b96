"""The daemon's one notion of wall-clock time.

Everything that compares with a date (flag start and end dates, secret expiry, token
expiry, heartbeats, timestamps written into changes) reads it through a `Clock`, so a
test that builds the daemon with another clock moves all of them together. Durations
(timeouts, latencies, rate limits) use monotonic time and stay outside it.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The same instant in seconds since the epoch (what evaluation compares)."""
        ...


class SystemClock:
    """The host's clock. `time` is `time.time` itself, so the evaluation hot path pays
    no extra call for going through a clock."""

    time = staticmethod(_time.time)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK: Clock = SystemClock()
