"""The same flag in peers' Python SDKs, evaluated locally (GrowthBook, Unleash).

Install them with `pip install -e '.[bench]'`; a missing SDK is reported, not faked.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

USERS = [f"user-{i}" for i in range(20_000)]


def growthbook_us() -> float | str:
    try:
        from growthbook import GrowthBook
    except ImportError:
        return "not installed"
    gb = GrowthBook(
        features={
            "checkout": {
                "defaultValue": None,
                "rules": [
                    {
                        "condition": {
                            "userGroup": {"$in": ["beta", "staff"]},
                            "region": "eu",
                            "plan": {"$in": ["pro", "team"]},
                        },
                        "coverage": 0.5,
                        "hashAttribute": "id",
                        "key": "checkout",
                        "variations": [{"steps": 3}, {"steps": 1}],
                        "weights": [0.5, 0.5],
                    }
                ],
            }
        }
    )

    def run() -> float:
        start = time.perf_counter()
        for user in USERS:
            gb.set_attributes({"id": user, "userGroup": "beta", "region": "eu", "plan": "pro"})
            gb.eval_feature("checkout")
        return (time.perf_counter() - start) / len(USERS) * 1e6

    return round(statistics.median(run() for _ in range(3)), 2)


def unleash_us() -> float | str:
    try:
        from UnleashClient import UnleashClient
        from UnleashClient.cache import FileCache
    except ImportError:
        return "not installed"
    cache = FileCache("fpcd-bench", directory=tempfile.mkdtemp())
    constraints = [
        {"contextName": "userGroup", "operator": "IN", "values": ["beta", "staff"]},
        {"contextName": "region", "operator": "IN", "values": ["eu"]},
        {"contextName": "plan", "operator": "IN", "values": ["pro", "team"]},
    ]
    variants: list[dict[str, Any]] = [
        {
            "name": "control",
            "weight": 500,
            "stickiness": "userId",
            "payload": {"type": "json", "value": '{"steps": 3}'},
        },
        {
            "name": "onepage",
            "weight": 500,
            "stickiness": "userId",
            "payload": {"type": "json", "value": '{"steps": 1}'},
        },
    ]
    cache.bootstrap_from_dict(
        {
            "version": 1,
            "features": [
                {
                    "name": "checkout",
                    "enabled": True,
                    "variants": [],
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "constraints": constraints,
                            "variants": variants,
                            "parameters": {
                                "rollout": "50",
                                "stickiness": "userId",
                                "groupId": "checkout",
                            },
                        }
                    ],
                }
            ],
        }
    )
    client = UnleashClient(
        "http://127.0.0.1:9/api",
        "fpcd-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)

    def run() -> float:
        start = time.perf_counter()
        for user in USERS:
            client.get_variant(
                "checkout",
                {
                    "userId": user,
                    "properties": {"userGroup": "beta", "region": "eu", "plan": "pro"},
                },
            )
        return (time.perf_counter() - start) / len(USERS) * 1e6

    try:
        return round(statistics.median(run() for _ in range(3)), 2)
    finally:
        client.destroy()
