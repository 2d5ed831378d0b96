"""Timestamps from outside: normalized to UTC and bounded, so none can break a later read.

A date such as `9999-12-31T23:59:59-14:00` is valid ISO 8601 but lies in the year 10000
once converted to UTC, which Python's datetime cannot hold: stored as it was, it made
every later start fail. Every timestamp a user or a replica supplies goes through here:
in UTC, between 1970-01-01 and 9999-12-31 (after conversion), or refused naming its
field. Naive values mean UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fpcd.domain.errors import FieldError, Invalid

MIN_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
#: The last whole second: an epoch float cannot tell microseconds apart out there.
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MIN_EPOCH = MIN_INSTANT.timestamp()
MAX_EPOCH = MAX_INSTANT.timestamp()
RANGE = "between 1970-01-01 and 9999-12-31 (UTC, after applying its offset)"


def in_range(epoch: float) -> bool:
    return MIN_EPOCH <= epoch <= MAX_EPOCH


def to_utc(moment: datetime) -> datetime | None:
    """`moment` in UTC (naive means UTC), or None when it falls outside the range."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # timedelta arithmetic: no overflow even where astimezone() would leave year 1..9999
    if not in_range(moment.timestamp()):
        return None
    return moment.astimezone(UTC)


def checked_utc(moment: datetime, path: str) -> datetime:
    """`moment` in UTC, or Invalid (422) naming the field at `path`."""
    normalized = to_utc(moment)
    if normalized is None:
        raise Invalid(
            f"{path} is out of range: it must be {RANGE}",
            errors=[FieldError(path, f"out of range: must be {RANGE}")],
        )
    return normalized


def parse_iso(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time string as an aware datetime (naive: UTC), unbounded."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso_utc(moment: datetime) -> str:
    """The one text form of a normalized instant: `2030-01-01T00:00:00Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_from_epoch(epoch: float) -> datetime:
    """A stored epoch as a datetime, clamped into the range (never raises)."""
    if epoch >= MAX_EPOCH:
        return MAX_INSTANT
    if epoch <= MIN_EPOCH:
        return MIN_INSTANT
    return datetime.fromtimestamp(epoch, UTC)
