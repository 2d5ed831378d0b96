"""How cost grows: the same figures on a nearly empty database and a large one.

Run: python -m benchmarks.scale [--cache DIR] [--seconds N]  (needs wrk)

The large database: 10,000 services x 3 environments with 100,000 config versions,
10,000 flags and 1,000,000 audit entries, built offline through the store's own apply
path (benchmarks/scale_data.py; about a minute, kept in --cache for later runs). The
small one: 3 services (200 versions in one layer, so pages are as full), 3 flags, 300
audit entries, built the same way. Figures are medians of alternating rounds.

For each, one daemon (`fpcd serve`, defaults: auth, metrics, synchronous=FULL) starts on
a copy, and with 1,000 WebSocket clients subscribed (one per service) the benchmark
measures: start-up (process start to /health/ready), RSS, cached GET p99 (wrk, 32
connections), uncached GET p99 (first reads of distinct layers, one at a time), history
and audit pages at the start and deep in (p99 of one-at-a-time reads), write latency
(one at a time), the online audit verification's time, and the peak RSS of
`fpcd audit verify --data-dir` (offline, its own process). The minimal aiohttp app's
cached GET runs in the same rounds for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import free_port, serve_command, write_results, wrk
from benchmarks.scale_data import build, service_name

LARGE = {"services": 10_000, "versions": 100_000, "flags": 10_000, "audit": 1_000_000}
#: Nearly empty, yet with 200 versions in one layer and 300 audit entries, so its pages
#: hold as many items as the large database's.
SMALL = {"services": 3, "versions": 209, "flags": 3, "audit": 300}
WS_CLIENTS = 1_000
SAMPLES = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[max(int(len(ordered) * 0.99) - 1, 0)], 3)


def p50(samples: list[float]) -> float:
    return round(sorted(samples)[len(samples) // 2], 3)


def dataset(cache: Path, name: str, shape: dict[str, int]) -> tuple[Path, float | None]:
    """The database for `shape`, built once into `cache`; (path, build seconds or None)."""
    from fpcd.store.migrations import LATEST

    # The schema version is in the name: a database is measured as this fpcd writes it,
    # never through a one-time migration at start.
    sizes = f"{shape['services']}-{shape['versions']}-{shape['audit']}"
    path = cache / f"{name}-v{LATEST}-{sizes}.db"
    if path.exists():
        return path, None
    partial = path.with_suffix(".partial")
    for stale in cache.glob(partial.name + "*"):
        stale.unlink()
    built = asyncio.run(build(partial, **shape))
    partial.rename(path)
    return path, built["seconds"]


@asynccontextmanager
async def daemon(database: Path) -> AsyncIterator[dict[str, Any]]:
    data = Path(tempfile.mkdtemp(prefix="fpcd-scale-"))
    shutil.copyfile(database, data / "fpcd.db")
    os.sync()  # the copy's dirty pages written back before the clock starts
    port, ws = free_port(), free_port()
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *serve_command(sys.executable, data, port, ws),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FPCD_LOG__ACCESS": "false"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as probe:
            while True:
                try:
                    async with probe.get(url + "/health/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the daemon did not become ready")
                await asyncio.sleep(0.01)
        startup = time.perf_counter() - started
        token = (data / "admin.token").read_text().strip()
        yield {
            "url": url,
            "ws": f"ws://127.0.0.1:{ws}/?token={token}",
            "token": token,
            "pid": proc.pid,
            "startup_s": round(startup, 2),
            "data": data,
        }
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(data, ignore_errors=True)


async def timed(session: Any, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    async with session.request(method, url, **kw) as r:
        await r.read()
        assert r.status == 200, (url, r.status)
    return (time.perf_counter() - started) * 1000


ROUNDS = 5


def median_round(rounds: list[float]) -> float:
    return sorted(rounds)[len(rounds) // 2]


class Target:
    """One daemon under measurement, its shape and an HTTP session to it."""

    def __init__(self, d: dict[str, Any], shape: dict[str, int], http: Any) -> None:
        self.d, self.shape, self.http, self.base = d, shape, http, d["url"]
        self.out: dict[str, Any] = {"startup_s": d["startup_s"], "rss_idle_mb": rss_mb(d["pid"])}
        self.sockets: list[Any] = []

    def service(self, i: int) -> str:
        return service_name(i % self.shape["services"])

    async def subscribe(self, clients: int) -> None:
        """`clients` WebSocket clients on prod layers, one per service (round robin)."""
        for i in range(clients):
            ws = await self.http.ws_connect(self.d["ws"])
            await ws.send_str(
                json.dumps(
                    {
                        "type": "SUBSCRIBE",
                        "serviceName": self.service(i),
                        "environment": "prod",
                        "subscriptions": ["config-updates"],
                    }
                )
            )
            await ws.receive()
            self.sockets.append(ws)

    async def samples(self, method: str, path: str, n: int = SAMPLES, **kw: Any) -> list[float]:
        return [await timed(self.http, method, self.base + path, **kw) for _ in range(n)]

    async def uncached(self, round_: int) -> list[float]:
        """Reads that miss the cache: a write to a service's `staging` layer (which nobody
        subscribes to) drops its cached documents, then its `prod` layer is read."""
        samples = []
        for n in range(SAMPLES):
            service = self.service(round_ * SAMPLES + n)
            await timed(
                self.http,
                "PUT",
                f"{self.base}/api/config/{service}",
                json={"environment": "staging", "config": {"round": round_, "n": n}},
            )
            url = f"{self.base}/api/config/{service}?environment=prod"
            samples.append(await timed(self.http, "GET", url))
        return samples


async def measure(small: Target, large: Target, seconds: int) -> None:
    """Every figure in alternating rounds (small, large, small, ...); the median round's
    p99 is kept, so a noisy moment on a shared machine does not favour one side."""
    both = (small, large)
    rounds: dict[str, dict[str, list[float]]] = {"small": {}, "large": {}}

    def keep(t: Target, key: str, value: float) -> None:
        rounds["small" if t is small else "large"].setdefault(key, []).append(value)

    for t in both:
        t.out["history_versions"] = (await page_total(t.http, t.base + history_path(t)))[1]
        t.out["audit_entries"] = (await page_total(t.http, f"{t.base}/api/audit?limit=1"))[1]
    for r in range(ROUNDS):
        for t in both:
            cached = f"{t.base}/api/config/{t.service(1)}?environment=prod"
            if r == 0:
                await asyncio.to_thread(wrk, cached, connections=32, seconds=2, token=t.d["token"])
            # wrk in a thread: this loop keeps answering the WebSocket clients' pings.
            result = await asyncio.to_thread(
                wrk, cached, connections=32, seconds=seconds, token=t.d["token"]
            )
            keep(t, "get_cached_p99_ms", result["p99_ms"])
            keep(t, "get_cached_rps", result["requests_per_s"])
        for t in both:
            keep(t, "get_uncached_p99_ms", p99(await t.uncached(r)))
        for t in both:
            path = history_path(t)
            total = t.out["history_versions"]
            keep(t, "history_first_p99_ms", p99(await t.samples("GET", path)))
            deep = f"{path}&offset={max(total - 60, 0)}"
            keep(t, "history_deep_p99_ms", p99(await t.samples("GET", deep)))
        for t in both:
            entries = t.out["audit_entries"]
            keep(t, "audit_first_p99_ms", p99(await t.samples("GET", "/api/audit?limit=50")))
            deep = f"/api/audit?limit=50&offset={max(entries - 60, 0)}"
            keep(t, "audit_deep_p99_ms", p99(await t.samples("GET", deep)))
            target = f"/api/audit?limit=50&target=config:{t.service(7)}"
            keep(t, "audit_target_p99_ms", p99(await t.samples("GET", target)))
        for t in both:
            writes = [
                await timed(
                    t.http,
                    "PUT",
                    f"{t.base}/api/config/{t.service(n)}",
                    json={"environment": "staging", "config": {"bench": n, "round": r}},
                )
                for n in range(SAMPLES)
            ]
            keep(t, "write_p50_ms", p50(writes))
            keep(t, "write_p99_ms", p99(writes))
    for t, name in ((small, "small"), (large, "large")):
        for key, values in rounds[name].items():
            t.out[key] = median_round(values)
            t.out[key + "_rounds"] = values
        started = time.perf_counter()
        async with t.http.get(f"{t.base}/api/audit/verify") as r:
            verified = await r.json()
        t.out["verify_online_s"] = round(time.perf_counter() - started, 2)
        t.out["verify_ok"] = verified["ok"]
        t.out["rss_end_mb"] = rss_mb(t.d["pid"])


def history_path(t: Target) -> str:
    return f"/api/config/{t.service(0)}/history?environment=prod&limit=50"


class TokenSession:
    """A client session that adds one daemon's token to every request."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self._http, self._auth = http, {"Authorization": f"Bearer {token}"}

    def request(self, method: str, url: str, **kw: Any) -> Any:
        return self._http.request(method, url, headers=self._auth, **kw)

    def get(self, url: str, **kw: Any) -> Any:
        return self._http.get(url, headers=self._auth, **kw)

    def ws_connect(self, url: str, **kw: Any) -> Any:
        return self._http.ws_connect(url, **kw)


