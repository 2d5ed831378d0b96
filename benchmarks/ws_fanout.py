"""Change-to-delivery latency: from a PUT to 1, 100, 1,000 and 10,000 WebSocket subscribers.

Run: python -m benchmarks.ws_fanout [--base-python BASE/.venv/bin/python] [--tiers 1,100,1000,10000]

The daemon runs pinned to CPU 0. The subscribers are held by several client processes
(up to 2,500 connections each) on CPU 1, each a lean asyncio Protocol speaking just
enough WebSocket (RFC 6455) to subscribe, answer pings and decode every message, so
the client's own cost stays small beside the daemon's. The writer is this process (also
on CPU 1). Each latency is from just before the PUT is sent to the moment a subscriber's
client has the CONFIGURATION_UPDATE decoded (both read CLOCK_MONOTONIC); so it includes
the write's SQLite commit. The descriptor limit is raised for the daemon and clients.
With --base-python, a base checkout's daemon is measured in the same run, tier by tier.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import http.client
import json
import math
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import uvloop

from benchmarks.common import (
    fpcd_daemon,
    free_port,
    interpreter_commit,
    pinned,
    wait_http,
    write_results,
)

SERVER_CPU, CLIENT_CPU = 0, 1
PER_PROCESS = 2500
WRITES = {1: 100, 100: 100, 1000: 100, 10_000: 20}
TARGETS = {100: "p99 < 20 ms", 1000: "p99 ≤ 20 ms", 10_000: "p99 ≤ 200 ms"}


# -- the subscriber side (a client process) ---------------------------------------------


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame: final, masked (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Subscriber(asyncio.Protocol):
    def __init__(self, group: Group) -> None:
        self.group = group
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.group.handshake)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.group.lost += 1

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # once per chunk: every frame in it arrived together
        if self.upgraded and not self.buffer:  # the usual case: whole frames, nothing held
            self.frames(data, now)
            return
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 101 " not in status:
                raise SystemExit(f"WebSocket upgrade refused: {status!r}")
            del buffer[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(_frame(self.group.subscribe))
        data = bytes(buffer)
        buffer.clear()
        self.frames(data, now)

    def frames(self, data: bytes, now: int) -> None:
        """Act on each whole frame in `data` (server frames are unmasked); keep the rest."""
        at, size = 0, len(data)
        while size - at >= 2:
            n, start = data[at + 1] & 0x7F, at + 2
            if n == 126:
                n, start = int.from_bytes(data[at + 2 : at + 4], "big"), at + 4
            elif n == 127:
                n, start = int.from_bytes(data[at + 2 : at + 10], "big"), at + 10
            if size < start + n:
                break
            opcode = data[at] & 0x0F
            if opcode == 1:
                self.group.message(data[start : start + n], now)
            elif opcode == 9 and self.transport is not None:  # ping: pong
                self.transport.write(_frame(data[start : start + n], 10))
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
            at = start + n
        if at < size:
            self.buffer += data[at:]


class Group:
    """One client process's subscribers; reports on stdout, takes `done` on stdin."""

    def __init__(self, url: str, token: str, count: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.handshake = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.subscribe = json.dumps(
            {
                "type": "SUBSCRIBE",
                "serviceName": "bench",
                "environment": "production",
                "subscriptions": ["config-updates"],
            }
        ).encode()
        self.count = count
        self.subscribed = 0
        self.lost = 0
        #: write number -> arrival instants (ns)
        self.arrivals: dict[int, list[int]] = {}
        self.decode = msgspec.json.decode

    def message(self, payload: bytes, now: int) -> None:
        message = self.decode(payload)
        kind = message["type"]
        if kind == "CONFIGURATION_UPDATE":
            n = message["config"].get("n")
            if n is None:  # the version before the first write (sent on subscribe)
                return
            arrived = self.arrivals.setdefault(n, [])
            arrived.append(now)
            if len(arrived) == self.count:
                _say(f"got {n}")
        elif kind == "SUBSCRIBED":
            self.subscribed += 1
            if self.subscribed == self.count:
                _say("ready")
        elif kind == "ERROR":
            _say(f"error {message}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(100)  # connections opening at once (the listen backlog)

        async def connect() -> None:
            async with gate:
                for attempt in range(20):
                    try:
                        await loop.create_connection(lambda: Subscriber(self), self.host, self.port)
                        return
                    except OSError:
                        await asyncio.sleep(0.05 * (attempt + 1))
                raise SystemExit("could not connect")

        await asyncio.gather(*(connect() for _ in range(self.count)))
        gc.collect()  # the connections live to the end: keep them out of the collector's way
        gc.freeze()
        done = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), done.set)
        await done.wait()
        print(json.dumps({"arrivals": self.arrivals, "lost": self.lost}), flush=True)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def client_main() -> None:
    url, count = sys.argv[2], int(sys.argv[3])
    uvloop.run(Group(url, os.environ["FPCD_TOKEN"], count).run())


# -- the writer and the report -----------------------------------------------------------


