"""The flag socket before and after a change, in one run: the echo floor, a base checkout's
daemon and this checkout's daemon, measured in alternating rounds (medians reported).

Run: python -m benchmarks.flag_socket [--base-python BASE/.venv/bin/python] [--rounds 5]

Without --base-python only this checkout's daemon and the echo floor are measured. The
rows are the issue-18 ones: pipelined evaluations/s (client on the other core) and one
lookup at a time with the client on the daemon's core (p50/p99 of 20,000 round trips).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    cpu_seconds,
    fpcd_daemon,
    interpreter_commit,
    pinned,
    put_json,
    write_results,
)
from benchmarks.flags import CHECKOUT, CLIENT_CPU, SERVER_CPU, client


def _echo(stack: ExitStack, tmp: Path, kind: str = "echo") -> tuple[Path, int]:
    path = tmp / f"{kind}.sock"
    proc = subprocess.Popen(
        [*pinned(SERVER_CPU), sys.executable, "-m", "benchmarks.echo_server", str(path), kind]
    )
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    while not path.exists():
        time.sleep(0.05)
    return path, proc.pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-python", help="interpreter of the base checkout's venv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per pipelined run")
    parser.add_argument("--round-trips", type=int, default=20_000)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    commits = {"after": interpreter_commit(sys.executable)}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        # name -> (socket, server pid)
        targets = {"echo": _echo(stack, Path(tmp)), "ndjson": _echo(stack, Path(tmp), "ndjson")}
        pythons = {"after": sys.executable}
        if args.base_python:
            pythons["before"] = args.base_python
            commits["before"] = interpreter_commit(args.base_python)
        for name, python in pythons.items():
            env = {"FPCD_LOG__ACCESS": "false"}
            # The daemon runs in a temp dir, so each interpreter imports its own checkout.
            d = stack.enter_context(
                fpcd_daemon(env=env, cpu=SERVER_CPU, python=python, cwd=Path(tmp))
            )
            put_json(d["url"] + "/api/features", CHECKOUT, method="POST", token=d["token"])
            targets[name] = (d["flags_socket"], d["pid"])
        names = list(targets)
        for n in range(args.rounds):
            for name in names[n % len(names) :] + names[: n % len(names)]:  # rotate the order
                path, pid = targets[name]
                run = runs.setdefault(name, {"pipelined": [], "same_core": []})
                used = cpu_seconds(pid)
                pipelined = client("pipelined", path, str(args.seconds), CLIENT_CPU)
                used = cpu_seconds(pid) - used
                # Per CPU-second of the server: what a busy machine does not hide.
                pipelined["per_cpu_s"] = round(pipelined["evaluations"] / max(used, 0.01))
                run["pipelined"].append(pipelined)
                run["same_core"].append(client("single", path, str(args.round_trips), SERVER_CPU))
                print(name, run["pipelined"][-1], run["same_core"][-1], file=sys.stderr)

    def median(name: str, kind: str, field: str) -> float:
        return round(float(statistics.median(r[field] for r in runs[name][kind])), 1)

    summary = {
        name: {
            "evaluations_per_s": round(median(name, "pipelined", "evaluations_per_s")),
            "evaluations_per_cpu_s": round(median(name, "pipelined", "per_cpu_s")),
            "same_core_p50_us": median(name, "same_core", "p50_us"),
            "same_core_p99_us": median(name, "same_core", "p99_us"),
        }
        for name in runs
    }
    labels = {
        "echo": "echo floor (asyncio Protocol echoing each chunk)",
        "ndjson": "NDJSON floor (asyncio Protocol, msgspec decode + encode of each line)",
        "before": f"fpcd before ({commits.get('before')})",
        "after": f"fpcd after ({commits['after']})",
    }
    rows = [
        [
            labels[name],
            f"{s['evaluations_per_s']:,}",
            f"{s['evaluations_per_cpu_s']:,}",
            f"{s['same_core_p50_us']} / {s['same_core_p99_us']}",
        ]
        for name, s in summary.items()
    ]
    floor_ratio = summary["after"]["evaluations_per_s"] / summary["ndjson"]["evaluations_per_s"]
    write_results(
        "flag_socket",
        "Flag socket, before and after, one run",
        {"rounds": args.rounds, "commits": commits, "summary": summary, "runs": runs},
        rows,
        [
            "server",
            "pipelined evaluations/s",
            "per CPU-second of the server",
            "one at a time, same core: p50 / p99 µs",
        ],
        [
            f"Medians of {args.rounds} alternating rounds; each round runs every server in "
            f"turn (order rotated): {args.seconds} s of 1,000-line pipelined batches (two in "
            f"flight) from a client on CPU {CLIENT_CPU}, then {args.round_trips:,} one-at-a-time "
            f"round trips from a client on CPU {SERVER_CPU}, the daemons' core. Targets "
            "(issue 18): ≥ 300,000 evaluations/s pipelined, p99 ≤ 60 µs one at a time on the "
            "same core. The issue measured its NDJSON floor at 630,000-730,000 lines/s, so "
            "300,000 is 0.41-0.48 of that floor. Here, fpcd after ÷ NDJSON floor, pipelined: "
            f"{floor_ratio:.2f}.",
            "The flag is benchmarks/flags.py's: 50% rollout, user groups, region, one `in` "
            "rule and two weighted variants. Access log off, metrics on. 'Per CPU-second' "
            "divides the evaluations by the server process's user + system time during the "
            "run (from /proc), which other load on the machine does not inflate.",
        ],
    )


if __name__ == "__main__":
    main()
