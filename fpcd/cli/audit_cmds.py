"""`fpcd audit ...`: read and verify the hash-chained audit log."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec

from fpcd.cli.common import CliError, add_client_options, check, emit_json, table
from fpcd.cli.common import transport as connect
from fpcd.settings import load_settings


def cmd_tail(args: argparse.Namespace) -> int:
    page = check(
        connect(args).request(
            "GET", "/api/audit", query={"target": args.target, "limit": args.limit}
        )
    )
    if args.json:
        emit_json(page)
        return 0
    rows = [
        (
            e["id"],
            e["at"],
            e["actor"],
            e["action"],
            e["target"],
            msgspec.json.encode(e["details"]).decode(),
        )
        for e in reversed(page["items"])
    ]
    table(rows, ["id", "at", "actor", "action", "target", "details"])
    return 0


async def _verify_offline(data_dir: str | None, config: str | None) -> Any:
    from fpcd.domain.model import Caller
    from fpcd.services.audit import AuditService
    from fpcd.store.sqlite import Store

    overrides = {"server": {"data_dir": data_dir}} if data_dir else None
    settings = load_settings(config, overrides=overrides)
    if not settings.database.exists():
        raise CliError(f"{settings.database}: no database here")
    store = Store(settings.database)
    await store.open_readonly()
    try:
        # Whoever can read the data dir is trusted with it, as the Unix socket's peer is.
        result = await AuditService(store).verify(Caller.system("fpcd:cli"))
        return msgspec.to_builtins(result)
    finally:
        await store.close()


def cmd_verify(args: argparse.Namespace) -> int:
    if args.data_dir:
        result = asyncio.run(_verify_offline(args.data_dir, args.config))
    else:
        response = connect(args).request("GET", "/api/audit/verify")
        result = response.json() if response.status in (200, 409) else check(response)
    if args.json:
        emit_json(result)
    elif result["ok"]:
        print(f"audit log intact: {result['entries']} entries verified")
    else:
        print(
            f"AUDIT LOG TAMPERED: {len(result['breaks'])} problem(s) in {result['entries']} entries"
        )
        for problem in result["breaks"]:
            print(f"  entry {problem['id']}: {problem['reason']}")
    return 0 if result["ok"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the hash-chained audit log")
    commands = audit.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("tail", help="the latest entries")
    add_client_options(p)
    p.add_argument("--target", help="only entries for this target (e.g. config:web/production)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=cmd_tail)
    p = commands.add_parser("verify", help="recompute the hash chain; exit 1 if tampered")
    add_client_options(p)
    p.add_argument(
        "--data-dir", help="verify the database in this data dir directly (no daemon needed)"
    )
    p.set_defaults(handler=cmd_verify)
