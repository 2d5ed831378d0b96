"""Destroyed secrets are gone from every copy fpcd keeps (issue 15.1).

The attack: with the database files, the Postgres log and the master key, recover a
secret that was deleted, one that expired, and the copy of a live secret made under a
data key that was later retired. Each host's `fpcd.db` and WAL, and every row of every
Postgres table, are searched for the ciphertexts (raw and as they appear base64-encoded
in the journal), and every ciphertext found anywhere is tried with every data key that
any leftover material still unwraps.
"""

from __future__ import annotations

import base64
import json
import secrets as random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fpcd.app import Daemon
from fpcd.domain.crypto import (
    KeyMismatch,
    TamperedError,
    open_sealed,
    secret_aad,
    unwrap_data_key,
)
from fpcd.domain.model import Change, DataKey, SecretRewrap, SecretVersion
from fpcd.store.sqlite import Store
from tests.clocks import MovableClock
from tests.conftest import eventually, make_settings, secret_value

RAW_KEY = bytes(range(32))
KEY = base64.b64encode(RAW_KEY).decode()
_change = msgspec.json.Decoder(Change)
_data_key = msgspec.json.Decoder(DataKey)


def long_value(label: str) -> str:
    """Long enough that its journal row spills onto SQLite overflow pages."""
    return secret_value(label) + "-" + random.token_hex(1600)


