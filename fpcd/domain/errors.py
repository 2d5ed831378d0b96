"""The error kinds every layer raises and the one HTTP edge renders.

Each kind carries its HTTP status and a stable problem type so no caller ever
branches on a message string. Messages must never contain secret values.
"""

from __future__ import annotations

import re
from typing import ClassVar, NamedTuple

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
_FIELD = re.compile(r"Object (?:(?P<unknown>contains unknown)|missing required) field `([^`]+)`")


class ValidationMessage(NamedTuple):
    """A msgspec ValidationError's message taken apart: the one reading of its format."""

    #: What is wrong, as msgspec says it ("Expected `int`, got `str`").
    what: str
    #: Where: a JSON path, "$" for the document itself.
    path: str
    #: The field an "unknown field" or "missing required field" message names.
    field: str | None = None
    unknown: bool = False


def validation_message(error: msgspec.ValidationError) -> ValidationMessage:
    """msgspec puts the failing path after ' - at '; unknown and missing fields name the
    field in the message."""
    match = _AT.match(str(error))
    assert match is not None
    what, path = match.group("what"), match.group("path") or "$"
    named = _FIELD.match(what)
    if named is None:
        return ValidationMessage(what, path)
    return ValidationMessage(what, path, named.group(2), named.group("unknown") is not None)


def invalid_from(error: msgspec.ValidationError, root: str = "$") -> Invalid:
    """A 422 whose `errors` name the failing path (unknown and missing fields included)."""
    message = validation_message(error)
    what, path = message.what, message.path
    if message.field is not None:
        path = f"{path}.{message.field}"
        what = "unknown field" if message.unknown else "required field missing"
    path = root + path[1:]
    return Invalid(f"invalid request: {what} at {path}", errors=[FieldError(path, what)])
