"""The `fpcd` command: `serve` runs the daemon; the rest talk to it (Unix socket by default)."""

from __future__ import annotations

import argparse
import sys

from fpcd import __version__
from fpcd.cli import (
    audit_cmds,
    config_cmds,
    fineprint_cmd,
    flag_cmds,
    portable_cmds,
    render_cmd,
    secret_cmds,
    serve,
    status_cmd,
    token_cmd,
)
from fpcd.cli.common import CliError
from fpcd.client.transport import TransportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpcd",
        description="Per-host configuration daemon: versioned config, flags and secrets.",
    )
    parser.add_argument("--version", action="version", version=f"fpcd {__version__}")
    sub = parser.add_subparsers(dest="area", required=True, metavar="COMMAND")
    serve.register(sub)
    config_cmds.register(sub)
    flag_cmds.register(sub)
    secret_cmds.register(sub)
    render_cmd.register(sub)
    status_cmd.register(sub)
    token_cmd.register(sub)
    audit_cmds.register(sub)
    portable_cmds.register(sub)
    fineprint_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CliError as error:
        print(f"fpcd: {error}", file=sys.stderr)
        return error.code
    except TransportError as error:
        print(
            f"fpcd: {error}\n(is the daemon running? start it with `fpcd serve`)", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return code
