"""The code stays lint-clean, formatted and type-checked: part of the one test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check() -> None:
    r = run(str(BIN / "ruff"), "check", "fpcd", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = run(str(BIN / "ruff"), "format", "--check", "fpcd", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = run(str(BIN / "mypy"), "fpcd")
    assert r.returncode == 0, r.stdout + r.stderr


def test_domain_core_does_no_io() -> None:
    """The pure core imports no I/O, event loop or clock (STYLE: pure core, I/O at edges)."""
    forbidden = (
        "aiohttp",
        "aiosqlite",
        "asyncpg",
        "redis",
        "asyncio",
        "sqlite3",
        "socket",
        "os",
        "pathlib",
        "time",
        "watchdog",
        "apscheduler",
    )
    for path in (ROOT / "fpcd" / "domain").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                module = words[1].split(".")[0]
                assert module not in forbidden, f"{path.name}: {line.strip()}"
