"""The `fpcd` command: `serve` runs the daemon; the rest talk to it (Unix socket by default)."""

from __future__ import annotations

import argparse
import importlib
import sys

from fpcd import __version__
from fpcd.cli.common import CliError

#: The modules of the commands, in the order `fpcd --help` lists them.
MODULES = (
    "serve",
    "config_cmds",
    "flag_cmds",
    "secret_cmds",
    "render_cmd",
    "status_cmd",
    "token_cmd",
    "audit_cmds",
    "portable_cmds",
    "fineprint_cmd",
)
#: Which module registers each command: `fpcd serve` imports only the serve module,
#: not the client commands (tests/test_footprint.py checks this table is complete).
COMMANDS = {
    "serve": "serve",
    "migrate": "serve",
    "config": "config_cmds",
    "flag": "flag_cmds",
    "keygen": "secret_cmds",
    "secret": "secret_cmds",
    "render": "render_cmd",
    "status": "status_cmd",
    "token": "token_cmd",
    "audit": "audit_cmds",
    "export": "portable_cmds",
    "import": "portable_cmds",
    "backup": "portable_cmds",
    "import-fineprint": "fineprint_cmd",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of `command`'s module when it names one."""
    parser = argparse.ArgumentParser(
        prog="fpcd",
        description="Per-host configuration daemon: versioned config, flags and secrets.",
    )
    parser.add_argument("--version", action="version", version=f"fpcd {__version__}")
    sub = parser.add_subparsers(dest="area", required=True, metavar="COMMAND")
    modules = (COMMANDS[command],) if command in COMMANDS else MODULES
    for name in modules:
        importlib.import_module(f"fpcd.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    # A command first (`fpcd serve ...`): only its module; anything else (`fpcd --help`,
    # no command, an unknown one) sees them all, as its help or error lists them.
    args = build_parser(given[0] if given else None).parse_args(given)
    try:
        code: int = args.handler(args)
    except CliError as error:
        print(f"fpcd: {error}", file=sys.stderr)
        return error.code
    except Exception as error:
        from fpcd.client.transport import TransportError

        if not isinstance(error, TransportError):
            raise
        print(
            f"fpcd: {error}\n(is the daemon running? start it with `fpcd serve`)", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return code
