"""Configuration rules: names, layering, checksums, diffs, limits and schemas."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec

from fpcd.domain.errors import FieldError, Invalid

# Names are fpcd.domain.names' rule; importable from here too, as they long were.
from fpcd.domain.names import check_name as check_name
from fpcd.domain.names import valid_name as valid_name

# fpcd.domain.schemas (jsonschema, referencing, RE2) is imported where a schema is used:
# a daemon whose services have none never loads it (issue 18: idle memory).

#: The environment every other environment of a service layers on top of.
BASE_ENVIRONMENT = "default"

#: `expected_version` meaning "any existing version" (`If-Match: *`).
ANY_VERSION = -1

_canonical_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: equal values give equal bytes on every host."""
    return _canonical_encoder.encode(value)


def checksum(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def content_checksum(config: dict[str, Any], secret_versions: dict[str, int]) -> str:
    """Identity of a layer's content (config and which secret versions it holds);
    an unchanged write has the same checksum."""
    return checksum({"config": config, "secrets": secret_versions})


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Objects merge key by key; anything else in `over` replaces what `base` had."""
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


class DiffOp(msgspec.Struct, frozen=True, omit_defaults=True):
    """One RFC 6902-style step from the old document to the new one."""

    op: str
    path: str
    value: Any = None
    old_value: Any = msgspec.field(default=None, name="oldValue")


def _pointer(parent: str, key: str | int) -> str:
    token = str(key).replace("~", "~0").replace("/", "~1")
    return f"{parent}/{token}"


def diff(old: Any, new: Any, path: str = "") -> list[DiffOp]:
    """Objects are compared key by key; any other difference replaces the whole value."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[DiffOp] = []
        for key in sorted(old.keys() | new.keys()):
            child = _pointer(path, key)
            if key not in new:
                ops.append(DiffOp("remove", child, old_value=old[key]))
            elif key not in old:
                ops.append(DiffOp("add", child, value=new[key]))
            else:
                ops.extend(diff(old[key], new[key], child))
        return ops
    if old == new and type(old) is type(new):
        return []
    return [DiffOp("replace", path, value=new, old_value=old)]


def _json_path(parts: list[str | int]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += "[" + msgspec.json.encode(part).decode() + "]"
    return out


def check_limits(value: Any, *, max_depth: int, max_keys: int, path: str) -> list[FieldError]:
    """Depth and key-count limits, walked without recursion so no input can overflow."""
    keys = 0
    stack: list[tuple[Any, int, list[str | int]]] = [(value, 1, [])]
    while stack:
        node, depth, parts = stack.pop()
        if depth > max_depth and isinstance(node, dict | list):
            where = path + _json_path(parts)[1:]
            return [FieldError(where, f"objects and arrays nested deeper than {max_depth}")]
        if isinstance(node, dict):
            keys += len(node)
            if keys > max_keys:
                return [FieldError(path, f"more than {max_keys} keys in total")]
            stack.extend((child, depth + 1, [*parts, k]) for k, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, depth + 1, [*parts, i]) for i, child in enumerate(node))
    return []


class SchemaValidator:
    """A compiled JSON Schema (2020-12); built once per schema version, reused per write.

    Regular expressions run on RE2 and references stay local (`fpcd.domain.schemas`);
    the daemon runs this in a worker process under a time budget."""

    def __init__(self, schema: dict[str, Any]) -> None:
        from fpcd.domain.schemas import validator_for

        self.schema = schema
        self._validator = validator_for(schema)

    def errors(self, document: dict[str, Any], prefix: str) -> list[FieldError]:
        found: list[FieldError] = []
        for error in self._validator.iter_errors(document):
            where = prefix + error.json_path[1:]
            found.append(FieldError(where, error.message))
        found.sort(key=lambda e: e.path)
        return found


def schema_problems(schema: dict[str, Any]) -> list[FieldError]:
    """What `compile_schema` refuses, as a list (paths under `$.schema`)."""
    from fpcd.domain.schemas import check_schema

    return check_schema(schema, lambda parts: "$.schema" + _json_path(parts)[1:])


def compile_schema(schema: dict[str, Any]) -> SchemaValidator:
    """Refuse a schema that could never validate a write, listing where it is wrong: not
    valid 2020-12, a pattern RE2 does not accept, a reference that does not resolve
    locally, or references that loop without descending into the document."""
    errors = schema_problems(schema)
    if errors:
        raise Invalid(
            "the schema is not a valid JSON Schema (2020-12) fpcd can apply", errors=errors
        )
    return SchemaValidator(schema)


def effective_configs(
    environment: str,
    layer: dict[str, Any],
    layers: dict[str, dict[str, Any]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every effective document a write of `layer` to `environment` produces.

    Writing an environment changes one document; writing `default` changes every
    environment that layers on it (or, with none, only itself).
    """
    if environment != BASE_ENVIRONMENT:
        base = layers.get(BASE_ENVIRONMENT, {})
        yield environment, deep_merge(base, layer)
        return
    others = {env: cfg for env, cfg in layers.items() if env != BASE_ENVIRONMENT}
    if not others:
        yield environment, layer
    for env in sorted(others):
        yield env, deep_merge(layer, others[env])


def missing_paths(config: dict[str, Any], paths: list[str]) -> list[str]:
    """The dotted paths (`database.host`) that do not resolve in `config`."""
    missing = []
    for path in paths:
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
    return missing
