"""The Python client against running daemons: get, live updates, reconnect after a
restart, offline start from the cache file, local evaluation that agrees with the
daemon, evaluation counts, the Unix sockets, and the synchronous client."""

from __future__ import annotations

import asyncio
import json
import random
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from fpcd.app import Daemon
from fpcd.client import (
    Configuration,
    ConfigurationClient,
    EvaluationContext,
    FlagSocketClient,
    FlagSocketError,
    FlagUpdate,
    FpcdUnavailable,
    SyncConfigurationClient,
)
from fpcd.domain.model import Caller
from tests.conftest import DaemonProcess, admin_token, auth, eventually, make_settings, secret_value


async def send(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
        s.request(method, base + path, json=body) as r,
    ):
        return r.status, await r.json(content_type=None)


def client_for(daemon: Daemon, **options: Any) -> ConfigurationClient:
    return ConfigurationClient(
        api_url=daemon.addresses["api"],
        ws_url=daemon.addresses["ws"],
        token=admin_token(daemon.settings.data_dir),
        service_name=options.pop("service_name", "web"),
        environment=options.pop("environment", "prod"),
        reconnect_delay=0.1,
        max_reconnect_delay=0.5,
        **options,
    )


async def put_config(daemon: Daemon, service: str, env: str, config: dict[str, Any]) -> Any:
    status, body = await send(
        daemon.addresses["api"],
        admin_token(daemon.settings.data_dir),
        "PUT",
        f"/api/config/{service}",
        {"environment": env, "config": config},
    )
    assert status == 200, body
    return body


async def put_flag(daemon: Daemon, flag: dict[str, Any]) -> Any:
    status, body = await send(
        daemon.addresses["api"],
        admin_token(daemon.settings.data_dir),
        "PUT",
        f"/api/features/{flag['key']}",
        flag,
    )
    assert status in (200, 201), body
    return body


def recorder(client: ConfigurationClient | SyncConfigurationClient, event: str) -> list[Any]:
    seen: list[Any] = []
    client.on(event, seen.append)
    return seen


# -- get and live updates --------------------------------------------------------------


async def test_get_configuration_and_live_updates(daemon: Daemon) -> None:
    await put_config(daemon, "web", "default", {"db": {"port": 5432}})
    await put_config(daemon, "web", "prod", {"db": {"host": "prod"}})
    await put_flag(daemon, {"key": "dark_mode", "name": "Dark mode", "enabled": True})
    async with client_for(daemon) as client:
        assert await client.get_configuration() == {"db": {"host": "prod", "port": 5432}}
        assert client.configuration is not None and client.configuration.version == 1
        assert client.is_enabled("dark_mode", {"userId": "u-1"})
        configs = recorder(client, "configurationUpdate")
        flags = recorder(client, "featureFlagUpdate")
        await eventually(lambda: client.connected)
        await put_config(daemon, "web", "prod", {"db": {"host": "prod2"}})
        await eventually(lambda: bool(configs))
        assert isinstance(configs[0], Configuration) and configs[0].version == 2
        assert await client.get_configuration() == {"db": {"host": "prod2", "port": 5432}}
        # The default layer underneath changes: the merged view arrives.
        await put_config(daemon, "web", "default", {"db": {"port": 6432}})
        await eventually(lambda: len(configs) == 2)
        assert configs[1].config == {"db": {"host": "prod2", "port": 6432}}
        # Other environments and services are not ours.
        await put_config(daemon, "web", "staging", {"x": 1})
        await put_config(daemon, "api", "prod", {"x": 1})
        # Flags: a change, a new flag, an archive; each one an event and a new local answer.
        await put_flag(daemon, {"key": "dark_mode", "name": "Dark mode", "enabled": False})
        await eventually(lambda: bool(flags))
        assert isinstance(flags[0], FlagUpdate)
        assert (flags[0].flag_key, flags[0].enabled, flags[0].version) == ("dark_mode", False, 2)
        assert not client.is_enabled("dark_mode", {"userId": "u-1"})
        await put_flag(daemon, {"key": "beta", "name": "Beta", "enabled": True})
        await eventually(lambda: client.is_enabled("beta"))
        status, _ = await send(
            daemon.addresses["api"],
            admin_token(daemon.settings.data_dir),
            "DELETE",
            "/api/features/beta",
        )
        assert status == 200
        await eventually(lambda: client.evaluate("beta").error_code == "FLAG_NOT_FOUND")
        assert [u.reason for u in flags if u.flag_key == "beta"][-1] == "archived"
        assert len(configs) == 2  # staging and the other service never arrived
        assert "beta" not in client.flag_keys and "dark_mode" in client.flag_keys


