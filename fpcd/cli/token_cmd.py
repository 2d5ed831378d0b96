"""`fpcd token create`: issue a token signed with this host's shared secret."""

from __future__ import annotations

import argparse
import re

from fpcd.cli.common import CliError
from fpcd.domain.access import GRANTABLE_SCOPES, ROLES
from fpcd.domain.errors import SettingsError
from fpcd.settings import load_settings


def _ttl(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(s|m|h|d)?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 3600, 30m, 12h or 7d: {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]


def cmd_create(args: argparse.Namespace) -> int:
    from fpcd.services.tokens import TokenVerifier

    try:
        overrides = {"server": {"data_dir": args.data_dir}} if args.data_dir else None
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as error:
        raise CliError(str(error)) from None
    if not settings.auth.enabled:
        raise CliError("token auth is off (auth.enabled = false)")
    try:
        verifier = TokenVerifier(settings)
    except OSError as error:
        raise CliError(
            f"cannot read the signing secret: {error.strerror} (run as the user"
            " that owns the data dir)"
        ) from None
    if not verifier.can_issue:
        raise CliError("tokens come from your identity provider here (RS256/ES256 keys set)")
    token = verifier.issue(
        subject=args.subject or f"{args.role}-token",
        roles=[args.role],
        services=args.service or None,
        environments=args.environment or None,
        scopes=args.scope or None,
        ttl_seconds=args.ttl,
    )
    print(token)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="JWT bearer tokens")
    commands = token.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("create", help="issue a token (HS256, this host's secret)")
    p.add_argument("--role", required=True, choices=sorted(ROLES))
    p.add_argument(
        "--service",
        action="append",
        help="a service name or glob it may touch (repeatable; default: all)",
    )
    p.add_argument(
        "--environment",
        "--env",
        action="append",
        help="an environment it may touch (repeatable; default: all)",
    )
    p.add_argument(
        "--scope",
        action="append",
        choices=sorted(GRANTABLE_SCOPES),
        help="an extra permission (repeatable)",
    )
    p.add_argument(
        "--ttl", type=_ttl, default=_ttl("30d"), help="lifetime (3600, 30m, 12h, 7d; default 30d)"
    )
    p.add_argument("--subject", "--sub", help="who it is for (the audit log's actor)")
    p.add_argument("--config", help="settings file")
    p.add_argument("--data-dir", help="data directory")
    p.set_defaults(handler=cmd_create)
