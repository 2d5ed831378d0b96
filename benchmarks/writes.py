"""Acknowledged writes per second on one host: many concurrent writers over HTTP.

Run: python -m benchmarks.writes [--rounds N]  (needs wrk: apt-get install wrk)

wrk sends `PUT /api/config/w-<n % 64>` with `{"environment": "production", "config": {...}}`,
each body different, so every request is a new version (journal row, version row, audit
entry, fsync'd with the daemon's defaults: auth on, metrics on, synchronous=FULL). A 200
is an acknowledged, durable write. The minimal app (aiohttp + uvloop, the same PUT
decoded with msgspec and answered with fixed bytes, nothing stored) runs in the same
rounds as the ceiling of HTTP in Python here; rounds alternate and the median is kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    commit_of,
    fpcd_daemon,
    free_port,
    serve_command,
    wait_http,
    write_results,
    wrk,
)

CONNECTIONS = (1, 16, 64)
SECONDS = 8
SERVICES = 64

#: wrk script: a different body (and one of 64 services) on every request.
SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"environment":"production","config":{"n":%d,"pool":{"size":20,"timeout":5},"name":"w"}}', n)
  local headers = {["Content-Type"] = "application/json"}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  return wrk.format("PUT", string.format("/api/config/w-%d", n % SERVICES), headers, body)
end
""".replace("SERVICES", str(SERVICES))

MINIMAL = """
import sys, msgspec, uvloop
from aiohttp import web
decode = msgspec.json.decode
async def put(request):
    body = decode(await request.read())
    assert isinstance(body["config"], dict)
    return web.Response(body=b'{"changed":true}', content_type="application/json")
app = web.Application()
app.router.add_put("/api/config/{service}", put)
app.router.add_get("/health", lambda r: web.Response(text="ok"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""


@contextmanager
def base_daemon(checkout: Path) -> Iterator[dict[str, Any]]:
    """`fpcd serve` from another checkout of fpcd (the code before a change), run with
    this interpreter from that directory, in a temp data dir."""
    data = Path(tempfile.mkdtemp(prefix="fpcd-bench-base-"))
    port = free_port()
    proc = subprocess.Popen(
        serve_command(sys.executable, data, port, free_port()),
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout), "FPCD_LOG__ACCESS": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready")
        yield {"url": f"http://127.0.0.1:{port}", "token": (data / "admin.token").read_text()}
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def run(rounds: int, base: Path | None) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        script = tmp / "put.lua"
        script.write_text(SCRIPT)
        (tmp / "minimal.py").write_text(MINIMAL)
        port = free_port()
        minimal = subprocess.Popen([sys.executable, str(tmp / "minimal.py"), str(port)])
        stack.callback(minimal.wait, 10)
        stack.callback(minimal.terminate)
        wait_http(f"http://127.0.0.1:{port}/health")
        daemon = stack.enter_context(fpcd_daemon(env={"FPCD_LOG__ACCESS": "false"}))
        targets = {
            "fpcd": (daemon["url"] + "/", daemon["token"]),
            "minimal app": (f"http://127.0.0.1:{port}/", daemon["token"]),
        }
        if base is not None:
            before = stack.enter_context(base_daemon(base))
            targets["fpcd before"] = (before["url"] + "/", before["token"].strip())
        results: dict[str, dict[str, dict[str, float]]] = {}
        for connections in CONNECTIONS:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (url, token) in targets.items():
                    samples[name].append(
                        wrk(
                            url,
                            connections=connections,
                            seconds=SECONDS,
                            script=str(script),
                            token=token,
                        )
                    )
            for name, runs in samples.items():
                median = sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]
                row: dict[str, Any] = dict(median)
                row["rounds"] = [r["requests_per_s"] for r in runs]
                results.setdefault(name, {})[str(connections)] = row
        request = urllib.request.Request(
            daemon["url"] + "/api/config/w-1/history?environment=production&limit=1",
            headers={"Authorization": f"Bearer {daemon['token']}"},
        )
        with urllib.request.urlopen(request) as r:
            history = r.read()
    rows = []
    for connections in CONNECTIONS:
        f, m = results["fpcd"][str(connections)], results["minimal app"][str(connections)]
        b = results.get("fpcd before", {}).get(str(connections))
        rows.append(
            [
                connections,
                f"{f['requests_per_s']:,.0f}",
                f"{f['p50_ms']} / {f['p99_ms']}",
                f["non_2xx"],
                f"{b['requests_per_s']:,.0f} ({b['p50_ms']} / {b['p99_ms']} ms)" if b else "",
                f"{m['requests_per_s']:,.0f}",
                f"{f['requests_per_s'] / m['requests_per_s']:.2f}",
            ]
        )
    write_results(
        "writes",
        "Acknowledged writes per second, one host (group commit)",
        {
            "results": results,
            "connections": list(CONNECTIONS),
            "seconds": SECONDS,
            "commit": commit_of(Path(__file__).resolve().parent.parent),
            "before_commit": commit_of(base) if base else None,
        },
        rows,
        [
            "writers (connections)",
            "fpcd writes/s",
            "fpcd p50 / p99 ms",
            "fpcd non-2xx",
            "before: writes/s (p50 / p99)",
            "minimal app PUT/s",
            "ratio",
        ],
        [
            f"Medians of {rounds} alternating rounds of {SECONDS} s. Every fpcd write is a"
            " new config version with its journal row and audit entry, durable"
            " (synchronous=FULL) before its 200. A history read at the end checks the"
            f" versions exist ({len(history)} bytes).",
            f"Commit {commit_of(Path(__file__).resolve().parent.parent)}"
            + (f"; before = commit {commit_of(base)}, same rounds." if base else "."),
            "The ratio is fpcd's acknowledged writes to the minimal app's PUTs that store"
            " nothing: the cost of durability and of the write path above HTTP.",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--base", type=Path, help="another checkout of fpcd to measure in the same rounds"
    )
    args = parser.parse_args()
    run(args.rounds, args.base)


if __name__ == "__main__":
    main()
