"""Metrics, health, logs and alerts, as an operator sees them: scraped, probed and read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from fpcd.app import Daemon
from fpcd.observe.stats import LatencyHistogram
from tests.conftest import (
    LOG_LINES,
    admin_token,
    api_session,
    eventually,
    issue_token,
    make_settings,
    run_cli,
    secret_value,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def openmetrics_families(text: str) -> list[Metric]:
    """prometheus-client's OpenMetrics parser, which carries no annotations."""
    return list(openmetrics_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def parse(text: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus-client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


async def scrape(http: aiohttp.ClientSession) -> Samples:
    async with http.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await r.text())


@pytest.fixture
async def observed(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(
        make_settings(
            tmp_path / "data",
            files=[{"service": "web", "environment": "prod", "path": str(tmp_path / "web.json")}],
            flags={"analytics_flush_interval": "200ms"},
        )
    )
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def socket_exchange(path: str, lines: list[bytes]) -> list[Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"".join(lines))
    await writer.drain()
    answers = [json.loads(await reader.readline()) for _ in lines]
    writer.close()
    await writer.wait_closed()
    return answers


async def test_metrics_count_a_known_workload(observed: Daemon, tmp_path: Path) -> None:
    daemon = observed
    async with api_session(daemon) as http:
        before = await scrape(http)
        r = await http.put("/api/config/web", json={"environment": "prod", "config": {"a": 1}})
        assert r.status == 200
        for _ in range(3):  # one built, two from the cache
            assert (await http.get("/api/config/web?environment=prod")).status == 200
        assert (await http.get("/api/config/nope?environment=prod")).status == 404
        flag = {"name": "checkout", "enabled": True, "rollout": {"percentage": 100}}
        assert (await http.post("/api/features", json=flag)).status == 201
        for i in range(5):
            body = {"flags": ["checkout"], "context": {"userId": f"u{i}"}}
            assert (await http.post("/api/features/evaluate", json=body)).status == 200
        query = [
            json.dumps({"id": i, "flag": "checkout", "context": {"userId": f"s{i}"}}).encode()
            + b"\n"
            for i in range(7)
        ]
        unknown = [
            json.dumps({"id": 100 + i, "flag": f"no-such-{i}"}).encode() + b"\n" for i in range(2)
        ]
        answers = await socket_exchange(daemon.addresses["flags"], [*query, *unknown, b"{oops\n"])
        assert [a.get("id") for a in answers] == [*range(7), 100, 101, None]
        pw = secret_value("metrics")
        put_secret = await http.put("/api/secrets/web/PW?environment=prod", json={"value": pw})
        assert put_secret.status == 200
        assert (await http.get("/api/secrets/web/PW?environment=prod")).status == 200

        async with aiohttp.ClientSession() as plain:
            url = daemon.addresses["ws"] + "/?token=" + admin_token(daemon.settings.data_dir)
            ws = await plain.ws_connect(url)
            await ws.send_json(
                {
                    "type": "SUBSCRIBE",
                    "serviceName": "web",
                    "environment": "prod",
                    "subscriptions": ["config-updates"],
                }
            )
            assert (await ws.receive_json(timeout=5))["type"] == "SUBSCRIBED"
            r = await http.put("/api/config/web", json={"environment": "prod", "config": {"a": 2}})
            assert r.status == 200
            assert (await ws.receive_json(timeout=5))["type"] == "CONFIGURATION_UPDATE"
            during = await scrape(http)
            await ws.close()

        async def flushed() -> bool:
            s = await scrape(http)
            return value(s, "fpcd_scheduler_jobs_total", job="analytics:flush", result="ok") > 0

        await eventually(flushed)  # counts now sit in SQLite: the totals must not change

        async def file_rewritten() -> bool:  # file sync is debounced
            path = tmp_path / "web.json"
            return path.exists() and json.loads(path.read_text()) == {"a": 2}

        await eventually(file_rewritten)
        after = await scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    config_get = {"route": "/api/config/{service}", "method": "GET"}
    assert delta("fpcd_http_requests_total", **config_get, status="200") == 3
    assert delta("fpcd_http_requests_total", **config_get, status="404") == 1
    assert delta("fpcd_http_request_duration_seconds_count", **config_get) == 4
    assert delta("fpcd_config_reads_total", result="hit") == 2
    assert delta("fpcd_config_reads_total", result="miss") == 2  # the first read and the 404

    # 5 over HTTP + 7 on the socket; unknown keys make no series, only errors by code.
    assert value(after, "fpcd_flag_evaluations_total", flag="checkout") == 12
    assert {s["flag"] for s in series(after, "fpcd_flag_evaluations_total")} == {"checkout"}
    assert value(after, "fpcd_flag_evaluation_errors_total", code="FLAG_NOT_FOUND") == 2
    assert value(after, "fpcd_flag_evaluation_duration_seconds_count") >= 14
    assert value(after, "fpcd_flag_socket_lookups_total") == 9
    assert value(after, "fpcd_flag_socket_rejected_total") == 1
    assert value(after, "fpcd_flag_socket_connections_opened_total") == 1
    assert value(after, "fpcd_flag_socket_connections") == 0

    assert value(during, "fpcd_websocket_connections") == 1
    assert value(during, "fpcd_websocket_subscriptions") == 1
    assert value(during, "fpcd_websocket_messages_sent_total") == 2  # SUBSCRIBED + the update
    assert value(during, "fpcd_websocket_delivery_seconds_count") == 2
    assert value(after, "fpcd_websocket_connections") == 0

    assert value(after, "fpcd_secret_reads_total") == 1
    assert value(after, "fpcd_secret_rotation_remaining") == 0
    assert value(after, "fpcd_file_writes_total") == 2  # {"a": 1}, then {"a": 2}
    assert value(after, "fpcd_file_command_failures_total") == 0
    assert delta("fpcd_sqlite_query_duration_seconds_count", op="write") >= 4
    assert delta("fpcd_sqlite_query_duration_seconds_count", op="read") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "fpcd_build_info") == 1
    assert pw not in repr(after)


async def test_metrics_need_a_token_and_speak_openmetrics(daemon: Daemon) -> None:
    async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as anonymous:
        assert (await anonymous.get("/metrics")).status == 401
    async with api_session(daemon, issue_token(daemon, "viewer")) as viewer:
        r = await viewer.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert r.status == 200 and r.headers["Content-Type"].startswith(
            "application/openmetrics-text"
        )
        names = {f.name for f in openmetrics_families(await r.text())}
        assert {"fpcd_http_requests", "fpcd_flag_evaluations", "fpcd_config_reads"} <= names
    async with api_session(daemon, issue_token(daemon, "service", services=["web"])) as service:
        assert (await service.get("/metrics")).status == 403


async def test_health_lists_every_component_and_sqlite_down_is_503(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path / "data"))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            r = await http.get("/health")
            doc = await r.json()
            assert r.status == 200 and doc["status"] == "ok"
            expected = {"sqlite", "upstream", "redis", "scheduler", "files", "websocket", "keyring"}
            assert expected <= set(doc["components"])
            for component in doc["components"].values():
                assert component["status"] == "ok" and component["latencyMs"] >= 0
            assert doc["components"]["upstream"]["detail"] == "not configured (standalone)"

            await (
                daemon.components.scheduler.stop()
            )  # a part it can serve without: degraded, still 200
            r = await http.get("/health")
            doc = await r.json()
            assert r.status == 200 and doc["status"] == "degraded"
            assert doc["components"]["scheduler"]["status"] == "down"

            await daemon.components.store.close()  # the part it cannot serve without
            r = await http.get("/health")
            doc = await r.json()
            assert r.status == 503 and doc["status"] == "down"
            assert doc["components"]["sqlite"]["status"] == "down"
            assert (await http.get("/health/live")).status == 200
    finally:
        with contextlib.suppress(Exception):  # the store is already closed
            await daemon.stop()