def raise_descriptor_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (the daemon, the clients)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for limit in ((max(wanted, hard), max(wanted, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            break
        except (ValueError, OSError):  # raising the hard limit needs privileges
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _lines(proc: subprocess.Popen[bytes], into: queue.Queue[tuple[int, str]]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        into.put((proc.pid, raw.decode().strip()))


def measure(d: dict[str, Any], subscribers: int) -> dict[str, Any]:
    processes = max(1, math.ceil(subscribers / PER_PROCESS))
    counts = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    # Processes alternate between the WebSocket port and the API port's /ws: the daemon
    # caps each TCP port to fit its descriptor limit (7,500 each under 20,000).
    urls = [d["ws_url"] + "/", d["url"].replace("http://", "ws://") + "/ws"]
    procs = [
        subprocess.Popen(
            [
                *pinned(CLIENT_CPU),
                sys.executable,
                "-m",
                "benchmarks.ws_fanout",
                "client",
                urls[i % 2],
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "FPCD_TOKEN": d["token"]},
        )
        for i, n in enumerate(counts)
    ]
    readers = [threading.Thread(target=_lines, args=(p, lines), daemon=True) for p in procs]
    for reader in readers:
        reader.start()

    def expect(word: str, timeout: float) -> None:
        waiting = {p.pid for p in procs}
        deadline = time.monotonic() + timeout
        while waiting:
            pid, line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            if line == word:
                waiting.discard(pid)
            elif line.startswith("error"):
                raise RuntimeError(line)

    api = urlsplit(d["url"])
    conn = http.client.HTTPConnection(api.hostname or "127.0.0.1", api.port, timeout=30)
    headers = {"Authorization": f"Bearer {d['token']}", "Content-Type": "application/json"}
    try:
        expect("ready", 300)
        starts: list[int] = []
        for n in range(WRITES[subscribers]):
            body = json.dumps({"environment": "production", "config": {"n": n}})
            starts.append(time.monotonic_ns())
            conn.request("PUT", "/api/config/bench", body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            expect(f"got {n}", 60)
            time.sleep(0.02)
        reports = []
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"done\n")
            p.stdin.flush()
        for _ in procs:
            reports.append(json.loads(lines.get(timeout=60)[1]))
    finally:
        conn.close()
        for p in procs:
            p.kill()
            p.wait(10)
    latencies: list[float] = []
    last: list[float] = []
    for n, start in enumerate(starts):
        arrived = [t for r in reports for t in r["arrivals"].get(str(n), [])]
        latencies += [(t - start) / 1e6 for t in arrived]
        last.append((max(arrived) - start) / 1e6)
    latencies.sort()
    return {
        "subscribers": subscribers,
        "client_processes": processes,
        "deliveries": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)], 2),
        "max_ms": round(latencies[-1], 2),
        "last_subscriber_p50_ms": round(statistics.median(last), 2),
    }


@contextmanager
def floor_app() -> Iterator[dict[str, Any]]:
    """benchmarks/ws_floor_app.py: aiohttp alone, the same clients and writes."""
    port = free_port()
    proc = subprocess.Popen(
        [*pinned(SERVER_CPU), sys.executable, "-m", "benchmarks.ws_floor_app", str(port)]
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready")
        yield {"url": f"http://127.0.0.1:{port}", "ws_url": f"ws://127.0.0.1:{port}", "token": ""}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-python", help="interpreter of the base checkout's venv")
    parser.add_argument("--tiers", default="1,100,1000,10000")
    parser.add_argument("--output", default="ws_fanout", help="results file name")
    args = parser.parse_args()
    limit = raise_descriptor_limit()
    if hasattr(os, "sched_setaffinity") and pinned(CLIENT_CPU):
        os.sched_setaffinity(0, {CLIENT_CPU})  # the writer beside the clients
    pythons = {"after": sys.executable}
    if args.base_python:
        pythons["before"] = args.base_python
    commits = {name: interpreter_commit(python) for name, python in pythons.items()}
    commits["floor"] = "aiohttp alone"
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in commits}
    env = {"FPCD_LOG__ACCESS": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        for i, subscribers in enumerate(int(t) for t in args.tiers.split(",")):
            names = list(commits)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                server = (
                    floor_app()
                    if name == "floor"
                    else fpcd_daemon(env=env, cpu=SERVER_CPU, python=pythons[name], cwd=Path(tmp))
                )
                with server as d:
                    result = measure(d, subscribers)
                results[name].append(result)
                print(name, result, file=sys.stderr)
    rows = [
        [
            f"{name} ({commits[name]})",
            r["subscribers"],
            r["client_processes"],
            r["deliveries"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["last_subscriber_p50_ms"],
            TARGETS.get(r["subscribers"], ""),
        ]
        for name in commits
        for r in results[name]
    ]
    write_results(
        args.output,
        "WebSocket change-to-delivery latency",
        {"writes": WRITES, "descriptor_limit": limit, "commits": commits, "results": results},
        rows,
        [
            "daemon",
            "subscribers",
            "client processes",
            "deliveries",
            "p50 ms",
            "p99 ms",
            "max ms",
            "last subscriber p50 ms",
            "target",
        ],
        [
            "PUTs per tier: "
            + ", ".join(f"{k:,}: {v}" for k, v in WRITES.items())
            + "; 20 ms apart, each after the last one's deliveries. Latency from just before "
            "each PUT to the decoded message at each subscriber, so it includes the write's "
            "SQLite commit. Daemon on CPU 0 (a fresh one per tier); client processes (at most "
            f"{PER_PROCESS:,} subscribers each, lean asyncio Protocols) and the writer on "
            f"CPU 1. Descriptor limit {limit:,}. 'floor' is benchmarks/ws_floor_app.py: a "
            "minimal aiohttp app that answers the PUT and sends the same encoded update to "
            "every subscriber with send_str (no storage, auth, limits or counting).",
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main()
    else:
        main()
