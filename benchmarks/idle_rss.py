"""Idle memory of `fpcd serve` on the embedded default (standalone, a fresh data dir).

Run: python -m benchmarks.idle_rss [--base DIR] [--rounds N]
Each daemon starts, answers /health/ready, one config write and read, then sits idle
for a few seconds before its RSS is read from /proc (VmRSS, and its anonymous and
file-backed parts). The same for the minimal aiohttp app (the floor for a Python server
with aiohttp, msgspec and uvloop), for an interpreter that only imports those, and for
one that imports them and the libraries fpcd cannot start without (FLOOR).
`--base DIR` measures a checkout of the base commit (with its own .venv) the same way.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    commit_of,
    fpcd_daemon,
    free_port,
    put_json,
    wait_http,
    write_results,
)

IDLE_SECONDS = 3.0


def rss(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def fpcd_rss(checkout: Path | None) -> dict[str, float]:
    python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
    with fpcd_daemon(python=python, cwd=checkout or ROOT) as d:
        put_json(
            d["url"] + "/api/config/web",
            {"environment": "production", "config": {"port": 80}},
            token=d["token"],
        )
        time.sleep(IDLE_SECONDS)
        return rss(d["pid"])


def minimal_rss() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(b'{"port":80}')
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.minimal_app", str(port), str(body)], cwd=ROOT
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            time.sleep(IDLE_SECONDS)
            return rss(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


#: What the minimal app imports, and with it the libraries fpcd cannot start without:
#: cryptography (the keyring's AES-GCM), PyJWT (which imports much of cryptography) and
#: SQLite: the floor for fpcd's stack, before any of its own code runs.
FLOOR = (
    "aiohttp.web, msgspec, uvloop, cryptography.hazmat.primitives.ciphers.aead, jwt, "
    "sqlite3, aiosqlite"
)


def imports_rss(modules: str = "aiohttp.web, msgspec, uvloop") -> dict[str, float]:
    code = f"import {modules}, sys; sys.stdout.write('x'); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.read(1)
    try:
        return rss(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, help="checkout of the base commit, with .venv")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    commits = {"fpcd": commit_of(ROOT)}
    measures: dict[str, Any] = {"fpcd serve": lambda: fpcd_rss(None)}
    if args.base:
        commits["base"] = commit_of(args.base)
        measures[f"fpcd serve, base ({commits['base']})"] = lambda: fpcd_rss(args.base)
    measures["minimal aiohttp app"] = minimal_rss
    measures["python importing aiohttp.web, msgspec, uvloop"] = imports_rss
    measures["python importing those, cryptography, PyJWT, sqlite3, aiosqlite"] = lambda: (
        imports_rss(FLOOR)
    )
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in measures}
    for _ in range(args.rounds):
        for label, measure in measures.items():
            runs[label].append(measure())
    results: dict[str, dict[str, Any]] = {
        label: {
            key: statistics.median(r[key] for r in series)
            for key in ("VmRSS", "RssAnon", "RssFile")
        }
        | {"all_rounds_VmRSS": [r["VmRSS"] for r in series]}
        for label, series in runs.items()
    }
    rows = [
        [label, r["VmRSS"], r["RssAnon"], r["RssFile"], ", ".join(map(str, r["all_rounds_VmRSS"]))]
        for label, r in results.items()
    ]
    write_results(
        "idle_rss",
        "Idle RSS of fpcd serve (standalone, embedded default)",
        {"commits": commits, "idle_seconds": IDLE_SECONDS, "results": results},
        rows,
        ["process", "RSS MB", "anonymous MB", "file-backed MB", "rounds (RSS MB)"],
        [
            f"Commits: {', '.join(f'{k} = {v}' for k, v in commits.items())}. Median of "
            f"{args.rounds} starts; RSS read after {IDLE_SECONDS:.0f} s idle (one config "
            "written and read first). Target (issue 18): 50 MB.",
        ],
    )


if __name__ == "__main__":
    main()
