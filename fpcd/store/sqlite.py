"""The local SQLite store: the only module that speaks SQL to the local database.

One write connection (the single writer; every change goes through `apply`) and
one read-only connection, both in WAL mode so reads never wait for a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, TypeVar

import aiosqlite
import msgspec

from fpcd.domain.audit import GENESIS_HASH, next_entry
from fpcd.domain.configs import content_checksum
from fpcd.domain.errors import DiskFull, FpcdError, IntegrityProblem, Unavailable
from fpcd.domain.model import (
    AuditEntry,
    AuditNote,
    Change,
    ConfigVersion,
    DataKey,
    FlagRecord,
    ReloadRequest,
    SchemaRecord,
    SecretDestroyed,
    SecretRead,
    SecretRewrap,
    SecretVersion,
    ServiceRegistration,
    rfc3339,
)
from fpcd.domain.shred import VersionRef, redact, scrub_history
from fpcd.observe.problems import RecordProblems
from fpcd.observe.stats import LatencyHistogram
from fpcd.store.files import secure_data_dir
from fpcd.store.migrations import LATEST, MIGRATIONS, REDACTION_STEP

log = logging.getLogger("fpcd.store")

T = TypeVar("T")

Synchronous = Literal["off", "normal", "full", "extra"]

_change_encoder = msgspec.json.Encoder()
_change_decoder = msgspec.json.Decoder(Change)
_version_decoder = msgspec.json.Decoder(ConfigVersion)
_schema_decoder = msgspec.json.Decoder(SchemaRecord)
_flag_decoder = msgspec.json.Decoder(FlagRecord)
_data_key_decoder = msgspec.json.Decoder(DataKey)
_service_decoder = msgspec.json.Decoder(ServiceRegistration)
_details_decoder = msgspec.json.Decoder(dict[str, Any])


class StoreClosed(FpcdError):
    """Use after `close()` is a bug in the caller's lifecycle, not a user error."""


class DatabaseCorrupt(IntegrityProblem):
    """SQLite reports the database file damaged (quick_check, SQLITE_CORRUPT, SQLITE_NOTADB)."""


_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _error_code(error: BaseException) -> int:
    """SQLite's primary result code of an error (0 when it carries none)."""
    return int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF


def database_error(error: sqlite3.Error) -> FpcdError:
    """What a caller is told about a SQLite failure: disk full, damage, or unavailable."""
    code = _error_code(error)
    if code == sqlite3.SQLITE_FULL:
        return DiskFull(
            "the disk holding the local database is full: nothing was written;"
            " free some space and retry (reads keep working)"
        )
    if code in _CORRUPT_CODES:
        return DatabaseCorrupt(f"the local database is damaged ({error}); restore it from a backup")
    return Unavailable(f"local database error: {error.__class__.__name__}")


async def _rollback(db: aiosqlite.Connection) -> None:
    """Roll back if a transaction is still open: SQLite ends one by itself on some errors
    (SQLITE_FULL), and a second ROLLBACK's error must not hide the first one."""
    if not db.in_transaction:
        return
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error as error:
        log.warning("rollback failed", extra={"error": str(error)})


async def quick_check(path: Path, *, limit: int = 5) -> list[str]:
    """`PRAGMA quick_check` on its own read-only connection: [] when the file is sound,
    else SQLite's first complaints. Never raises for a damaged file."""
    try:
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        return [str(error)]
    try:
        async with db.execute(f"PRAGMA quick_check({int(limit)})") as cur:
            rows = [str(r[0]) for r in await cur.fetchall()]
    except sqlite3.DatabaseError as error:
        if _error_code(error) not in _CORRUPT_CODES:
            raise
        return [str(error)]
    finally:
        await db.close()
    if rows == ["ok"]:
        return []
    lines = (line.strip() for row in rows for line in row.splitlines())
    return [line for line in lines if line and not line.startswith("***")]