async def test_threshold_breach_degrades_the_component(tmp_path: Path) -> None:
    daemon = Daemon(
        make_settings(tmp_path / "data", alerts={"interval": "100ms", "config_read_p99_ms": 0.001})
    )
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            await http.put("/api/config/web", json={"environment": "prod", "config": {"a": 1}})
            stop = asyncio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    await http.get("/api/config/web?environment=prod")
                    await asyncio.sleep(0.01)

            reader = asyncio.create_task(traffic())
            try:

                async def degraded() -> bool:
                    doc = await (await http.get("/health")).json()
                    return bool(doc["components"]["config"]["status"] == "degraded")

                await eventually(degraded)
                r = await http.get("/health")
                doc = await r.json()
                assert r.status == 200 and doc["status"] == "degraded"
                assert "config_read_p99" in doc["components"]["config"]["detail"]
                samples = await scrape(http)
                assert value(samples, "fpcd_alerts_total", check="config_read_p99") == 1
                assert value(samples, "fpcd_alert_active", check="config_read_p99") == 1
                assert value(samples, "fpcd_alert_active", check="flag_eval_p99") == 0
                status = await (await http.get("/api/status")).json()
                assert "config_read_p99" in status["alerts"]
            finally:
                stop.set()
                await reader
            breaches = [line for line in LOG_LINES if "performance threshold breached" in line]
            assert any(json.loads(b)["check"] == "config_read_p99" for b in breaches)

            async def clear() -> bool:  # no reads in a window: nothing to judge, clear
                doc = await (await http.get("/health")).json()
                return bool(doc["components"]["config"]["status"] == "ok")

            await eventually(clear)
    finally:
        await daemon.stop()


