"""What every CLI command shares: finding the daemon, printing results, reading files."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from fpcd.client.transport import Response, Transport
from fpcd.domain.errors import SettingsError
from fpcd.settings import load_settings

#: Where a packaged fpcd (systemd RuntimeDirectory=fpcd) puts its API socket.
SYSTEM_SOCKET = Path("/run/fpcd/fpcd.sock")


class CliError(Exception):
    """A failure to report on stderr with a non-zero exit; never a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("FPCD_URL"),
        help="daemon URL (default: the local daemon's Unix socket)",
    )
    group.add_argument("--token", default=os.environ.get("FPCD_TOKEN"), help="bearer token")
    group.add_argument(
        "--socket", default=os.environ.get("FPCD_SOCKET"), help="path of the daemon's API socket"
    )
    group.add_argument("--config", help="settings file, used to find the socket")
    group.add_argument("--json", action="store_true", help="print the daemon's JSON as-is")


def _admin_token(config: str | None) -> str | None:
    """The daemon's admin token file, when this user may read it (the embedded default)."""
    try:
        settings = load_settings(config)
        return (settings.data_dir / "admin.token").read_text().strip() or None
    except (SettingsError, OSError):
        return None


def transport(args: argparse.Namespace) -> Transport:
    if args.url:
        return Transport(url=args.url, token=args.token or _admin_token(args.config))
    if args.socket:
        return Transport(socket_path=args.socket, token=args.token)
    try:
        settings = load_settings(args.config)
    except SettingsError as error:
        raise CliError(str(error)) from None
    path = settings.api_socket
    if not path.exists() and SYSTEM_SOCKET.exists():
        path = SYSTEM_SOCKET
    return Transport(socket_path=str(path), token=args.token)


def check(response: Response) -> Any:
    """The decoded body of a successful response; a problem document becomes a CliError."""
    if response.status < 400:
        return response.json()
    try:
        problem = response.json()
    except msgspec.DecodeError:
        problem = None
    if not isinstance(problem, dict):
        raise CliError(f"daemon answered {response.status}")
    lines = [f"{problem.get('title', 'error')} ({response.status}): {problem.get('detail', '')}"]
    for error in problem.get("errors") or []:
        lines.append(f"  {error.get('path')}: {error.get('message')}")
    raise CliError("\n".join(lines))


def emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers))
    print(line.rstrip())
    for row in cells:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def load_document(path: str) -> Any:
    """A JSON, TOML or YAML document from a file (by extension) or `-` for JSON on stdin."""
    try:
        if path == "-":
            return msgspec.json.decode(sys.stdin.buffer.read())
        data = Path(path).read_bytes()
    except OSError as error:
        raise CliError(f"{path}: {error.strerror}") from None
    except msgspec.DecodeError as error:
        raise CliError(f"stdin: not valid JSON: {error}") from None
    suffix = Path(path).suffix.lower()
    import yaml  # here, not at the top: `fpcd serve` imports this module too

    try:
        if suffix == ".toml":
            return tomllib.loads(data.decode())
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(data)
        return msgspec.json.decode(data)
    except tomllib.TOMLDecodeError as error:
        raise CliError(f"{path}: not valid TOML: {error}") from None
    except yaml.YAMLError as error:
        raise CliError(f"{path}: not valid YAML: {error}") from None
    except msgspec.DecodeError as error:
        raise CliError(f"{path}: not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