async def test_a_scheduled_start_reaches_the_client(daemon: Daemon) -> None:
    start = datetime.now(UTC) + timedelta(seconds=3)
    await put_flag(
        daemon,
        {
            "key": "launch",
            "name": "Launch",
            "enabled": True,
            "rollout": {"startDate": start.isoformat()},
        },
    )
    async with client_for(daemon) as client:
        updates = recorder(client, "featureFlagUpdate")
        assert client.evaluate("launch").detail == "scheduled"
        await eventually(lambda: any(u.reason == "schedule_start" for u in updates))
        update = next(u for u in updates if u.reason == "schedule_start")
        assert (update.flag_key, update.enabled, update.version) == ("launch", True, 1)
        assert client.is_enabled("launch")


async def test_reload_requests_reach_the_client(daemon: Daemon) -> None:
    await put_config(daemon, "web", "prod", {"a": 1})
    async with client_for(daemon) as client:
        reloads = recorder(client, "configurationReload")
        await eventually(lambda: client.connected)
        status, _ = await send(
            daemon.addresses["api"],
            admin_token(daemon.settings.data_dir),
            "POST",
            "/api/config/web/reload",
            {"environment": "prod", "force": True},
        )
        assert status == 200
        await eventually(lambda: bool(reloads))
        assert reloads[0].version == 1 and reloads[0].force is True


async def test_async_callbacks_and_a_failing_callback(daemon: Daemon) -> None:
    async with client_for(daemon) as client:
        got: asyncio.Queue[Configuration] = asyncio.Queue()

        def broken(_: Any) -> None:
            raise RuntimeError("a bug in the application's callback")

        async def handler(config: Configuration) -> None:
            await got.put(config)

        client.on("configurationUpdate", broken)
        remove = client.on("configurationUpdate", handler)
        await eventually(lambda: client.connected)
        await put_config(daemon, "web", "prod", {"n": 1})
        assert (await asyncio.wait_for(got.get(), 10)).config == {"n": 1}
        remove()
        await put_config(daemon, "web", "prod", {"n": 2})
        await eventually(
            lambda: client.configuration is not None and client.configuration.version == 2
        )
        assert got.empty()
        with pytest.raises(ValueError):
            client.on("nonsense", handler)


async def test_over_the_unix_socket_without_a_token(daemon: Daemon) -> None:
    await put_config(daemon, "web", "prod", {"via": "socket"})
    client = ConfigurationClient(
        unix_socket=daemon.addresses["socket"], service_name="web", environment="prod"
    )
    async with client:
        assert await client.get_configuration() == {"via": "socket"}
        await eventually(lambda: client.connected)
        await put_config(daemon, "web", "prod", {"via": "socket", "n": 2})
        await eventually(
            lambda: client.configuration is not None and client.configuration.version == 2
        )


async def test_a_bad_token_fails_loudly(daemon: Daemon) -> None:
    client = ConfigurationClient(
        api_url=daemon.addresses["api"], token="nope", service_name="web", environment="prod"
    )
    with pytest.raises(Exception) as raised:
        await client.start()
    assert getattr(raised.value, "status", None) == 401
    await client.close()


# -- local evaluation agrees with the daemon ---------------------------------------------

NOW = datetime.now(UTC)


def iso(delta_days: float) -> str:
    return (NOW + timedelta(days=delta_days)).isoformat()


