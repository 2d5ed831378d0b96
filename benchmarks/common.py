"""Shared benchmark plumbing: start daemons, run wrk, write results as JSON and Markdown."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def commit_of(checkout: Path) -> str:
    """A checkout's short commit, `+changes` when tracked files differ from it (results
    a benchmark just wrote are not a change to what is measured)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def interpreter_commit(python: str) -> str:
    """`commit_of` the checkout whose `fpcd` the interpreter imports (a base's venv)."""
    package = subprocess.run(
        [python, "-c", "import fpcd, os; print(os.path.dirname(fpcd.__file__))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # not this checkout: the venv's own
    ).stdout.strip()
    return commit_of(Path(package).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def pinned(cpu: int | None) -> list[str]:
    """A `taskset` prefix keeping a process on one CPU (None: let the kernel choose)."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


def serve_command(python: str, data: Path, port: int, ws: int) -> list[str]:
    """`fpcd serve` on a data dir and two ports, run by `python`."""
    serve = [python, "-m", "fpcd", "serve", "--data-dir", str(data)]
    return [*serve, "--api-port", str(port), "--ws-port", str(ws)]


@contextmanager
def fpcd_daemon(
    *extra: str,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    ready_timeout: float = 20,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """`fpcd serve` in a temp data dir; yields its URL, socket paths and data dir.

    `python` and `cwd` run another checkout (a base commit's worktree and its venv) for
    before/after figures in the same run."""
    data = Path(tempfile.mkdtemp(prefix="fpcd-bench-"))
    port, ws = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *pinned(cpu),
            *serve_command(python, data, port, ws),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", ready_timeout)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "ws_url": f"ws://127.0.0.1:{ws}",
            "data_dir": data,
            "socket": data / "fpcd.sock",
            "flags_socket": data / "flags.sock",
            "pid": proc.pid,
            "token": (data / "admin.token").read_text().strip(),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def put_json(url: str, body: Any, method: str = "PUT", *, token: str = "") -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method, headers=headers
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    url: str,
    *,
    connections: int = 32,
    seconds: int = 10,
    threads: int = 1,
    script: str | None = None,
    cpu: int | None = None,
    token: str = "",
) -> dict[str, float]:
    """Requests/s and p50/p90/p99 latency (ms) from `wrk --latency`."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    args = [*pinned(cpu), "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    if token:  # the same header for fpcd and for the minimal app, so requests are alike
        args += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {
        "requests": int(done.group(1)) if done else 0,
        "requests_per_s": round(rps, 1),
        "p50_ms": round(_ms(lat["50"]), 3),
        "p90_ms": round(_ms(lat["90"]), 3),
        "p99_ms": round(_ms(lat["99"]), 3),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_results(
    name: str,
    title: str,
    results: dict[str, Any],
    rows: list[list[Any]],
    headers: list[str],
    notes: list[str],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "command": f"python -m benchmarks.{name}",
    }
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}.",
        "",
    ]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += ["", *notes, ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
