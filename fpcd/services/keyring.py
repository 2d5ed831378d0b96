"""Where the master key comes from, and opening the data-key ring with it.

Precedence: `secrets.encryption_key` (CONFIG_ENCRYPTION_KEY) > `secrets.keyring_file` >
`keyring.json` in the data dir, generated (0600) on first start when nothing is given.
A key that cannot unwrap the stored data keys stops start-up before anything is written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets as random
import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fpcd.domain.crypto import (
    KeyMismatch,
    Keyring,
    MasterKeySource,
    derive_master_key,
    new_key,
    new_key_id,
    parse_master_key,
    unwrap_data_key,
    wrap_data_key,
)
from fpcd.domain.model import Change, DataKey
from fpcd.services.changes import Committer
from fpcd.settings import Settings
from fpcd.store.sqlite import Store

log = logging.getLogger("fpcd.secrets")

KEYRING_FILE = "keyring.json"


class MasterKeyError(Exception):
    """The master key is missing, unreadable or wrong; the message says what to do."""


def _read_key_file(path: Path, *, what: str) -> MasterKeySource:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise MasterKeyError(f"{what} {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"{what} {path} is readable by others: chmod 600 it")
    try:
        doc = json.loads(text)
        raw = base64.b64decode(doc["key"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise MasterKeyError(f'{what} {path}: expected {{"key": "<32 bytes, base64>"}}') from None
    if len(raw) != 32:
        raise MasterKeyError(f"{what} {path}: the key must be 32 bytes")
    return MasterKeySource(raw=raw)


def _write_key_file(path: Path, key: bytes) -> None:
    """Create the dev keyring atomically with mode 0600; never replace an existing one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": 1, "key": base64.b64encode(key).decode()}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # fails if someone created it meanwhile: nothing is overwritten
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def master_key_source(settings: Settings, *, have_data_keys: bool) -> MasterKeySource:
    given = settings.secrets
    if given.encryption_key:
        try:
            return parse_master_key(given.encryption_key)
        except ValueError as error:
            raise MasterKeyError(
                f"CONFIG_ENCRYPTION_KEY / secrets.encryption_key: {error}"
            ) from None
    if given.keyring_file:
        return _read_key_file(Path(given.keyring_file), what="keyring file")
    path = settings.data_dir / KEYRING_FILE
    if path.exists():
        return _read_key_file(path, what="generated keyring")
    if have_data_keys:
        raise MasterKeyError(
            "secrets are stored but no key was given: set CONFIG_ENCRYPTION_KEY (or"
            f" secrets.keyring_file), or restore {path}"
        )
    key = new_key()
    _write_key_file(path, key)
    log.warning(
        "no encryption key configured: generated one for development; back it up, secrets"
        " cannot be read without it (set CONFIG_ENCRYPTION_KEY in production)",
        extra={"path": str(path)},
    )
    return MasterKeySource(raw=key)


async def open_keyring(
    store: Store,
    committer: Committer,
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    node_id: str,
) -> tuple[Keyring, AESGCM]:
    """Unwrap every live data key, creating the first one on a new store (or cluster)."""
    stored = await store.data_keys()
    source = master_key_source(settings, have_data_keys=bool(stored))
    salt = next((k.salt for k in stored if k.salt), b"")
    if source.needs_salt and not salt:
        salt = random.token_bytes(16)
    master = await asyncio.to_thread(derive_master_key, source, salt)  # scrypt: keep off the loop
    if not any(k.state == "primary" for k in stored):

        async def plan() -> list[Change]:
            # Planned under the writers' lock: with replication, another host may have
            # created the first key meanwhile, and then that one is used.
            if any(k.state == "primary" for k in await store.data_keys()):
                return []
            record = new_data_key(master, salt if source.needs_salt else b"", clock())
            return [
                Change(
                    key=record.id,
                    op="create",
                    payload=record,
                    actor="fpcd",
                    at=clock(),
                    origin=node_id,
                )
            ]

        await committer.commit(plan)
        stored = await store.data_keys()
        theirs = next((k.salt for k in stored if k.salt), b"")
        if source.needs_salt and theirs and theirs != salt:
            master = await asyncio.to_thread(derive_master_key, source, theirs)
    keyring = Keyring()
    for record in stored:
        if record.state == "retired":
            continue
        try:
            keyring.keys[record.id] = AESGCM(
                unwrap_data_key(master, record.id, record.nonce, record.wrapped)
            )
        except KeyMismatch:
            raise MasterKeyError(
                "the encryption key does not match the one these secrets were stored with"
                " (data key " + record.id + " does not unwrap); nothing was changed"
            ) from None
        if record.state == "primary":
            keyring.primary = record.id
    return keyring, master


def new_data_key(master: AESGCM, salt: bytes, now: datetime) -> DataKey:
    key_id = new_key_id()
    nonce, wrapped = wrap_data_key(master, key_id, new_key())
    return DataKey(
        id=key_id, state="primary", nonce=nonce, wrapped=wrapped, salt=salt, created_at=now
    )


def generate_key_text() -> str:
    """`fpcd keygen`: 32 random bytes, base64."""
    return base64.b64encode(new_key()).decode()
