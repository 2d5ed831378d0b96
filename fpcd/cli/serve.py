"""`fpcd serve` and `fpcd migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from fpcd.cli.common import CliError
from fpcd.domain.errors import SettingsError
from fpcd.settings import load_settings

#: sysexits' EX_CONFIG: systemd units use it to stop restarting on a bad settings file
#: (and on every other start-up failure a restart cannot fix: see app.FatalStartupError).
EXIT_SETTINGS = 78


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for section, key, value in (
        ("server", "data_dir", args.data_dir),
        ("server", "runtime_dir", getattr(args, "runtime_dir", None)),
        ("server", "api_host", getattr(args, "api_host", None)),
        ("server", "api_port", getattr(args, "api_port", None)),
        ("server", "ws_port", getattr(args, "ws_port", None)),
        ("log", "level", getattr(args, "log_level", None)),
        ("log", "format", getattr(args, "log_format", None)),
    ):
        if value is not None:
            chosen.setdefault(section, {})[key] = value
    return chosen


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so client commands start fast without the server stack.
    from fpcd.app import Daemon, StartupError
    from fpcd.observe.logging import configure_logging

    overrides = _overrides(args)
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as error:
        print(f"fpcd: {error}", file=sys.stderr)
        return EXIT_SETTINGS
    configure_logging(settings.log.level, settings.log.format)
    daemon = Daemon(settings, settings_path=args.config, overrides=overrides)
    try:
        with _event_loop_runner() as runner:
            runner.run(daemon.run())
    except StartupError as error:
        # One line, on stderr (the journal under systemd); 78 when a restart cannot help.
        print(f"fpcd: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from fpcd.store.lock import DataDirInUse, DataDirLock
    from fpcd.store.sqlite import migrate

    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except SettingsError as error:
        raise CliError(str(error), code=EXIT_SETTINGS) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(settings.data_dir)  # never change the schema under a running daemon
    try:
        lock.acquire()
    except DataDirInUse as error:
        raise CliError(f"{error} (the daemon migrates its database at start)", code=1) from None
    try:
        before, after = asyncio.run(migrate(settings.database))
    finally:
        lock.release()
    if before == after:
        print(f"{settings.database}: schema is current (version {after})")
    else:
        print(f"{settings.database}: schema upgraded from version {before} to {after}")
    if args.upstream:
        if not settings.upstream.postgres_url:
            raise CliError("--upstream needs upstream.postgres_url (or DATABASE_URL)", code=2)
        before, after = asyncio.run(_migrate_upstream(settings.upstream.postgres_url))
        if before == after:
            print(f"upstream: schema is current (version {after})")
        else:
            print(f"upstream: schema upgraded from version {before} to {after}")
    return 0


async def _migrate_upstream(url: str) -> tuple[int, int]:
    from fpcd.upstream.log import UPSTREAM_ERRORS, UpstreamLog

    log_ = UpstreamLog(url)
    try:
        await log_.open()
        return await log_.migrate()
    except UPSTREAM_ERRORS as error:
        raise CliError(f"cannot reach the upstream: {error}") from None
    finally:
        await log_.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML settings file")
    serve.add_argument("--data-dir", help="data directory (default ./fpcd-data)")
    serve.add_argument("--runtime-dir", help="directory of the Unix sockets (default: data dir)")
    serve.add_argument("--api-host", help="address of the REST API (default 127.0.0.1)")
    serve.add_argument("--api-port", type=int, help="port of the REST API (default 3001)")
    serve.add_argument("--ws-port", type=int, help="port of the WebSocket server (default 8080)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "text"])
    serve.set_defaults(handler=cmd_serve)

    mig = sub.add_parser("migrate", help="create or upgrade the local database schema")
    mig.add_argument("--config", help="TOML settings file")
    mig.add_argument("--data-dir", help="data directory")
    mig.add_argument("--upstream", action="store_true", help="also the Postgres upstream schema")
    mig.set_defaults(handler=cmd_migrate)
