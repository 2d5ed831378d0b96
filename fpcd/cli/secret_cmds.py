"""`fpcd secret ...` and `fpcd keygen`: encrypted secrets and their keys."""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.parse
from typing import Any

from fpcd.cli.common import add_client_options, check, emit_json, table
from fpcd.cli.common import transport as connect


def _path(service: str, name: str | None = None, suffix: str = "") -> str:
    path = f"/api/secrets/{urllib.parse.quote(service, safe='')}"
    if name is not None:
        path += f"/{urllib.parse.quote(name, safe='')}"
    return path + suffix


def _ttl(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(s|m|h|d)?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90, 30m, 12h or 7d: {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]


def cmd_set(args: argparse.Namespace) -> int:
    if args.value is None or args.value == "-":
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value  # `echo x |` adds a newline
    else:
        value = args.value
    body: dict[str, Any] = {"value": value}
    if args.ttl is not None:
        body["ttlSeconds"] = args.ttl
    if args.expires_at:
        body["expiresAt"] = args.expires_at
    if args.description:
        body["description"] = args.description
    result = check(
        connect(args).request(
            "PUT", _path(args.service, args.name), body=body, query={"environment": args.env}
        )
    )
    if args.json:
        emit_json(result)
        return 0
    secret = result["secret"]
    state = "stored" if result["changed"] else "unchanged"
    expiry = f", expires {secret['expiresAt']}" if secret.get("expiresAt") else ""
    print(
        f"{secret['serviceName']}/{secret['environment']}/{secret['name']}: version"
        f" {secret['version']} {state}{expiry}"
    )
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    result = check(
        connect(args).request(
            "GET",
            _path(args.service, args.name),
            query={"environment": args.env, "version": args.version},
        )
    )
    if args.json:
        emit_json(result)
    else:
        sys.stdout.write(result["value"] + "\n")
    return 0


def _rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            s["name"],
            s["version"],
            s["createdAt"],
            s.get("expiresAt") or "",
            s.get("accessCount", 0),
            s.get("lastAccessedAt") or "",
            s.get("destroyed") or "",
        ]
        for s in items
    ]


HEADERS = ["name", "version", "created", "expires", "reads", "last read", "destroyed"]


def cmd_list(args: argparse.Namespace) -> int:
    page = check(connect(args).request("GET", _path(args.service), query={"environment": args.env}))
    if args.json:
        emit_json(page)
    else:
        table(_rows(page["items"]), HEADERS)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    page = check(
        connect(args).request(
            "GET", _path(args.service, args.name, "/versions"), query={"environment": args.env}
        )
    )
    if args.json:
        emit_json(page)
    else:
        table(_rows(page["items"]), HEADERS)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    check(
        connect(args).request(
            "DELETE", _path(args.service, args.name), query={"environment": args.env}
        )
    )
    if not args.json:
        print(f"{args.service}/{args.name}: deleted (every version's value destroyed)")
    return 0


def _print_status(status: dict[str, Any]) -> None:
    table(
        [[k["id"], k["state"], k["createdAt"], k["ciphertexts"]] for k in status["keys"]],
        ["key", "state", "created", "ciphertexts"],
    )
    rotation = status["rotation"]
    state = "running" if rotation["running"] else "idle"
    print(
        f"rewrap: {state}, {rotation['remaining']} ciphertext(s) under older keys,"
        f" {rotation['failed']} failed"
    )
    if status.get("previousMasterKeyNeeded"):
        print("master key: data keys still wrapped under secrets.previous_encryption_key")


def cmd_rotate(args: argparse.Namespace) -> int:
    client = connect(args)
    status = check(client.request("POST", "/api/secrets/rotate-key"))
    while args.wait and (
        status["rotation"]["running"]
        or status["rotation"]["remaining"] > status["rotation"]["failed"]
    ):
        time.sleep(0.5)
        status = check(client.request("GET", "/api/keyring"))
    _show(status, args)
    return 0


def _show(status: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        emit_json(status)
    else:
        _print_status(status)


def cmd_keys(args: argparse.Namespace) -> int:
    _show(check(connect(args).request("GET", "/api/keyring")), args)
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    path = f"/api/keyring/{urllib.parse.quote(args.key_id, safe='')}/retire"
    _show(check(connect(args).request("POST", path)), args)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from fpcd.services.keyring import generate_key_text

    print(generate_key_text())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser("keygen", help="print a new 32-byte encryption key (base64)")
    keygen.set_defaults(handler=cmd_keygen)

    secret = sub.add_parser("secret", help="encrypted secrets")
    commands = secret.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str, *, named: bool = True) -> Any:
        parser = commands.add_parser(name, help=help)
        add_client_options(parser)
        parser.set_defaults(handler=handler)
        if named:
            parser.add_argument("service")
            parser.add_argument(
                "--env",
                "--environment",
                dest="env",
                help="environment (default: the daemon's default environment)",
            )
        return parser

    p = command("set", cmd_set, "store a new version (value from --value or stdin)")
    p.add_argument("name")
    p.add_argument("--value", help="the value ('-' or absent: read stdin)")
    p.add_argument("--ttl", type=_ttl, help="expire after this long (90, 30m, 12h, 7d)")
    p.add_argument("--expires-at", help="expire at this ISO 8601 time")
    p.add_argument("--description")
    p = command("get", cmd_get, "print a secret's value (audited)")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    command("list", cmd_list, "a service's secrets (metadata only)")
    p = command("versions", cmd_versions, "a secret's versions (metadata only)")
    p.add_argument("name")
    p = command("delete", cmd_delete, "destroy every version of a secret")
    p.add_argument("name")
    p = command("rotate-key", cmd_rotate, "add a primary key and rewrap every value", named=False)
    p.add_argument("--wait", action="store_true", help="wait until the rewrap is done")
    command("keys", cmd_keys, "data keys and rewrap progress", named=False)
    p = command("retire-key", cmd_retire, "destroy an unused old key", named=False)
    p.add_argument("key_id")
