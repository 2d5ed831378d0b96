"""Who can read the data dir (15.8), which master keys are accepted (15.9), and changing
the master key (16.5: `secrets.previous_encryption_key`), on one host and on two."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fpcd.app import Daemon, KeyStartupError, StartupError
from fpcd.domain.crypto import (
    KeyMismatch,
    derive_master_key,
    parse_master_key,
    unwrap_data_key,
    weak_key_reason,
)
from fpcd.domain.model import Change, DataKey
from fpcd.services.keyring import generate_key_text
from tests.conftest import eventually, make_settings, run_cli, secret_value

ROOT = Path(__file__).resolve().parent.parent
KEY1 = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(100, 132))).decode()
PASSPHRASE = "an old but long enough passphrase"
_change = msgspec.json.Decoder(Change)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unix_session(daemon: Daemon) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://fpcd", connector=aiohttp.UnixConnector(path=daemon.addresses["socket"])
    )


async def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with unix_session(daemon) as unix, unix.request(method, path, json=body) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


# -- 15.8: file modes ---------------------------------------------------------------------


async def test_database_files_are_private_and_an_open_data_dir_is_narrowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)  # as `mkdir` under the usual umask leaves it
    old_umask = os.umask(0o022)
    try:
        daemon = Daemon(make_settings(data))
        await daemon.start()
        try:
            await call(daemon, "PUT", "/api/config/app", {"config": {"a": 1}})
            assert mode(data) == 0o750
            files = {p.name: mode(p) for p in data.glob("fpcd.db*")}
            assert set(files) == {"fpcd.db", "fpcd.db-wal", "fpcd.db-shm"}
            assert set(files.values()) == {0o600}, files
        finally:
            await daemon.stop()
    finally:
        os.umask(old_umask)
    assert any("data dir was open to other users" in r.message for r in caplog.records)

    # A database file that others could read (an earlier release) is narrowed too.
    os.chmod(data / "fpcd.db", 0o644)
    daemon = Daemon(make_settings(data))
    await daemon.start()
    await daemon.stop()
    assert mode(data / "fpcd.db") == 0o600


async def test_a_shared_directory_is_refused_as_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: fpcd must not chmod it, nor use it
    with pytest.raises(StartupError, match="open to other users"):
        await Daemon(make_settings(shared)).start()
    assert mode(shared) == 0o1777
    assert not (shared / "fpcd.db").exists()


# -- 15.9: weak and placeholder master keys ------------------------------------------------


def test_the_shipped_placeholder_is_refused_with_exit_78(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "deploy/kubernetes/secret.yaml").read_text())
    placeholder = manifest["stringData"]["encryption-key"]
    r = run_cli(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--api-port",
        "0",
        "--ws-port",
        "0",
        env={"CONFIG_ENCRYPTION_KEY": placeholder},
    )
    assert r.returncode == 78, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("fpcd:")]
    assert len(lines) == 1 and "placeholder" in lines[0] and "`fpcd keygen`" in lines[0]
    assert placeholder not in lines[0]  # the refused key is never echoed


@pytest.mark.parametrize(
    "key",
    [
        "short",
        "a" * 40,
        "abababababababababababab",
        "passwordpassword",
        "00" * 32,
        base64.b64encode(bytes(32)).decode(),
    ],
)
async def test_short_or_predictable_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(KeyStartupError, match="fpcd keygen") as refused:
        await Daemon(make_settings(tmp_path, secrets={"encryption_key": key})).start()
    assert refused.value.exit_code == 78
    assert key not in str(refused.value)
    assert not (tmp_path / "keyring.json").exists()


def test_generated_and_reasonable_keys_pass() -> None:
    for _ in range(50):
        text = generate_key_text()
        assert weak_key_reason(text, parse_master_key(text)) is None
    for text in (
        KEY1,
        KEY2,
        PASSPHRASE,
        "a long enough passphrase",
        "correct horse battery staple",
    ):
        assert weak_key_reason(text, parse_master_key(text)) is None


# -- 16.5: master key rotation -----------------------------------------------------------


def journal_key_records(data_dir: Path) -> list[DataKey]:
    with sqlite3.connect(data_dir / "fpcd.db") as db:
        payloads = [r[0] for r in db.execute("SELECT payload FROM changes")]
    return [c.payload for c in map(_change.decode, payloads) if isinstance(c.payload, DataKey)]


def opened_by(key_text: str, records: list[DataKey]) -> list[str]:
    """Data keys whose journal copies `key_text` unwraps (an attacker with an old key)."""
    opened = []
    for record in records:
        if not record.wrapped:
            continue
        master: AESGCM = derive_master_key(parse_master_key(key_text), record.salt)
        try:
            unwrap_data_key(master, record.id, record.nonce, record.wrapped)
        except KeyMismatch:
            continue
        opened.append(record.id)
    return opened


async def start(data_dir: Path, key: str, previous: str = "", **sections: Any) -> Daemon:
    secrets = {"encryption_key": key, "previous_encryption_key": previous}
    daemon = Daemon(make_settings(data_dir, secrets=secrets, **sections))
    await daemon.start()
    return daemon


async def test_master_key_rotation_on_one_host(tmp_path: Path) -> None:
    values = {name: secret_value(f"master-{name}") for name in ("A", "B")}
    daemon = await start(tmp_path, PASSPHRASE)
    for name, value in values.items():
        await call(daemon, "PUT", f"/api/secrets/app/{name}", {"value": value})
    await call(daemon, "POST", "/api/secrets/rotate-key")  # two data keys to re-wrap
    await daemon.stop()

    with pytest.raises(KeyStartupError, match="previous_encryption_key"):
        await start(tmp_path, KEY2)
    daemon = await start(tmp_path, KEY2, previous=PASSPHRASE)
    try:
        for name, value in values.items():
            assert (await call(daemon, "GET", f"/api/secrets/app/{name}"))[1]["value"] == value
        _, keyring = await call(daemon, "GET", "/api/keyring")
        assert keyring["previousMasterKeyNeeded"] is False
        assert len(keyring["keys"]) == 2
        _, audit = await call(daemon, "GET", "/api/audit?limit=100")
        rekeyed = {e["target"] for e in audit["items"] if e["action"] == "keyring.rekey"}
        assert rekeyed == {f"key:{k['id']}" for k in keyring["keys"]}
    finally:
        await daemon.stop()

    # The previous key is no longer needed, and no longer opens anything fpcd kept.
    daemon = await start(tmp_path, KEY2)
    for name, value in values.items():
        assert (await call(daemon, "GET", f"/api/secrets/app/{name}"))[1]["value"] == value
    await daemon.stop()
    assert opened_by(PASSPHRASE, journal_key_records(tmp_path)) == []
    with pytest.raises(KeyStartupError, match="does not match"):
        await start(tmp_path, PASSPHRASE)

    # And once more, to a passphrase (a fresh scrypt salt) — then alone.
    third = "the third master key, a passphrase"
    daemon = await start(tmp_path, third, previous=KEY2)
    await daemon.stop()
    daemon = await start(tmp_path, third)
    try:
        for name, value in values.items():
            assert (await call(daemon, "GET", f"/api/secrets/app/{name}"))[1]["value"] == value
    finally:
        await daemon.stop()
    assert opened_by(KEY2, journal_key_records(tmp_path)) == []


@pytest.fixture
async def stopper() -> AsyncIterator[list[Daemon]]:
    running: list[Daemon] = []
    yield running
    for daemon in running:
        if daemon.started:
            await daemon.stop()


async def test_master_key_rotation_in_a_cluster(
    tmp_path: Path, pg_url: str, stopper: list[Daemon]
) -> None:
    upstream = {"upstream": {"postgres_url": pg_url, "poll_interval": "200ms"}}
    value = secret_value("cluster-master")

    async def host(name: str, key: str, previous: str = "") -> Daemon:
        daemon = await start(tmp_path / name, key, previous, **upstream)
        stopper.append(daemon)
        return daemon

    async def read(daemon: Daemon) -> Any:
        return (await call(daemon, "GET", "/api/secrets/app/DB_PASSWORD"))[1].get("value")

    a, b = await host("a", KEY1), await host("b", KEY1)
    await call(a, "PUT", "/api/secrets/app/DB_PASSWORD", {"value": value})

    async def b_reads() -> bool:
        return bool(await read(b) == value)

    await eventually(b_reads)

    # Step 1: every host gets the new key and the previous one; restart them one by one.
    await a.stop()
    a = await host("a", KEY2, previous=KEY1)
    assert await read(a) == value
    # B, still running on the old key, keeps serving; the re-wrap reached its copy.

    async def b_has_rekey() -> bool:
        return opened_by(KEY1, journal_key_records(tmp_path / "b")) == []

    await eventually(b_has_rekey)
    assert await read(b) == value
    # B, on the old key, rotates data keys meanwhile: its new key is wrapped under the
    # old master key, and A (holding both) re-wraps it as soon as it arrives.
    assert (await call(b, "POST", "/api/secrets/rotate-key"))[0] == 202

    async def a_rewrapped_it() -> bool:
        _, keyring = await call(a, "GET", "/api/keyring")
        return len(keyring["keys"]) == 2 and keyring["previousMasterKeyNeeded"] is False

    await eventually(a_rewrapped_it)
    await b.stop()
    b = await host("b", KEY2, previous=KEY1)
    assert await read(b) == value
    _, keyring = await call(b, "GET", "/api/keyring")
    assert keyring["previousMasterKeyNeeded"] is False

    # Step 2: the previous key is dropped everywhere; a new host joins with the new key only.
    for name, daemon in (("a", a), ("b", b)):
        await daemon.stop()
        daemon = await host(name, KEY2)
        assert await read(daemon) == value
    c = await host("c", KEY2)
    assert await read(c) == value
    with pytest.raises(KeyStartupError):
        await host("d", KEY1)