AGREEMENT_FLAGS: list[dict[str, Any]] = [
    {"key": "plain", "name": "plain", "enabled": True},
    {"key": "off", "name": "off", "enabled": False},
    {"key": "half", "name": "half", "enabled": True, "rollout": {"percentage": 50}},
    {"key": "tiny", "name": "tiny", "enabled": True, "rollout": {"percentage": 0.125}},
    {
        "key": "groups",
        "name": "groups",
        "enabled": True,
        "rollout": {"percentage": 70, "userGroups": ["beta", "staff"], "regions": ["eu", "us"]},
        "variants": [
            {"id": "a", "weight": 1, "configuration": {"v": "a"}},
            {"id": "b", "weight": 2.5, "configuration": {"v": "b"}},
            {"id": "c", "weight": 0.001, "configuration": None},
        ],
    },
    {
        "key": "rules",
        "name": "rules",
        "enabled": True,
        "rules": [
            {"attribute": "plan", "operator": "in", "values": ["pro", "team"]},
            {"attribute": "age", "operator": "gte", "values": [18]},
            {"attribute": "appVersion", "operator": "semver_gt", "values": ["1.2.0"]},
            {"attribute": "email", "operator": "ends_with", "values": ["@example.com"]},
        ],
    },
    {
        "key": "targets",
        "name": "targets",
        "enabled": True,
        "rollout": {
            "percentage": 10,
            "userIds": ["u-1", "u-2", "u-3"],
            "agentIds": ["agent-7"],
            "excludeUserIds": ["u-4", "u-5"],
        },
    },
    {
        "key": "window",
        "name": "window",
        "enabled": True,
        "rollout": {"startDate": iso(-30), "endDate": iso(30)},
    },
    {
        "key": "dependent",
        "name": "dependent",
        "enabled": True,
        "dependencies": ["half", {"flag": "groups", "variant": "b"}],
        "rollout": {"percentage": 90},
    },
    {
        "key": "by_env",
        "name": "by_env",
        "enabled": False,
        "rollout": {"percentage": 30},
        "environments": {
            "prod": {"enabled": True, "rollout": {"percentage": 60, "regions": ["eu"]}},
            "staging": {"enabled": True, "variants": [{"id": "x"}, {"id": "y", "weight": 3}]},
            "dev": {"enabled": True, "rollout": {"percentage": 0}},
        },
    },
    {
        "key": "after",
        "name": "after",
        "enabled": True,
        "rules": [{"attribute": "signup", "operator": "after", "values": ["2025-06-01"]}],
    },
]


def random_context(rng: random.Random) -> EvaluationContext:
    def maybe(value: Any) -> Any:
        return value if rng.random() < 0.7 else None

    custom: dict[str, Any] = {}
    if rng.random() < 0.6:
        custom["plan"] = rng.choice(["free", "pro", "team", 3, None])
    if rng.random() < 0.6:
        custom["age"] = rng.choice([12, 17, 18, 40, "21", "x", 18.5])
    if rng.random() < 0.6:
        custom["appVersion"] = rng.choice(["1.2.0", "1.2.1", "1.10.0", "1.2.1-beta", "bad", 2])
    if rng.random() < 0.5:
        custom["email"] = rng.choice(["a@example.com", "b@other.org", ""])
    if rng.random() < 0.5:
        custom["signup"] = rng.choice(["2025-01-01", "2026-01-01T10:00:00+02:00", "nope"])
    return EvaluationContext(
        user_id=maybe(rng.choice([f"u-{rng.randrange(12)}", f"user-{rng.randrange(10**6)}"])),
        agent_id=maybe(rng.choice(["agent-7", f"agent-{rng.randrange(100)}"])),
        session_id=maybe(f"s-{rng.randrange(10**6)}"),
        user_group=maybe(rng.choice(["beta", "staff", "public"])),
        region=maybe(rng.choice(["eu", "us", "ap"])),
        environment=rng.choice([None, "prod", "staging", "dev"]),
        custom_attributes=custom,
    )


def with_env(context: EvaluationContext, environment: str) -> EvaluationContext:
    return msgspec.structs.replace(context, environment=environment)


async def test_local_evaluation_agrees_with_the_daemon(daemon: Daemon) -> None:
    for flag in AGREEMENT_FLAGS:
        await put_flag(daemon, flag)
    keys = [f["key"] for f in AGREEMENT_FLAGS] + ["missing"]
    rng = random.Random(20261125)
    async with client_for(daemon) as client:
        # The same context at the same instant, the instant itself random within two
        # years (so the date window is sometimes before, inside and after).
        seen: set[str] = set()
        for _ in range(3000):
            context = random_context(rng)
            now = NOW.timestamp() + rng.uniform(-365, 365) * 86400
            ours = {k: client.evaluate(k, context, now=now) for k in keys}
            seen.update(r.reason for r in ours.values())
            seen.update(r.detail or "" for r in ours.values())
            if context.environment is None:  # the client's environment is the default
                context = with_env(context, "prod")
            theirs = daemon.components.flags.evaluate(keys, context, Caller.system("test"), now)
            assert ours == theirs, (context, now)
        # Every outcome of the evaluation order was exercised.
        reasons = {"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT", "ERROR"}
        details = {"scheduled", "ended", "excluded", "targeted", "not_targeted", "rollout_0"}
        details |= {"no_stickiness_id", "not_in_rollout", "dependency:half", "dependency:groups"}
        assert reasons | details <= seen
        # And over the wire: the flag socket and HTTP, at the current time.
        contexts = [random_context(rng) for _ in range(400)]

        def over_socket() -> list[dict[str, Any]]:
            with FlagSocketClient(daemon.addresses["flags"]) as sock:
                return [
                    sock.evaluate_many(keys, c if c.environment else with_env(c, "prod"))
                    for c in contexts
                ]

        answers = await asyncio.to_thread(over_socket)
        for context, answer in zip(contexts, answers, strict=True):
            assert client.evaluate_many(context, keys) == answer, context
        async with aiohttp.ClientSession(headers=auth(daemon)) as http:
            for context in contexts[:100]:
                async with http.post(
                    daemon.addresses["api"] + "/api/features/evaluate",
                    data=msgspec.json.encode({"flags": keys, "context": context}),
                    params={"environment": "prod"},
                ) as r:
                    body = await r.read()
                results = msgspec.json.decode(body, type=dict[str, dict[str, Any]])["results"]
                local = await client.evaluate_flags(context, keys)
                assert msgspec.to_builtins(local) == results, context


