"""The flag-lookup Unix socket: NDJSON, pipelined, in order, resilient to bad lines."""

from __future__ import annotations

import asyncio
import grp
import json
import os
from pathlib import Path
from typing import Any

from fpcd.app import Daemon
from tests.conftest import api_session, make_settings


async def create(daemon: Daemon, *bodies: dict[str, Any]) -> None:
    async with api_session(daemon) as http:
        for body in bodies:
            async with http.post("/api/features", json=body) as r:
                assert r.status == 201, await r.text()


async def exchange(path: str, payload: bytes, answers: int) -> list[Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    lines = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in range(answers)]
    writer.close()
    await writer.wait_closed()
    return lines


async def test_single_and_multi_lookups(daemon: Daemon) -> None:
    await create(
        daemon,
        {"name": "a", "enabled": True},
        {"name": "b", "enabled": True, "rollout": {"percentage": 0}},
    )
    path = daemon.addresses["flags"]
    out = await exchange(
        path,
        b'{"id":1,"flag":"a","context":{"userId":"u"}}\n'
        b'{"id":"two","flags":["a","b","zz"],"context":{"userId":"u"}}\n'
        b'{"id":3}\n',
        3,
    )
    assert out[0] == {
        "id": 1,
        "result": {
            "flagKey": "a",
            "enabled": True,
            "variant": None,
            "configuration": None,
            "reason": "STATIC",
            "flagVersion": 1,
        },
    }
    assert out[1]["id"] == "two"
    assert out[1]["results"]["b"]["enabled"] is False
    assert out[1]["results"]["zz"]["errorCode"] == "FLAG_NOT_FOUND"
    assert sorted(out[2]["results"]) == ["a", "b"]  # no flag named: every active flag


async def test_pipelined_answers_come_in_order(daemon: Daemon) -> None:
    await create(daemon, {"name": "half", "enabled": True, "rollout": {"percentage": 50}})
    n = 5000
    payload = b"".join(
        json.dumps({"id": i, "flag": "half", "context": {"userId": f"u{i}"}}).encode() + b"\n"
        for i in range(n)
    )
    out = await exchange(daemon.addresses["flags"], payload, n)
    assert [line["id"] for line in out] == list(range(n))
    share = sum(line["result"]["enabled"] for line in out) / n
    assert 0.45 < share < 0.55


async def test_bad_lines_get_errors_and_the_connection_lives(daemon: Daemon) -> None:
    await create(daemon, {"name": "a", "enabled": True})
    payload = (
        b"not json\n"
        b'{"id": 7, "flag": 12}\n'
        b'{"id": 8, "flag": "a", "context": {"userId": ["x"]}}\n'
        b'{"id": 5, "context": {"customAttributes": {"x": ' + b"[" * 3000 + b"\n"
        b"\n"
        b'{"id": 9, "flag": "a"}\n'
    )
    out = await exchange(daemon.addresses["flags"], payload, 5)
    assert out[0] == {"id": None, "error": {"code": "PARSE_ERROR", "message": "not valid JSON"}}
    assert out[1]["id"] == 7 and out[1]["error"]["code"] == "INVALID_REQUEST"
    assert out[2]["id"] == 8 and out[2]["error"]["code"] == "INVALID_REQUEST"
    assert out[3]["error"]["code"] == "PARSE_ERROR"
    assert out[4]["id"] == 9 and out[4]["result"]["enabled"] is True


async def test_oversized_line(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path, flags={"max_line_bytes": 1024}))
    await daemon.start()
    try:
        await create(daemon, {"name": "a", "enabled": True})
        reader, writer = await asyncio.open_unix_connection(daemon.addresses["flags"])
        big = b'{"id": 1, "flag": "a", "context": {"customAttributes": {"x": "' + b"y" * 5000
        writer.write(big[:3000])  # more than the limit before any newline
        await writer.drain()
        first = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert first["error"]["code"] == "LINE_TOO_LONG"
        writer.write(big[3000:] + b'"}}}\n{"id": 2, "flag": "a"}\n')  # rest of it, then a good one
        await writer.drain()
        second = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert second["id"] == 2 and second["result"]["enabled"] is True
        writer.close()
        await writer.wait_closed()
    finally:
        await daemon.stop()


