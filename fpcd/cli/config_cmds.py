"""`fpcd config ...`: read and write versioned configuration through the daemon."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

import msgspec

from fpcd.cli.common import CliError, add_client_options, check, emit_json, load_document, table
from fpcd.cli.common import transport as connect


def _path(service: str, suffix: str = "") -> str:
    return f"/api/config/{urllib.parse.quote(service, safe='')}{suffix}"


def _parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"{what} must look like NAME=VALUE, got {pair!r}", code=2)
        out[name] = value
    return out


def cmd_list(args: argparse.Namespace) -> int:
    page = check(connect(args).request("GET", "/api/config"))
    if args.json:
        emit_json(page)
        return 0
    rows = [
        (item["serviceName"], env["name"], env["version"])
        for item in page["items"]
        for env in item["environments"]
    ]
    table(rows, ["service", "environment", "version"])
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    doc = check(
        connect(args).request(
            "GET",
            _path(args.service),
            query={
                "environment": args.env,
                "version": args.version,
                "raw": args.raw or None,
                "includeSecrets": args.include_secrets or None,
            },
        )
    )
    if args.json:
        emit_json(doc)
        return 0
    base = f" (over default version {doc['baseVersion']})" if doc.get("baseVersion") else ""
    print(f"service:     {doc['serviceName']}")
    print(f"environment: {doc['environment']}")
    print(f"version:     {doc['version']}{base}")
    print(f"checksum:    {doc['checksum']}")
    print(f"written:     {doc['createdAt']} by {doc['createdBy']}")
    if doc.get("description"):
        print(f"description: {doc['description']}")
    if doc.get("tags"):
        print(f"tags:        {', '.join(doc['tags'])}")
    for name, meta in sorted(doc.get("secrets", {}).items()):
        shown = f" = {meta['value']}" if "value" in meta else ""
        print(f"secret:      {name} (version {meta['version']}){shown}")
    print("config:")
    emit_json(doc["config"])
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.data is None):
        raise CliError("give the configuration with exactly one of --file or --data", code=2)
    if args.file is not None:
        config = load_document(args.file)
    else:
        try:
            config = msgspec.json.decode(args.data)
        except msgspec.DecodeError as error:
            raise CliError(f"--data is not valid JSON: {error}", code=2) from None
    if not isinstance(config, dict):
        raise CliError("the configuration must be a JSON object", code=2)
    body: dict[str, Any] = {"environment": args.env, "config": config}
    if args.description:
        body["description"] = args.description
    if args.tag:
        body["tags"] = args.tag
    if args.secret:
        body["secrets"] = _parse_pairs(args.secret, "--secret")
    headers = {"If-Match": f'"{args.if_match}"'} if args.if_match is not None else None
    result = check(connect(args).request("PUT", _path(args.service), body=body, headers=headers))
    if args.json:
        emit_json(result)
    elif result["changed"]:
        print(f"{result['serviceName']}/{result['environment']}: version {result['version']}")
    else:
        print(
            f"{result['serviceName']}/{result['environment']}: unchanged"
            f" (still version {result['version']})"
        )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    page = check(
        connect(args).request(
            "GET",
            _path(args.service, "/history"),
            query={"environment": args.env, "limit": args.limit, "offset": args.offset},
        )
    )
    if args.json:
        emit_json(page)
        return 0
    rows = [
        (
            v["version"],
            v["createdAt"],
            v["createdBy"],
            v.get("action", "update")
            + (f" from {v['rolledBackFrom']}" if v.get("rolledBackFrom") else ""),
            v.get("description", ""),
        )
        for v in page["items"]
    ]
    table(rows, ["version", "created", "by", "action", "description"])
    if page["total"] > page["offset"] + len(page["items"]):
        print(f"({page['total']} versions in all; use --offset to see more)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    result = check(
        connect(args).request(
            "POST",
            _path(args.service, "/rollback"),
            body={"environment": args.env, "version": args.version},
        )
    )
    if args.json:
        emit_json(result)
    elif result["changed"]:
        print(
            f"{result['serviceName']}/{result['environment']}: version {result['version']}"
            f" restores version {args.version}"
        )
    else:
        print(
            f"{result['serviceName']}/{result['environment']}: already has the content of"
            f" version {args.version} (version {result['version']})"
        )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    doc = check(
        connect(args).request(
            "GET",
            _path(args.service, "/diff"),
            query={"environment": args.env, "from": args.from_, "to": args.to},
        )
    )
    if args.json:
        emit_json(doc)
        return 0
    print(f"{doc['serviceName']}/{doc['environment']}: version {doc['from']} -> {doc['to']}")
    enc = msgspec.json.encode
    for change in doc["changes"]:
        if change["op"] == "add":
            print(f"+ {change['path']}: {enc(change.get('value')).decode()}")
        elif change["op"] == "remove":
            print(f"- {change['path']}: {enc(change.get('oldValue')).decode()}")
        else:
            print(
                f"~ {change['path']}: {enc(change.get('oldValue')).decode()}"
                f" -> {enc(change.get('value')).decode()}"
            )
    for name in doc["secretsChanged"]:
        print(f"~ secret {name} changed")
    if not doc["changes"] and not doc["secretsChanged"]:
        print("(no differences)")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    result = check(
        connect(args).request(
            "POST",
            _path(args.service, "/reload"),
            body={"environment": args.env, "force": args.force},
        )
    )
    if args.json:
        emit_json(result)
    else:
        print(f"{result['serviceName']}/{result['environment']}: {result['message']}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.action == "get":
        doc = check(client.request("GET", _path(args.service, "/schema")))
        emit_json(doc if args.json else doc["schema"])
        return 0
    if args.action == "delete":
        doc = check(client.request("DELETE", _path(args.service, "/schema")))
    else:
        if not args.file:
            raise CliError("schema set needs --file", code=2)
        schema = load_document(args.file)
        if not isinstance(schema, dict):
            raise CliError("a schema must be a JSON object", code=2)
        doc = check(client.request("PUT", _path(args.service, "/schema"), body={"schema": schema}))
    if args.json:
        emit_json(doc)
        return 0
    state = "removed" if doc["schema"] is None else "stored"
    print(f"{doc['serviceName']}: schema version {doc['version']} {state}")
    for violation in doc.get("violations", []):
        print(f"warning: current {violation['environment']} config does not match:")
        for error in violation["errors"]:
            print(f"  {error['path']}: {error['message']}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="versioned service configuration")
    commands = config.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        add_client_options(parser)
        parser.set_defaults(handler=handler)
        return parser

    def env(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--env",
            "--environment",
            dest="env",
            help="environment (default: the daemon's default environment)",
        )

    p = command("list", cmd_list, "services and environments known")
    p = command("get", cmd_get, "show a service's configuration")
    p.add_argument("service")
    env(p)
    p.add_argument("--version", type=int, help="a past version")
    p.add_argument("--raw", action="store_true", help="the layer alone, without default")
    p.add_argument("--include-secrets", action="store_true", help="show secret values")

    p = command("set", cmd_set, "write a new version")
    p.add_argument("service")
    env(p)
    p.add_argument("--file", help="JSON, TOML or YAML file ('-' for JSON on stdin)")
    p.add_argument("--data", help="the configuration as a JSON object")
    p.add_argument("--description", help="what this version changes")
    p.add_argument("--tag", action="append", help="a tag (repeatable)")
    p.add_argument("--secret", action="append", help="NAME=VALUE (repeatable)")
    p.add_argument("--if-match", type=int, help="only if the current version is this one")

    p = command("history", cmd_history, "list versions, newest first")
    p.add_argument("service")
    env(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)

    p = command("rollback", cmd_rollback, "write a new version with an old version's content")
    p.add_argument("service")
    p.add_argument("version", type=int)
    env(p)

    p = command("diff", cmd_diff, "what changed between two versions")
    p.add_argument("service")
    env(p)
    p.add_argument("--from", dest="from_", type=int, help="older version (default: to - 1)")
    p.add_argument("--to", type=int, help="newer version (default: the current one)")

    p = command("reload", cmd_reload, "ask subscribers to reload")
    p.add_argument("service")
    env(p)
    p.add_argument("--force", action="store_true", help="even if nothing changed")

    p = command("schema", cmd_schema, "get, set or delete a service's JSON Schema")
    p.add_argument("action", choices=["get", "set", "delete"])
    p.add_argument("service")
    p.add_argument("--file", help="schema file (JSON, TOML or YAML) for set")
