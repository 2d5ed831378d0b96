"""Config reads per service in /metrics: known services only, up to a cap, then _other."""

from __future__ import annotations

from pathlib import Path

from fpcd.app import Daemon
from tests.conftest import api_session, make_settings


async def test_reads_are_counted_per_known_service_with_a_cap(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, metrics={"max_service_labels": 2}))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            for service in ("alpha", "beta", "gamma"):
                async with http.put(
                    f"/api/config/{service}", json={"environment": "production", "config": {}}
                ) as r:
                    assert r.status == 200
            reads = [("alpha", 200)] * 3 + [("beta", 200)] + [("gamma", 200)] * 2
            reads += [("no-such-service", 404)] * 4
            for service, status in reads:
                async with http.get(f"/api/config/{service}?environment=production") as r:
                    assert r.status == status
            async with http.get("/metrics") as r:
                lines = [
                    line
                    for line in (await r.text()).splitlines()
                    if line.startswith("fpcd_config_service_reads_total")
                ]
        assert lines == [
            'fpcd_config_service_reads_total{service="_other"} 6.0',
            'fpcd_config_service_reads_total{service="alpha"} 3.0',
            'fpcd_config_service_reads_total{service="beta"} 1.0',
        ]
    finally:
        await daemon.stop()


async def test_a_service_known_from_before_a_restart_gets_its_label(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    async with api_session(daemon) as http:
        await http.put("/api/config/kept", json={"environment": "production", "config": {}})
    await daemon.stop()
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    try:
        async with api_session(daemon) as http:
            await http.get("/api/config/kept?environment=production")
            text = await (await http.get("/metrics")).text()
        assert 'fpcd_config_service_reads_total{service="kept"} 1.0' in text
    finally:
        await daemon.stop()
