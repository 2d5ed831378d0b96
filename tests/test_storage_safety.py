"""What a second daemon, a damaged file or a full disk does: refused, detected, reported.

- One daemon per data dir; a second one exits 78 with one line naming the first.
- Start-up failures a restart cannot fix (settings, key, damaged database) exit 78.
- Damage at rest is found (PRAGMA quick_check at start and periodically, checksums on
  read, `audit verify` against the chain) and never served as good.
- A full disk answers 507 with a problem document, logs SQLite's error, keeps reads.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fpcd.app import Daemon
from fpcd.domain.configs import content_checksum
from tests.conftest import (
    LOG_LINES,
    DaemonProcess,
    api_session,
    eventually,
    free_port,
    make_settings,
    run_cli,
)
from tests.test_daemon_process import request

KEY = "q2Zx4j9b2r0cE4y0w9VgSx1mO6kq8D9yq1cJ8a6T3bI="


def serve_once(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    """`fpcd serve` expected to fail at start: its exit status and output."""
    return run_cli(
        "serve",
        "--data-dir",
        str(data_dir),
        "--api-port",
        str(free_port()),
        "--ws-port",
        str(free_port()),
        *extra,
        env=env,
    )


# -- one daemon per data dir ----------------------------------------------------------


def test_second_daemon_on_the_same_data_dir_exits_78_with_one_line(
    spawn: Any, tmp_path: Path
) -> None:
    first: DaemonProcess = spawn("shared").start()
    assert first.proc is not None
    # Other ports (DaemonProcess picks free ones) and another runtime dir: only the data
    # dir is shared, which used to start a second daemon that diverged from the first.
    second = DaemonProcess(first.data_dir, args=["--runtime-dir", str(tmp_path / "run2")])
    second.log_path = tmp_path / "second.log"
    second.start(wait=False)
    assert second.proc is not None and second.proc.wait(20) == 78
    lines = second.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"is in use by another fpcd (pid {first.proc.pid})" in lines[0]
    assert not (tmp_path / "run2" / "fpcd.sock").exists()
    status, _ = request("PUT", first.url + "/api/config/web", {"config": {"a": 1}})
    assert status == 200  # the first one is unharmed
    r = run_cli("migrate", "--data-dir", str(first.data_dir))
    assert r.returncode == 1 and "is in use by another fpcd" in r.stderr  # nor its schema

    # The lock goes with the process, even on SIGKILL: no stale lock to clean up.
    first.kill()
    third = DaemonProcess(first.data_dir)
    third.log_path = tmp_path / "third.log"
    try:
        third.start()
        assert request("GET", third.url + "/api/config/web")[1]["config"] == {"a": 1}
    finally:
        third.kill()


# -- start-up failures a restart cannot fix: 78 -----------------------------------------


def test_wrong_master_key_exits_78(spawn: Any, tmp_path: Path) -> None:
    proc: DaemonProcess = spawn("keyed", env={"CONFIG_ENCRYPTION_KEY": KEY}).start()
    assert proc.stop() == 0
    other = "another-long-Passphrase-7#kq"  # strong enough, but a different master key
    r = serve_once(proc.data_dir, env={"CONFIG_ENCRYPTION_KEY": other})
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "does not match" in r.stderr


def test_systemd_unit_stops_restarting_on_78() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "fpcd.service").read_text()
    assert "RestartPreventExitStatus=78" in unit.splitlines()


# -- damage at rest -------------------------------------------------------------------


def _fill(url: str, services: int = 40) -> None:
    for i in range(services):
        body = {"config": {"blob": f"{i:04d}" * 200, "n": i}}
        assert request("PUT", f"{url}/api/config/svc{i}", body)[0] == 200


def _damage(db: Path, offset: int = 16384, size: int = 8192) -> None:
    """8 KiB of garbage inside the file (after the header: SQLite still opens it)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.stat().st_size >= offset + size
    garbage = random.Random(14).randbytes(size)
    with open(db, "r+b") as handle:
        handle.seek(offset)
        handle.write(garbage)
        handle.flush()
        os.fsync(handle.fileno())


