"""`fpcd render`: print what a [[files]] entry would write, for debugging."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

from fpcd.cli.common import CliError, add_client_options, check
from fpcd.cli.common import transport as connect
from fpcd.domain.render import FORMATS, RenderError, render


def cmd_render(args: argparse.Namespace) -> int:
    template = None
    if args.format == "template":
        if not args.template:
            raise CliError("--format template needs --template FILE", code=2)
        try:
            template = Path(args.template).read_text()
        except OSError as error:
            raise CliError(f"{args.template}: {error.strerror}") from None
    doc = check(
        connect(args).request(
            "GET",
            f"/api/config/{urllib.parse.quote(args.service, safe='')}",
            query={"environment": args.environment, "includeSecrets": args.include_secrets or None},
        )
    )
    secrets = {n: m["value"] for n, m in doc.get("secrets", {}).items() if "value" in m}
    try:
        data = render(
            args.format, doc["config"], secrets=secrets or None, template=template, allow_empty=True
        )
    except RenderError as error:
        raise CliError(str(error)) from None
    sys.stdout.buffer.write(data)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("render", help="print a configuration as a file would hold it")
    add_client_options(p)
    p.add_argument("--service", required=True)
    p.add_argument("--environment", "--env", dest="environment")
    p.add_argument("--format", choices=FORMATS, default="json")
    p.add_argument("--template", help="template file, for --format template")
    p.add_argument("--include-secrets", action="store_true")
    p.set_defaults(handler=cmd_render)
