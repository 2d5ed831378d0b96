"""`fpcd status`: a human summary of health, contents, replication, alerts and top flags."""

from __future__ import annotations

import argparse
from typing import Any

from fpcd.cli.common import add_client_options, emit_json
from fpcd.cli.common import transport as connect


def _component_line(name: str, component: dict[str, Any]) -> str:
    parts = [component["detail"]] if component.get("detail") else []
    parts += [f"{k}={v}" for k, v in (component.get("counts") or {}).items()]
    return f"  {name:<11} {component['status']:<9} {'  '.join(parts)}".rstrip()


def cmd_status(args: argparse.Namespace) -> int:
    doc = connect(args).request("GET", "/api/status").json()
    health = doc["health"]
    if args.json:
        emit_json(doc)
        return 0 if health["status"] != "down" else 1
    print(
        f"fpcd {health['version']} on {health['nodeId']}: {health['status']}"
        f" (up {health['uptimeSeconds']:.0f}s)"
    )
    print(
        f"holds {doc['services']} services, {doc['environments']} environments,"
        f" {doc['configLayers']} config layers, {doc['flags']} flags"
    )
    print("components:")
    for name, component in health["components"].items():
        print(_component_line(name, component))
    upstream = health["components"].get("upstream", {})
    counts = upstream.get("counts")
    if counts:
        since = counts.get("secondsSinceSync")
        print(
            f"replication: cursor {counts['cursor']} of {counts['head']}, lag={counts['lag']}"
            + (f", last sync {since}s ago" if since is not None else "")
        )
    else:
        print(f"replication: {upstream.get('detail', 'none')}")
    if doc["alerts"]:
        print("alerts:")
        for name, message in doc["alerts"].items():
            print(f"  {name}: {message}")
    if doc["topFlags"]:
        print("top flags (evaluations since start, enabled share):")
        for flag in doc["topFlags"]:
            share = flag["enabled"] / flag["evaluations"] if flag["evaluations"] else 0.0
            print(f"  {flag['key']:<30} {flag['evaluations']:>10}  {share:6.1%}")
    return 0 if health["status"] != "down" else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", help="health, contents, replication, alerts and the most evaluated flags"
    )
    add_client_options(p)
    p.set_defaults(handler=cmd_status)
