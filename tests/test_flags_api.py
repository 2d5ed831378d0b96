"""Feature flags through the REST API of a running daemon."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon
from fpcd.services.events import FlagSwitched
from tests.conftest import DaemonProcess, api_session, make_settings

CHECKOUT: dict[str, Any] = {
    "name": "New Checkout Flow",
    "description": "the one-page checkout",
    "enabled": True,
    "rollout": {"percentage": 50, "userGroups": ["beta", "staff"], "regions": ["eu"]},
    "variants": [
        {"id": "control", "name": "Control", "weight": 50, "configuration": {"steps": 3}},
        {"id": "onepage", "name": "One page", "weight": 50, "configuration": {"steps": 1}},
    ],
    "dependencies": [],
    "tags": ["checkout", "q4"],
}


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, path, json=body, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def test_create_with_the_seed_body(http: aiohttp.ClientSession) -> None:
    status, flag = await call(http, "POST", "/api/features", CHECKOUT)
    assert status == 201
    assert flag["key"] == "new_checkout_flow" and flag["version"] == 1
    assert flag["rollout"]["percentage"] == 50 and flag["variants"][1]["id"] == "onepage"
    status, _ = await call(http, "POST", "/api/features", CHECKOUT)
    assert status == 409
    status, got = await call(http, "GET", "/api/features/new_checkout_flow")
    assert status == 200 and got == flag


async def test_evaluate_with_context(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/features", CHECKOUT)
    await call(http, "POST", "/api/features", {"name": "dark mode", "enabled": True})
    status, body = await call(
        http,
        "POST",
        "/api/features/evaluate",
        {
            "flags": ["new_checkout_flow", "dark_mode", "nope"],
            "context": {"userId": "u-1", "userGroup": "beta", "region": "eu"},
        },
    )
    assert status == 200
    results = body["results"]
    assert list(results) == ["new_checkout_flow", "dark_mode", "nope"]
    dark = results["dark_mode"]
    assert (dark["enabled"], dark["reason"], dark["flagVersion"]) == (True, "STATIC", 1)
    assert results["nope"]["errorCode"] == "FLAG_NOT_FOUND"
    checkout = results["new_checkout_flow"]
    assert checkout["reason"] in ("SPLIT", "TARGETING_MATCH")
    if checkout["enabled"]:
        assert checkout["configuration"]["steps"] in (1, 3)
    # Everyone outside the groups is not targeted.
    _, body = await call(
        http,
        "POST",
        "/api/features/evaluate",
        {"flags": ["new_checkout_flow"], "context": {"userId": "u-1", "userGroup": "public"}},
    )
    assert body["results"]["new_checkout_flow"]["detail"] == "not_targeted"
    # No `flags`: every active flag.
    _, body = await call(http, "POST", "/api/features/evaluate", {"context": {"userId": "x"}})
    assert sorted(body["results"]) == ["dark_mode", "new_checkout_flow"]


async def test_share_of_enabled_users_matches_the_rollout(http: aiohttp.ClientSession) -> None:
    await call(
        http,
        "POST",
        "/api/features",
        {"name": "quarter", "enabled": True, "rollout": {"percentage": 25}},
    )
    enabled = 0
    for i in range(2000):
        _, body = await call(
            http,
            "POST",
            "/api/features/evaluate",
            {"flags": ["quarter"], "context": {"userId": f"user-{i}"}},
        )
        enabled += body["results"]["quarter"]["enabled"]
    assert 0.21 <= enabled / 2000 <= 0.29


async def test_put_patch_archive_and_history(http: aiohttp.ClientSession) -> None:
    status, created = await call(
        http, "PUT", "/api/features/search_v2", {"name": "Search v2", "enabled": False}
    )
    assert status == 201 and created["version"] == 1
    status, same = await call(
        http, "PUT", "/api/features/search_v2", {"name": "Search v2", "enabled": False}
    )
    assert status == 200 and same["changed"] is False and same["version"] == 1
    status, patched = await call(
        http, "PATCH", "/api/features/search_v2", {"enabled": True, "rollout": {"percentage": 10}}
    )
    assert status == 200 and patched["version"] == 2
    assert patched["enabled"] is True and patched["rollout"]["percentage"] == 10
    assert patched["name"] == "Search v2"
    status, _ = await call(http, "PATCH", "/api/features/search_v2", {"enabled": "yes"})
    assert status == 422
    status, _ = await call(
        http,
        "PUT",
        "/api/features/search_v2",
        {"name": "Search v2", "enabled": True},
        headers={"If-Match": '"1"'},
    )
    assert status == 412
    status, archived = await call(http, "DELETE", "/api/features/search_v2")
    assert status == 200 and archived["archived"] is True and archived["version"] == 3
    assert (await call(http, "GET", "/api/features/search_v2"))[0] == 404
    assert (await call(http, "GET", "/api/features/search_v2?includeArchived=true"))[0] == 200
    _, results = await call(
        http, "POST", "/api/features/evaluate", {"flags": ["search_v2"], "context": {"userId": "u"}}
    )
    assert results["results"]["search_v2"]["errorCode"] == "FLAG_NOT_FOUND"
    _, listed = await call(http, "GET", "/api/features")
    assert listed["total"] == 0
    _, history = await call(http, "GET", "/api/features/search_v2/history")
    assert [v["version"] for v in history["items"]] == [3, 2, 1]
    assert history["items"][0]["archived"] is True
    # PUT restores an archived flag as a new version.
    status, restored = await call(
        http, "PUT", "/api/features/search_v2", {"name": "Search v2", "enabled": True}
    )
    assert status == 200 and restored["version"] == 4 and restored["archived"] is False
    _, audit = await call(http, "GET", "/api/audit?target=flag:search_v2")
    assert [e["action"] for e in audit["items"]] == [
        "flag.restore",
        "flag.archive",
        "flag.update",
        "flag.create",
    ]


async def test_list_filters(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/features", {"name": "a", "enabled": True, "tags": ["x"]})
    await call(
        http,
        "POST",
        "/api/features",
        {
            "name": "b",
            "enabled": False,
            "tags": ["y"],
            "environments": {"staging": {"enabled": True}},
        },
    )

    def keys(page: dict[str, Any]) -> list[str]:
        return [f["key"] for f in page["items"]]

    assert keys((await call(http, "GET", "/api/features?enabled=true"))[1]) == ["a"]
    assert keys((await call(http, "GET", "/api/features?enabled=false"))[1]) == ["b"]
    assert keys((await call(http, "GET", "/api/features?enabled=true&environment=staging"))[1]) == [
        "a",
        "b",
    ]
    assert keys((await call(http, "GET", "/api/features?tags=y,z"))[1]) == ["b"]


async def test_dependencies_and_cycles(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/features", {"name": "base", "enabled": True})
    status, _ = await call(
        http, "POST", "/api/features", {"name": "child", "enabled": True, "dependencies": ["base"]}
    )
    assert status == 201
    status, problem = await call(http, "PATCH", "/api/features/base", {"dependencies": ["child"]})
    assert status == 422
    assert problem["errors"][0]["path"] == "$.dependencies"
    assert "base -> child -> base" in problem["errors"][0]["message"]
    status, problem = await call(
        http, "POST", "/api/features", {"name": "orphan", "dependencies": ["ghost"]}
    )
    assert status == 422 and problem["errors"][0]["path"] == "$.dependencies[0]"
    status, problem = await call(http, "DELETE", "/api/features/base")
    assert status == 409 and "child" in problem["detail"]
    _, body = await call(
        http, "POST", "/api/features/evaluate", {"flags": ["child"], "context": {"userId": "u"}}
    )
    assert body["results"]["child"]["enabled"] is True
    await call(http, "PATCH", "/api/features/base", {"enabled": False})
    _, body = await call(
        http, "POST", "/api/features/evaluate", {"flags": ["child"], "context": {"userId": "u"}}
    )
    assert body["results"]["child"]["detail"] == "dependency:base"


async def test_removing_a_variant_another_flag_depends_on_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    await call(http, "POST", "/api/features", {**CHECKOUT, "name": "checkout"})
    status, _ = await call(
        http,
        "POST",
        "/api/features",
        {
            "name": "upsell",
            "enabled": True,
            "dependencies": [{"flag": "checkout", "variant": "onepage"}],
        },
    )
    assert status == 201
    only_control = [CHECKOUT["variants"][0]]
    status, problem = await call(
        http, "PATCH", "/api/features/checkout", {"variants": only_control}
    )
    assert status == 422
    assert problem["errors"] == [
        {
            "path": "$.variants",
            "message": "variant 'onepage' is required by flag 'upsell' (its dependencies[0])",
        }
    ]
    status, problem = await call(
        http, "PUT", "/api/features/checkout", {**CHECKOUT, "variants": only_control}
    )
    assert status == 422 and "upsell" in problem["errors"][0]["message"]
    _, checkout = await call(http, "GET", "/api/features/checkout")
    assert [v["id"] for v in checkout["variants"]] == ["control", "onepage"]  # unchanged
    # The dependent flag still works, and can still be changed.
    status, _ = await call(http, "PATCH", "/api/features/upsell", {"description": "still valid"})
    assert status == 200
    # Once nothing depends on it, the variant may go.
    await call(http, "PATCH", "/api/features/upsell", {"dependencies": ["checkout"]})
    status, _ = await call(http, "PATCH", "/api/features/checkout", {"variants": only_control})
    assert status == 200


BAD_FLAGS: list[tuple[dict[str, Any], str]] = [
    ({"name": "x", "rollout": {"percentage": 120}}, "$.rollout.percentage"),
    ({"name": "x", "rollout": {"percentage": -1}}, "$.rollout.percentage"),
    ({"name": "x", "variants": [{"id": "a", "weight": -1}]}, "$.variants[0].weight"),
    ({"name": "x", "variants": [{"id": "a", "weight": 0}]}, "$.variants"),
    (
        {"name": "x", "rollout": {"startDate": "2026-05-01", "endDate": "2026-04-01"}},
        "$.rollout.endDate",
    ),
    (
        {"name": "x", "rules": [{"attribute": "a", "operator": "matches", "values": ["b"]}]},
        "$.rules[0].operator",
    ),
    ({"name": "x", "dependencies": ["nope"]}, "$.dependencies[0]"),
    ({"name": "x", "enabled": "true"}, "$.enabled"),
    ({"name": "x", "colour": "red"}, "$.colour"),
    ({"description": "no name"}, "$.name"),
    ({"name": "!!!"}, "$.name"),
    ({"name": "x", "key": "Bad Key"}, "$.key"),
]


@pytest.mark.parametrize(("body", "path"), BAD_FLAGS)
async def test_bad_flags_are_refused_with_the_path(
    http: aiohttp.ClientSession, body: dict[str, Any], path: str
) -> None:
    status, problem = await call(http, "POST", "/api/features", body)
    assert status == 422, problem
    assert path in [e["path"] for e in problem["errors"]]
    _, listed = await call(http, "GET", "/api/features?includeArchived=true")
    assert listed["total"] == 0


async def test_failed_update_leaves_the_flag_whole(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/features", CHECKOUT)
    status, _ = await call(
        http,
        "PUT",
        "/api/features/new_checkout_flow",
        {**CHECKOUT, "variants": [{"id": "a", "weight": 0}]},
    )
    assert status == 422
    _, flag = await call(http, "GET", "/api/features/new_checkout_flow")
    assert flag["version"] == 1 and len(flag["variants"]) == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/features/BAD KEY", None, 400),
        ("GET", "/api/features?enabled=perhaps", None, 400),
        ("GET", "/api/features?environment=a/b", None, 400),
        ("POST", "/api/features/evaluate", {"flags": "all"}, 422),
        ("POST", "/api/features/evaluate", {"context": {"userId": 5}}, 422),
        ("POST", "/api/features/evaluate", {"context": {"environment": "no/pe"}}, 400),
        ("POST", "/api/features/evaluate", {"contxt": {}}, 422),
        ("PATCH", "/api/features/missing", {"enabled": True}, 404),
        ("DELETE", "/api/features/missing", None, 404),
        ("GET", "/api/features/missing/history", None, 404),
        ("GET", "/api/features/missing/analytics", None, 404),
    ],
)
async def test_bad_requests(
    http: aiohttp.ClientSession, method: str, path: str, body: Any, status: int
) -> None:
    got, problem = await call(http, method, path, body)
    assert got == status, problem
    assert problem["status"] == status and problem["detail"]


async def test_analytics_counts_every_evaluation(
    http: aiohttp.ClientSession, daemon: Daemon
) -> None:
    await call(http, "POST", "/api/features", CHECKOUT)
    for i in range(40):
        await call(
            http,
            "POST",
            "/api/features/evaluate",
            {
                "flags": ["new_checkout_flow"],
                "context": {
                    "userId": f"u{i}",
                    "userGroup": "beta" if i % 2 else "x",
                    "region": "eu",
                },
            },
        )
    await daemon.components.flags.analytics.flush()  # half of them from SQLite, half pending
    for i in range(10):
        await call(
            http,
            "POST",
            "/api/features/evaluate",
            {"flags": ["new_checkout_flow"], "context": {"userId": f"v{i}", "userGroup": "x"}},
        )
    status, report = await call(http, "GET", "/api/features/new_checkout_flow/analytics")
    assert status == 200
    assert report["total"] == 50
    assert report["enabled"] + report["disabled"] == 50
    assert report["reasons"]["DEFAULT"] == 30  # not targeted
    assert sum(report["variants"].values()) == report["enabled"]
    assert report["daily"] == [
        {
            "date": datetime.now(UTC).date().isoformat(),
            "total": 50,
            "enabled": report["enabled"],
            # Per day per variant (the console's chart): today holds every evaluation.
            "variants": report["variants"],
        }
    ]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    _, later = await call(
        http,
        "GET",
        f"/api/features/new_checkout_flow/analytics"
        f"?startDate={tomorrow}&endDate={tomorrow}T12:00:00Z",
    )
    assert later["total"] == 0
    status, _ = await call(
        http, "GET", "/api/features/new_checkout_flow/analytics?startDate=yesterday"
    )
    assert status == 400


async def test_scheduled_switch_emits_an_event(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    try:
        seen: list[FlagSwitched] = []
        both = asyncio.Event()

        def listen(event: object) -> None:
            if isinstance(event, FlagSwitched):
                seen.append(event)
                if len(seen) == 2:
                    both.set()

        daemon.components.bus.subscribe(listen)
        start = datetime.now(UTC) + timedelta(seconds=1)
        end = start + timedelta(seconds=1)
        async with api_session(daemon) as http:
            await call(
                http,
                "POST",
                "/api/features",
                {
                    "name": "launch",
                    "enabled": True,
                    "rollout": {"startDate": start.isoformat(), "endDate": end.isoformat()},
                },
            )
            _, before = await call(
                http,
                "POST",
                "/api/features/evaluate",
                {"flags": ["launch"], "context": {"userId": "u"}},
            )
            assert before["results"]["launch"]["detail"] == "scheduled"
            await asyncio.wait_for(both.wait(), 10)
            assert [e.boundary for e in seen] == ["start", "end"]
            assert all(e.key == "launch" for e in seen)
    finally:
        await daemon.stop()


async def test_schedule_is_rebuilt_at_start_and_on_change(tmp_path: Path) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    async with api_session(daemon) as http:
        await call(
            http,
            "POST",
            "/api/features",
            {"name": "later", "enabled": True, "rollout": {"startDate": later}},
        )
    assert daemon.components.scheduler.job_ids("flag:") == ["flag:later:*:start"]
    await daemon.stop()

    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    try:
        assert daemon.components.scheduler.job_ids("flag:") == ["flag:later:*:start"]
        async with api_session(daemon) as http:
            await call(http, "PATCH", "/api/features/later", {"rollout": {"startDate": None}})
        assert daemon.components.scheduler.job_ids("flag:") == []
    finally:
        await daemon.stop()


def test_same_answers_after_restart(spawn: Any) -> None:
    import json
    import urllib.request

    proc: DaemonProcess = spawn().start()

    def post(path: str, body: Any) -> Any:
        req = urllib.request.Request(
            proc.url + path, data=json.dumps(body).encode(), method="POST", headers=proc.auth
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    post("/api/features", {**CHECKOUT, "rollout": {"percentage": 30}})
    contexts = [{"userId": f"user-{i}"} for i in range(300)]

    def answers() -> list[Any]:
        return [
            post("/api/features/evaluate", {"flags": ["new_checkout_flow"], "context": c})[
                "results"
            ]["new_checkout_flow"]
            for c in contexts
        ]

    before = answers()
    assert 40 < sum(r["enabled"] for r in before) < 140
    assert proc.stop() == 0
    proc.start()
    assert answers() == before


async def test_counts_are_written_at_shutdown(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, flags={"analytics_flush_interval": "1h"}))
    await daemon.start()
    async with api_session(daemon) as http:
        await call(http, "POST", "/api/features", {"name": "counted", "enabled": True})
        for i in range(7):
            await call(
                http,
                "POST",
                "/api/features/evaluate",
                {"flags": ["counted"], "context": {"userId": str(i)}},
            )
    await daemon.stop()
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            _, report = await call(http, "GET", "/api/features/counted/analytics")
        assert report["total"] == 7 and report["reasons"] == {"STATIC": 7}
    finally:
        await daemon.stop()


async def test_counts_from_clients_that_evaluate_locally(http: aiohttp.ClientSession) -> None:
    variants = [{"id": "a", "weight": 1}, {"id": "b", "weight": 1}]
    await call(
        http, "POST", "/api/features", {"name": "local", "enabled": True, "variants": variants}
    )
    hour = int(datetime.now(UTC).timestamp() // 3600)
    counts = [
        {"flag": "local", "enabled": True, "reason": "STATIC", "hour": hour, "count": 40},
        {
            "flag": "local",
            "variant": "b",
            "enabled": True,
            "reason": "SPLIT",
            "hour": hour,
            "count": 2,
        },
        {"flag": "unknown", "enabled": False, "reason": "DEFAULT", "hour": hour, "count": 5},
        {"flag": "local", "enabled": True, "reason": "STATIC", "hour": hour - 24 * 90, "count": 7},
        # A variant the flag does not have: dropped, so no client can invent metric series.
        {
            "flag": "local",
            "variant": "zz",
            "enabled": True,
            "reason": "SPLIT",
            "hour": hour,
            "count": 3,
        },
    ]
    status, result = await call(http, "POST", "/api/features/evaluations", {"counts": counts})
    assert status == 200 and result == {"accepted": 42, "ignored": 15}
    _, report = await call(http, "GET", "/api/features/local/analytics")
    assert report["total"] == 42 and report["variants"] == {"b": 2}
    assert report["reasons"] == {"STATIC": 40, "SPLIT": 2}
    metrics = await (await http.get("/metrics")).text()
    assert 'fpcd_flag_evaluations_total{flag="local",reason="SPLIT",variant="b"} 2.0' in metrics
    assert 'variant="zz"' not in metrics
    bad = [{"flag": "local", "enabled": True, "reason": "MAYBE", "hour": hour, "count": 1}]
    status, problem = await call(http, "POST", "/api/features/evaluations", {"counts": bad})
    assert status == 422 and problem["errors"][0]["path"].startswith("$.counts[0].reason")
