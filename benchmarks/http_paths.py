"""The HTTP hot paths against minimal aiohttp apps, in the same run (issue 18's rows).

- cached `GET /api/config/:service` against `minimal_app` (the same body, pre-encoded);
- `GET /health/live` (the request pipeline alone) against `minimal_app`'s same answer;
- `POST /api/features/evaluate` against `minimal_evaluate_app` (decode + hash + encode).

fpcd runs with its shipped defaults: token auth on (wrk sends the admin token; the
minimal apps get the same header and ignore it), metrics on, rate limits on, the access
log as shipped. The access log's own cost is measured once more with it switched on.

Run: python -m benchmarks.http_paths [--base DIR] [--rounds N] [--seconds S]
`--base DIR` also runs the fpcd of another checkout (a worktree of the base commit with
its own `.venv`) in the same alternating rounds: before/after on one machine, one run.
Servers are pinned to CPU 0 and wrk to CPU 1 (when `taskset` exists); rounds alternate
between the servers and the median round is reported, so a noisy moment on the machine
does not favour one of them. The ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    commit_of,
    cpu_seconds,
    fpcd_daemon,
    free_port,
    pinned,
    put_json,
    wait_http,
    write_results,
    wrk,
)
from benchmarks.config_get import sample_config

CONNECTIONS = 32
SERVER_CPU, CLIENT_CPU = 0, 1
MINIMAL = "minimal aiohttp app"
EVALUATE_FLAG: dict[str, Any] = {
    "name": "checkout",
    "enabled": True,
    "rollout": {"percentage": 50},
}
EVALUATE_BODY = {
    "flags": ["checkout"],
    "context": {"userId": "user-42", "region": "eu", "customAttributes": {"plan": "pro"}},
}


def start_daemon(
    stack: ExitStack, label: str, env: dict[str, str], checkout: Path | None
) -> dict[str, Any]:
    python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
    d = stack.enter_context(
        fpcd_daemon(env=env, cpu=SERVER_CPU, python=python, cwd=checkout or ROOT)
    )
    put_json(
        d["url"] + "/api/config/checkout",
        {"environment": "production", "config": sample_config()},
        token=d["token"],
    )
    put_json(d["url"] + "/api/features", EVALUATE_FLAG, method="POST", token=d["token"])
    d["label"] = label
    return d


def start_app(stack: ExitStack, module: str, *args: str) -> tuple[str, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*pinned(SERVER_CPU), sys.executable, "-m", module, str(port), *args], cwd=ROOT
    )
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    wait_http(f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}", proc.pid


Target = tuple[str, str, int]  # url, token, server pid


def measure(
    targets: dict[str, Target], *, script: str | None, rounds: int, seconds: int
) -> dict[str, Any]:
    """targets: label -> (url, token, pid). Alternating rounds; the median round per
    label, each label's ratio to the minimal app as the median of per-round ratios, and
    the server's CPU time per request (user + system), which load on the machine skews
    much less than requests/s."""
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in targets}
    for url, token, _ in targets.values():
        wrk(url, connections=CONNECTIONS, seconds=2, script=script, cpu=CLIENT_CPU, token=token)
    for _ in range(rounds):
        for label, (url, token, pid) in targets.items():
            before = cpu_seconds(pid)
            run = wrk(
                url,
                connections=CONNECTIONS,
                seconds=seconds,
                script=script,
                cpu=CLIENT_CPU,
                token=token,
            )
            run["cpu_us_per_request"] = round(
                (cpu_seconds(pid) - before) / max(run["requests"], 1) * 1e6, 1
            )
            runs[label].append(run)
    out: dict[str, Any] = {}
    minimal = next(label for label in targets if label.startswith("minimal"))
    for label, series in runs.items():
        median_rps = statistics.median(r["requests_per_s"] for r in series)
        chosen: dict[str, Any] = dict(
            min(series, key=lambda r: abs(r["requests_per_s"] - median_rps))
        )
        chosen["all_rounds_rps"] = [r["requests_per_s"] for r in series]
        chosen["all_rounds_p99_ms"] = [r["p99_ms"] for r in series]
        chosen["median_cpu_us_per_request"] = statistics.median(
            r["cpu_us_per_request"] for r in series
        )
        chosen["ratio_to_minimal"] = round(
            statistics.median(
                r["requests_per_s"] / m["requests_per_s"]
                for r, m in zip(series, runs[minimal], strict=True)
            ),
            3,
        )
        out[label] = chosen
    return out


def post_script(body: dict[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.body = ' + json.dumps(json.dumps(body)) + "\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    return script.name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, help="checkout of the base commit, with .venv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--paths", default="config_get,health_live,evaluate", help="a comma-separated subset"
    )
    args = parser.parse_args()
    paths = set(args.paths.split(","))
    commits = {"fpcd": commit_of(ROOT)}
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        daemons = [start_daemon(stack, "fpcd", {}, None)]
        daemons.append(
            start_daemon(stack, "fpcd, access log on", {"FPCD_LOG__ACCESS": "true"}, None)
        )
        if args.base:
            commits["base"] = commit_of(args.base)
            daemons.append(start_daemon(stack, f"base ({commits['base']})", {}, args.base))
        token = daemons[0]["token"]
        config_path = "/api/config/checkout?environment=production"
        request = urllib.request.Request(
            daemons[0]["url"] + config_path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request) as r:
            body = r.read()
        body_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "body.json"
        body_file.write_bytes(body)
        minimal, minimal_pid = start_app(stack, "benchmarks.minimal_app", str(body_file))
        minimal_eval, minimal_eval_pid = start_app(stack, "benchmarks.minimal_evaluate_app")

        def fpcd_targets(path: str, *, access: bool = False) -> dict[str, Target]:
            return {
                d["label"]: (d["url"] + path, d["token"], d["pid"])
                for d in daemons
                if access or "access" not in d["label"]
            }

        if "config_get" in paths:
            results["config_get"] = measure(
                {
                    **fpcd_targets(config_path, access=True),
                    MINIMAL: (minimal + config_path, token, minimal_pid),
                },
                script=None,
                rounds=args.rounds,
                seconds=args.seconds,
            )
        if "health_live" in paths:
            results["health_live"] = measure(
                {
                    **fpcd_targets("/health/live"),
                    MINIMAL: (minimal + "/health/live", token, minimal_pid),
                },
                script=None,
                rounds=args.rounds,
                seconds=args.seconds,
            )
        evaluate = post_script(EVALUATE_BODY)
        if "evaluate" in paths:
            results["evaluate"] = measure(
                {
                    **fpcd_targets("/api/features/evaluate"),
                    "minimal decode + hash + encode app": (
                        minimal_eval + "/api/features/evaluate",
                        token,
                        minimal_eval_pid,
                    ),
                },
                script=evaluate,
                rounds=args.rounds,
                seconds=args.seconds,
            )
        Path(evaluate).unlink()

    titles = {
        "config_get": "cached GET /api/config/:service",
        "health_live": "GET /health/live",
        "evaluate": "POST /api/features/evaluate",
    }
    rows = [
        [
            titles[path],
            label,
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            f"{r['ratio_to_minimal']:.2f}",
            r["median_cpu_us_per_request"],
            ", ".join(f"{x:,.0f}" for x in r["all_rounds_rps"]),
        ]
        for path, by_label in results.items()
        for label, r in by_label.items()
    ]
    write_results(
        "http_paths",
        "HTTP hot paths against minimal aiohttp apps (same run)",
        {
            "commits": commits,
            "connections": CONNECTIONS,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "config_body_bytes": len(body),
            "results": results,
        },
        rows,
        [
            "path",
            "server",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "ratio to minimal",
            "CPU µs/request",
            "rounds (req/s)",
        ],
        [
            f"Commits: {', '.join(f'{k} = {v}' for k, v in commits.items())}. wrk -t1 "
            f"-c{CONNECTIONS} -d{args.seconds}s --latency on CPU {CLIENT_CPU}, servers on CPU "
            f"{SERVER_CPU}; {args.rounds} alternating rounds, median round shown; the ratio is "
            "the median of the rounds' ratios to the minimal app of the same path.",
            "fpcd as shipped: token auth, metrics, rate limits on; the access log as shipped "
            "(the `access log on` row switches it on). Config body "
            f"{len(body)} bytes. Targets (issue 18): config GET >= 0.8x and p99 < 5 ms, "
            "/health/live >= 0.9x, evaluate >= 0.7x.",
        ],
    )


if __name__ == "__main__":
    main()
