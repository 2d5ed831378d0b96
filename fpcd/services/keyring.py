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
from datetime import datetime
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fpcd.clock import Clock
from fpcd.domain.crypto import (
    KeyMismatch,
    Keyring,
    MasterKeySource,
    derive_master_key,
    new_key,
    new_key_id,
    parse_master_key,
    unwrap_data_key,
    weak_key_reason,
    wrap_data_key,
)
from fpcd.domain.model import Caller, Change, DataKey
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.settings import Settings
from fpcd.store.sqlite import Store

log = logging.getLogger("fpcd.secrets")

KEYRING_FILE = "keyring.json"


class MasterKeyError(Exception):
    """The master key is missing, unreadable, weak or wrong; the message says what to do.

    A restart cannot fix any of these: `fpcd serve` exits 78 (EX_CONFIG)."""


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
    reason = weak_key_reason(doc["key"], MasterKeySource(raw=raw))
    if reason is not None:
        raise MasterKeyError(f"{what} {path} refused: {reason}; {HOW_TO_MAKE_A_KEY}")
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


HOW_TO_MAKE_A_KEY = "make one with `fpcd keygen` and give it as CONFIG_ENCRYPTION_KEY"


def _given_key(text: str, *, what: str, strict: bool) -> MasterKeySource:
    try:
        source = parse_master_key(text)
    except ValueError as error:
        raise MasterKeyError(f"{what}: {error}; {HOW_TO_MAKE_A_KEY}") from None
    reason = weak_key_reason(text, source)
    if reason is not None:
        if strict:
            raise MasterKeyError(f"{what} refused: {reason}; {HOW_TO_MAKE_A_KEY}")
        log.warning("the previous encryption key is weak; it is only used to re-wrap data keys")
    return source


def master_key_source(settings: Settings, *, have_data_keys: bool) -> MasterKeySource:
    given = settings.secrets
    if given.encryption_key:
        return _given_key(
            given.encryption_key, what="CONFIG_ENCRYPTION_KEY / secrets.encryption_key", strict=True
        )
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


class MasterKeys:
    """The master key that wraps data keys, and during a master key rotation the previous
    one, which only ever unwraps (each derived once per stored scrypt salt)."""

    def __init__(
        self, current: AESGCM, salt: bytes, previous: MasterKeySource | None = None
    ) -> None:
        self.current = current
        #: The scrypt salt `current` was derived with (b"": a raw key); stored with every
        #: data key it wraps.
        self.salt = salt
        self.previous = previous
        self._previous: dict[bytes, AESGCM] = {}

    def previous_for(self, salt: bytes) -> AESGCM:
        assert self.previous is not None
        if salt not in self._previous:
            self._previous[salt] = derive_master_key(self.previous, salt)
        return self._previous[salt]

    def under_current(self, record: DataKey) -> bool:
        try:
            unwrap_data_key(self.current, record.id, record.nonce, record.wrapped)
        except KeyMismatch:
            return False
        return True

    def unwrap(self, record: DataKey) -> tuple[bytes, bool]:
        """(material, whether only the previous key opened it); KeyMismatch if neither."""
        try:
            return unwrap_data_key(self.current, record.id, record.nonce, record.wrapped), False
        except KeyMismatch:
            if self.previous is None:
                raise
        previous = self.previous_for(record.salt)
        return unwrap_data_key(previous, record.id, record.nonce, record.wrapped), True

    def rewrapped(self, record: DataKey, material: bytes) -> DataKey:
        """The same data key, wrapped under the current master key."""
        nonce, wrapped = wrap_data_key(self.current, record.id, material)
        return msgspec.structs.replace(record, nonce=nonce, wrapped=wrapped, salt=self.salt)


async def open_keyring(
    store: Store,
    committer: Committer,
    settings: Settings,
    *,
    clock: Clock,
    node_id: str,
) -> tuple[Keyring, MasterKeys]:
    """Unwrap every live data key, creating the first one on a new store (or cluster)."""
    stored = await store.data_keys()
    source = master_key_source(settings, have_data_keys=bool(stored))
    previous = None
    if settings.secrets.previous_encryption_key:
        previous = _given_key(
            settings.secrets.previous_encryption_key,
            what="secrets.previous_encryption_key",
            strict=False,
        )
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
            record = new_data_key(master, salt if source.needs_salt else b"", clock.now())
            return [ChangeMaker(node_id, clock)(record.id, "create", record, Caller.system("fpcd"))]

        await committer.commit(plan)
        stored = await store.data_keys()
        theirs = next((k.salt for k in stored if k.salt), b"")
        if source.needs_salt and theirs and theirs != salt:
            salt = theirs
            master = await asyncio.to_thread(derive_master_key, source, theirs)
    masters = MasterKeys(master, salt if source.needs_salt else b"", previous)
    if previous is not None:
        for found in {k.salt for k in stored if k.state != "retired"}:
            await asyncio.to_thread(masters.previous_for, found)  # scrypt, once per salt
    keyring = Keyring()
    for record in stored:
        if record.state == "retired":
            continue
        if not record.wrapped:
            # Only while catching up on a key that was superseded meanwhile (redacted).
            log.warning("data key without material skipped", extra={"key": record.id})
            continue
        try:
            material, _ = masters.unwrap(record)
        except KeyMismatch:
            hint = (
                "neither the key nor secrets.previous_encryption_key opens it"
                if previous is not None
                else "to change the master key, start with the new key and the old one as"
                " secrets.previous_encryption_key"
            )
            raise MasterKeyError(
                "the encryption key does not match the one these secrets were stored with"
                f" (data key {record.id} does not unwrap; {hint}); nothing was changed"
            ) from None
        keyring.keys[record.id] = AESGCM(material)
        if record.state == "primary":
            keyring.primary = record.id
    return keyring, masters


def new_data_key(master: AESGCM, salt: bytes, now: datetime) -> DataKey:
    key_id = new_key_id()
    nonce, wrapped = wrap_data_key(master, key_id, new_key())
    return DataKey(
        id=key_id, state="primary", nonce=nonce, wrapped=wrapped, salt=salt, created_at=now
    )


def generate_key_text() -> str:
    """`fpcd keygen`: 32 random bytes, base64."""
    return base64.b64encode(new_key()).decode()
