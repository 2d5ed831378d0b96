"""What an idle daemon costs: it imports only what its settings use (issue 18), and the
periodic jobs that replaced APScheduler's interval jobs behave as those did."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fpcd.clock import SYSTEM_CLOCK
from fpcd.services.scheduler import Scheduler

#: Libraries a configuration may not use; a standalone daemon must not load them.
OPTIONAL = ["asyncpg", "redis", "prometheus_client", "jsonschema", "apscheduler", "watchdog"]

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    import aiohttp
    from fpcd.app import Daemon
    from fpcd.settings import load_settings

    OPTIONAL = {optional!r}

    async def main():
        settings = load_settings(None, overrides={{"server": {{
            "data_dir": sys.argv[1], "api_port": int(sys.argv[2]), "ws_port": int(sys.argv[3]),
        }}}})
        daemon = Daemon(settings)
        await daemon.start()
        try:
            token = (settings.data_dir / "admin.token").read_text().strip()
            headers = {{"Authorization": "Bearer " + token}}
            async with aiohttp.ClientSession(daemon.addresses["api"], headers=headers) as http:
                r = await http.put("/api/config/web", json={{"environment": "production",
                                                             "config": {{"port": 80}}}})
                assert r.status == 200, await r.text()
                assert (await http.get("/api/config/web?environment=production")).status == 200
                r = await http.post("/api/features", json={{"name": "beta", "enabled": True}})
                assert r.status == 201, await r.text()
                idle = sorted(m for m in OPTIONAL if m in sys.modules)
                metrics = await http.get("/metrics")
                scraped = metrics.status, "fpcd_http_requests_total" in await metrics.text()
                after = sorted(m for m in OPTIONAL if m in sys.modules)
        finally:
            await daemon.stop()
        print(json.dumps({{"idle": idle, "scraped": scraped, "after_scrape": after}}))

    asyncio.run(main())
    """
).format(optional=OPTIONAL)


def test_a_standalone_daemon_loads_no_optional_library_until_used(tmp_path: Path) -> None:
    from tests.conftest import free_port

    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data"), str(free_port()), str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = json.loads(out.splitlines()[-1])
    # Configs and flags written and read: no Postgres, Redis, schema, scheduler, watcher.
    assert found["idle"] == []
    # The first scrape loads prometheus-client, and /metrics answers as always.
    assert found["scraped"] == [200, True]
    assert found["after_scrape"] == ["prometheus_client"]


SERVE_PROBE = textwrap.dedent(
    """
    import json, sys
    from fpcd.cli import main
    code = main(["serve", "--config", sys.argv[1]])  # a missing file: refused, exit 78
    print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules
                                                      if m.startswith("fpcd.cli."))}))
    """
)


def test_fpcd_serve_imports_no_client_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVE_PROBE, str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = json.loads(out.splitlines()[-1])
    assert found["code"] == 78
    # The daemon's command and what it shares with the others; no config, flag, secret,
    # export or import command (their code would sit in the daemon's memory for nothing).
    assert found["modules"] == ["fpcd.cli.common", "fpcd.cli.serve"]


def test_every_command_is_found_by_its_module() -> None:
    import argparse

    from fpcd.cli import COMMANDS, MODULES, build_parser

    def commands(parser: argparse.ArgumentParser) -> set[str]:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    # `fpcd --help` lists every command, and the table names each one's module.
    assert commands(build_parser()) == set(COMMANDS)
    assert set(COMMANDS.values()) == set(MODULES)
    for command in COMMANDS:
        assert command in commands(build_parser(command))


def test_free_heap_pages_are_given_back_after_start() -> None:
    import platform

    from fpcd.app import return_free_heap

    # glibc has malloc_trim (the daemon calls it once, after start-up); others say False.
    assert return_free_heap() is (platform.libc_ver()[0] == "glibc")


async def test_periodic_jobs_run_one_at_a_time_and_skip_missed_runs() -> None:
    scheduler = Scheduler(SYSTEM_CLOCK)
    scheduler.start()
    starts: list[float] = []
    release, first, third = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        starts.append(time.monotonic())
        first.set()
        if len(starts) == 1:
            await release.wait()  # the first run outlasts many periods
        if len(starts) == 3:
            third.set()

    scheduler.every("test:slow", 0.02, slow)
    try:
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(0.2)  # ten periods pass while the first run goes on
        assert len(starts) == 1  # never two at once
        release.set()
        await asyncio.wait_for(third.wait(), 10)
        # The missed periods were not made up in a burst: runs stay a period apart.
        assert starts[2] - starts[1] >= 0.015
        assert scheduler.job_ids("test:") == ["test:slow"] and scheduler.count == 1
        assert scheduler.runs[("test:slow", "ok")] >= 2
    finally:
        await scheduler.stop()
    assert not scheduler.running


async def test_a_failing_periodic_job_is_counted_and_keeps_its_schedule() -> None:
    scheduler = Scheduler(SYSTEM_CLOCK)
    scheduler.start()
    failures = 0
    three = asyncio.Event()

    async def fails() -> None:
        nonlocal failures
        failures += 1
        if failures == 3:
            three.set()
        raise RuntimeError("boom")

    scheduler.every("test:fails", 0.01, fails)
    try:
        await asyncio.wait_for(three.wait(), 10)
        scheduler.cancel_prefix("test:")
        assert scheduler.job_ids() == [] and scheduler.count == 0
        counted = scheduler.runs[("test:fails", "failed")]
        assert counted >= 3
        await asyncio.sleep(0.05)
        assert scheduler.runs[("test:fails", "failed")] == counted  # cancelled: no more runs
    finally:
        await scheduler.stop()


async def test_date_jobs_start_apscheduler_when_first_needed() -> None:
    scheduler = Scheduler(SYSTEM_CLOCK)
    scheduler.start()
    fired = asyncio.Event()

    async def job(value: str) -> None:
        assert value == "x"
        fired.set()

    try:
        assert scheduler.job_ids() == []
        scheduler.at("flag:k:start", datetime.now(UTC) + timedelta(milliseconds=50), job, "x")
        scheduler.at("flag:k:end", datetime.now(UTC) + timedelta(days=1), job, "x")
        assert scheduler.job_ids("flag:") == ["flag:k:end", "flag:k:start"]
        await asyncio.wait_for(fired.wait(), 10)
        assert scheduler.runs[("flag", "ok")] == 1
    finally:
        await scheduler.stop()