class _InlineResult:
    """What `_Inline.execute` returns: awaitable (the cursor) and an async context manager,
    like aiosqlite's, so the same code runs on either connection."""

    __slots__ = ("_args", "_conn", "_cursor", "_sql")

    def __init__(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> None:
        self._conn, self._sql, self._args = conn, sql, args
        self._cursor: _InlineCursor | None = None

    async def _run(self) -> _InlineCursor:
        self._cursor = _InlineCursor(self._conn.execute(self._sql, self._args))
        return self._cursor

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> _InlineCursor:
        return await self._run()

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            self._cursor.close()


class _InlineCursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    @property
    def lastrowid(self) -> int | None:
        return self._cur.lastrowid

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchone(self) -> Any:
        return self._cur.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def close(self) -> None:
        self._cur.close()


class _Inline:
    """The write connection used from the event loop's own thread, statement by statement.

    An aiosqlite call costs a thread hop (about 90 µs here) for a statement that takes
    5-20 µs, and staging a change is four or five statements. Inside a transaction that
    holds the store's write lock nothing else uses the connection, so the statements
    run inline; BEGIN (which may wait for another process) and COMMIT (the fsync) still
    go through aiosqlite's thread, off the loop.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _InlineResult:
        return _InlineResult(self._conn, sql, args)

    async def executemany(self, sql: str, rows: Any) -> _InlineCursor:
        return _InlineCursor(self._conn.executemany(sql, rows))

    async def execute_fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, args).fetchall()

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction


def _inline(db: aiosqlite.Connection) -> _Inline | aiosqlite.Connection:
    """The inline view of aiosqlite's connection (opened with check_same_thread=False);
    aiosqlite itself if its sqlite3 connection cannot be reached."""
    conn = getattr(db, "_connection", None)
    return _Inline(conn) if isinstance(conn, sqlite3.Connection) else db


#: The transaction whose plan is running in this task: its reads see what it staged.
_staging: ContextVar[Transaction | None] = ContextVar("fpcd_store_staging", default=None)


class SecretRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored secret version; `ciphertext` None once destroyed (`destroyed` says why)."""

    service: str
    environment: str
    name: str
    version: int
    key_id: str
    nonce: bytes | None
    ciphertext: bytes | None
    description: str
    expires_at: float | None
    created_at: str
    created_by: str
    destroyed: str | None
    access_count: int = 0
    last_accessed_at: str | None = None


_SECRET_COLUMNS = (
    "v.service, v.environment, v.name, v.version, v.key_id, v.nonce, v.ciphertext,"
    " v.description, v.expires_at, v.created_at, v.created_by, v.destroyed,"
    " coalesce(a.count, 0), a.last_at"
)
_SECRET_FROM = (
    " FROM secret_versions v LEFT JOIN secret_access a"
    " ON a.service = v.service AND a.environment = v.environment AND a.name = v.name"
)


def _secret_row(row: Sequence[Any]) -> SecretRow:
    return SecretRow(
        service=row[0],
        environment=row[1],
        name=row[2],
        version=row[3],
        key_id=row[4],
        nonce=row[5],
        ciphertext=row[6],
        description=row[7],
        expires_at=row[8],
        created_at=row[9],
        created_by=row[10],
        destroyed=row[11],
        access_count=row[12],
        last_accessed_at=row[13],
    )


class PendingRead(msgspec.Struct, frozen=True, kw_only=True):
    """A secret read recorded on this host, not yet committed as a `SecretRead` change."""

    id: str
    at: str
    actor: str
    request_id: str
    peer: str
    service: str
    environment: str
    names: list[str]


_names_decoder = msgspec.json.Decoder(list[str])


async def _count_reads(
    db: aiosqlite.Connection, service: str, environment: str, names: Sequence[str], at: datetime
) -> None:
    """Access counts; `last_at` only moves forward (reads arrive from other hosts late)."""
    await db.executemany(
        "INSERT INTO secret_access (service, environment, name, count, last_at)"
        " VALUES (?, ?, ?, 1, ?) ON CONFLICT (service, environment, name)"
        " DO UPDATE SET count = count + 1, last_at = CASE"
        " WHEN julianday(excluded.last_at) > julianday(last_at) THEN excluded.last_at"
        " ELSE last_at END",
        [(service, environment, name, rfc3339(at)) for name in names],
    )


def _scrub_destroyed(db: sqlite3.Connection) -> None:
    """In a copy: drop the ciphertexts of destroyed secret versions from the journal too
    (the versions' rows already hold none), so no copy keeps what was destroyed."""
    gone = set(
        db.execute(
            "SELECT service, environment, name, version FROM secret_versions"
            " WHERE ciphertext IS NULL"
        ).fetchall()
    )
    if not gone:
        return
    updates: list[tuple[bytes, int]] = []
    rows = db.execute(
        "SELECT seq, payload FROM changes WHERE entity IN ('secret', 'secret_rewrap')"
    ).fetchall()
    for seq, payload in rows:
        change = _change_decoder.decode(payload)
        match change.payload:
            case SecretVersion() as v if (v.service, v.environment, v.name, v.version) in gone:
                scrubbed: Any = msgspec.structs.replace(v, nonce=b"", ciphertext=b"")
            case SecretRewrap() as r:
                scrubbed = msgspec.structs.replace(
                    r,
                    items=[
                        msgspec.structs.replace(i, nonce=b"", ciphertext=b"")
                        if (i.service, i.environment, i.name, i.version) in gone
                        else i
                        for i in r.items
                    ],
                )
            case _:
                continue
        updates.append(
            (_change_encoder.encode(msgspec.structs.replace(change, payload=scrubbed)), seq)
        )
    db.execute("BEGIN")
    db.executemany("UPDATE changes SET payload = ? WHERE seq = ?", updates)
    db.execute("COMMIT")


class ServiceSummary(msgspec.Struct, frozen=True):
    service: str
    environment: str
    version: int


async def _set_meta(db: Any, key: str, value: str) -> None:
    await db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def migrate(path: Path) -> tuple[int, int]:
    """Bring the database at `path` to the latest schema; returns (before, after)."""
    secure_data_dir(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA secure_delete=ON")
        before = (await (await db.execute("PRAGMA user_version")).fetchone())[0]  # type: ignore[index]
        if before > LATEST:
            raise FpcdError(
                f"{path} has schema version {before}, newer than this fpcd ({LATEST}); upgrade fpcd"
            )
        for step in range(before, LATEST):
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        await db.execute(statement)
                if step + 1 == REDACTION_STEP and before:
                    await _scrub_journal(db)
                await db.execute(f"PRAGMA user_version = {step + 1}")
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
        if 0 < before < REDACTION_STEP:
            # Pages freed before secure_delete was on may still hold destroyed material:
            # rebuild the file once, then empty the WAL that held the old pages.
            await db.execute("VACUUM")
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, LATEST
    finally:
        await db.close()


async def _scrub_journal(db: aiosqlite.Connection) -> None:
    """Redact what a store from before redaction destroyed but kept in its journal."""
    rows = list(
        await db.execute_fetchall(
            "SELECT seq, payload FROM changes WHERE entity IN"
            " ('secret', 'secret_rewrap', 'secret_destroyed', 'data_key') ORDER BY seq"
        )
    )
    redacted = scrub_history([_change_decoder.decode(r[1]) for r in rows])
    await db.executemany(
        "UPDATE changes SET payload = ? WHERE seq = ?",
        [(_change_encoder.encode(c), rows[i][0]) for i, c in redacted],
    )
    if redacted:
        log.info(
            "redacted destroyed secret material from the journal",
            extra={"changes": len(redacted)},
        )


class Store:
    def __init__(self, path: Path, *, synchronous: Synchronous = "full") -> None:
        self.path = path
        self._synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._audit_head: tuple[int, str] = (0, GENESIS_HASH)
        self._cursor = 0
        self._closed = False
        #: Set when SQLite found the file damaged while running: writes are refused.
        self.corrupt: str | None = None
        #: Stored records that could not be loaded, scheduled or verified (in /health).
        self.problems = RecordProblems()
        #: Reads that found stored data failing its checksum (for /metrics).
        self.integrity_failures = 0
        #: Seconds per read query and per write transaction (apply), for /metrics.
        self.read_latency = LatencyHistogram()
        self.write_latency = LatencyHistogram()
        #: Write transactions committed and the changes in them (their ratio is the
        #: average group size of the group commit), for /metrics.
        self.commits = 0
        self.committed_changes = 0

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Check the file (`PRAGMA quick_check`), migrate, connect; a damaged file raises
        DatabaseCorrupt before anything is written to it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.path.exists():
            problems = await quick_check(self.path)
            if problems:
                raise DatabaseCorrupt(
                    f"{self.path} is damaged (PRAGMA quick_check: {'; '.join(problems[:3])});"
                    " restore it from a backup (fpcd backup) or from the upstream"
                )
        try:
            await migrate(self.path)
        except sqlite3.DatabaseError as error:
            if _error_code(error) in _CORRUPT_CODES:
                raise DatabaseCorrupt(f"{self.path} is damaged: {error}") from None
            raise
        self._writer = await aiosqlite.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        await self._writer.execute("PRAGMA journal_mode=WAL")
        # Deleted and overwritten content is zeroed in the file (destroyed secrets).
        await self._writer.execute("PRAGMA secure_delete=ON")
        await self._writer.execute(f"PRAGMA synchronous={self._synchronous}")
        await self._writer.execute("PRAGMA busy_timeout=5000")
        await self._writer.execute("PRAGMA foreign_keys=ON")
        self._reader = await aiosqlite.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None
        )
        await self._reader.execute("PRAGMA busy_timeout=5000")
        row = await self._fetchone("SELECT value FROM meta WHERE key = 'audit_head'")
        if row:
            head_id, head_hash = row[0].split(":", 1)
            self._audit_head = (int(head_id), head_hash)
        row = await self._fetchone("SELECT value FROM meta WHERE key = 'upstream_cursor'")
        self._cursor = int(row[0]) if row else 0

    async def local_changes_count(self) -> int:
        """Changes made here without an upstream (a standalone history)."""
        row = await self._fetchone("SELECT count(*) FROM changes WHERE upstream_seq IS NULL")
        return int(row[0])

    async def local_changes(self) -> list[Change]:
        rows = await self._fetchall(
            "SELECT seq, payload FROM changes WHERE upstream_seq IS NULL ORDER BY seq"
        )
        return [msgspec.structs.replace(_change_decoder.decode(r[1]), seq=r[0]) for r in rows]

    async def mark_upstream(self, pairs: Sequence[tuple[int, int]]) -> None:
        """(upstream seq, local seq) for a standalone history just pushed upstream."""
        async with self._write_lock:
            db = self._writable()
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany("UPDATE changes SET upstream_seq = ? WHERE seq = ?", pairs)
                cursor = max(upstream for upstream, _ in pairs)
                await _set_meta(db, "upstream_cursor", str(cursor))
                await db.execute("COMMIT")
            except sqlite3.Error as error:
                await _rollback(db)
                raise self._failed(error, "write") from error
            except BaseException:
                await _rollback(db)
                raise
            self._cursor = cursor

    async def open_readonly(self) -> None:
        """Read without migrating or writing (offline `fpcd audit verify`)."""
        self._reader = await aiosqlite.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None
        )
        row = await self._fetchone("SELECT value FROM meta WHERE key = 'audit_head'")
        if row:
            head_id, head_hash = row[0].split(":", 1)
            self._audit_head = (int(head_id), head_hash)

    async def close(self) -> None:
        """Idempotent; waits for an in-flight write so nothing acknowledged is cut short."""
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    await conn.close()
        self._reader = self._writer = None

    def _read(self) -> Any:
        staging = _staging.get()
        if staging is not None and staging.store is self and staging.db is not None:
            return staging.db  # a plan reads through its open transaction
        if self._reader is None:
            raise StoreClosed("the store is closed")
        return self._reader

    async def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> Any:
        started = perf_counter()
        try:
            # One call that runs the statement to its end: a cursor left open between
            # calls would hold a read transaction, and every query that concurrent
            # readers run meanwhile would see its old snapshot (miss a fresh commit).
            rows = await self._read().execute_fetchall(sql, args)
            return next(iter(rows), None)
        except sqlite3.Error as error:
            raise self._failed(error, "read") from error
        finally:
            self.read_latency.observe(perf_counter() - started)

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        started = perf_counter()
        try:
            return list(await self._read().execute_fetchall(sql, args))
        except sqlite3.Error as error:
            raise self._failed(error, "read") from error
        finally:
            self.read_latency.observe(perf_counter() - started)

    async def ping(self) -> None:
        await self._fetchone("SELECT 1")

    def _failed(self, error: sqlite3.Error, what: str) -> FpcdError:
        """Log SQLite's own error (never a generic one) and say what it means to a caller."""
        mapped = database_error(error)
        if isinstance(mapped, DatabaseCorrupt):
            self._mark_corrupt(str(error))
        log.error(
            f"local database {what} failed: {error}",
            extra={
                "error": str(error),
                "code": getattr(error, "sqlite_errorname", ""),
                "database": str(self.path),
            },
        )
        return mapped

    def _mark_corrupt(self, detail: str) -> None:
        if self.corrupt is None:
            self.corrupt = detail
            self.problems.report("database", f"{self.path.name} is damaged: {detail}")

    async def check_integrity(self) -> list[str]:
        """The periodic `PRAGMA quick_check`: a damaged file degrades health and stops writes."""
        problems = await quick_check(self.path)
        if problems:
            self._mark_corrupt("; ".join(problems[:3]))
        return problems

    def _writable(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreClosed("the store is closed")
        if self.corrupt is not None:
            raise DatabaseCorrupt(
                f"the local database failed its integrity check ({self.corrupt});"
                " writes are refused until it is restored from a backup"
            )
        return self._writer

    # -- local bookkeeping (node id, cursors): not changes, never replicated -------

    async def meta_get(self, key: str) -> str | None:
        row = await self._fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    async def meta_set(self, key: str, value: str) -> None:
        async with self._write_lock:
            db = self._writable()
            try:
                await _set_meta(db, key, value)
            except sqlite3.Error as error:
                raise self._failed(error, "write") from error

    # -- the one write path ----------------------------------------------------

    async def apply(self, changes: Sequence[Change], *, upstream: bool = False) -> list[Change]:
        """Store and materialize `changes` in one transaction; returns them with the local
        `seq` set.

        With `upstream`, each change's `seq` on input is its place in the upstream log:
        changes at or below the cursor are skipped (already applied), and the cursor moves
        in the same transaction, so a crash can neither skip nor repeat one.
        """
        if not changes:
            return []
        txn = await self.begin()
        try:
            stored = await txn.stage(changes, upstream=upstream)
            if stored:
                await txn.commit()
        finally:
            await txn.rollback()  # a no-op once committed
        return stored

    async def begin(self) -> Transaction:
        """Open the write transaction (taking the write lock until commit or rollback)."""
        await self._write_lock.acquire()
        try:
            db = self._writable()
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise self._failed(error, "write") from error
        except BaseException:
            self._write_lock.release()
            raise
        return Transaction(self, db)

    async def _stage(
        self, db: Any, changes: Sequence[Change], upstream: bool, txn: Transaction
    ) -> list[Change]:
        """Insert `changes` (journal, materialized rows, audit entries) into the open
        transaction, advancing the transaction's audit head and cursor."""
        audit_id, audit_hash = txn.audit_head
        cursor = txn.cursor
        stored: list[Change] = []
        for change in changes:
            upstream_seq = None
            if upstream:
                if change.seq <= cursor:
                    continue
                if change.seq != cursor + 1:
                    raise FpcdError(f"upstream change {change.seq} follows {cursor}: a gap")
                upstream_seq = cursor = change.seq
            cur = await db.execute(
                "INSERT INTO changes (entity, key, op, actor, at, origin, request_id,"
                " upstream_seq, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    change.entity,
                    change.key,
                    change.op,
                    change.actor,
                    rfc3339(change.at),
                    change.origin,
                    change.request_id,
                    upstream_seq,
                    _change_encoder.encode(change),
                ),
            )
            assert cur.lastrowid is not None
            change = msgspec.structs.replace(change, seq=cur.lastrowid)
            txn.shredded = await self._materialize(db, change) or txn.shredded
            entry = next_entry(audit_id, audit_hash, change)
            await db.execute(
                "INSERT INTO audit_log (id, at, actor, action, target, details,"
                " request_id, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.id,
                    rfc3339(entry.at),
                    entry.actor,
                    entry.action,
                    entry.target,
                    msgspec.json.encode(entry.details).decode(),
                    entry.request_id,
                    entry.prev_hash,
                    entry.hash,
                ),
            )
            audit_id, audit_hash = entry.id, entry.hash
            stored.append(change)
        txn.audit_head, txn.cursor = (audit_id, audit_hash), cursor
        return stored

    @property
    def upstream_cursor(self) -> int:
        """The last upstream change applied here (0: none)."""
        return self._cursor

    async def _materialize(self, db: Any, change: Change) -> bool:
        """Write the change's effect; True when it destroyed stored material."""
        match change.payload:
            case ConfigVersion() as v:
                await db.execute(
                    "INSERT INTO config_versions (service, environment, version, change_seq,"
                    " record) VALUES (?, ?, ?, ?, ?)",
                    (v.service, v.environment, v.version, change.seq, _change_encoder.encode(v)),
                )
            case SchemaRecord() as s:
                await db.execute(
                    "INSERT INTO config_schemas (service, record) VALUES (?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET record = excluded.record",
                    (s.service, _change_encoder.encode(s)),
                )
            case FlagRecord() as f:
                await db.execute(
                    "INSERT INTO flag_versions (key, version, change_seq, record)"
                    " VALUES (?, ?, ?, ?)",
                    (f.key, f.version, change.seq, _change_encoder.encode(f)),
                )
            case DataKey() as k:
                await db.execute(
                    "INSERT INTO data_keys (id, record) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                    (k.id, _change_encoder.encode(k)),
                )
                # Only this newest change of the key keeps its material.
                shredded = await self._redact(
                    db,
                    "SELECT seq, payload FROM changes WHERE entity = 'data_key' AND key = ?"
                    " AND seq < ?",
                    (k.id, change.seq),
                    keys={k.id},
                )
                if k.state == "retired":
                    # Ciphertexts made under it: only it could open them.
                    shredded = (
                        await self._redact(
                            db,
                            "SELECT seq, payload FROM changes WHERE seq IN"
                            " (SELECT seq FROM secret_copies WHERE key_id = ?)",
                            (k.id,),
                            retired={k.id},
                        )
                        or shredded
                    )
                    await db.execute("DELETE FROM secret_copies WHERE key_id = ?", (k.id,))
                return shredded
            case SecretVersion() as v:
                if v.ciphertext:
                    await db.execute(
                        "INSERT OR IGNORE INTO secret_copies (service, environment, name,"
                        " version, seq, key_id) VALUES (?, ?, ?, ?, ?, ?)",
                        (v.service, v.environment, v.name, v.version, change.seq, v.key_id),
                    )
                await db.execute(
                    "INSERT INTO secret_versions (service, environment, name, version, change_seq,"
                    " key_id, nonce, ciphertext, description, expires_at, created_at, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        v.service,
                        v.environment,
                        v.name,
                        v.version,
                        change.seq,
                        v.key_id,
                        v.nonce or None,  # empty: redacted upstream, destroyed meanwhile
                        v.ciphertext or None,
                        v.description,
                        v.expires_at.timestamp() if v.expires_at else None,
                        rfc3339(v.created_at),
                        v.created_by,
                    ),
                )
            case SecretDestroyed() as d:
                await db.executemany(
                    "UPDATE secret_versions SET nonce = NULL, ciphertext = NULL, destroyed = ?"
                    " WHERE service = ? AND environment = ? AND name = ? AND version = ?"
                    " AND destroyed IS NULL",
                    [(d.reason, d.service, d.environment, d.name, n) for n in d.versions],
                )
                marks = ", ".join("?" * len(d.versions))
                where = (
                    f" WHERE service = ? AND environment = ? AND name = ? AND version IN ({marks})"
                )
                args = (d.service, d.environment, d.name, *d.versions)
                shredded = await self._redact(
                    db,
                    "SELECT seq, payload FROM changes WHERE seq IN"
                    f" (SELECT seq FROM secret_copies{where})",
                    args,
                    versions={(d.service, d.environment, d.name, n) for n in d.versions},
                )
                await db.execute(f"DELETE FROM secret_copies{where}", args)
                return shredded
            case SecretRewrap() as r:
                live = [i for i in r.items if i.ciphertext]  # empty: destroyed meanwhile
                await db.executemany(
                    "INSERT OR IGNORE INTO secret_copies (service, environment, name, version,"
                    " seq, key_id) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (i.service, i.environment, i.name, i.version, change.seq, r.key_id)
                        for i in live
                    ],
                )
                await db.executemany(
                    "UPDATE secret_versions SET key_id = ?, nonce = ?, ciphertext = ?"
                    " WHERE service = ? AND environment = ? AND name = ? AND version = ?"
                    " AND destroyed IS NULL",
                    [
                        (
                            r.key_id,
                            i.nonce,
                            i.ciphertext,
                            i.service,
                            i.environment,
                            i.name,
                            i.version,
                        )
                        for i in live
                    ],
                )
            case SecretRead() as read:
                if read.read_id:
                    cur = await db.execute("DELETE FROM secret_reads WHERE id = ?", (read.read_id,))
                    if cur.rowcount > 0:
                        return False  # this host's own read: counted when it happened
                await _count_reads(db, read.service, read.environment, read.names, change.at)
            case ServiceRegistration() as reg:
                await db.execute(
                    "INSERT INTO services (name, record) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                    (reg.name, _change_encoder.encode(reg)),
                )
            case AuditNote() | ReloadRequest():
                pass
        return False

    async def _redact(
        self,
        db: aiosqlite.Connection,
        sql: str,
        args: Sequence[Any],
        *,
        versions: AbstractSet[VersionRef] = frozenset(),
        keys: AbstractSet[str] = frozenset(),
        retired: AbstractSet[str] = frozenset(),
    ) -> bool:
        """Redact the journal rows `sql` selects (seq, payload); True if any changed."""
        async with db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        updates = []
        for seq, payload in rows:
            redacted = redact(
                _change_decoder.decode(payload), versions=versions, keys=keys, retired=retired
            )
            if redacted is not None:
                updates.append((_change_encoder.encode(redacted), seq))
        await db.executemany("UPDATE changes SET payload = ? WHERE seq = ?", updates)
        return bool(updates)

    async def upstream_copies(
        self,
        versions: AbstractSet[VersionRef],
        keys: AbstractSet[str],
        retired: AbstractSet[str] = frozenset(),
    ) -> list[int]:
        """Upstream seqs of the journal rows holding material of `versions`, of data keys
        `keys`, or ciphertexts made under `retired` keys."""
        seqs: set[int] = set()
        for service, environment, name, version in versions:
            rows = await self._fetchall(
                "SELECT c.upstream_seq FROM secret_copies s JOIN changes c ON c.seq = s.seq"
                " WHERE s.service = ? AND s.environment = ? AND s.name = ? AND s.version = ?"
                " AND c.upstream_seq IS NOT NULL",
                (service, environment, name, version),
            )
            seqs.update(r[0] for r in rows)
        for key_id in keys:
            rows = await self._fetchall(
                "SELECT upstream_seq FROM changes WHERE entity = 'data_key' AND key = ?"
                " AND upstream_seq IS NOT NULL",
                (key_id,),
            )
            seqs.update(r[0] for r in rows)
        for key_id in retired:
            rows = await self._fetchall(
                "SELECT c.upstream_seq FROM secret_copies s JOIN changes c ON c.seq = s.seq"
                " WHERE s.key_id = ? AND c.upstream_seq IS NOT NULL",
                (key_id,),
            )
            seqs.update(r[0] for r in rows)
        return sorted(seqs)

    async def checkpoint(self) -> None:
        """Move the WAL into the database file and truncate it: the WAL's old page images
        (which may hold destroyed material) are gone once this returns."""
        async with self._write_lock:
            if self._writer is None:
                raise StoreClosed("the store is closed")
            await self._checkpoint(self._writer)

    @staticmethod
    async def _checkpoint(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            busy = await cur.fetchone()
        if busy and busy[0]:
            log.warning("WAL checkpoint did not complete (a reader held it); it will be retried")

    # -- configuration reads ---------------------------------------------------

    def _version(self, raw: bytes | str, *, verify: bool = True) -> ConfigVersion:
        """A stored config version; with `verify`, one whose content does not match its
        checksum (an edited row) raises IntegrityProblem and is reported, never served."""
        try:
            version = _version_decoder.decode(raw)
        except msgspec.DecodeError as error:
            self.integrity_failures += 1
            self.problems.report("config_versions", f"a row does not decode: {error}")
            raise IntegrityProblem(
                f"a stored config version does not decode ({error}); it is not served"
            ) from None
        if verify and content_checksum(version.config, version.secret_versions) != (
            version.checksum
        ):
            self.integrity_failures += 1
            record = f"config:{version.service}/{version.environment} v{version.version}"
            problem = "stored content does not match its checksum (edited row)"
            self.problems.report(record, problem)
            raise IntegrityProblem(
                f"{record}: {problem}; it is not served. Write a new version or roll back"
                " to a good one"
            )
        return version

    async def config_head(
        self, service: str, environment: str, *, verify: bool = True
    ) -> ConfigVersion | None:
        """The latest version; `verify=False` for writers that need only its number and
        checksum (so a damaged head can be replaced through the API)."""
        row = await self._fetchone(
            "SELECT record FROM config_versions WHERE service = ? AND environment = ?"
            " ORDER BY version DESC LIMIT 1",
            (service, environment),
        )
        return self._version(row[0], verify=verify) if row else None

    async def config_version(
        self, service: str, environment: str, version: int
    ) -> tuple[ConfigVersion, int] | None:
        """A version and the sequence number of the change that wrote it."""
        row = await self._fetchone(
            "SELECT record, change_seq FROM config_versions"
            " WHERE service = ? AND environment = ? AND version = ?",
            (service, environment, version),
        )
        return (self._version(row[0]), row[1]) if row else None

    async def config_version_at(
        self, service: str, environment: str, seq: int
    ) -> ConfigVersion | None:
        """The head of a layer as it was when change `seq` was applied."""
        row = await self._fetchone(
            "SELECT record FROM config_versions WHERE service = ? AND environment = ?"
            " AND change_seq <= ? ORDER BY version DESC LIMIT 1",
            (service, environment, seq),
        )
        return self._version(row[0]) if row else None

    async def config_history(
        self, service: str, environment: str, *, limit: int, offset: int
    ) -> tuple[list[ConfigVersion], int]:
        # Versions run 1..head without a gap (history never rewinds), so the page is a
        # key range: O(limit) however deep the offset, and the total is the head.
        total = (
            await self._fetchone(
                "SELECT max(version) FROM config_versions WHERE service = ? AND environment = ?",
                (service, environment),
            )
        )[0] or 0
        rows = await self._fetchall(
            "SELECT record FROM config_versions WHERE service = ? AND environment = ?"
            " AND version <= ? ORDER BY version DESC LIMIT ?",
            (service, environment, total - offset, limit),
        )
        return [self._version(r[0]) for r in rows], total

    async def config_layers(self, service: str, *, verify: bool = True) -> dict[str, ConfigVersion]:
        """The head of every environment of a service."""
        rows = await self._fetchall(
            "SELECT v.record FROM config_versions v JOIN ("
            "  SELECT environment, max(version) AS version FROM config_versions"
            "  WHERE service = ? GROUP BY environment"
            ") h ON v.environment = h.environment AND v.version = h.version"
            " WHERE v.service = ?",
            (service, service),
        )
        heads = [self._version(r[0], verify=verify) for r in rows]
        return {v.environment: v for v in heads}

    async def services(self) -> list[ServiceSummary]:
        rows = await self._fetchall(
            "SELECT service, environment, max(version) FROM config_versions"
            " GROUP BY service, environment ORDER BY service, environment"
        )
        return [ServiceSummary(*row) for row in rows]

    async def config_bases(
        self, service: str, environment: str, versions: Sequence[int], base: str
    ) -> dict[int, ConfigVersion]:
        """For versions of a layer: the `base` layer's head when each was written."""
        if not versions:
            return {}
        rows = await self._fetchall(
            "SELECT v.version, (SELECT d.record FROM config_versions d"
            "  WHERE d.service = v.service AND d.environment = ? AND d.change_seq <= v.change_seq"
            "  ORDER BY d.version DESC LIMIT 1)"
            " FROM config_versions v WHERE v.service = ? AND v.environment = ?"
            f" AND v.version IN ({', '.join('?' * len(versions))})",
            (base, service, environment, *versions),
        )
        return {r[0]: _version_decoder.decode(r[1]) for r in rows if r[1] is not None}

    async def secret_layers(self) -> list[tuple[str, str]]:
        """Every (service, environment) that holds secret versions."""
        rows = await self._fetchall("SELECT DISTINCT service, environment FROM secret_versions")
        return [(row[0], row[1]) for row in rows]

    async def schema(self, service: str) -> SchemaRecord | None:
        row = await self._fetchone(
            "SELECT record FROM config_schemas WHERE service = ?", (service,)
        )
        return _schema_decoder.decode(row[0]) if row else None

    # -- flags --------------------------------------------------------------------

    async def flags_current(self) -> list[FlagRecord]:
        """The latest version of every flag, archived ones included."""
        rows = await self._fetchall(
            "SELECT v.record, v.key, v.version FROM flag_versions v JOIN ("
            "  SELECT key, max(version) AS version FROM flag_versions GROUP BY key"
            ") h ON v.key = h.key AND v.version = h.version ORDER BY v.key"
        )
        return self._loadable(
            _flag_decoder,
            [(raw, f"flag:{key}:record", f"version {version}") for raw, key, version in rows],
        )

    async def flag_history(
        self, key: str, *, limit: int, offset: int
    ) -> tuple[list[FlagRecord], int]:
        # Versions run 1..n without a gap: a key range, O(limit) at any offset.
        total = (
            await self._fetchone("SELECT max(version) FROM flag_versions WHERE key = ?", (key,))
        )[0] or 0
        rows = await self._fetchall(
            "SELECT record FROM flag_versions WHERE key = ? AND version <= ?"
            " ORDER BY version DESC LIMIT ?",
            (key, total - offset, limit),
        )
        return [_flag_decoder.decode(r[0]) for r in rows], total

    async def add_analytics(self, rows: Sequence[tuple[str, int, str, int, str, int]]) -> None:
        """Add evaluation counts (flag, hour, variant, enabled, reason, count) in one commit."""
        if not rows:
            return
        async with self._write_lock:
            db = self._writable()
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(
                    "INSERT INTO flag_analytics (flag, hour, variant, enabled, reason, count)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (flag, hour, variant, enabled, reason)"
                    " DO UPDATE SET count = count + excluded.count",
                    rows,
                )
                await db.execute("COMMIT")
            except sqlite3.Error as error:
                await _rollback(db)
                raise self._failed(error, "write") from error
            except BaseException:
                await _rollback(db)
                raise

    async def analytics(
        self, flag: str, first_hour: int, last_hour: int
    ) -> list[tuple[int, str, int, str, int]]:
        """(hour, variant, enabled, reason, count) rows for hours in [first, last]."""
        rows = await self._fetchall(
            "SELECT hour, variant, enabled, reason, count FROM flag_analytics"
            " WHERE flag = ? AND hour BETWEEN ? AND ?",
            (flag, first_hour, last_hour),
        )
        return [tuple(r) for r in rows]

    # -- service registry ---------------------------------------------------------

    async def registrations(self) -> list[ServiceRegistration]:
        rows = await self._fetchall("SELECT record, name FROM services ORDER BY name")
        return self._loadable(
            _service_decoder, [(raw, f"service:{name}", "registration") for raw, name in rows]
        )

    def _loadable(
        self, decoder: msgspec.json.Decoder[T], rows: list[tuple[bytes, str, str]]
    ) -> list[T]:
        """The rows (raw, where, what) that decode; the others are reported and skipped, so
        a damaged or foreign record never stops start-up."""
        found: list[T] = []
        for raw, where, what in rows:
            try:
                found.append(decoder.decode(raw))
            except msgspec.DecodeError as error:
                self.problems.report(where, f"{what} does not decode: {error}", kind="load")
        return found

    # -- export, import and backup (fpcd export / import / backup) ----------------

    async def export_config_versions(
        self, *, limit: int, offset: int
    ) -> tuple[list[ConfigVersion], int]:
        """Every config version in the order the changes were applied (so `default` layers
        and rollbacks come back in the same order on import)."""
        rows = await self._fetchall(
            "SELECT record FROM config_versions"
            " ORDER BY change_seq, service, environment, version LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = await self._fetchone("SELECT count(*) FROM config_versions")
        return [_version_decoder.decode(r[0]) for r in rows], total[0]

    async def export_flag_versions(
        self, *, limit: int, offset: int
    ) -> tuple[list[FlagRecord], int]:
        """Every flag version in change order (a dependency is always defined before use)."""
        rows = await self._fetchall(
            "SELECT record FROM flag_versions ORDER BY change_seq, key, version LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = await self._fetchone("SELECT count(*) FROM flag_versions")
        return [_flag_decoder.decode(r[0]) for r in rows], total[0]

    async def export_schemas(self) -> list[SchemaRecord]:
        rows = await self._fetchall("SELECT record FROM config_schemas ORDER BY service")
        return [_schema_decoder.decode(r[0]) for r in rows]

    async def export_analytics(
        self, *, limit: int, offset: int
    ) -> tuple[list[tuple[str, int, str, int, str, int]], int]:
        """(flag, hour, variant, enabled, reason, count) rows of this host."""
        rows = await self._fetchall(
            "SELECT flag, hour, variant, enabled, reason, count FROM flag_analytics"
            " ORDER BY flag, hour, variant, enabled, reason LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = await self._fetchone("SELECT count(*) FROM flag_analytics")
        return [tuple(r) for r in rows], total[0]

    async def export_secret_versions(
        self, *, limit: int, offset: int
    ) -> tuple[list[SecretRow], int]:
        """Metadata of every secret version whose value still exists (values stay here)."""
        rows = await self._fetchall(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM} WHERE v.ciphertext IS NOT NULL"
            " ORDER BY v.service, v.environment, v.name, v.version LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = await self._fetchone(
            "SELECT count(*) FROM secret_versions WHERE ciphertext IS NOT NULL"
        )
        return [_secret_row(r) for r in rows], total[0]

    async def flag_version(self, key: str, version: int) -> FlagRecord | None:
        row = await self._fetchone(
            "SELECT record FROM flag_versions WHERE key = ? AND version = ?", (key, version)
        )
        return _flag_decoder.decode(row[0]) if row else None

    async def meta_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            rows = await self._fetchall(
                f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({r[0]: r[1] for r in rows})
        return found

    async def meta_set_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Local bookkeeping rows in one transaction (import marks: never replicated)."""
        if not items:
            return
        async with self._write_lock:
            if self._writer is None:
                raise StoreClosed("the store is closed")
            db = self._writer
            await db.execute("BEGIN IMMEDIATE")
            try:
                for key, value in items:
                    await _set_meta(db, key, value)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the database at `target`, taken while writes go on.

        SQLite's online backup API, in one step from a read-only connection of its own:
        under WAL that step holds one read transaction, so the copy is the database as
        of one commit and writers are never blocked. The copy is then vacuumed, which
        drops free pages: bytes of destroyed secrets left in freed pages stay behind.
        """
        if self._reader is None:
            raise StoreClosed("the store is closed")

        def copy() -> None:
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            dest = sqlite3.connect(target, isolation_level=None)
            try:
                source.execute("PRAGMA busy_timeout=5000")
                source.backup(dest, pages=-1)
                dest.execute("PRAGMA journal_mode=DELETE")
                _scrub_destroyed(dest)
                dest.execute("VACUUM")
            finally:
                dest.close()
                source.close()

        await asyncio.to_thread(copy)

    # -- secrets ----------------------------------------------------------------

    async def data_keys(self) -> list[DataKey]:
        rows = await self._fetchall("SELECT record FROM data_keys ORDER BY id")
        return [_data_key_decoder.decode(r[0]) for r in rows]

    async def secret_version(
        self, service: str, environment: str, name: str, version: int | None = None
    ) -> SecretRow | None:
        """One version (default: the latest) of a secret."""
        where = " WHERE v.service = ? AND v.environment = ? AND v.name = ?"
        args: list[Any] = [service, environment, name]
        if version is not None:
            where += " AND v.version = ?"
            args.append(version)
        row = await self._fetchone(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM}{where} ORDER BY v.version DESC LIMIT 1",
            args,
        )
        return _secret_row(row) if row else None

    async def secret_history(self, service: str, environment: str, name: str) -> list[SecretRow]:
        rows = await self._fetchall(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM}"
            " WHERE v.service = ? AND v.environment = ? AND v.name = ? ORDER BY v.version DESC",
            (service, environment, name),
        )
        return [_secret_row(r) for r in rows]

    async def secrets_latest(
        self, service: str, environments: Sequence[str] | None = None
    ) -> list[SecretRow]:
        """The latest version of every secret of a service (in some environments)."""
        where, args = " WHERE v.service = ?", [service]
        if environments is not None:
            where += f" AND v.environment IN ({', '.join('?' * len(environments))})"
            args += list(environments)
        rows = await self._fetchall(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM} JOIN ("
            "  SELECT service, environment, name, max(version) AS version FROM secret_versions"
            "  GROUP BY service, environment, name"
            ") h ON h.service = v.service AND h.environment = v.environment"
            f" AND h.name = v.name AND h.version = v.version{where}"
            " ORDER BY v.environment, v.name",
            args,
        )
        return [_secret_row(r) for r in rows]

    async def record_secret_read(
        self, read: PendingRead, at: datetime
    ) -> dict[str, tuple[int, str]]:
        """A decrypting read, recorded here in one transaction: the outbox row that becomes
        its audited `SecretRead` change later, and the access counts (so they include this
        read). Returns name -> (access count, last access) after it."""
        async with self._write_lock:
            db = self._writable()
            started = perf_counter()
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute(
                    "INSERT INTO secret_reads (id, at, actor, request_id, peer, service,"
                    " environment, names) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        read.id,
                        read.at,
                        read.actor,
                        read.request_id,
                        read.peer,
                        read.service,
                        read.environment,
                        msgspec.json.encode(read.names).decode(),
                    ),
                )
                await _count_reads(db, read.service, read.environment, read.names, at)
                args = (read.service, read.environment, *read.names)
                async with db.execute(
                    "SELECT name, count, last_at FROM secret_access"
                    " WHERE service = ? AND environment = ?"
                    f" AND name IN ({', '.join('?' * len(read.names))})",
                    args,
                ) as cur:
                    counts = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
                await db.execute("COMMIT")
            except sqlite3.Error as error:
                await _rollback(db)
                raise self._failed(error, "write") from error
            except BaseException:
                await _rollback(db)
                raise
            finally:
                self.write_latency.observe(perf_counter() - started)
            return counts

    async def pending_secret_reads(self, limit: int) -> list[PendingRead]:
        """Reads recorded here and not yet committed as changes, oldest first."""
        rows = await self._fetchall(
            "SELECT id, at, actor, request_id, peer, service, environment, names"
            " FROM secret_reads ORDER BY rowid LIMIT ?",
            (limit,),
        )
        return [
            PendingRead(
                id=r[0],
                at=r[1],
                actor=r[2],
                request_id=r[3],
                peer=r[4],
                service=r[5],
                environment=r[6],
                names=_names_decoder.decode(r[7]),
            )
            for r in rows
        ]

    async def pending_secret_reads_count(self) -> int:
        row = await self._fetchone("SELECT count(*) FROM secret_reads")
        return int(row[0])

    async def ciphertexts_by_key(self) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT key_id, count(*) FROM secret_versions WHERE ciphertext IS NOT NULL"
            " GROUP BY key_id"
        )
        return {r[0]: r[1] for r in rows}

    async def secrets_to_rewrap(self, primary: str, limit: int) -> list[SecretRow]:
        rows = await self._fetchall(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM}"
            " WHERE v.ciphertext IS NOT NULL AND v.key_id != ? LIMIT ?",
            (primary, limit),
        )
        return [_secret_row(r) for r in rows]

    async def secrets_expiring(self, *, before: float | None = None) -> list[SecretRow]:
        """Versions that still hold a ciphertext and have an expiry (before `before`)."""
        where = " WHERE v.ciphertext IS NOT NULL AND v.expires_at IS NOT NULL"
        args: list[Any] = []
        if before is not None:
            where += " AND v.expires_at <= ?"
            args.append(before)
        rows = await self._fetchall(
            f"SELECT {_SECRET_COLUMNS}{_SECRET_FROM}{where} ORDER BY v.expires_at", args
        )
        return [_secret_row(r) for r in rows]

    # -- audit reads ------------------------------------------------------------

    @staticmethod
    def _audit_row(row: Sequence[Any]) -> AuditEntry:
        return msgspec.convert(
            {
                "id": row[0],
                "at": row[1],
                "actor": row[2],
                "action": row[3],
                "target": row[4],
                "details": _details_decoder.decode(row[5]),
                "request_id": row[6],
                "prev_hash": row[7],
                "hash": row[8],
            },
            AuditEntry,
        )

    async def audit_page(
        self, *, target: str | None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        """Newest first; `target` filters by exact target (`config:svc/env`) or its prefix.

        Unfiltered, ids run 1..last without a gap (the chain), so a page is an id range:
        O(limit) at any offset, and the total is the last id. Filtered, both use the
        (target, id) index: O(entries of that target), never a scan of the log.
        """
        columns = "id, at, actor, action, target, details, request_id, prev_hash, hash"
        if not target:
            total = (await self._fetchone("SELECT max(id) FROM audit_log"))[0] or 0
            rows = await self._fetchall(
                f"SELECT {columns} FROM audit_log WHERE id <= ? ORDER BY id DESC LIMIT ?",
                (total - offset, limit),
            )
            return [self._audit_row(r) for r in rows], total
        # `target` itself, or anything under `target/` ('0' sorts right after '/').
        where = " WHERE target = ? OR (target >= ? AND target < ?)"
        args = [target, target + "/", target + "0"]
        rows = await self._fetchall(
            f"SELECT {columns} FROM audit_log{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = await self._fetchone(f"SELECT count(*) FROM audit_log{where}", args)
        return [self._audit_row(r) for r in rows], total[0]

    def scan_audit(
        self, consume: Callable[[list[AuditEntry]], None], *, batch: int = 1000
    ) -> tuple[int, str] | None:
        """Blocking (run it in a thread): hands every audit entry to `consume` in id order,
        `batch` at a time, from one read snapshot on a connection of its own (so neither
        the shared reader nor memory grows with the log). Returns the audit head recorded
        in that same snapshot, None when there is none."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN")  # one snapshot for the head and every row
            row = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
            head = None
            if row:
                head_id, head_hash = row[0].split(":", 1)
                head = (int(head_id), head_hash)
            cursor = conn.execute(
                "SELECT id, at, actor, action, target, details, request_id, prev_hash, hash"
                " FROM audit_log ORDER BY id"
            )
            while rows := cursor.fetchmany(batch):
                if self._closed:
                    raise StoreClosed("the store is closed")
                consume([self._audit_row(r) for r in rows])
            return head
        except sqlite3.Error as error:
            raise self._failed(error, "read") from error
        finally:
            conn.close()

    async def config_state_batch(
        self, after: tuple[str, str, int], limit: int
    ) -> list[tuple[str, str, int, int, bytes, bytes | None, int | None, str | None, str | None]]:
        """Config version rows after `after` (service, environment, version), each with the
        journal payload and the audit entry of the change that wrote it (`audit verify`)."""
        rows = await self._fetchall(
            "SELECT c.service, c.environment, c.version, c.change_seq, c.record, j.payload,"
            " a.id, a.target, a.details FROM config_versions c"
            " LEFT JOIN changes j ON j.seq = c.change_seq"
            " LEFT JOIN audit_log a ON a.id = c.change_seq"
            " WHERE (c.service, c.environment, c.version) > (?, ?, ?)"
            " ORDER BY c.service, c.environment, c.version LIMIT ?",
            (*after, limit),
        )
        return [tuple(r) for r in rows]

    async def audit_entries_for(self, target: str) -> list[tuple[int, str, str]]:
        """(id, action, details) of every audit entry for `target`, oldest first."""
        rows = await self._fetchall(
            "SELECT id, action, details FROM audit_log WHERE target = ? ORDER BY id", (target,)
        )
        return [(r[0], r[1], r[2]) for r in rows]

    @property
    def audit_head(self) -> tuple[int, str]:
        """(id, hash) of the last entry appended, as recorded beside the log itself."""
        return self._audit_head


class Transaction:
    """One open write transaction of a Store, holding its write lock until `commit` or
    `rollback`: the group commit.

    Changes are staged a group at a time (each group under a savepoint, so a group that
    fails leaves the others staged); reads made inside `reading()` go through this
    transaction and so see what it has staged. Nothing is durable, and the store's audit
    head and cursor do not move, until `commit`.
    """

    def __init__(self, store: Store, writer: aiosqlite.Connection) -> None:
        self.store = store
        self._writer = writer
        self.db: Any = _inline(writer)
        self.audit_head = store._audit_head
        self.cursor = store._cursor
        #: Everything staged so far, in order.
        self.staged: list[Change] = []
        #: Set when SQLite ended the transaction on its own (a failed statement): only a
        #: rollback remains.
        self.broken = False
        #: What broke it.
        self.error: BaseException | None = None
        #: Set when a staged change destroyed stored material: the WAL is checkpointed
        #: after the commit, so its old page images go too.
        self.shredded = False
        self._started = perf_counter()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Store reads made by this task (a plan) see this transaction's staged changes."""
        token = _staging.set(self)
        try:
            yield
        finally:
            _staging.reset(token)

    async def stage(self, changes: Sequence[Change], *, upstream: bool = False) -> list[Change]:
        """Add `changes` to the transaction, all or none; returns them with local seqs."""
        if self.db is None:
            raise StoreClosed("the transaction is closed")
        if not changes:
            return []
        db = self.db
        head, cursor = self.audit_head, self.cursor
        try:
            await db.execute("SAVEPOINT stage")
            stored = await self.store._stage(db, changes, upstream, self)
            await db.execute("RELEASE stage")
        except BaseException as error:
            self.audit_head, self.cursor = head, cursor
            if db.in_transaction:
                try:
                    await db.execute("ROLLBACK TO stage")
                    await db.execute("RELEASE stage")
                except sqlite3.Error:
                    self.broken = True
            else:  # SQLite ended the whole transaction (SQLITE_FULL, damage)
                self.broken = True
            if isinstance(error, sqlite3.Error):
                mapped = self.store._failed(error, "write")
                self.error = self.error or mapped
                raise mapped from error
            self.error = self.error or error
            raise
        self.staged += stored
        return stored

    async def commit(self) -> None:
        """Make everything staged durable (one COMMIT, one fsync) and release the lock."""
        if self.db is None:
            raise StoreClosed("the transaction is closed")
        if self.broken:
            raise self.error or FpcdError("the transaction failed and was rolled back")
        try:
            if self.audit_head != self.store._audit_head:
                audit_id, audit_hash = self.audit_head
                await _set_meta(self.db, "audit_head", f"{audit_id}:{audit_hash}")
            if self.cursor != self.store._cursor:
                await _set_meta(self.db, "upstream_cursor", str(self.cursor))
            await self._writer.execute("COMMIT")
        except sqlite3.Error as error:
            await self.rollback()
            raise self.store._failed(error, "write") from error
        self.store._audit_head, self.store._cursor = self.audit_head, self.cursor
        self.store.commits += 1
        self.store.committed_changes += len(self.staged)
        try:
            if self.shredded:
                await self.store._checkpoint(self._writer)
        finally:
            self._close()

    async def rollback(self) -> None:
        """Drop everything staged and release the lock; a no-op once closed."""
        if self.db is None:
            return
        try:
            await _rollback(self._writer)
        finally:
            self._close()

    def _close(self) -> None:
        self.db = None
        self.store.write_latency.observe(perf_counter() - self._started)
        self.store._write_lock.release()
