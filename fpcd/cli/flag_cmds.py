"""`fpcd flag ...`: define, change, archive and evaluate feature flags."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

import msgspec

from fpcd.cli.common import CliError, add_client_options, check, emit_json, load_document, table
from fpcd.cli.common import transport as connect


def _path(key: str, suffix: str = "") -> str:
    return f"/api/features/{urllib.parse.quote(key, safe='')}{suffix}"


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _summary(flag: dict[str, Any]) -> list[Any]:
    rollout = flag.get("rollout", {})
    variants = ",".join(v["id"] for v in flag.get("variants", []))
    return [
        flag["key"],
        "on" if flag["enabled"] else "off",
        rollout.get("percentage", 100),
        variants,
        ",".join(flag.get("tags", [])),
        flag["version"],
    ]


def cmd_list(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"environment": args.env, "tags": ",".join(args.tag or []) or None}
    if args.enabled is not None:
        query["enabled"] = args.enabled
    page = check(connect(args).request("GET", "/api/features", query=query))
    if args.json:
        emit_json(page)
    else:
        table(
            [_summary(f) for f in page["items"]],
            ["key", "enabled", "percent", "variants", "tags", "version"],
        )
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    emit_json(check(connect(args).request("GET", _path(args.key))))
    return 0


def _definition_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        doc = load_document(args.file)
        if not isinstance(doc, dict):
            raise CliError(f"{args.file}: a flag definition must be an object", code=2)
        return doc
    body: dict[str, Any] = {}
    if getattr(args, "name", None):
        body["name"] = args.name
    if args.description is not None:
        body["description"] = args.description
    if args.enabled is not None:
        body["enabled"] = args.enabled
    if args.percentage is not None:
        body["rollout"] = {"percentage": args.percentage}
    if args.tag:
        body["tags"] = args.tag
    return body


def cmd_create(args: argparse.Namespace) -> int:
    body = _definition_from_args(args)
    if "name" not in body:
        raise CliError("a flag needs a name: --name or a file with one", code=2)
    if args.key:
        body["key"] = args.key
    flag = check(connect(args).request("POST", "/api/features", body=body))
    if args.json:
        emit_json(flag)
    else:
        print(f"flag {flag['key']} created (version {flag['version']})")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    body = _definition_from_args(args)
    if not body:
        raise CliError("nothing to change: give --file, --enabled, --percentage, ...", code=2)
    method = "PUT" if args.file else "PATCH"
    flag = check(connect(args).request(method, _path(args.key), body=body))
    if args.json:
        emit_json(flag)
    elif flag.get("changed", True):
        print(f"flag {flag['key']}: version {flag['version']}")
    else:
        print(f"flag {flag['key']}: unchanged (still version {flag['version']})")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    flag = check(connect(args).request("DELETE", _path(args.key)))
    if args.json:
        emit_json(flag)
    else:
        print(f"flag {flag['key']} archived (version {flag['version']}; history kept)")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    page = check(
        connect(args).request("GET", _path(args.key, "/history"), query={"limit": args.limit})
    )
    if args.json:
        emit_json(page)
        return 0
    rows = [
        [
            f["version"],
            f["updatedAt"],
            f["updatedBy"],
            "archived" if f["archived"] else ("on" if f["enabled"] else "off"),
        ]
        for f in page["items"]
    ]
    table(rows, ["version", "updated", "by", "state"])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    context: dict[str, Any] = {}
    if args.context:
        try:
            context = msgspec.json.decode(args.context)
        except msgspec.DecodeError as error:
            raise CliError(f"--context is not valid JSON: {error}", code=2) from None
        if not isinstance(context, dict):
            raise CliError("--context must be a JSON object", code=2)
    for option, field in (
        ("user", "userId"),
        ("agent", "agentId"),
        ("session", "sessionId"),
        ("group", "userGroup"),
        ("region", "region"),
        ("env", "environment"),
    ):
        value = getattr(args, option)
        if value is not None:
            context[field] = value
    for pair in args.attr or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--attr must look like NAME=VALUE, got {pair!r}", code=2)
        try:
            parsed: Any = msgspec.json.decode(value)
        except msgspec.DecodeError:
            parsed = value
        context.setdefault("customAttributes", {})[name] = parsed
    body = {"flags": args.keys or None, "context": context}
    results = check(connect(args).request("POST", "/api/features/evaluate", body=body))["results"]
    if args.json:
        emit_json(results)
        return 0
    rows = [
        [
            key,
            "on" if r["enabled"] else "off",
            r.get("variant") or "",
            r["reason"],
            r.get("detail") or r.get("errorCode") or "",
        ]
        for key, r in results.items()
    ]
    table(rows, ["flag", "enabled", "variant", "reason", "detail"])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flag = sub.add_parser("flag", help="feature flags")
    commands = flag.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        add_client_options(parser)
        parser.set_defaults(handler=handler)
        return parser

    def definition_options(parser: argparse.ArgumentParser, *, with_name: bool) -> None:
        parser.add_argument("--file", help="definition as JSON, TOML or YAML")
        if with_name:
            parser.add_argument("--name", help="display name (the key is derived from it)")
            parser.add_argument("--key", help="explicit key")
        parser.add_argument("--description")
        parser.add_argument("--enabled", type=_bool, help="true or false")
        parser.add_argument("--percentage", type=float, help="rollout percentage, 0-100")
        parser.add_argument("--tag", action="append", help="a tag (repeatable)")

    p = command("list", cmd_list, "list flags")
    p.add_argument("--env", help="environment for --enabled")
    p.add_argument("--enabled", type=_bool, help="only flags that are on (true) or off (false)")
    p.add_argument("--tag", action="append", help="only flags with this tag (repeatable: any)")
    p = command("get", cmd_get, "show a flag's definition")
    p.add_argument("key")
    p = command("create", cmd_create, "create a flag")
    definition_options(p, with_name=True)
    p = command("set", cmd_set, "replace (--file) or change (options) a flag")
    p.add_argument("key")
    definition_options(p, with_name=False)
    p = command("archive", cmd_archive, "archive a flag (its history is kept)")
    p.add_argument("key")
    p = command("history", cmd_history, "a flag's versions")
    p.add_argument("key")
    p.add_argument("--limit", type=int, default=20)
    p = command("eval", cmd_eval, "evaluate flags for a context (all flags if none named)")
    p.add_argument("keys", nargs="*")
    p.add_argument("--user")
    p.add_argument("--agent")
    p.add_argument("--session")
    p.add_argument("--group")
    p.add_argument("--region")
    p.add_argument("--env")
    p.add_argument("--attr", action="append", help="custom attribute NAME=VALUE (repeatable)")
    p.add_argument("--context", help="the whole context as JSON")