async def test_client_leaving_mid_batch_harms_nothing(daemon: Daemon) -> None:
    await create(daemon, {"name": "a", "enabled": True})
    path = daemon.addresses["flags"]
    for _ in range(20):
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"id":1,"flag":"a"}\n' * 2000 + b'{"id":2,"fl')
        writer.transport.abort()
    out = await exchange(path, b'{"id":1,"flag":"a"}\n', 1)
    assert out[0]["result"]["enabled"] is True
    async with (
        api_session(daemon) as http,
        http.get("/health") as r,
    ):
        assert r.status == 200


async def test_socket_mode_and_group(tmp_path: Path) -> None:
    group = grp.getgrnam("daemon")
    daemon = Daemon(make_settings(tmp_path, flags={"socket_group": "daemon"}))
    await daemon.start()
    try:
        st = os.stat(daemon.addresses["flags"])
        assert st.st_mode & 0o777 == 0o660
        assert st.st_gid == group.gr_gid
    finally:
        await daemon.stop()
    assert not await asyncio.to_thread(os.path.exists, tmp_path / "flags.sock")


async def test_unknown_group_stops_startup(tmp_path: Path) -> None:
    import pytest

    from fpcd.app import StartupError

    daemon = Daemon(make_settings(tmp_path, flags={"socket_group": "no-such-group-xyz"}))
    with pytest.raises(StartupError, match="no-such-group-xyz"):
        await daemon.start()


async def test_a_pipelined_chunk_is_counted_like_lookups_one_at_a_time(daemon: Daemon) -> None:
    """Each chunk is evaluated as one batch: analytics, error counts and socket counters must
    still see every line (what /analytics and /metrics report)."""
    await create(
        daemon,
        {
            "name": "half",
            "enabled": True,
            "rollout": {"percentage": 50},
            "variants": [{"id": "a", "weight": 1}, {"id": "b", "weight": 1}],
        },
    )
    lines: list[bytes] = []
    for i in range(600):
        if i % 100 == 7:
            lines.append(b'{"id": %d, "flag": 12}' % i)  # INVALID_REQUEST
        elif i % 10 == 3:
            lines.append(b'{"id":%d,"flags":["half","gone"],"context":{"userId":"u%d"}}' % (i, i))
        else:
            lines.append(b'{"id":%d,"flag":"half","context":{"userId":"u%d"}}' % (i, i))
    lines.insert(300, b"   ")  # a blank line is not answered
    out = await exchange(daemon.addresses["flags"], b"\n".join(lines) + b"\n", 600)
    assert [line["id"] for line in out] == list(range(600))
    answers = [r for line in out for r in ([line["result"]] if "result" in line else [])]
    answers += [line["results"]["half"] for line in out if "results" in line]
    assert len(answers) == 594
    assert all(
        line["results"]["gone"]["errorCode"] == "FLAG_NOT_FOUND"
        for line in out
        if "results" in line
    )
    async with api_session(daemon) as http:
        async with http.get("/api/features/half/analytics") as r:
            report = await r.json()
        async with http.get("/metrics") as r:
            metrics = await r.text()
    assert report["total"] == 594
    assert report["enabled"] == sum(a["enabled"] for a in answers)
    for variant in ("a", "b"):
        assert report["variants"][variant] == sum(a["variant"] == variant for a in answers)
    assert "fpcd_flag_socket_lookups_total 594.0" in metrics
    assert "fpcd_flag_socket_rejected_total 6.0" in metrics
    assert 'fpcd_flag_evaluation_errors_total{code="FLAG_NOT_FOUND"} 60.0' in metrics


async def test_a_changed_flag_is_answered_anew_and_ids_are_echoed_as_given(daemon: Daemon) -> None:
    """The socket reuses a result's encoding while its flag is unchanged: a change must show
    at once, and the id (number, string or none) must come back as the line gave it."""
    await create(
        daemon,
        {"name": "theme", "enabled": True, "variants": [{"id": "dark", "configuration": 1}]},
    )
    path = daemon.addresses["flags"]
    query = b'"flag":"theme","context":{"userId":"u"}}\n'
    first = await exchange(path, b'{"id":7,' + query + b'{"id":"x",' + query + b"{" + query, 3)
    assert [line.get("id") for line in first] == [7, "x", None]
    assert "id" not in first[2]
    assert all(line["result"]["configuration"] == 1 for line in first)
    assert first[0]["result"] == {
        "flagKey": "theme",
        "enabled": True,
        "variant": "dark",
        "configuration": 1,
        "reason": "STATIC",
        "flagVersion": 1,
    }
    async with api_session(daemon) as http:
        change = {"variants": [{"id": "dark", "configuration": 2}]}
        async with http.patch("/api/features/theme", json=change) as r:
            assert r.status == 200, await r.text()
    (after,) = await exchange(path, b'{"id":8,' + query, 1)
    assert after["result"]["configuration"] == 2
    assert after["result"]["flagVersion"] == 2
