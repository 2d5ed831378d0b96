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
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, TypeVar, assert_never

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
    DestroyReason,
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
from fpcd.wire import ComponentHealth

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


def _begin(conn: sqlite3.Connection) -> None:
    # IMMEDIATE: take the write lock now, so no statement of the transaction meets SQLITE_BUSY.
    conn.execute("BEGIN IMMEDIATE")


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: SQLite ends one by itself on some errors
    (SQLITE_FULL), and a second ROLLBACK's error must not hide the first one."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as error:
        log.warning("rollback failed", extra={"error": str(error)})


def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(conn)` between BEGIN IMMEDIATE and COMMIT, rolled back if anything raises: the
    one transaction every write of the store runs in (the group commit's `Transaction`
    opens, commits and rolls back with the same three functions)."""
    _begin(conn)
    try:
        result = work(conn)
        _commit(conn)
    except BaseException:
        _rollback(conn)
        raise
    return result


def _checkpoint(conn: sqlite3.Connection) -> None:
    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy and busy[0]:
        log.warning("WAL checkpoint did not complete (a reader held it); it will be retried")


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
    destroyed: DestroyReason | None
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


def _count_reads(
    conn: sqlite3.Connection, service: str, environment: str, names: Sequence[str], at: datetime
) -> None:
    """Access counts; `last_at` only moves forward (reads arrive from other hosts late)."""
    conn.executemany(
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
    _transaction(
        db, lambda c: c.executemany("UPDATE changes SET payload = ? WHERE seq = ?", updates)
    )


class ServiceSummary(msgspec.Struct, frozen=True):
    service: str
    environment: str
    version: int


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def migrate(path: Path) -> tuple[int, int]:
    """Bring the database at `path` to the latest schema; returns (before, after)."""
    secure_data_dir(path)
    return await asyncio.to_thread(_migrate, path)


def _migrate(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        before: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if before > LATEST:
            raise FpcdError(
                f"{path} has schema version {before}, newer than this fpcd ({LATEST}); upgrade fpcd"
            )
        for step in range(before, LATEST):

            def run(conn: sqlite3.Connection, step: int = step) -> None:
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if step + 1 == REDACTION_STEP and before:
                    _scrub_journal(conn)
                conn.execute(f"PRAGMA user_version = {step + 1}")

            _transaction(conn, run)
        if 0 < before < REDACTION_STEP:
            # Pages freed before secure_delete was on may still hold destroyed material:
            # rebuild the file once, then empty the WAL that held the old pages.
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, LATEST
    finally:
        conn.close()


def _scrub_journal(conn: sqlite3.Connection) -> None:
    """Redact what a store from before redaction destroyed but kept in its journal."""
    rows = conn.execute(
        "SELECT seq, payload FROM changes WHERE entity IN"
        " ('secret', 'secret_rewrap', 'secret_destroyed', 'data_key') ORDER BY seq"
    ).fetchall()
    redacted = scrub_history([_change_decoder.decode(r[1]) for r in rows])
    conn.executemany(
        "UPDATE changes SET payload = ? WHERE seq = ?",
        [(_change_encoder.encode(c), rows[i][0]) for i, c in redacted],
    )
    if redacted:
        log.info(
            "redacted destroyed secret material from the journal",
            extra={"changes": len(redacted)},
        )


class Store:
    """The local database.

    Writes run on one thread of their own, the writer (datasette's write thread is the
    model): a write hands one function to it (`_write`), which runs it against the write
    connection inside one transaction (`_transaction`), so a write costs one thread hop
    however many statements it makes. Only the group commit's `Transaction` stays open
    across awaits; its plans' statements run on the event loop's thread, which is safe
    because the write lock keeps everything else off the connection meanwhile.
    """

    def __init__(self, path: Path, *, synchronous: Synchronous = "full") -> None:
        self.path = path
        self._synchronous = synchronous
        #: The write connection, used on the writer thread (and inline by an open group).
        self._writer: sqlite3.Connection | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
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
        #: Seconds per read query and per write transaction, for /metrics.
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
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="fpcd-sqlite-writer")
        self._writer = await self._hop(self._connect_writer)
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

    def _connect_writer(self) -> sqlite3.Connection:
        # check_same_thread=False: an open group's statements run on the loop's thread.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # Deleted and overwritten content is zeroed in the file (destroyed secrets).
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

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
        cursor = max(upstream for upstream, _ in pairs)

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE changes SET upstream_seq = ? WHERE seq = ?", pairs)
            _set_meta(conn, "upstream_cursor", str(cursor))

        await self._write(work)
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
            if self._reader is not None:
                await self._reader.close()
            if self._writer is not None:
                await self._hop(self._writer.close)
            if self._writer_thread is not None:
                self._writer_thread.shutdown(wait=False)
        self._reader = self._writer = self._writer_thread = None

    async def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return next(iter(await self._fetchall(sql, args)), None)

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        started = perf_counter()
        try:
            staging = _staging.get()
            if staging is not None and staging.store is self and staging.open:
                # A plan reads through its open transaction (on this thread: see Store).
                return staging.conn.execute(sql, args).fetchall()
            if self._reader is None:
                raise StoreClosed("the store is closed")
            # One call that runs the statement to its end: a cursor left open between
            # calls would hold a read transaction, and every query that concurrent
            # readers run meanwhile would see its old snapshot (miss a fresh commit).
            return list(await self._reader.execute_fetchall(sql, args))
        except sqlite3.Error as error:
            raise self._failed(error, "read") from error
        finally:
            self.read_latency.observe(perf_counter() - started)

    async def ping(self) -> None:
        await self._fetchone("SELECT 1")

    async def health(self) -> ComponentHealth:
        """/health's `sqlite`: it answers, and no integrity check found damage."""
        await self.ping()
        if self.corrupt is not None:
            detail = f"integrity check failed, writes refused: {self.corrupt}"
            return ComponentHealth(status="degraded", detail=detail)
        return ComponentHealth(status="ok")

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

    def _writable(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreClosed("the store is closed")
        if self.corrupt is not None:
            raise DatabaseCorrupt(
                f"the local database failed its integrity check ({self.corrupt});"
                " writes are refused until it is restored from a backup"
            )
        return self._writer

    async def _hop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread (one thread hop)."""
        assert self._writer_thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, fn)

    async def _write(self, work: Callable[[sqlite3.Connection], T], *, raw: bool = False) -> T:
        """A write: under the write lock, `work(connection)` runs on the writer thread inside
        one transaction (`raw`: `work` opens and ends its own with the same helpers).

        If the caller is cancelled meanwhile, `work` still runs to its end on its thread,
        and the next write queues behind it there.
        """
        async with self._write_lock:
            conn = self._writable()
            started = perf_counter()
            try:
                if raw:
                    return await self._hop(lambda: work(conn))
                return await self._hop(lambda: _transaction(conn, work))
            except sqlite3.Error as error:
                raise self._failed(error, "write") from error
            finally:
                self.write_latency.observe(perf_counter() - started)

    # -- local bookkeeping (node id, cursors): not changes, never replicated -------

    async def meta_get(self, key: str) -> str | None:
        row = await self._fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    async def meta_set(self, key: str, value: str) -> None:
        await self._write(lambda conn: _set_meta(conn, key, value))

    # -- the one write path ----------------------------------------------------

    async def apply(self, changes: Sequence[Change], *, upstream: bool = False) -> list[Change]:
        """Store and materialize `changes` in one transaction; returns them with the local
        `seq` set. One function on the writer thread: one hop for the whole batch.

        With `upstream`, each change's `seq` on input is its place in the upstream log:
        changes at or below the cursor are skipped (already applied), and the cursor moves
        in the same transaction, so a crash can neither skip nor repeat one.
        """
        if not changes:
            return []

        def work(conn: sqlite3.Connection) -> list[Change]:
            _begin(conn)
            txn = Transaction(self, conn)
            try:
                stored = txn.stage_now(changes, upstream=upstream)
                if stored:
                    txn.commit_now()
            finally:
                _rollback(conn)  # a no-op once committed
            return stored

        return await self._write(work, raw=True)

    async def begin(self) -> Transaction:
        """Open the write transaction of a group commit: it holds the write lock until
        `commit` or `rollback`, and its statements run on the loop's thread."""
        await self._write_lock.acquire()
        try:
            conn = self._writable()
        except BaseException:
            self._write_lock.release()
            raise
        try:
            await self._hop(lambda: _begin(conn))  # may wait for another process
        except sqlite3.Error as error:
            self._write_lock.release()
            raise self._failed(error, "write") from error
        except BaseException:  # cancelled: BEGIN may still run on the writer thread
            self._end_on_writer(conn)
            raise
        return Transaction(self, conn, locked=True)

    def _end_on_writer(self, conn: sqlite3.Connection) -> None:
        """After a hop its caller stopped waiting for: roll back on the writer thread,
        behind whatever that hop still does there, then release the write lock."""
        assert self._writer_thread is not None
        done = asyncio.get_running_loop().run_in_executor(self._writer_thread, _rollback, conn)
        done.add_done_callback(lambda _: self._write_lock.release())

    def _stage(
        self, conn: sqlite3.Connection, changes: Sequence[Change], upstream: bool, txn: Transaction
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
            cur = conn.execute(
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
            txn.shredded = self._materialize(conn, change) or txn.shredded
            entry = next_entry(audit_id, audit_hash, change)
            conn.execute(
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

    def _materialize(self, db: sqlite3.Connection, change: Change) -> bool:
        """Write the change's effect; True when it destroyed stored material."""
        match change.payload:
            case ConfigVersion() as v:
                db.execute(
                    "INSERT INTO config_versions (service, environment, version, change_seq,"
                    " record) VALUES (?, ?, ?, ?, ?)",
                    (v.service, v.environment, v.version, change.seq, _change_encoder.encode(v)),
                )
            case SchemaRecord() as s:
                db.execute(
                    "INSERT INTO config_schemas (service, record) VALUES (?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET record = excluded.record",
                    (s.service, _change_encoder.encode(s)),
                )
            case FlagRecord() as f:
                db.execute(
                    "INSERT INTO flag_versions (key, version, change_seq, record)"
                    " VALUES (?, ?, ?, ?)",
                    (f.key, f.version, change.seq, _change_encoder.encode(f)),
                )
            case DataKey() as k:
                db.execute(
                    "INSERT INTO data_keys (id, record) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                    (k.id, _change_encoder.encode(k)),
                )
                # Only this newest change of the key keeps its material.
                shredded = self._redact(
                    db,
                    "SELECT seq, payload FROM changes WHERE entity = 'data_key' AND key = ?"
                    " AND seq < ?",
                    (k.id, change.seq),
                    keys={k.id},
                )
                if k.state == "retired":
                    # Ciphertexts made under it: only it could open them.
                    shredded = (
                        self._redact(
                            db,
                            "SELECT seq, payload FROM changes WHERE seq IN"
                            " (SELECT seq FROM secret_copies WHERE key_id = ?)",
                            (k.id,),
                            retired={k.id},
                        )
                        or shredded
                    )
                    db.execute("DELETE FROM secret_copies WHERE key_id = ?", (k.id,))
                return shredded
            case SecretVersion() as v:
                if v.ciphertext:
                    db.execute(
                        "INSERT OR IGNORE INTO secret_copies (service, environment, name,"
                        " version, seq, key_id) VALUES (?, ?, ?, ?, ?, ?)",
                        (v.service, v.environment, v.name, v.version, change.seq, v.key_id),
                    )
                db.execute(
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
                db.executemany(
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
                shredded = self._redact(
                    db,
                    "SELECT seq, payload FROM changes WHERE seq IN"
                    f" (SELECT seq FROM secret_copies{where})",
                    args,
                    versions={(d.service, d.environment, d.name, n) for n in d.versions},
                )
                db.execute(f"DELETE FROM secret_copies{where}", args)
                return shredded
            case SecretRewrap() as r:
                live = [i for i in r.items if i.ciphertext]  # empty: destroyed meanwhile
                db.executemany(
                    "INSERT OR IGNORE INTO secret_copies (service, environment, name, version,"
                    " seq, key_id) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (i.service, i.environment, i.name, i.version, change.seq, r.key_id)
                        for i in live
                    ],
                )
                db.executemany(
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
                    cur = db.execute("DELETE FROM secret_reads WHERE id = ?", (read.read_id,))
                    if cur.rowcount > 0:
                        return False  # this host's own read: counted when it happened
                _count_reads(db, read.service, read.environment, read.names, change.at)
            case ServiceRegistration() as reg:
                db.execute(
                    "INSERT INTO services (name, record) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                    (reg.name, _change_encoder.encode(reg)),
                )
            case AuditNote() | ReloadRequest():
                pass
            case _:
                assert_never(change.payload)
        return False

    def _redact(
        self,
        db: sqlite3.Connection,
        sql: str,
        args: Sequence[Any],
        *,
        versions: AbstractSet[VersionRef] = frozenset(),
        keys: AbstractSet[str] = frozenset(),
        retired: AbstractSet[str] = frozenset(),
    ) -> bool:
        """Redact the journal rows `sql` selects (seq, payload); True if any changed."""
        rows = db.execute(sql, args).fetchall()
        updates = []
        for seq, payload in rows:
            redacted = redact(
                _change_decoder.decode(payload), versions=versions, keys=keys, retired=retired
            )
            if redacted is not None:
                updates.append((_change_encoder.encode(redacted), seq))
        db.executemany("UPDATE changes SET payload = ? WHERE seq = ?", updates)
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
            conn = self._writer
            await self._hop(lambda: _checkpoint(conn))

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
        await self._write(
            lambda conn: conn.executemany(
                "INSERT INTO flag_analytics (flag, hour, variant, enabled, reason, count)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (flag, hour, variant, enabled, reason)"
                " DO UPDATE SET count = count + excluded.count",
                rows,
            )
        )

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

        def work(conn: sqlite3.Connection) -> None:
            for key, value in items:
                _set_meta(conn, key, value)

        await self._write(work)

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

        def work(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
            conn.execute(
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
            _count_reads(conn, read.service, read.environment, read.names, at)
            rows = conn.execute(
                "SELECT name, count, last_at FROM secret_access"
                " WHERE service = ? AND environment = ?"
                f" AND name IN ({', '.join('?' * len(read.names))})",
                (read.service, read.environment, *read.names),
            ).fetchall()
            return {r[0]: (r[1], r[2]) for r in rows}

        return await self._write(work)

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
    """One open write transaction of a Store: what it has staged, and the audit head and
    upstream cursor as they will be once it commits.

    The group commit holds one (`Store.begin`) across awaits, with the store's write lock,
    until `commit` or `rollback`: changes are staged a group at a time (each group under a
    savepoint, so a group that fails leaves the others staged), and reads made inside
    `reading()` go through it and so see what it has staged. `Store.apply` runs one from
    start to end on the writer thread. Nothing is durable, and the store's audit head and
    cursor do not move, until it commits.
    """

    def __init__(self, store: Store, conn: sqlite3.Connection, *, locked: bool = False) -> None:
        self.store = store
        self.conn = conn
        #: Holds the store's write lock (a group commit's), released when it ends.
        self._locked = locked
        self.open = True
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

    # -- on the thread that holds the connection -----------------------------------------

    def stage_now(self, changes: Sequence[Change], *, upstream: bool = False) -> list[Change]:
        """Add `changes` to the transaction, all or none; returns them with local seqs."""
        if not self.open:
            raise StoreClosed("the transaction is closed")
        if not changes:
            return []
        conn = self.conn
        head, cursor = self.audit_head, self.cursor
        try:
            conn.execute("SAVEPOINT stage")
            stored = self.store._stage(conn, changes, upstream, self)
            conn.execute("RELEASE stage")
        except BaseException as error:
            self.audit_head, self.cursor = head, cursor
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO stage")
                    conn.execute("RELEASE stage")
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

    def commit_now(self) -> None:
        """Record the new audit head and cursor, COMMIT (one fsync), then move the store's
        own copies of them: all on this thread, so a caller that goes away meanwhile
        cannot leave them behind what was committed."""
        if self.broken:
            raise self.error or FpcdError("the transaction failed and was rolled back")
        store, conn = self.store, self.conn
        if self.audit_head != store._audit_head:
            audit_id, audit_hash = self.audit_head
            _set_meta(conn, "audit_head", f"{audit_id}:{audit_hash}")
        if self.cursor != store._cursor:
            _set_meta(conn, "upstream_cursor", str(self.cursor))
        _commit(conn)
        self.open = False
        store._audit_head, store._cursor = self.audit_head, self.cursor
        store.commits += 1
        store.committed_changes += len(self.staged)
        if self.shredded:
            try:
                _checkpoint(conn)
            except sqlite3.Error as error:  # committed all the same; the next one retries
                log.warning("WAL checkpoint failed", extra={"error": str(error)})

    # -- the group commit's side: on the event loop, holding the write lock ----------------

    async def stage(self, changes: Sequence[Change], *, upstream: bool = False) -> list[Change]:
        """`stage_now` on the loop's thread: a group's statements take microseconds each,
        less than a thread hop."""
        return self.stage_now(changes, upstream=upstream)

    async def commit(self) -> None:
        """Make everything staged durable (one COMMIT, one fsync) and release the lock."""
        if not self.open:
            raise StoreClosed("the transaction is closed")
        try:
            await self.store._hop(self.commit_now)
        except sqlite3.Error as error:
            await self.rollback()
            raise self.store._failed(error, "write") from error
        except asyncio.CancelledError:  # commit_now may still run on the writer thread
            self.open = False
            if self._locked:
                self._locked = False
                self.store._end_on_writer(self.conn)
            raise
        except BaseException:
            await self.rollback()
            raise
        finally:
            self._close()

    async def rollback(self) -> None:
        """Drop everything staged and release the lock; a no-op once closed."""
        if not self.open:
            return
        self.open = False
        try:
            _rollback(self.conn)
        finally:
            self._close()

    def _close(self) -> None:
        self.open = False
        if self._locked:
            self._locked = False
            self.store.write_latency.observe(perf_counter() - self._started)
            self.store._write_lock.release()
