"""Load client for the flag socket, run in its own process: one-at-a-time or pipelined."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def line(i: int) -> bytes:
    return (
        b'{"id":%d,"flag":"checkout","context":{"userId":"user-%d","userGroup":"beta",'
        b'"region":"eu","customAttributes":{"plan":"pro"}}}\n' % (i, i)
    )


def one_at_a_time(path: str, n: int) -> dict[str, float]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = sock.makefile("rb")
    latencies = []
    for i in range(n + 500):
        start = time.perf_counter_ns()
        sock.sendall(line(i))
        reader.readline()
        if i >= 500:  # warm-up
            latencies.append(time.perf_counter_ns() - start)
    latencies.sort()
    return {
        "round_trips": n,
        "p50_us": round(latencies[n // 2] / 1000, 1),
        "p99_us": round(latencies[int(n * 0.99)] / 1000, 1),
        "max_us": round(latencies[-1] / 1000, 1),
    }


def pipelined(path: str, seconds: float, batch: int = 1000, window: int = 2) -> dict[str, float]:
    """Batches of `batch` lines, `window` of them in flight: a sender thread writes the next
    batch as soon as one is answered, so the daemon never waits for the client."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    payload = b"".join(line(i) for i in range(batch))
    credits = threading.Semaphore(window)
    stop = threading.Event()

    def sender() -> None:
        while credits.acquire() and not stop.is_set():
            try:
                sock.sendall(payload)
            except OSError:
                return

    threading.Thread(target=sender, daemon=True).start()
    done = answered = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        answered += sock.recv(1 << 20).count(b"\n")
        while answered >= batch:
            answered -= batch
            done += batch
            credits.release()
    elapsed = time.perf_counter() - start
    stop.set()
    credits.release()
    sock.close()
    return {
        "evaluations": done,
        "seconds": round(elapsed, 2),
        "evaluations_per_s": round(done / elapsed),
    }


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "single":
        print(json.dumps(one_at_a_time(path, int(sys.argv[3]))))
    else:
        print(json.dumps(pipelined(path, float(sys.argv[3]))))