def test_garbage_inside_the_database_stops_startup_with_78(spawn: Any) -> None:
    proc: DaemonProcess = spawn("damaged").start()
    _fill(proc.url)
    assert proc.stop() == 0
    _damage(proc.data_dir / "fpcd.db")
    r = serve_once(proc.data_dir)
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "fpcd.db is damaged (PRAGMA quick_check" in r.stderr
    assert "restore it from a backup" in r.stderr


async def test_damage_found_while_running_degrades_health_and_refuses_writes(
    tmp_path: Path,
) -> None:
    daemon = Daemon(make_settings(tmp_path / "data", storage={"integrity_check_interval": "0.2s"}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            for i in range(40):
                body = {"config": {"blob": f"{i:04d}" * 200}}
                async with http.put(f"/api/config/svc{i}", json=body) as r:
                    assert r.status == 200
            async with http.get("/health") as r:
                assert (await r.json())["components"]["sqlite"]["status"] == "ok"
            _damage(daemon.settings.database)

            async def sqlite_degraded() -> bool:
                async with http.get("/health") as r:
                    return bool((await r.json())["components"]["sqlite"]["status"] == "degraded")

            await eventually(sqlite_degraded)
            async with http.get("/health") as r:
                sqlite_health = (await r.json())["components"]["sqlite"]
            assert "integrity check failed, writes refused" in sqlite_health["detail"]
            async with http.put("/api/config/more", json={"config": {"a": 1}}) as r:
                assert r.status == 500
                assert r.content_type == "application/problem+json"
                problem = await r.json()
            assert problem["type"] == "urn:fpcd:problem:integrity"
            assert "from a backup" in problem["detail"]
            async with http.get("/metrics") as r:
                assert "fpcd_sqlite_damaged 1.0" in await r.text()
    finally:
        await daemon.stop()


def _edit_config_row(db: Path, service: str, version: int, *, fix_checksum: bool) -> None:
    with sqlite3.connect(db) as conn:
        (raw,) = conn.execute(
            "SELECT record FROM config_versions WHERE service = ? AND version = ?",
            (service, version),
        ).fetchone()
        record = json.loads(raw)
        record["config"]["port"] = 6666
        if fix_checksum:
            record["checksum"] = content_checksum(
                record["config"], record.get("secret_versions", {})
            )
        conn.execute(
            "UPDATE config_versions SET record = ? WHERE service = ? AND version = ?",
            (json.dumps(record).encode(), service, version),
        )


async def test_config_row_edited_by_hand_is_not_served_and_audit_verify_says_so(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    daemon = Daemon(make_settings(data))
    await daemon.start()
    async with api_session(daemon) as http:
        for port in (80, 81):
            body = {"environment": "production", "config": {"port": port}}
            async with http.put("/api/config/web", json=body) as r:
                assert r.status == 200
        body = {"environment": "production", "config": {"port": 1}}
        async with http.put("/api/config/api", json=body) as r:
            assert r.status == 200
    await daemon.stop()
    _edit_config_row(data / "fpcd.db", "web", 2, fix_checksum=False)
    _edit_config_row(data / "fpcd.db", "api", 1, fix_checksum=True)

    # A file synced from the damaged version does not stop start-up either.
    synced = tmp_path / "web.json"
    target = {"service": "web", "environment": "production", "path": str(synced)}
    daemon = Daemon(make_settings(data, files=[target]))
    await daemon.start()
    assert not synced.exists()
    try:
        async with api_session(daemon) as http:
            async with http.get("/api/config/web?environment=production") as r:
                assert r.status == 500
                assert r.content_type == "application/problem+json"
                text = await r.text()
            assert "6666" not in text
            problem = json.loads(text)
            assert problem["type"] == "urn:fpcd:problem:integrity"
            assert "config:web/production v2" in problem["detail"]
            async with http.get("/api/config/web/history?environment=production") as r:
                assert r.status == 500 and "6666" not in await r.text()
            async with http.get("/health") as r:
                components = (await r.json())["components"]
            records = components["records"]
            assert "config:web/production v2" in components["files"]["detail"]
            assert records["status"] == "degraded"
            assert "config:web/production v2" in records["detail"]
            async with http.get("/metrics") as r:
                metrics = await r.text()
            failures = re.search(r"^fpcd_integrity_failures_total (\S+)$", metrics, re.M)
            assert failures is not None and float(failures.group(1)) >= 2  # file sync, GET, ...
            assert "fpcd_record_problems 1.0" in metrics

            # The chain itself is intact, but the stored state does not match it: both rows.
            async with http.get("/api/audit/verify") as r:
                assert r.status == 409
                result = await r.json()
            reasons = [b["reason"] for b in result["breaks"]]
            assert not result["ok"]
            assert any(
                "config web/production version 2: stored content does not match its checksum"
                in reason
                for reason in reasons
            ), reasons
            assert any(
                "config api/production version 1: stored content does not match the checksum"
                " in the audit log" in reason
                for reason in reasons
            ), reasons
            assert len(reasons) == 2

            # The operator fixes it through the API: a new version on top of the damaged one.
            body = {"environment": "production", "config": {"port": 82}}
            async with http.put("/api/config/web", json=body) as r:
                assert r.status == 200 and (await r.json())["version"] == 3
            async with http.get("/api/config/web?environment=production") as r:
                assert r.status == 200 and (await r.json())["config"] == {"port": 82}
            async with http.post(
                "/api/config/web/rollback", json={"environment": "production", "version": 2}
            ) as r:
                assert r.status == 500  # rolling back to the damaged version is refused
    finally:
        await daemon.stop()
    verified = run_cli("audit", "verify", "--data-dir", str(data))
    assert verified.returncode == 1 and "config api/production version 1" in verified.stdout


# -- disk full --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the suite runs as root); unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill_disk(mount: Path) -> Path:
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):  # unbuffered, down to the last byte
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


async def test_full_disk_answers_507_and_reads_keep_working(small_disk: Path) -> None:
    data = small_disk / "data"
    daemon = Daemon(make_settings(data))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            body = {"environment": "production", "config": {"port": 80}}
            async with http.put("/api/config/web", json=body) as r:
                assert r.status == 200
            async with http.get("/api/config/web?environment=production") as r:
                assert r.status == 200
            filler = _fill_disk(small_disk)
            LOG_LINES.clear()
            blob = "x" * 300_000
            status, problem = 200, {}
            for _ in range(3):  # however much the WAL still had room for, it runs out
                big = {"environment": "production", "config": {"blob": blob}}
                async with http.put("/api/config/web", json=big) as r:
                    status = r.status
                    problem = await r.json()
                if status != 200:
                    break
                blob += "y"
            assert status == 507, problem
            assert r.content_type == "application/problem+json"
            assert problem["type"] == "urn:fpcd:problem:disk-full"
            assert "disk holding the local database" in problem["detail"]
            assert "is full" in problem["detail"]
            logged = "\n".join(LOG_LINES)
            assert "database or disk is full" in logged
            assert "SQLITE_FULL" in logged
            assert "cannot rollback" not in logged

            # Reads keep working, from the cache and from SQLite.
            async with http.get("/api/config/web?environment=production") as r:
                assert r.status == 200 and (await r.json())["config"]["port"] == 80
            async with http.get("/api/config/web/history?environment=production") as r:
                assert r.status == 200
            async with http.get("/health") as r:
                assert r.status == 200

            # Free the space: writes work again.
            filler.unlink()
            small = {"environment": "production", "config": {"port": 81}}
            async with http.put("/api/config/web", json=small) as r:
                assert r.status == 200, await r.text()
    finally:
        await daemon.stop()
