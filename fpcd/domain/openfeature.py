"""OpenFeature's view of fpcd flags (pure): contexts in, values and variants out.

Shared by the OFREP routes (fpcd.api.routes_ofrep) and the in-process OpenFeature
provider (fpcd.client.openfeature), so both map contexts the same way. fpcd reasons are
already OpenFeature's (STATIC, TARGETING_MATCH, SPLIT, DISABLED, DEFAULT, ERROR).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fpcd.domain.flags import CONTEXT_FIELDS, EvaluationContext, EvaluationResult
from fpcd.domain.names import valid_name


class InvalidContext(ValueError):
    """The context cannot be an fpcd context (OpenFeature's INVALID_CONTEXT)."""


def context_from(
    attributes: Mapping[str, Any] | None, targeting_key: Any = None
) -> EvaluationContext:
    """An OpenFeature context as an fpcd one.

    `targetingKey` (the argument, or an attribute of that name) is the user id, unless
    `userId` is given too; the context fields map by name and must be strings; anything
    else is a custom attribute (a `customAttributes` object is merged in).
    """
    fields: dict[str, str] = {}
    custom: dict[str, Any] = {}
    for name, value in (attributes or {}).items():
        if name == "targetingKey":
            targeting_key = value if targeting_key is None else targeting_key
            continue
        field = CONTEXT_FIELDS.get(name)
        if field is not None:
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidContext(f"context.{name} must be a string")
            fields[field] = value
        elif name == "customAttributes" and isinstance(value, Mapping):
            custom.update(value)
        else:
            custom[name] = value
    if targeting_key is not None:
        if not isinstance(targeting_key, str):
            raise InvalidContext("context.targetingKey must be a string")
        fields.setdefault("user_id", targeting_key)
    environment = fields.get("environment")
    if environment is not None and not valid_name(environment):
        raise InvalidContext("context.environment must be 1-128 of letters, digits, '.', '_', '-'")
    return EvaluationContext(**fields, custom_attributes=custom)


def variant_of(result: EvaluationResult) -> str:
    """The variant OpenFeature reports: the served variant, else "on" or "off"."""
    if result.variant is not None:
        return result.variant
    return "on" if result.enabled else "off"


def untyped_value(result: EvaluationResult) -> Any:
    """One value per flag, for protocols that do not say which type is wanted (OFREP):
    the served variant's configuration, else its id; with no variant, `enabled`."""
    if result.variant is not None:
        return result.configuration if result.configuration is not None else result.variant
    return result.enabled


def metadata_of(result: EvaluationResult) -> dict[str, bool | int | str]:
    """Flag metadata: whether the flag is on, its version, and the detail if any."""
    metadata: dict[str, bool | int | str] = {
        "enabled": result.enabled,
        "flagVersion": result.flag_version,
    }
    if result.detail is not None:
        metadata["detail"] = result.detail
    return metadata
