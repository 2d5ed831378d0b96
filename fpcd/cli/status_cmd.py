"""`fpcd status`: the daemon's health, replication included."""

from __future__ import annotations

import argparse

from fpcd.cli.common import add_client_options, emit_json
from fpcd.cli.common import transport as connect


def cmd_status(args: argparse.Namespace) -> int:
    response = connect(args).request("GET", "/health")
    doc = response.json()
    if args.json:
        emit_json(doc)
        return 0 if doc["status"] != "down" else 1
    print(
        f"fpcd {doc['version']} on {doc['nodeId']}: {doc['status']}"
        f" (up {doc['uptimeSeconds']:.0f}s)"
    )
    for name, component in sorted(doc["components"].items()):
        line = f"  {name:<11} {component['status']}"
        if component.get("detail"):
            line += f"  {component['detail']}"
        if component.get("counts"):
            line += "  " + " ".join(f"{k}={v}" for k, v in component["counts"].items())
        print(line)
    return 0 if doc["status"] != "down" else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="the daemon's health and replication state")
    add_client_options(p)
    p.set_defaults(handler=cmd_status)
