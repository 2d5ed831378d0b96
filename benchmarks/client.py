"""The Python client's local evaluation beside the daemon's doors and a peer SDK.

Per flag lookup, for the same flag and contexts: ConfigurationClient.evaluate (local,
the daemon's own evaluate plus counting), the same through the OpenFeature SDK with
FpcdProvider, the flag socket (FlagSocketClient, one round trip per lookup), HTTP
(`POST /api/features/evaluate` and OFREP, one keep-alive connection, one request per
lookup), and GrowthBook's SDK evaluating locally.

Run: python -m benchmarks.client  (GrowthBook needs `pip install -e '.[bench]'`)
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from benchmarks import peers
from benchmarks.common import fpcd_daemon, put_json, write_results
from benchmarks.flags import CHECKOUT
from fpcd.client import ConfigurationClient, EvaluationContext, FlagSocketClient
from fpcd.domain.flags import evaluate

SERVER_CPU, CLIENT_CPU = 0, 1
LOCAL_N = 100_000
ROUND_TRIPS = 3_000


def contexts(n: int) -> list[EvaluationContext]:
    return [
        EvaluationContext(
            user_id=f"user-{i}",
            user_group="beta",
            region="eu",
            environment="production",
            custom_attributes={"plan": "pro"},
        )
        for i in range(n)
    ]


def per_call_us(run: Callable[[], int], repeats: int = 5) -> float:
    """Median over `repeats` runs of the mean µs per call (`run` returns its call count)."""

    def once() -> float:
        start = time.perf_counter()
        calls = run()
        return (time.perf_counter() - start) / calls * 1e6

    return round(statistics.median(once() for _ in range(repeats)), 3)


def latencies_us(call: Callable[[int], object], n: int) -> dict[str, float]:
    for i in range(200):  # warm-up
        call(i)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        call(i)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_us": round(samples[n // 2] / 1000, 1),
        "p99_us": round(samples[int(n * 0.99)] / 1000, 1),
        "mean_us": round(sum(samples) / n / 1000, 1),
    }


async def local(d: dict[str, Any]) -> dict[str, Any]:
    ctxs = contexts(LOCAL_N)
    dicts = [
        {
            "userId": c.user_id,
            "userGroup": "beta",
            "region": "eu",
            "customAttributes": {"plan": "pro"},
        }
        for c in ctxs[:20_000]
    ]
    client = ConfigurationClient(
        api_url=d["url"],
        token=d["token"],
        service_name="bench",
        environment="production",
        analytics_interval=3600,
    )
    async with client:
        assert client.evaluate("checkout", ctxs[0]).flag_version == 1
        compiled = client._flags.compiled  # the floor: the domain function alone
        now = time.time()

        def domain() -> int:
            for c in ctxs:
                evaluate(compiled["checkout"], c, now, compiled.get)
            return len(ctxs)

        def client_struct() -> int:
            for c in ctxs:
                client.evaluate("checkout", c)
            return len(ctxs)

        def client_dict() -> int:
            for c in dicts:
                client.evaluate("checkout", c)
            return len(dicts)

        results = {
            "domain_evaluate_us": per_call_us(domain),
            "client_evaluate_us": per_call_us(client_struct),
            "client_evaluate_dict_us": per_call_us(client_dict),
            "openfeature_us": openfeature_us(client, ctxs[:20_000]),
        }
        results["counted_evaluations"] = await client.flush()
    return results


def openfeature_us(client: ConfigurationClient, ctxs: list[EvaluationContext]) -> float | str:
    try:
        from openfeature import api
        from openfeature.evaluation_context import EvaluationContext as OFContext

        from fpcd.client.openfeature import FpcdProvider
    except ImportError:
        return "openfeature-sdk not installed"
    api.set_provider_and_wait(FpcdProvider(client), "bench")
    of = api.get_client("bench")
    of_ctxs = [
        OFContext(c.user_id, {"userGroup": "beta", "region": "eu", "plan": "pro"}) for c in ctxs
    ]

    def run() -> int:
        for c in of_ctxs:
            of.get_object_value("checkout", {}, c)
        return len(of_ctxs)

    try:
        return per_call_us(run, repeats=3)
    finally:
        api.shutdown()


def socket_trips(d: dict[str, Any]) -> dict[str, float]:
    ctxs = contexts(ROUND_TRIPS + 200)
    with FlagSocketClient(d["flags_socket"]) as sock:
        return latencies_us(lambda i: sock.evaluate("checkout", ctxs[i]), ROUND_TRIPS)


def http_trips(d: dict[str, Any], path: str, body: Callable[[int], bytes]) -> dict[str, float]:
    url = urllib.parse.urlsplit(d["url"])
    conn = http.client.HTTPConnection(url.netloc)
    headers = {"Authorization": f"Bearer {d['token']}", "Content-Type": "application/json"}

    def call(i: int) -> None:
        conn.request("POST", path, body=body(i), headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status

    try:
        return latencies_us(call, ROUND_TRIPS)
    finally:
        conn.close()


def main() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    context = {"userGroup": "beta", "region": "eu", "customAttributes": {"plan": "pro"}}
    with fpcd_daemon(env={"FPCD_LOG__ACCESS": "false"}, cpu=SERVER_CPU) as d:
        put_json(d["url"] + "/api/features", CHECKOUT, method="POST", token=d["token"])
        results: dict[str, Any] = asyncio.run(local(d))
        results["flag_socket"] = socket_trips(d)
        results["http_evaluate"] = http_trips(
            d,
            "/api/features/evaluate",
            lambda i: json.dumps(
                {"flags": ["checkout"], "context": {"userId": f"user-{i}", **context}}
            ).encode(),
        )
        results["http_ofrep"] = http_trips(
            d,
            "/ofrep/v1/evaluate/flags/checkout",
            lambda i: json.dumps(
                {
                    "context": {
                        "targetingKey": f"user-{i}",
                        "userGroup": "beta",
                        "region": "eu",
                        "plan": "pro",
                    }
                }
            ).encode(),
        )
    results["growthbook_us"] = peers.growthbook_us()
    local_us = results["client_evaluate_us"]

    def times(other: Any) -> str:
        return f"{other / local_us:,.0f}x" if isinstance(other, float) else ""

    def trip(run: dict[str, float]) -> str:
        return f"p50 {run['p50_us']} µs, p99 {run['p99_us']} µs"

    rows = [
        ["fpcd.domain.flags.evaluate alone (the floor)", f"{results['domain_evaluate_us']} µs", ""],
        ["ConfigurationClient.evaluate (EvaluationContext)", f"{local_us} µs", "1x"],
        [
            "ConfigurationClient.evaluate (dict context)",
            f"{results['client_evaluate_dict_us']} µs",
            times(results["client_evaluate_dict_us"]),
        ],
        [
            "OpenFeature SDK + FpcdProvider (get_object_value)",
            f"{results['openfeature_us']} µs",
            times(results["openfeature_us"]),
        ],
        [
            "flag socket, FlagSocketClient, one lookup per round trip",
            trip(results["flag_socket"]),
            times(results["flag_socket"]["p50_us"]),
        ],
        [
            "HTTP POST /api/features/evaluate, keep-alive, one at a time",
            trip(results["http_evaluate"]),
            times(results["http_evaluate"]["p50_us"]),
        ],
        [
            "HTTP POST /ofrep/v1/evaluate/flags/{key}, keep-alive, one at a time",
            trip(results["http_ofrep"]),
            times(results["http_ofrep"]["p50_us"]),
        ],
        [
            "GrowthBook SDK, local (same rules)",
            f"{results['growthbook_us']} µs",
            times(results["growthbook_us"]),
        ],
    ]
    write_results(
        "client",
        "Python client: local evaluation beside the daemon's doors and a peer",
        results,
        rows,
        ["per flag lookup", "time", "vs the client"],
        [
            "The flag of benchmarks/flags.py: 50% rollout, user groups, region, an `in` rule on a "
            "custom attribute, two weighted variants with configuration.",
            "The client's figure includes its context handling and the evaluation count that "
            "feeds the daemon's analytics; the floor row is the shared domain function alone.",
            "The daemon is pinned to CPU 0, this process (client, socket and HTTP callers) to "
            "CPU 1; round trips therefore include a wake-up across cores (about 80 µs here, see "
            "flags.md).",
        ],
    )


if __name__ == "__main__":
    main()
