"""The error kinds every layer raises and the one HTTP edge renders.

Each kind carries its HTTP status and a stable problem type so no caller ever
branches on a message string. Messages must never contain secret values.
"""

from __future__ import annotations

import re
from typing import ClassVar

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    """One problem with one input field; `path` is a JSON path such as `$.config.port`."""

    path: str
    message: str


class FpcdError(Exception):
    """Base of every expected failure; anything else is a bug and renders as 500."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class BadRequest(FpcdError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthenticated(FpcdError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"


class Forbidden(FpcdError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(FpcdError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(FpcdError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Gone(FpcdError):
    status = 410
    slug = "gone"
    title = "Gone"


class PreconditionFailed(FpcdError):
    """The caller's expected version is no longer the head (optimistic concurrency)."""

    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


class PayloadTooLarge(FpcdError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class Invalid(FpcdError):
    """Well-formed input that breaks a rule; `errors` lists every failing path."""

    status = 422
    slug = "validation"
    title = "Validation failed"


class TooManyRequests(FpcdError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"


class Unavailable(FpcdError):
    """A dependency (upstream, disk) cannot take the request now; retrying later may work."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class IntegrityProblem(FpcdError):
    """Stored data failed an integrity check (a checksum, SQLite's own check): it is never
    served as good; the operator restores or rewrites it."""

    status = 500
    slug = "integrity"
    title = "Stored data failed its integrity check"


class DiskFull(FpcdError):
    """The disk under the local database is full: nothing was written; reads still work."""

    status = 507
    slug = "disk-full"
    title = "Insufficient storage"


class SettingsError(Exception):
    """A settings file or variable is wrong; the message is one line naming the key."""


_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)


def invalid_from(error: msgspec.ValidationError, root: str = "$") -> Invalid:
    """msgspec puts the failing path after ' - at '; lift it into `errors`."""
    match = _AT.match(str(error))
    assert match is not None
    what = match.group("what")
    path = match.group("path") or "$"
    unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
    if unknown:
        path = f"{path}.{unknown.group(1)}"
        what = "unknown field"
    missing = re.match(r"Object missing required field `([^`]+)`", what)
    if missing:
        path = f"{path}.{missing.group(1)}"
        what = "required field missing"
    path = root + path[1:]
    return Invalid(f"invalid request: {what} at {path}", errors=[FieldError(path, what)])