class Host:
    def __init__(self, daemon: Daemon, unix: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.unix = unix

    @property
    def data_dir(self) -> Path:
        return self.daemon.settings.data_dir

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.unix.request(method, path, json=body) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None


@pytest.fixture
async def hosts(tmp_path: Path, pg_url: str) -> AsyncIterator[Callable[..., Awaitable[Host]]]:
    started: list[Host] = []

    async def start(name: str, clock: MovableClock | None = None) -> Host:
        settings = make_settings(
            tmp_path / name,
            upstream={"postgres_url": pg_url, "poll_interval": "200ms", "batch_size": 50},
            secrets={"encryption_key": KEY},
        )
        daemon = Daemon(settings, clock=clock) if clock else Daemon(settings)
        await daemon.start()
        unix = aiohttp.ClientSession(
            base_url="http://fpcd",
            connector=aiohttp.UnixConnector(path=daemon.addresses["socket"]),
        )
        host = Host(daemon, unix)
        started.append(host)
        return host

    yield start
    for host in started:
        await host.unix.close()
        await host.daemon.stop()


def stored_ciphertext(host: Host, name: str) -> tuple[str, bytes, bytes]:
    """(key id, nonce, ciphertext) of the latest version of app/prod/<name> on a host."""
    with sqlite3.connect(host.data_dir / "fpcd.db") as db:
        row = db.execute(
            "SELECT key_id, nonce, ciphertext FROM secret_versions"
            " WHERE service = 'app' AND environment = 'prod' AND name = ?"
            " ORDER BY version DESC LIMIT 1",
            (name,),
        ).fetchone()
    assert row is not None and row[2] is not None
    return row[0], row[1], row[2]


def wrapped_material(host: Host, key_id: str) -> bytes:
    with sqlite3.connect(host.data_dir / "fpcd.db") as db:
        (record,) = db.execute("SELECT record FROM data_keys WHERE id = ?", (key_id,)).fetchone()
    wrapped = _data_key.decode(record).wrapped
    assert wrapped
    return wrapped


def file_bytes(host: Host) -> bytes:
    """fpcd.db and, while the daemon runs, its WAL and shared-memory index."""
    return b"".join(p.read_bytes() for p in sorted(host.data_dir.glob("fpcd.db*")))


async def postgres_bytes(pg_url: str) -> bytes:
    """Every value of every row of every table in the upstream database."""
    conn = await asyncpg.connect(pg_url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        assert "fpcd_changes" in tables
        out = bytearray()
        for table in tables:
            for row in await conn.fetch(f'SELECT * FROM "{table}"'):
                for value in row.values():
                    out += value if isinstance(value, bytes) else str(value).encode()
        return bytes(out)
    finally:
        await conn.close()


async def postgres_changes(pg_url: str) -> list[Change]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT payload FROM fpcd_changes ORDER BY seq")
    finally:
        await conn.close()
    return [_change.decode(r["payload"]) for r in rows]


def sqlite_changes(host: Host) -> list[Change]:
    with sqlite3.connect(host.data_dir / "fpcd.db") as db:
        return [_change.decode(r[0]) for r in db.execute("SELECT payload FROM changes")]


def sqlite_rows(host: Host) -> tuple[list[DataKey], list[tuple[bytes, bytes, bytes]]]:
    with sqlite3.connect(host.data_dir / "fpcd.db") as db:
        keys = [_data_key.decode(r[0]) for r in db.execute("SELECT record FROM data_keys")]
        sealed = [
            (r[0], r[1], secret_aad(r[2], r[3], r[4], r[5]))
            for r in db.execute(
                "SELECT nonce, ciphertext, service, environment, name, version"
                " FROM secret_versions WHERE ciphertext IS NOT NULL"
            )
        ]
    return keys, sealed


def recover_everything(
    changes: list[Change], keys: list[DataKey], sealed: list[tuple[bytes, bytes, bytes]]
) -> tuple[set[str], set[str]]:
    """What an attacker holding the master key gets: (data key ids unwrapped, plaintexts)."""
    master = AESGCM(RAW_KEY)
    records = keys + [c.payload for c in changes if isinstance(c.payload, DataKey)]
    blobs = list(sealed)
    for change in changes:
        match change.payload:
            case SecretVersion() as v:
                aad = secret_aad(v.service, v.environment, v.name, v.version)
                blobs.append((v.nonce, v.ciphertext, aad))
            case SecretRewrap() as r:
                for i in r.items:
                    aad = secret_aad(i.service, i.environment, i.name, i.version)
                    blobs.append((i.nonce, i.ciphertext, aad))
    data_keys: dict[str, AESGCM] = {}
    for record in records:
        if not record.wrapped:
            continue
        try:
            material = unwrap_data_key(master, record.id, record.nonce, record.wrapped)
        except KeyMismatch:
            continue
        data_keys[record.id] = AESGCM(material)
    plaintexts: set[str] = set()
    for nonce, ciphertext, aad in blobs:
        if not ciphertext:
            continue
        for key in data_keys.values():
            try:
                plaintexts.add(open_sealed(key, nonce, ciphertext, aad).decode())
            except TamperedError:
                continue
    return set(data_keys), plaintexts


def forms(blob: bytes) -> list[bytes]:
    """Pieces of a byte string as it may be stored: raw (a BLOB) and base64 (inside journal
    JSON). Short pieces, many of them: a long row is split over SQLite overflow pages."""
    pieces = []
    for form in (blob, base64.b64encode(blob)):
        pieces += [form[i : i + 24] for i in range(0, max(len(form) - 24, 1), 61)]
    return pieces


async def test_destroyed_secrets_leave_no_copy_anywhere(
    hosts: Callable[..., Awaitable[Host]], pg_url: str
) -> None:
    clock = MovableClock()
    a = await hosts("a", clock)
    b = await hosts("b")
    deleted, expired, retired_copy, live = (
        long_value("shred-deleted"),
        long_value("shred-expired"),
        long_value("shred-retired"),
        long_value("shred-live"),
    )
    for name, body in (
        ("DELETED", {"value": deleted}),
        (
            "EXPIRED",
            {"value": expired, "expiresAt": (clock.now() + timedelta(hours=1)).isoformat()},
        ),
        ("ROTATED", {"value": retired_copy}),
        ("LIVE", {"value": live}),
    ):
        assert (await a.call("PUT", f"/api/secrets/app/{name}?environment=prod", body))[0] == 200
    old_key, _, _ = stored_ciphertext(a, "ROTATED")
    gone = [stored_ciphertext(a, n)[2] for n in ("DELETED", "EXPIRED", "ROTATED")]
    gone.append(wrapped_material(a, old_key))

    async def b_has_all() -> bool:
        _, page = await b.call("GET", "/api/secrets/app?environment=prod")
        return page is not None and page.get("total") == 4

    await eventually(b_has_all)

    # Rotate: every live value is re-encrypted under a new key; the old one is retired.
    status, _ = await a.call("POST", "/api/secrets/rotate-key")
    assert status == 202

    async def rewrapped() -> bool:
        _, keyring = await a.call("GET", "/api/keyring")
        return not keyring["rotation"]["running"] and keyring["rotation"]["remaining"] == 0

    await eventually(rewrapped)
    assert (await a.call("POST", f"/api/keyring/{old_key}/retire"))[0] == 200
    # Delete one, let one expire (the daemon's clock moves past it; the sweep job runs).
    assert (await a.call("DELETE", "/api/secrets/app/DELETED?environment=prod"))[0] == 204
    clock.offset = timedelta(hours=2)
    assert await a.daemon.components.secrets.expire_due() == 1

    async def b_caught_up() -> bool:
        return (
            b.daemon.components.store.upstream_cursor == a.daemon.components.store.upstream_cursor
        )

    await eventually(b_caught_up)
    for host in (a, b):
        await host.daemon.components.store.checkpoint()

    # A new host bootstrapping from the redacted log still gets every live value, and the
    # same audit chain (redaction keeps every change, its order and its audit fields).
    c = await hosts("c")
    for host in (a, b, c):
        assert (await host.call("GET", "/api/secrets/app/LIVE?environment=prod"))[1][
            "value"
        ] == live
        assert (await host.call("GET", "/api/secrets/app/ROTATED?environment=prod"))[1][
            "value"
        ] == retired_copy
        assert (await host.call("GET", "/api/secrets/app/DELETED?environment=prod"))[0] == 404
        assert (await host.call("GET", "/api/secrets/app/EXPIRED?environment=prod"))[0] == 410

    async def audit_hashes(host: Host) -> list[str]:
        _, page = await host.call("GET", "/api/audit?limit=1000")
        return [e["hash"] for e in page["items"]]

    async def all_caught_up() -> bool:
        cursors = {h.daemon.components.store.upstream_cursor for h in (a, b, c)}
        return len(cursors) == 1

    await eventually(all_caught_up)
    assert await audit_hashes(a) == await audit_hashes(b) == await audit_hashes(c)

    # The raw files of every host and every Postgres table: no copy, in any encoding.
    needles = [n for blob in gone for n in forms(blob)]
    needles += [n for value in (deleted, expired) for n in forms(value.encode())]
    everything = {h.data_dir.name: file_bytes(h) for h in (a, b, c)}
    everything["postgres"] = await postgres_bytes(pg_url)
    for where, data in everything.items():
        found = [i for i, needle in enumerate(needles) if needle in data]
        assert not found, f"{where} still holds destroyed material #{found}"

    # Every ciphertext left anywhere, tried with every data key any material still opens.
    for host in (a, b, c):
        keys, sealed = sqlite_rows(host)
        key_ids, plaintexts = recover_everything(sqlite_changes(host), keys, sealed)
        assert old_key not in key_ids
        assert plaintexts == {live, retired_copy}, host.data_dir.name
    key_ids, plaintexts = recover_everything(await postgres_changes(pg_url), [], [])
    assert old_key not in key_ids and plaintexts == {live, retired_copy}

    # After a clean stop (the WAL folded into the file), still nothing.
    for host in (a, b, c):
        await host.unix.close()
        await host.daemon.stop()
        data = file_bytes(host)
        assert not any(needle in data for needle in needles)


async def test_a_store_from_before_redaction_is_scrubbed_when_opened(tmp_path: Path) -> None:
    """Existing data: a database whose journal still holds destroyed ciphertexts (as every
    release before this one left it) is redacted by the migration, live values intact."""
    settings = make_settings(tmp_path / "old", secrets={"encryption_key": KEY})
    daemon = Daemon(settings)
    await daemon.start()
    value, kept = long_value("old-deleted"), long_value("old-kept")
    async with aiohttp.ClientSession(
        base_url="http://fpcd", connector=aiohttp.UnixConnector(path=daemon.addresses["socket"])
    ) as unix:
        await unix.put("/api/secrets/app/OLD?environment=prod", json={"value": value})
        await unix.put("/api/secrets/app/KEPT?environment=prod", json={"value": kept})
        host = Host(daemon, unix)
        _, _, ciphertext = stored_ciphertext(host, "OLD")
        (await unix.delete("/api/secrets/app/OLD?environment=prod")).release()
    await daemon.stop()
    db_path = settings.data_dir / "fpcd.db"
    # Put the journal back as the previous release left it: the ciphertext in the
    # SecretVersion row, no redaction table, schema version 5 (the secret read outbox).
    db = sqlite3.connect(db_path)
    seq, payload = db.execute(
        "SELECT seq, payload FROM changes WHERE entity = 'secret' AND key = 'app/prod/OLD'"
    ).fetchone()
    doc = json.loads(payload)
    doc["payload"]["ciphertext"] = base64.b64encode(ciphertext).decode()
    db.execute("UPDATE changes SET payload = ? WHERE seq = ?", (json.dumps(doc).encode(), seq))
    db.execute("DROP TABLE secret_copies")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    assert sum(n in file_bytes(host) for n in forms(ciphertext)) > 50

    store = Store(db_path)
    await store.open()
    await store.close()
    assert not any(n in file_bytes(host) for n in forms(ciphertext))
    daemon = Daemon(settings)
    await daemon.start()
    try:
        async with aiohttp.ClientSession(
            base_url="http://fpcd",
            connector=aiohttp.UnixConnector(path=daemon.addresses["socket"]),
        ) as unix:
            async with unix.get("/api/secrets/app/KEPT?environment=prod") as r:
                assert (await r.json())["value"] == kept
            async with unix.get("/api/secrets/app/OLD?environment=prod") as r:
                assert r.status == 404
    finally:
        await daemon.stop()


async def test_an_upstream_log_from_before_redaction_is_scrubbed_by_migration(
    hosts: Callable[..., Awaitable[Host]], pg_url: str
) -> None:
    a = await hosts("a")
    value = long_value("old-upstream")
    await a.call("PUT", "/api/secrets/app/OLD?environment=prod", {"value": value})
    _, _, ciphertext = stored_ciphertext(a, "OLD")
    assert (await a.call("DELETE", "/api/secrets/app/OLD?environment=prod"))[0] == 204
    # Put the log back as the previous release left it: ciphertext in place, schema 1.
    conn = await asyncpg.connect(pg_url)
    try:
        seq, payload = await conn.fetchrow(
            "SELECT seq, payload FROM fpcd_changes WHERE entity = 'secret' AND key = 'app/prod/OLD'"
        )
        doc = json.loads(payload)
        assert doc["payload"]["ciphertext"] == ""
        doc["payload"]["ciphertext"] = base64.b64encode(ciphertext).decode()
        await conn.execute(
            "UPDATE fpcd_changes SET payload = $1 WHERE seq = $2", json.dumps(doc).encode(), seq
        )
        await conn.execute("UPDATE fpcd_meta SET value = '1' WHERE key = 'schema'")
    finally:
        await conn.close()
    before = await postgres_bytes(pg_url)
    assert any(n in before for n in forms(ciphertext))

    b = await hosts("b")  # its start migrates the upstream schema
    after = await postgres_bytes(pg_url)
    assert not any(n in after for n in forms(ciphertext))
    assert (await b.call("GET", "/api/secrets/app/OLD?environment=prod"))[0] == 404
