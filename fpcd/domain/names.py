"""The names fpcd accepts, each rule written once: services, environments and secrets
(`NAME_PATTERN`), and flag keys (`FLAG_KEY_PATTERN`). The OpenAPI document, the wire
types, the settings and the route checks all use these."""

from __future__ import annotations

import re

from fpcd.domain.errors import BadRequest, FieldError

#: Service, environment and secret names: a safe set, so none can escape a path, a query
#: or a shell (and `..` is refused on top, see `valid_name`).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
#: Flag keys: lower case (derived keys are too), the same length.
FLAG_KEY_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,127}"

_NAME = re.compile(NAME_PATTERN)
_FLAG_KEY = re.compile(FLAG_KEY_PATTERN)


def valid_name(value: str) -> bool:
    """Names come from a safe set so none can escape a path, a query or a shell."""
    return _NAME.fullmatch(value) is not None and ".." not in value


def check_name(kind: str, value: str) -> str:
    if not valid_name(value):
        raise BadRequest(
            f"invalid {kind} name: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
            errors=[FieldError(kind, f"must match {NAME_PATTERN}")],
        )
    return value


def valid_flag_key(key: str) -> bool:
    return _FLAG_KEY.fullmatch(key) is not None