async def page_total(http: Any, url: str) -> tuple[Any, int]:
    async with http.get(url) as r:
        page = await r.json()
    return page, int(page["total"])


def verify_offline(data: Path) -> dict[str, Any]:
    """`fpcd audit verify --data-dir` in its own process: its peak RSS and time."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fpcd", "audit", "verify", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    output = proc.stdout.read().decode().strip()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "output": output,
    }


def minimal_cached_p99(seconds: int) -> dict[str, float]:
    """The minimal aiohttp app's cached GET in the same run (fixed bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(json.dumps({"config": {"a": 1}}).encode())
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.minimal_app", str(port), str(body)]
        )
        try:
            from benchmarks.common import wait_http

            wait_http(f"http://127.0.0.1:{port}/health")
            return wrk(f"http://127.0.0.1:{port}/api/config/x", connections=32, seconds=seconds)
        finally:
            proc.terminate()
            proc.wait(10)


async def run(small_db: Path, large_db: Path, results: dict[str, Any], seconds: int) -> None:
    # Start-up, alternating: each database started ROUNDS times.
    startups: dict[str, list[float]] = {"small": [], "large": []}
    for _ in range(ROUNDS):
        for name, db in (("small", small_db), ("large", large_db)):
            async with daemon(db) as d:
                startups[name].append(d["startup_s"])
    async with daemon(small_db) as ds, daemon(large_db) as dl:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            small = Target(ds, SMALL, http)
            large = Target(dl, LARGE, http)
            for t in (small, large):
                await t.subscribe(WS_CLIENTS)  # the token is in the WebSocket URL
                t.out["rss_with_ws_mb"] = rss_mb(t.d["pid"])
            # One session for both daemons: each request carries its own token.
            small.http = TokenSession(http, ds["token"])
            large.http = TokenSession(http, dl["token"])
            await measure(small, large, seconds)
            for t in (small, large):
                for ws in t.sockets:
                    await ws.close()
        small.out["verify_offline"] = verify_offline(ds["data"])
        large.out["verify_offline"] = verify_offline(dl["data"])
    for t, name in ((small, "small"), (large, "large")):
        t.out["startup_s"] = median_round(startups[name])
        t.out["startup_s_rounds"] = startups[name]
    results["small"], results["large"] = small.out, large.out
    results["minimal_app_cached_get"] = minimal_cached_p99(seconds)
    small, large = results["small"], results["large"]
    rows = []

    def row(what: str, key: str, target: str = "", unit: str = "") -> None:
        a, b = small[key], large[key]
        ratio = f"{b / a:.2f}" if isinstance(a, float | int) and a else ""
        rows.append([what, f"{a}{unit}", f"{b}{unit}", ratio, target])

    row("start-up (to /health/ready)", "startup_s", "< 3 s", " s")
    row("RSS idle", "rss_idle_mb", "", " MB")
    row(f"RSS with {WS_CLIENTS:,} WebSocket clients", "rss_with_ws_mb", "< 150 MB", " MB")
    row("RSS at the end", "rss_end_mb", "< 150 MB", " MB")
    row("cached GET p99 (wrk, 32 connections)", "get_cached_p99_ms", "<= 1.2x", " ms")
    row("uncached GET p99 (first reads)", "get_uncached_p99_ms", "<= 1.2x", " ms")
    row("history page 1 p99", "history_first_p99_ms", "O(limit)", " ms")
    row("history page at the oldest versions p99", "history_deep_p99_ms", "O(limit)", " ms")
    row("audit page 1 p99", "audit_first_p99_ms", "O(limit)", " ms")
    row("audit page at the oldest entries p99", "audit_deep_p99_ms", "O(limit)", " ms")
    row("audit page, one target p99", "audit_target_p99_ms", "O(limit)", " ms")
    row("write p50", "write_p50_ms", "", " ms")
    row("write p99", "write_p99_ms", "", " ms")
    row("audit verify online", "verify_online_s", "", " s")
    small["verify_peak_mb"] = small["verify_offline"]["peak_rss_mb"]
    large["verify_peak_mb"] = large["verify_offline"]["peak_rss_mb"]
    row("audit verify offline, peak RSS", "verify_peak_mb", "constant", " MB")
    minimal = results["minimal_app_cached_get"]
    write_results(
        "scale",
        "How cost grows: nearly empty vs large database",
        results,
        rows,
        ["what", "nearly empty", "large", "large / empty", "target"],
        [
            f"Commit {results['commit']}. Large: {LARGE['services']:,} services x 3"
            f" environments, {LARGE['versions']:,} config versions (the first service's"
            f" prod layer holds {large['history_versions']:,} of them), {LARGE['flags']:,}"
            f" flags, {large['audit_entries']:,} audit entries"
            f" ({results['large_db_mb']:,} MB file); {WS_CLIENTS:,} WebSocket clients"
            " subscribed during every measurement. Pages are 50 entries; one-at-a-time"
            f" figures are p99 of {SAMPLES} requests.",
            f"Minimal aiohttp app, same run, cached GET with wrk at 32 connections:"
            f" {minimal['requests_per_s']:,.0f} requests/s, p99 {minimal['p99_ms']} ms"
            f" (fpcd: {small['get_cached_rps']:,.0f} and"
            f" {large['get_cached_rps']:,.0f} requests/s).",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fpcd-scale")
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    small_db, _ = dataset(args.cache, "small", SMALL)
    large_db, build_s = dataset(args.cache, "large", LARGE)
    results: dict[str, Any] = {
        "large_shape": LARGE,
        "small_shape": SMALL,
        "ws_clients": WS_CLIENTS,
        "large_build_seconds": build_s,
        "large_db_mb": round(large_db.stat().st_size / 2**20),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    asyncio.run(run(small_db, large_db, results, args.seconds))


if __name__ == "__main__":
    main()
