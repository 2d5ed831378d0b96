"""Encrypted secrets: round trips, keys, rotation, expiry, tampering, permissions."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fpcd.app import Daemon, StartupError
from fpcd.domain.crypto import Secret, parse_master_key
from tests.clocks import MovableClock
from tests.conftest import (
    api_session,
    eventually,
    issue_token,
    make_settings,
    run_cli,
    secret_value,
)

KEY = base64.b64encode(bytes(range(32))).decode()


def unix_session(daemon: Daemon) -> aiohttp.ClientSession:
    """The API over the Unix socket: the door that may read secret values by default."""
    return aiohttp.ClientSession(
        base_url="http://fpcd", connector=aiohttp.UnixConnector(path=daemon.addresses["socket"])
    )


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, path, json=body, **kwargs) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


@pytest.fixture
async def unix(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with unix_session(daemon) as session:
        yield session


def db_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob("fpcd.db*"))


async def test_round_trip_and_metadata(unix: aiohttp.ClientSession, daemon: Daemon) -> None:
    value = secret_value("roundtrip")
    status, body = await call(
        unix,
        "PUT",
        "/api/secrets/billing/STRIPE_KEY?environment=prod",
        {"value": value, "description": "live key"},
    )
    assert status == 200 and body["changed"] is True
    assert body["secret"]["version"] == 1 and "value" not in body["secret"]
    status, again = await call(
        unix,
        "PUT",
        "/api/secrets/billing/STRIPE_KEY?environment=prod",
        {"value": value, "description": "live key"},
    )
    assert again["changed"] is False and again["secret"]["version"] == 1
    newer = secret_value("roundtrip2")
    await call(unix, "PUT", "/api/secrets/billing/STRIPE_KEY?environment=prod", {"value": newer})

    status, got = await call(
        unix,
        "GET",
        "/api/secrets/billing/STRIPE_KEY?environment=prod",
        headers={"X-Request-Id": "read-1"},
    )
    assert status == 200 and got["value"] == newer and got["version"] == 2
    _, old = await call(unix, "GET", "/api/secrets/billing/STRIPE_KEY?environment=prod&version=1")
    assert old["value"] == value

    _, listing = await call(unix, "GET", "/api/secrets/billing?environment=prod")
    item = listing["items"][0]
    assert item["name"] == "STRIPE_KEY" and item["version"] == 2 and "value" not in item
    assert item["accessCount"] == 2 and item["lastAccessedAt"]
    _, versions = await call(
        unix, "GET", "/api/secrets/billing/STRIPE_KEY/versions?environment=prod"
    )
    assert [v["version"] for v in versions["items"]] == [2, 1]

    _, audit = await call(unix, "GET", "/api/audit?target=secret:billing/prod")
    reads = [e for e in audit["items"] if e["action"] == "secret.read"]
    assert len(reads) == 2
    assert reads[1]["requestId"] == "read-1" and reads[1]["actor"].startswith("unix:")
    assert reads[1]["details"]["names"] == ["STRIPE_KEY"]
    assert reads[1]["details"]["peer"].startswith("uid=")
    assert value not in json.dumps(audit) and newer not in json.dumps(audit)
    assert value.encode() not in db_bytes(daemon.settings.data_dir)
    assert newer.encode() not in db_bytes(daemon.settings.data_dir)


async def test_delete_destroys_every_version(unix: aiohttp.ClientSession) -> None:
    for label in ("d1", "d2"):
        await call(unix, "PUT", "/api/secrets/app/TOKEN", {"value": secret_value(label)})
    status, _ = await call(unix, "DELETE", "/api/secrets/app/TOKEN")
    assert status == 204
    assert (await call(unix, "GET", "/api/secrets/app/TOKEN"))[0] == 404
    assert (await call(unix, "GET", "/api/secrets/app/TOKEN?version=1"))[0] == 404
    _, versions = await call(unix, "GET", "/api/secrets/app/TOKEN/versions")
    assert {v["destroyed"] for v in versions["items"]} == {"deleted"}
    assert (await call(unix, "GET", "/api/secrets/app"))[1]["total"] == 0
    assert (await call(unix, "DELETE", "/api/secrets/app/TOKEN"))[0] == 404


async def test_config_secrets_are_encrypted_and_layered(
    unix: aiohttp.ClientSession, daemon: Daemon
) -> None:
    base_pw, prod_pw, api = secret_value("base"), secret_value("prod"), secret_value("api")
    await call(
        unix,
        "PUT",
        "/api/config/shop",
        {
            "environment": "default",
            "config": {"a": 1},
            "secrets": {"DB_PASSWORD": base_pw, "API_KEY": api},
        },
    )
    await call(
        unix,
        "PUT",
        "/api/config/shop",
        {"environment": "production", "config": {}, "secrets": {"DB_PASSWORD": prod_pw}},
    )
    _, doc = await call(unix, "GET", "/api/config/shop?environment=production&includeSecrets=true")
    assert doc["secrets"]["DB_PASSWORD"] == {"version": 1, "value": prod_pw}
    assert doc["secrets"]["API_KEY"] == {"version": 1, "value": api}
    _, meta = await call(unix, "GET", "/api/config/shop?environment=production")
    assert meta["secrets"] == {"API_KEY": {"version": 1}, "DB_PASSWORD": {"version": 1}}
    # The secrets API sees what the config write stored.
    _, got = await call(unix, "GET", "/api/secrets/shop/DB_PASSWORD?environment=production")
    assert got["value"] == prod_pw
    # Rollback restores content only; secrets keep their current versions.
    new_pw = secret_value("prod-new")
    await call(
        unix,
        "PUT",
        "/api/config/shop",
        {"environment": "production", "config": {"b": 2}, "secrets": {"DB_PASSWORD": new_pw}},
    )
    _, rolled = await call(
        unix, "POST", "/api/config/shop/rollback", {"environment": "production", "version": 1}
    )
    assert rolled["changed"] is True
    _, doc = await call(unix, "GET", "/api/config/shop?environment=production&includeSecrets=true")
    assert doc["config"] == {"a": 1} and doc["secrets"]["DB_PASSWORD"]["value"] == new_pw
    _, diff = await call(unix, "GET", "/api/config/shop/diff?environment=production&from=1&to=2")
    assert diff["secretsChanged"] == ["DB_PASSWORD"]
    for value in (base_pw, prod_pw, api, new_pw):
        assert value.encode() not in db_bytes(daemon.settings.data_dir)


async def test_only_secrets_read_gets_values(
    http: aiohttp.ClientSession, daemon: Daemon, unix: aiohttp.ClientSession
) -> None:
    value = secret_value("tcp")
    assert (await call(http, "PUT", "/api/secrets/app/KEY", {"value": value}))[0] == 200
    await call(http, "PUT", "/api/config/app", {"config": {}, "secrets": {"OTHER": value}})
    async with api_session(daemon, issue_token(daemon, "editor")) as editor:
        status, problem = await call(editor, "GET", "/api/secrets/app/KEY")
        assert status == 403 and "secrets:read" in problem["detail"]
        _, doc = await call(editor, "GET", "/api/config/app?includeSecrets=true")
        assert doc["secrets"]["OTHER"] == {"version": 1}
        status, listing = await call(editor, "GET", "/api/secrets/app")
        assert status == 200 and {i["name"] for i in listing["items"]} == {"KEY", "OTHER"}
        assert value not in json.dumps(listing)
    scoped = issue_token(daemon, "service", services=["app"], scopes=["secrets:read"])
    async with api_session(daemon, scoped) as service:
        assert (await call(service, "GET", "/api/secrets/app/KEY"))[1]["value"] == value
        assert (await call(service, "GET", "/api/secrets/other/KEY"))[0] == 403
    assert (await call(unix, "GET", "/api/secrets/app/KEY"))[1]["value"] == value
    assert (await call(http, "GET", "/api/secrets/app/KEY"))[1]["value"] == value  # admin


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "where"),
    [
        ("PUT", "/api/secrets/app/KEY", {}, 422, "$.value"),
        ("PUT", "/api/secrets/app/KEY", {"value": 5}, 422, "$.value"),
        ("PUT", "/api/secrets/app/KEY", {"value": "x", "ttlSeconds": 0}, 422, "$.ttlSeconds"),
        (
            "PUT",
            "/api/secrets/app/KEY",
            {"value": "x", "ttlSeconds": 5, "expiresAt": "2099-01-01T00:00:00Z"},
            422,
            "$.ttlSeconds",
        ),
        (
            "PUT",
            "/api/secrets/app/KEY",
            {"value": "x", "expiresAt": "2001-01-01T00:00:00Z"},
            422,
            "$.expiresAt",
        ),
        ("PUT", "/api/secrets/app/KEY", {"value": "x", "expiresAt": "soon"}, 422, "$.expiresAt"),
        ("PUT", "/api/secrets/app/KEY", {"value": "x" * 70_000}, 422, "$.value"),
        ("PUT", "/api/secrets/app/bad%20name", {"value": "x"}, 400, "secret"),
        ("PUT", "/api/secrets/app/KEY?environment=a/b", {"value": "x"}, 400, "environment"),
        ("GET", "/api/secrets/app/MISSING", None, 404, None),
        ("GET", "/api/secrets/app/KEY?version=zero", None, 400, "query.version"),
        ("GET", "/api/secrets/app/MISSING/versions", None, 404, None),
        ("POST", "/api/keyring/k-nope/retire", None, 404, None),
    ],
)
async def test_bad_secret_requests(
    unix: aiohttp.ClientSession, method: str, path: str, body: Any, status: int, where: str | None
) -> None:
    got, problem = await call(unix, method, path, body)
    assert got == status, problem
    if where:
        assert where in [e["path"] for e in problem["errors"]]
    _, listing = await call(unix, "GET", "/api/secrets/app")
    assert listing["total"] == 0


# -- keys ------------------------------------------------------------------------------


def test_master_key_formats() -> None:
    raw = bytes(range(32))
    assert parse_master_key(base64.b64encode(raw).decode()).raw == raw
    assert parse_master_key(raw.hex()).raw == raw
    assert parse_master_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")).raw == raw
    phrase = parse_master_key("correct horse battery staple")
    assert phrase.raw is None and phrase.needs_salt
    with pytest.raises(ValueError, match="passphrase of at least 12"):
        parse_master_key("short")
    assert "correct" not in repr(phrase)
    assert (
        repr(Secret("hunter2")) == "Secret('********')" and "hunter2" not in f"{Secret('hunter2')}"
    )


async def restart(tmp_path: Path, **secrets: Any) -> Daemon:
    daemon = Daemon(make_settings(tmp_path, secrets=secrets))
    await daemon.start()
    return daemon


async def write_and_read(daemon: Daemon, value: str | None = None) -> str:
    async with unix_session(daemon) as unix:
        if value is not None:
            await call(unix, "PUT", "/api/secrets/app/KEY", {"value": value})
        return str((await call(unix, "GET", "/api/secrets/app/KEY"))[1]["value"])


async def test_generated_key_warns_once_and_is_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    value = secret_value("generated")
    daemon = await restart(tmp_path)
    await write_and_read(daemon, value)
    await daemon.stop()
    keyring = tmp_path / "keyring.json"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    assert sum("generated one for development" in r.message for r in caplog.records) == 1
    caplog.clear()
    daemon = await restart(tmp_path)
    assert await write_and_read(daemon) == value
    await daemon.stop()
    assert not any("generated one" in r.message for r in caplog.records)


async def test_wrong_or_missing_key_stops_startup_and_changes_nothing(tmp_path: Path) -> None:
    value = secret_value("wrongkey")
    daemon = await restart(tmp_path, encryption_key=KEY)
    await write_and_read(daemon, value)
    await daemon.stop()
    before = hashlib.sha256(db_bytes(tmp_path)).hexdigest()
    other = base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(StartupError, match="does not match"):
        await restart(tmp_path, encryption_key=other)
    with pytest.raises(StartupError, match="no key was given"):
        await restart(tmp_path)  # nothing given, no keyring.json: must not generate one
    assert not (tmp_path / "keyring.json").exists()
    assert hashlib.sha256(db_bytes(tmp_path)).hexdigest() == before
    # The same key in hex works.
    daemon = await restart(tmp_path, encryption_key=bytes(range(32)).hex())
    assert await write_and_read(daemon) == value
    await daemon.stop()


async def test_passphrase_and_keyring_file(tmp_path: Path) -> None:
    value = secret_value("passphrase")
    daemon = await restart(tmp_path / "a", encryption_key="a long enough passphrase")
    await write_and_read(daemon, value)
    await daemon.stop()
    daemon = await restart(tmp_path / "a", encryption_key="a long enough passphrase")
    assert await write_and_read(daemon) == value
    await daemon.stop()
    with pytest.raises(StartupError, match="does not match"):
        await restart(tmp_path / "a", encryption_key="another long passphrase")

    keyfile = tmp_path / "key.json"
    keyfile.write_text(json.dumps({"key": KEY}))
    os.chmod(keyfile, 0o644)
    with pytest.raises(StartupError, match="readable by others"):
        await restart(tmp_path / "b", keyring_file=str(keyfile))
    os.chmod(keyfile, 0o600)
    daemon = await restart(tmp_path / "b", keyring_file=str(keyfile))
    await write_and_read(daemon, value)
    await daemon.stop()
    daemon = await restart(tmp_path / "b", encryption_key=KEY)  # the same key, given directly
    assert await write_and_read(daemon) == value
    await daemon.stop()


def test_keygen_prints_a_usable_key() -> None:
    r = run_cli("keygen")
    assert r.returncode == 0
    assert len(base64.b64decode(r.stdout.strip(), validate=True)) == 32
    assert run_cli("keygen").stdout != r.stdout


# -- rotation ----------------------------------------------------------------------------


async def secrets_on_keys(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "fpcd.db") as db:
        rows = db.execute(
            "SELECT key_id, count(*) FROM secret_versions"
            " WHERE ciphertext IS NOT NULL GROUP BY key_id"
        ).fetchall()
    return dict(rows)


async def wait_rewrap(unix: aiohttp.ClientSession) -> dict[str, Any]:
    status: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal status
        _, status = await call(unix, "GET", "/api/keyring")
        return not status["rotation"]["running"] and status["rotation"]["remaining"] == 0

    await eventually(finished, 20, what="the rewrap's end")
    return status


async def test_rotation_with_writes_during_the_rewrap(tmp_path: Path) -> None:
    daemon = await restart(tmp_path, encryption_key=KEY, rewrap_batch=5)
    try:
        values = {f"S{i}": secret_value(f"rot{i}") for i in range(120)}
        async with unix_session(daemon) as unix:
            for name, value in values.items():
                await call(unix, "PUT", f"/api/secrets/app/{name}", {"value": value})
            _, before = await call(unix, "GET", "/api/keyring")
            old_key = before["keys"][0]["id"]
            status, rotation = await call(unix, "POST", "/api/secrets/rotate-key")
            assert status == 202
            new_key = next(k["id"] for k in rotation["keys"] if k["state"] == "primary")
            assert new_key != old_key
            # Writes and reads while the rewrap runs.
            for i in range(20):
                values[f"S{i}"] = secret_value(f"rot-new{i}")
                await call(unix, "PUT", f"/api/secrets/app/S{i}", {"value": values[f"S{i}"]})
                values[f"N{i}"] = secret_value(f"new{i}")
                await call(unix, "PUT", f"/api/secrets/app/N{i}", {"value": values[f"N{i}"]})
            final = await wait_rewrap(unix)
            assert {k["id"]: k["state"] for k in final["keys"]} == {
                old_key: "decrypt",
                new_key: "primary",
            }
            for name, value in values.items():
                assert (await call(unix, "GET", f"/api/secrets/app/{name}"))[1]["value"] == value
            assert await secrets_on_keys(tmp_path) == {new_key: 160}
            status, retired = await call(unix, "POST", f"/api/keyring/{old_key}/retire")
            assert status == 200
            assert {k["id"]: k["state"] for k in retired["keys"]}[old_key] == "retired"
            status, _ = await call(unix, "POST", f"/api/keyring/{new_key}/retire")
            assert status == 409
    finally:
        await daemon.stop()


async def test_retiring_a_key_in_use_is_refused(
    unix: aiohttp.ClientSession, daemon: Daemon
) -> None:
    await call(unix, "PUT", "/api/secrets/app/KEY", {"value": secret_value("inuse")})
    _, status = await call(unix, "GET", "/api/keyring")
    old = status["keys"][0]["id"]
    await daemon.components.secrets.stop()  # no rewrap: the old key keeps its ciphertext
    await call(unix, "POST", "/api/keyring/rotate")
    await daemon.components.secrets.stop()
    status, problem = await call(unix, "POST", f"/api/keyring/{old}/retire")
    if status != 200:  # the rewrap may already have finished before it was stopped
        assert status == 409 and "still encrypts" in problem["detail"]


async def test_restart_during_rewrap_resumes(tmp_path: Path) -> None:
    daemon = await restart(tmp_path, encryption_key=KEY, rewrap_batch=2)
    values = {f"S{i}": secret_value(f"resume{i}") for i in range(300)}
    async with unix_session(daemon) as unix:
        for name, value in values.items():
            await call(unix, "PUT", f"/api/secrets/app/{name}", {"value": value})
        await call(unix, "POST", "/api/secrets/rotate-key")
    await daemon.stop()  # cancels the rewrap midway
    counts = await secrets_on_keys(tmp_path)
    assert len(counts) == 2, counts  # some values under each key
    daemon = await restart(tmp_path, encryption_key=KEY, rewrap_batch=50)
    try:
        async with unix_session(daemon) as unix:
            await wait_rewrap(unix)
            for name in ("S0", "S150", "S299"):
                assert (await call(unix, "GET", f"/api/secrets/app/{name}"))[1]["value"] == (
                    values[name]
                )
        assert len(await secrets_on_keys(tmp_path)) == 1
    finally:
        await daemon.stop()


def test_cli_rotate_key_waits_and_reports(spawn: Any) -> None:
    proc = spawn().start()
    sock = ["--socket", str(proc.socket)]
    value = secret_value("cli")
    r = run_cli(
        "secret",
        "set",
        "app",
        "TOKEN",
        "--env",
        "prod",
        "--ttl",
        "1h",
        *sock,
        input=(value + "\n").encode(),
    )
    assert r.returncode == 0 and "version 1 stored, expires" in r.stdout
    r = run_cli("secret", "get", "app", "TOKEN", "--env", "prod", *sock)
    assert r.stdout == value + "\n"
    r = run_cli("secret", "list", "app", "--env", "prod", *sock)
    assert r.stdout.splitlines()[1].split()[:2] == ["TOKEN", "1"] and value not in r.stdout
    r = run_cli("secret", "rotate-key", "--wait", *sock)
    assert r.returncode == 0 and "rewrap: idle, 0 ciphertext(s)" in r.stdout
    r = run_cli("secret", "keys", "--json", *sock)
    old = next(k["id"] for k in json.loads(r.stdout)["keys"] if k["state"] == "decrypt")
    assert run_cli("secret", "retire-key", old, *sock).returncode == 0
    r = run_cli("secret", "delete", "app", "TOKEN", "--env", "prod", *sock)
    assert r.returncode == 0
    r = run_cli("secret", "get", "app", "TOKEN", "--env", "prod", *sock)
    assert r.returncode == 1 and "Not found (404)" in r.stderr
    r = run_cli("secret", "get", "app", "TOKEN", "--env", "prod", "--url", proc.url)
    assert r.returncode == 1 and "401" in r.stderr


# -- expiry ------------------------------------------------------------------------------


async def test_expiry_while_running(unix: aiohttp.ClientSession, daemon: Daemon) -> None:
    value = secret_value("ttl")
    await call(unix, "PUT", "/api/secrets/app/SHORT", {"value": value, "ttlSeconds": 1})
    assert (await call(unix, "GET", "/api/secrets/app/SHORT"))[1]["value"] == value

    async def expired() -> bool:
        _, versions = await call(unix, "GET", "/api/secrets/app/SHORT/versions")
        return bool(versions["items"][0].get("destroyed") == "expired")

    await eventually(expired, 5, what="the expiry")
    status, problem = await call(unix, "GET", "/api/secrets/app/SHORT")
    assert status == 410 and value not in json.dumps(problem)
    _, audit = await call(unix, "GET", "/api/audit?target=secret:app/development/SHORT")
    assert audit["items"][0]["action"] == "secret.expire"
    assert audit["items"][0]["actor"] == "fpcd:expiry"
    with sqlite3.connect(daemon.settings.data_dir / "fpcd.db") as db:
        assert db.execute("SELECT ciphertext FROM secret_versions").fetchone() == (None,)


async def test_read_after_expiry_is_gone_before_the_job_runs(tmp_path: Path) -> None:
    clock = MovableClock()
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        async with unix_session(daemon) as unix:
            await call(
                unix,
                "PUT",
                "/api/secrets/app/KEY",
                {"value": secret_value("gone"), "ttlSeconds": 3600},
            )
            clock.offset = timedelta(hours=2)  # past expiry; the job is an hour away
            status, _ = await call(unix, "GET", "/api/secrets/app/KEY")
            assert status == 410
            await call(unix, "PUT", "/api/config/app", {"config": {}})
            _, doc = await call(unix, "GET", "/api/config/app?includeSecrets=true")
            assert doc["secrets"] == {}
    finally:
        await daemon.stop()


async def test_expiry_while_stopped_is_cleaned_at_start(tmp_path: Path) -> None:
    clock = MovableClock()
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    async with unix_session(daemon) as unix:
        await call(
            unix,
            "PUT",
            "/api/secrets/app/KEY",
            {"value": secret_value("stopped"), "ttlSeconds": 600},
        )
        await call(unix, "PUT", "/api/secrets/app/KEEP", {"value": secret_value("keep")})
    await daemon.stop()
    clock.offset = timedelta(hours=1)
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        with sqlite3.connect(tmp_path / "fpcd.db") as db:
            rows = dict(db.execute("SELECT name, destroyed FROM secret_versions").fetchall())
        assert rows == {"KEY": "expired", "KEEP": None}
    finally:
        await daemon.stop()


# -- tampering ---------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["ciphertext", "nonce", "moved", "null_nonce", "short_nonce"])
async def test_tampering_is_detected_and_never_returned(
    unix: aiohttp.ClientSession,
    daemon: Daemon,
    tamper: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = secret_value("tamper-a"), secret_value("tamper-b")
    await call(unix, "PUT", "/api/secrets/app/A", {"value": a})
    await call(unix, "PUT", "/api/secrets/app/B", {"value": b})
    with sqlite3.connect(daemon.settings.data_dir / "fpcd.db") as db:
        if tamper in ("null_nonce", "short_nonce"):  # half a value, or a nonce AES-GCM refuses
            nonce = None if tamper == "null_nonce" else b"\x00"
            db.execute("UPDATE secret_versions SET nonce = ? WHERE name = 'B'", (nonce,))
        elif tamper == "moved":  # A's ciphertext copied into B's row: the AAD no longer fits
            db.execute(
                "UPDATE secret_versions SET (key_id, nonce, ciphertext) = (SELECT key_id,"
                " nonce, ciphertext FROM secret_versions WHERE name = 'A')"
                " WHERE name = 'B'"
            )
        else:
            (blob,) = db.execute(
                f"SELECT {tamper} FROM secret_versions WHERE name = 'B'"
            ).fetchone()
            flipped = bytes([blob[0] ^ 1]) + blob[1:]
            db.execute(f"UPDATE secret_versions SET {tamper} = ? WHERE name = 'B'", (flipped,))
    status, problem = await call(unix, "GET", "/api/secrets/app/B")
    assert status == 500 and problem["type"] == "urn:fpcd:problem:integrity"
    assert a not in json.dumps(problem) and b not in json.dumps(problem)
    assert any("integrity" in r.message for r in caplog.records)
    assert (await call(unix, "GET", "/api/secrets/app/A"))[1]["value"] == a


async def test_migration_scrubs_plaintext_from_earlier_releases(tmp_path: Path) -> None:
    """The first release stored config secrets as-is; migration 3 removes them."""
    from fpcd.domain.configs import content_checksum
    from fpcd.store.migrations import MIGRATIONS
    from fpcd.store.sqlite import Store

    path = tmp_path / "fpcd.db"
    value = secret_value("legacy")
    record = json.dumps(
        {
            "service": "s",
            "environment": "e",
            "version": 1,
            "config": {"a": 1},
            "checksum": content_checksum({"a": 1}, {}),  # reads verify it
            "secrets": {"PW": value},
            "created_at": "2026-01-01T00:00:00Z",
            "created_by": "me",
        }
    )
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("INSERT INTO config_versions VALUES ('s', 'e', 1, 1, ?)", (record,))
        db.execute(
            "INSERT INTO changes (seq, entity, key, op, actor, at, origin, payload)"
            " VALUES (1, 'config', 's/e', 'put', 'me', 'x', 'n', ?)",
            (json.dumps({"payload": json.loads(record)}),),
        )
        db.execute("PRAGMA user_version = 2")
    store = Store(path)
    await store.open()
    head = await store.config_head("s", "e")
    await store.close()
    assert head is not None and head.config == {"a": 1}
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    assert value.encode() not in path.read_bytes()


async def test_a_read_reports_itself_in_access_count_and_last_access(
    unix: aiohttp.ClientSession,
) -> None:
    await call(unix, "PUT", "/api/secrets/app/API_KEY", {"value": secret_value("counted")})
    seen = []
    for _ in range(3):
        before = datetime.now(UTC)
        status, got = await call(unix, "GET", "/api/secrets/app/API_KEY")
        assert status == 200
        last = datetime.fromisoformat(got["lastAccessedAt"])
        assert last >= before - timedelta(milliseconds=1)  # this read, not the one before
        seen.append((got["accessCount"], last))
    assert [count for count, _ in seen] == [1, 2, 3]
    _, listing = await call(unix, "GET", "/api/secrets/app")
    assert listing["items"][0]["accessCount"] == 3
    assert datetime.fromisoformat(listing["items"][0]["lastAccessedAt"]) == seen[-1][1]
