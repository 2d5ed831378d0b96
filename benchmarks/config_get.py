"""Cached `GET /api/config/:service` throughput and latency against a minimal aiohttp app.

Run: python -m benchmarks.config_get  (needs wrk: apt-get install wrk)
All three servers stay up; rounds alternate between them and the median round is kept,
so a noisy moment on the machine does not favour one of them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from benchmarks.common import fpcd_daemon, free_port, put_json, wait_http, write_results, wrk

CONNECTIONS = 32
SECONDS = 8
ROUNDS = 3


def sample_config() -> dict[str, object]:
    """About 1 KB of JSON: what a typical service's settings look like."""
    return {
        "database": {
            "host": "db.internal",
            "port": 5432,
            "name": "checkout",
            "pool": 20,
            "timeouts": {"connect": 5, "statement": 30},
        },
        "cache": {"redis": "redis://cache:6379/0", "ttl": 300},
        "features": {f"feature_{i}": i % 2 == 0 for i in range(20)},
        "endpoints": [f"https://svc-{i}.internal/api" for i in range(10)],
        "limits": {"rps": 1000, "burst": 200, "body": 1048576},
        "logging": {"level": "info", "format": "json"},
    }


def main() -> None:
    urls: dict[str, str] = {}
    tokens: dict[str, str] = {}
    with ExitStack() as stack:
        for label, access in (("fpcd", "false"), ("fpcd, access log on", "true")):
            d = stack.enter_context(fpcd_daemon(env={"FPCD_LOG__ACCESS": access}))
            put_json(
                d["url"] + "/api/config/checkout",
                {"environment": "production", "config": sample_config()},
                token=d["token"],
            )
            urls[label] = d["url"] + "/api/config/checkout?environment=production"
            tokens[label] = d["token"]
        request = urllib.request.Request(
            urls["fpcd"], headers={"Authorization": f"Bearer {tokens['fpcd']}"}
        )
        with urllib.request.urlopen(request) as r:
            body = r.read()
        body_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "body.json"
        body_file.write_bytes(body)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.minimal_app", str(port), str(body_file)]
        )
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        wait_http(f"http://127.0.0.1:{port}/health")
        urls["minimal aiohttp app"] = (
            f"http://127.0.0.1:{port}/api/config/checkout?environment=production"
        )
        tokens["minimal aiohttp app"] = tokens["fpcd"]  # sent, not checked: the same bytes

        rounds: dict[str, list[dict[str, float]]] = {label: [] for label in urls}
        for label, url in urls.items():
            wrk(url, connections=CONNECTIONS, seconds=2, token=tokens[label])  # warm-up
        for _ in range(ROUNDS):
            for label, url in urls.items():
                rounds[label].append(
                    wrk(url, connections=CONNECTIONS, seconds=SECONDS, token=tokens[label])
                )

    results = {}
    for label, runs in rounds.items():
        median_rps = statistics.median(r["requests_per_s"] for r in runs)
        results[label] = next(r for r in runs if r["requests_per_s"] == median_rps)
        results[label]["all_rounds_rps"] = [r["requests_per_s"] for r in runs]  # type: ignore[assignment]
    ceiling = results["minimal aiohttp app"]["requests_per_s"]
    rows = [
        [
            name,
            r["requests_per_s"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            f"{r['requests_per_s'] / ceiling:.2f}",
        ]
        for name, r in results.items()
    ]
    write_results(
        "config_get",
        "Cached GET /api/config/:service",
        {
            "connections": CONNECTIONS,
            "seconds": SECONDS,
            "rounds": ROUNDS,
            "body_bytes": len(body),
            "results": results,
            "ratio_to_minimal": round(results["fpcd"]["requests_per_s"] / ceiling, 3),
        },
        rows,
        ["server", "requests/s", "p50 ms", "p90 ms", "p99 ms", "ratio to minimal"],
        [
            f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --latency, {ROUNDS} alternating rounds, median "
            f"round shown; wrk shares the 2 cores with the server. Body {len(body)} bytes.",
            "Targets: at least half the minimal app's rate; p99 under 5 ms at 32 connections.",
        ],
    )


if __name__ == "__main__":
    main()
