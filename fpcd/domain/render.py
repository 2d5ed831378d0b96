"""Rendering a configuration to the bytes of a file (pure: the same input, the same bytes).

Formats: json, toml, yaml, env (KEY=VALUE, nested keys flattened as A__B) and template
(Python's string.Template over the flattened keys). Output is deterministic (sorted
keys) so an unchanged configuration is never rewritten.
"""

from __future__ import annotations

import re
import string
from typing import Any

import msgspec

# yaml and tomli_w are imported by the formats that use them (issue 18: idle memory).

FORMATS = ("json", "toml", "yaml", "env", "template")


class RenderError(Exception):
    """The configuration cannot be written in this format; the message says why."""


def _env_key(parts: list[str]) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return msgspec.json.encode(value).decode()  # lists: JSON


def flatten(config: dict[str, Any], secrets: dict[str, str] | None = None) -> dict[str, str]:
    """`{"db": {"host": "x"}}` -> `{"DB__HOST": "x"}`; secrets keep their own names."""
    flat: dict[str, str] = {}
    stack: list[tuple[list[str], Any]] = [([], config)]
    while stack:
        parts, node = stack.pop()
        if isinstance(node, dict) and (node or not parts):
            stack.extend(([*parts, str(k)], v) for k, v in node.items())
        elif parts:
            flat[_env_key(parts)] = _scalar(node) if not isinstance(node, dict) else "{}"
    for name, value in (secrets or {}).items():
        flat[name] = value
    return dict(sorted(flat.items()))


_BARE = re.compile(r"[A-Za-z0-9_./:@+,-]*")


def _env_value(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")
    )
    return f'"{escaped}"'


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _find_null(value: Any, path: str = "$") -> str | None:
    if value is None:
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_null(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_null(v, f"{path}[{i}]")
            if found:
                return found
    return None


def render(
    fmt: str,
    config: dict[str, Any],
    *,
    secrets: dict[str, str] | None = None,
    template: str | None = None,
    allow_empty: bool = False,
) -> bytes:
    """The file's bytes. Secrets go under a top-level "secrets" object in json, toml and
    yaml, and under their own names in env and template."""
    if not config and not secrets and not allow_empty:
        raise RenderError("the configuration is empty; set allow_empty to write it anyway")
    if fmt in ("env", "template"):
        flat = flatten(config, secrets)
        if fmt == "env":
            return "".join(f"{k}={_env_value(v)}\n" for k, v in flat.items()).encode()
        if template is None:
            raise RenderError("format 'template' needs a template")
        try:
            return string.Template(template).substitute(flat).encode()
        except KeyError as error:
            raise RenderError(
                f"the template uses ${error.args[0]}, which the configuration does not have"
            ) from None
        except ValueError as error:
            raise RenderError(f"the template is not valid: {error}") from None
    data = _sorted({**config, "secrets": secrets} if secrets else config)
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"
    if fmt == "yaml":
        import yaml

        text = yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)
        return text.encode()
    if fmt == "toml":
        null = _find_null(data)
        if null:
            raise RenderError(f"TOML has no null value, and {null} is null")
        import tomli_w

        try:
            return tomli_w.dumps(data).encode()
        except TypeError as error:
            raise RenderError(f"cannot write TOML: {error}") from None
    raise RenderError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
