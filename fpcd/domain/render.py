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
    """`{"db": {"host": "x"}}` -> `{"DB__HOST": "x"}`; secrets keep their own names.

    Two keys that become one name (`a_b` and `a-b` are both `A_B`, or a secret named like
    a flattened key) are refused: one of the values would silently be lost."""
    flat: dict[str, str] = {}
    origin: dict[str, str] = {}
    stack: list[tuple[list[str], Any]] = [([], config)]
    while stack:
        parts, node = stack.pop()
        if isinstance(node, dict) and (node or not parts):
            stack.extend(([*parts, str(k)], v) for k, v in node.items())
        elif parts:
            name = _env_key(parts)
            _claim(origin, name, "$." + ".".join(parts))
            flat[name] = _scalar(node) if not isinstance(node, dict) else "{}"
    for name, value in (secrets or {}).items():
        _claim(origin, name, f"secret {name}")
        flat[name] = value
    return dict(sorted(flat.items()))


def _claim(origin: dict[str, str], name: str, what: str) -> None:
    other = origin.setdefault(name, what)
    if other != what:
        first, second = sorted((other, what))
        raise RenderError(f"{first} and {second} both become {name}; rename one")


_BARE = re.compile(r"[A-Za-z0-9_./:@+,-]*")
#: A name `sh` takes as an assignment (anything else would run as a command).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Inside '...', python-dotenv decodes \\ and \', and a final backslash escapes the quote.
_DOTENV_ESCAPE = re.compile(r"\\\\|\\\Z")


def _representable(value: str) -> bool:
    """No NUL (no environment variable can hold one), no surrogate, and no Unicode
    noncharacter (systemd refuses to read those)."""
    for char in value:
        code = ord(char)
        if (
            code == 0
            or 0xD800 <= code <= 0xDFFF
            or 0xFDD0 <= code <= 0xFDEF
            or (code & 0xFFFE) == 0xFFFE
        ):
            return False
    return True


def _env_value(value: str) -> str:
    """`value` quoted so that `sh`, `bash` and `dash` (`set -a; . file`) and systemd's
    EnvironmentFile= read back exactly `value`, and python-dotenv (interpolate=False) too
    whenever any syntax it shares with the shells can hold the value.

    The readers speak different quoting languages; the forms come from their common
    ground, most readable first:

    1. bare, for characters every reader takes literally;
    2. '...' when the value has no `'`, no CR and no backslash python-dotenv would take
       as an escape (inside single quotes it decodes \\\\ and \\');
    3. "..." with only backslash and `"` escaped, when the value has no `$`, backquote
       or CR (the shells expand those in double quotes, python-dotenv keeps \\$ as is);
    4. otherwise POSIX single quotes, `'` written as '"'"' and CR kept as it is. The
       shells and systemd read every value this way; python-dotenv reads none of these
       values right in any syntax (it reads CR as a line break), so the form starts with
       an empty '' that python-dotenv refuses (it reports the line and skips the key),
       and every line break inside is followed by '' so that no line of the value can
       pass for a `KEY=` line of its own.
    """
    if _BARE.fullmatch(value):
        return value
    if "'" not in value and "\r" not in value and not _DOTENV_ESCAPE.search(value):
        return "'" + value + "'"
    if not any(c in value for c in "$`\r"):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    body = value.replace("'", "'\"'\"'").replace("\n", "\n''").replace("\r", "\r''")
    return "'''" + body + "'"


def _env_file(flat: dict[str, str]) -> bytes:
    lines = []
    for name, value in flat.items():
        if not _ENV_NAME.fullmatch(name):
            raise RenderError(
                f"{name!r} is not a valid environment variable name"
                " (letters, digits and _, not starting with a digit)"
            )
        if not _representable(value):
            raise RenderError(
                f"the value of {name} holds a character no environment variable can"
                " (NUL, a lone surrogate or a Unicode noncharacter)"
            )
        lines.append(f"{name}={_env_value(value)}\n")
    return "".join(lines).encode()


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
            return _env_file(flat)
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
