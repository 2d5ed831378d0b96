"""A clock a test can move: the daemon's notion of now (`fpcd.clock.Clock`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class MovableClock:
    """The host's clock plus `offset`; moving it moves everything the daemon dates
    (flag schedules, secret expiry, token expiry, timestamps it writes)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def time(self) -> float:
        return time.time() + self.offset.total_seconds()