async def test_evaluation_counts_reach_the_daemons_analytics(daemon: Daemon) -> None:
    await put_flag(
        daemon,
        {
            "key": "counted",
            "name": "counted",
            "enabled": True,
            "variants": [{"id": "a"}, {"id": "b"}],
        },
    )
    client = client_for(daemon, analytics_interval=3600)
    async with client:
        results = [client.evaluate("counted", {"userId": f"u-{i}"}) for i in range(250)]
        client.evaluate("not_a_flag", {"userId": "x"})  # errors are not counted
        assert await client.flush() == 250
        results += [client.evaluate("counted", {"userId": f"v-{i}"}) for i in range(50)]
    # close() sent the rest.
    status, report = await send(
        daemon.addresses["api"],
        admin_token(daemon.settings.data_dir),
        "GET",
        "/api/features/counted/analytics",
    )
    assert status == 200 and report["total"] == 300 and report["enabled"] == 300
    a = sum(r.variant == "a" for r in results)
    assert report["variants"] == {"a": a, "b": 300 - a}
    assert report["reasons"] == {"SPLIT": 300}


# -- offline start, reconnect, restart -----------------------------------------------------


async def test_offline_start_from_the_cache_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "web.json"
    settings = make_settings(tmp_path / "data")
    daemon = Daemon(settings)
    await daemon.start()
    secret = secret_value("client-cache")
    try:
        status, _ = await send(
            daemon.addresses["api"],
            admin_token(settings.data_dir),
            "PUT",
            "/api/config/web",
            {"environment": "prod", "config": {"port": 80}, "secrets": {"DB_PASSWORD": secret}},
        )
        assert status == 200
        await put_flag(daemon, {"key": "dark_mode", "name": "Dark mode", "enabled": True})
        async with client_for(daemon, cache_file=cache) as client:
            assert client.source == "daemon"
            await eventually(lambda: cache.exists())
        api = daemon.addresses["api"]
    finally:
        await daemon.stop()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    text = cache.read_text()
    assert secret not in text and "DB_PASSWORD" not in text
    assert json.loads(text)["configuration"]["config"] == {"port": 80}
    # The daemon is down: a client with the cache starts and serves what it had...
    token = admin_token(settings.data_dir)
    offline = ConfigurationClient(
        api_url=api, token=token, service_name="web", environment="prod", cache_file=cache
    )
    async with offline:
        assert offline.source == "cache" and not offline.connected
        assert await offline.get_configuration() == {"port": 80}
        assert offline.is_enabled("dark_mode", {"userId": "u"})
    # ...one without it cannot start.
    with pytest.raises(FpcdUnavailable):
        await ConfigurationClient(
            api_url=api, token=token, service_name="web", environment="prod"
        ).start()
    # Nor does one whose cache file is damaged.
    damaged = tmp_path / "damaged.json"
    damaged.write_text(text[: len(text) // 2])
    with pytest.raises(FpcdUnavailable):
        await ConfigurationClient(
            api_url=api, token=token, service_name="web", environment="prod", cache_file=damaged
        ).start()
    # A cache for another service is not used.
    with pytest.raises(FpcdUnavailable):
        await ConfigurationClient(
            api_url=api, token=token, service_name="api", environment="prod", cache_file=cache
        ).start()


async def test_reconnect_after_the_daemon_restarts(spawn: Any, tmp_path: Path) -> None:
    proc: DaemonProcess = spawn()
    await asyncio.to_thread(proc.start)
    token = proc.token
    await send(
        proc.url, token, "PUT", "/api/config/web", {"environment": "prod", "config": {"n": 1}}
    )
    await send(proc.url, token, "POST", "/api/features", {"name": "gate", "enabled": True})
    client = ConfigurationClient(
        api_url=proc.url,
        ws_url=f"ws://127.0.0.1:{proc.ws_port}",
        token=token,
        service_name="web",
        environment="prod",
        cache_file=tmp_path / "cache.json",
        reconnect_delay=0.2,
        max_reconnect_delay=1.0,
    )
    events: list[str] = []
    client.on("connected", lambda _: events.append("connected"))
    client.on("disconnected", lambda _: events.append("disconnected"))
    async with client:
        await eventually(lambda: client.connected)
        await asyncio.to_thread(proc.stop)
        await eventually(lambda: not client.connected)
        # Down: the last known values are served.
        assert await client.get_configuration() == {"n": 1}
        assert client.is_enabled("gate")
        await asyncio.to_thread(proc.start)
        # Written right after the restart, most likely before the client is back: the
        # SUBSCRIBE's lastVersion replays it; flags are fetched again.
        await send(
            proc.url, token, "PUT", "/api/config/web", {"environment": "prod", "config": {"n": 2}}
        )
        await send(proc.url, token, "PATCH", "/api/features/gate", {"enabled": False})
        await eventually(lambda: client.connected)
        await eventually(
            lambda: client.configuration is not None and client.configuration.version == 2
        )
        assert await client.get_configuration() == {"n": 2}
        await eventually(lambda: not client.is_enabled("gate"))
        # And live again afterwards.
        await send(
            proc.url, token, "PUT", "/api/config/web", {"environment": "prod", "config": {"n": 3}}
        )
        await eventually(
            lambda: client.configuration is not None and client.configuration.version == 3
        )
    assert events[:3] == ["connected", "disconnected", "connected"]
    assert json.loads((tmp_path / "cache.json").read_text())["configuration"]["version"] == 3


# -- the synchronous client and the flag socket helper -------------------------------------


def test_sync_client(spawn: Any) -> None:
    proc: DaemonProcess = spawn().start()
    import urllib.request

    def call(method: str, path: str, body: Any) -> None:
        req = urllib.request.Request(
            proc.url + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={**proc.auth, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()

    call("PUT", "/api/config/web", {"environment": "prod", "config": {"a": 1}})
    call("POST", "/api/features", {"name": "sync flag", "enabled": True})
    updated = threading.Event()
    with SyncConfigurationClient(
        api_url=proc.url,
        token=proc.token,
        service_name="web",
        environment="prod",
        analytics_interval=3600,  # counts are sent by the flush below, not before
    ) as client:
        assert client.get_configuration() == {"a": 1}
        assert client.is_enabled("sync_flag", {"userId": "u"})
        assert set(client.evaluate_flags({"userId": "u"})) == {"sync_flag"}
        seen: list[Configuration] = []

        def on_update(config: Configuration) -> None:
            seen.append(config)
            updated.set()

        client.on("configurationUpdate", on_update)
        call("PUT", "/api/config/web", {"environment": "prod", "config": {"a": 2}})
        assert updated.wait(15)
        assert seen[-1].config == {"a": 2} and client.get_configuration() == {"a": 2}
        # Evaluations from several threads are all counted.
        threads = [
            threading.Thread(
                target=lambda: [client.evaluate("sync_flag", {"userId": "t"}) for _ in range(500)]
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush() == 2002
    with pytest.raises(RuntimeError):
        client.start()


async def test_flag_socket_helper(daemon: Daemon) -> None:
    await put_flag(daemon, {"key": "sock", "name": "sock", "enabled": True})

    def lookups() -> None:
        with FlagSocketClient(daemon.addresses["flags"]) as sock:
            result = sock.evaluate("sock", {"userId": "u"})
            assert (result.enabled, result.reason) == (True, "STATIC")
            assert sock.evaluate("nope").error_code == "FLAG_NOT_FOUND"
            assert set(sock.evaluate_many(None, EvaluationContext(user_id="u"))) == {"sock"}
            with pytest.raises(FlagSocketError) as raised:
                sock.evaluate("sock", {"userId": 5})
            assert raised.value.code == "INVALID_REQUEST"
            assert sock.evaluate("sock").enabled  # the connection lives on

    await asyncio.to_thread(lookups)