def test_json_logs_carry_the_request_id_and_change_events(spawn: Any) -> None:
    proc = spawn(env={"FPCD_LOG__ACCESS": "true"}).start()
    import urllib.request

    body = json.dumps({"environment": "prod", "config": {"port": 80}}).encode()
    request = urllib.request.Request(
        proc.url + "/api/config/web",
        data=body,
        method="PUT",
        headers={**proc.auth, "Content-Type": "application/json", "X-Request-Id": "obs-req-1"},
    )
    with urllib.request.urlopen(request) as r:
        assert r.status == 200
    proc.stop()
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    access = [
        line for line in lines if line["msg"] == "request" and line["path"] == "/api/config/web"
    ]
    assert access and access[0]["request_id"] == "obs-req-1" and access[0]["status"] == 200
    changed = [line for line in lines if line["msg"] == "config changed"]
    assert changed == [
        {
            **changed[0],
            "service": "web",
            "environment": "prod",
            "version": 1,
            "actor": "admin",
            "request_id": "obs-req-1",
            "level": "info",
        }
    ]


def test_text_logs_and_warn_level(spawn: Any) -> None:
    proc = spawn(env={"LOG_LEVEL": "warn", "LOG_FORMAT": "text"}).start()
    proc.stop()
    log = proc.log()
    assert "created an admin token" in log  # a warning
    assert "fpcd ready" not in log  # info is below warn
    assert not any(line.startswith("{") for line in log.splitlines())


def test_status_command_summarizes(spawn: Any) -> None:
    proc = spawn().start()
    import urllib.request

    def post(path: str, doc: Any) -> None:
        request = urllib.request.Request(
            proc.url + path,
            data=json.dumps(doc).encode(),
            method="POST",
            headers={**proc.auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request):
            pass

    post("/api/features", {"name": "dark-mode", "enabled": True, "rollout": {"percentage": 100}})
    post("/api/features", {"name": "beta", "enabled": False})
    for i in range(3):
        post(
            "/api/features/evaluate",
            {"flags": ["dark_mode", "beta"], "context": {"userId": str(i)}},
        )
    post("/api/features/evaluate", {"flags": ["dark_mode"], "context": {"userId": "x"}})
    r = run_cli("status", "--socket", str(proc.socket))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert ": ok (up" in out and "2 flags" in out
    assert "replication: not configured (standalone)" in out
    top = out.split("top flags", 1)[1].splitlines()[1:]
    assert top[0].split()[:3] == ["dark_mode", "4", "100.0%"]
    assert top[1].split()[:3] == ["beta", "3", "0.0%"]
    r = run_cli("status", "--socket", str(proc.socket), "--json")
    assert json.loads(r.stdout)["topFlags"][0] == {
        "key": "dark_mode",
        "evaluations": 4,
        "enabled": 4,
    }


def test_histogram_quantile_matches_prometheus() -> None:
    h = LatencyHistogram((0.1, 0.2, 0.4))
    for v in [0.05] * 50 + [0.15] * 40 + [0.3] * 10:
        h.observe(v)
    # histogram_quantile: linear inside the bucket that holds the rank.
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert h.quantile(0.9) == pytest.approx(0.2)
    assert h.quantile(0.99) == pytest.approx(0.2 + 0.2 * 9 / 10)
    snap = h.snapshot()
    assert h.quantile(0.99, snap) is None
    h.observe(5.0)  # past the last bound: the highest bound, as Prometheus answers
    assert h.quantile(0.99, snap) == 0.4


async def test_alert_rules_in_the_docs_name_exported_metrics(tmp_path: Path, pg_url: str) -> None:
    text = (Path(__file__).parent.parent / "docs" / "alerts.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    rules = next(yaml.safe_load(b) for b in blocks if b.startswith("groups:"))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {m for expr in exprs for m in re.findall(r"\bfpcd_[a-z_]+", expr)}
    assert len(named) >= 10
    daemon = Daemon(make_settings(tmp_path / "data", upstream={"postgres_url": pg_url}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            await http.get("/api/config/web?environment=prod")  # one series per histogram
            exported = {name for name, _ in await scrape(http)}
    finally:
        await daemon.stop()
    assert named <= exported, named - exported


def test_access_log_is_off_by_default_and_complete_when_on(spawn: Any) -> None:
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    quiet, loud = spawn("quiet").start(), spawn("loud", env={"FPCD_LOG__ACCESS": "true"}).start()

    def get(url: str) -> int:
        with urllib.request.urlopen(url + "/health/live") as r:
            return int(r.status)

    for proc in (quiet, loud):
        with ThreadPoolExecutor(8) as pool:  # concurrent: lines of one loop pass go together
            assert set(pool.map(get, [proc.url] * 40)) == {200}
        proc.stop()

    def access_lines(proc: Any) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line["msg"] == "request"]

    assert access_lines(quiet) == []
    lines = [line for line in access_lines(loud) if line["path"] == "/health/live"]
    assert len(lines) == 40 and {line["status"] for line in lines} == {200}
    assert len({line["request_id"] for line in lines}) == 40
