"""The upstream change log in Postgres (asyncpg): the source of truth and order.

Writers serialize on a transaction-scoped advisory lock and take `max(seq) + 1`, so
sequence numbers are gapless and commit in order: a reader that has seen seq n can never
later find a smaller one committing (the classic gap of sequences taken at insert).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

import asyncpg
import msgspec

from fpcd.domain.errors import Unavailable
from fpcd.domain.model import Change
from fpcd.domain.shred import VersionRef, redact, scrub_history

log = logging.getLogger("fpcd.upstream")

#: pg_advisory_xact_lock keys ("fpcd" and "fpcdmigr" as integers).
WRITE_LOCK = 0x66706364
MIGRATE_LOCK = 0x6670636D

#: Errors that mean "Postgres cannot be reached or the connection broke".
UPSTREAM_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)

MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS fpcd_changes (
        seq          bigint PRIMARY KEY,
        entity       text NOT NULL,
        key          text NOT NULL,
        op           text NOT NULL,
        actor        text NOT NULL,
        at           timestamptz NOT NULL,
        origin       text NOT NULL,
        request_id   text NOT NULL DEFAULT '',
        payload      bytea NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS fpcd_analytics (
        node    text NOT NULL,
        flag    text NOT NULL,
        hour    bigint NOT NULL,
        variant text NOT NULL,
        enabled boolean NOT NULL,
        reason  text NOT NULL,
        count   bigint NOT NULL,
        PRIMARY KEY (node, flag, hour, variant, enabled, reason)
    );
    """,
    # 2: destroyed secret material leaves the log (fpcd.domain.shred); what was destroyed
    # before this step is redacted by `migrate` right after it.
    """
    CREATE INDEX IF NOT EXISTS fpcd_changes_entity ON fpcd_changes (entity, key);
    """,
]
LATEST = len(MIGRATIONS)
#: The step that introduced redaction: logs older than it are scrubbed once.
REDACTION_STEP = 2

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Change).decode


class Unreadable(NamedTuple):
    """A row of the change log this release cannot decode, and why."""

    seq: int
    why: str


class Fetched(NamedTuple):
    #: The readable changes, in order, before `unreadable` (if any).
    changes: list[Change]
    unreadable: Unreadable | None
    #: Rows the query returned (a full page means there may be more).
    rows: int


class UpstreamLog:
    def __init__(self, dsn: str, *, pool_size: int = 4, connect_timeout: float = 3.0) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool without connecting: it (re)connects on demand, so a Postgres
        that is down at start or restarts later needs no special handling."""
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size,
            timeout=self._connect_timeout,
            command_timeout=30,
            max_inactive_connection_lifetime=60,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "upstream log not opened"
        return self._pool

    async def migrate(self) -> tuple[int, int]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS fpcd_meta (key text PRIMARY KEY, value text)"
            )
            row = await conn.fetchval("SELECT value FROM fpcd_meta WHERE key = 'schema'")
            before = int(row) if row else 0
            if before > LATEST:
                raise RuntimeError(
                    f"the upstream schema is version {before}, newer than this fpcd ({LATEST})"
                )
            for step in range(before, LATEST):
                await conn.execute(MIGRATIONS[step])
                if step + 1 == REDACTION_STEP and before:
                    await self._scrub(conn)
            await conn.execute(
                "INSERT INTO fpcd_meta (key, value) VALUES ('schema', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(LATEST),
            )
            return before, LATEST

    @staticmethod
    async def _scrub(conn: asyncpg.Connection) -> None:
        """Redact what a log from before redaction destroyed but still holds."""
        rows = await conn.fetch(
            "SELECT seq, payload FROM fpcd_changes WHERE entity IN"
            " ('secret', 'secret_rewrap', 'secret_destroyed', 'data_key') ORDER BY seq"
        )
        redacted = scrub_history([_decode(r["payload"]) for r in rows])
        await conn.executemany(
            "UPDATE fpcd_changes SET payload = $1 WHERE seq = $2",
            [(_encode(c), rows[i]["seq"]) for i, c in redacted],
        )
        if redacted:
            log.info(
                "redacted destroyed secret material from the upstream log",
                extra={"changes": len(redacted)},
            )

    @staticmethod
    async def redact(
        conn: asyncpg.Connection,
        seqs: Sequence[int],
        *,
        versions: AbstractSet[VersionRef],
        keys: AbstractSet[str],
        retired: AbstractSet[str],
    ) -> int:
        """Inside `locked()`: remove the material of `versions` and `keys` from those rows."""
        if not seqs:
            return 0
        rows = await conn.fetch(
            "SELECT seq, payload FROM fpcd_changes WHERE seq = ANY($1::bigint[])", list(seqs)
        )
        updates = []
        for row in rows:
            redacted = redact(
                _decode(row["payload"]), versions=versions, keys=keys, retired=retired
            )
            if redacted is not None:
                updates.append((_encode(redacted), row["seq"]))
        await conn.executemany("UPDATE fpcd_changes SET payload = $1 WHERE seq = $2", updates)
        return len(updates)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction holding the write lock: the one place changes are appended."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield conn

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    @staticmethod
    async def fetch_after(conn: asyncpg.Connection, cursor: int, limit: int) -> Fetched:
        """The changes after `cursor`, up to the first row this release cannot read."""
        rows = await conn.fetch(
            "SELECT seq, payload FROM fpcd_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            cursor,
            limit,
        )
        changes: list[Change] = []
        for row in rows:
            try:
                change = _decode(row["payload"])
            except msgspec.DecodeError as error:  # garbage, or a newer release's shape
                return Fetched(changes, Unreadable(row["seq"], str(error)[:200]), len(rows))
            changes.append(msgspec.structs.replace(change, seq=row["seq"]))
        return Fetched(changes, None, len(rows))

    @staticmethod
    async def head(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM fpcd_changes"))

    @staticmethod
    async def append(conn: asyncpg.Connection, changes: Sequence[Change]) -> list[Change]:
        """Inside `locked()`: give the changes the next sequence numbers and insert them."""
        first = await UpstreamLog.head(conn) + 1
        numbered = [msgspec.structs.replace(c, seq=first + i) for i, c in enumerate(changes)]
        await UpstreamLog.insert(conn, numbered)
        return numbered

    @staticmethod
    async def insert(conn: asyncpg.Connection, numbered: Sequence[Change]) -> None:
        """Inside `locked()`: insert changes already numbered after the head (a caller that
        caught up under the lock knows the head); a wrong number fails on the key."""
        await conn.executemany(
            "INSERT INTO fpcd_changes (seq, entity, key, op, actor, at, origin, request_id,"
            " payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                (
                    c.seq,
                    c.entity,
                    c.key,
                    c.op,
                    c.actor,
                    c.at,
                    c.origin,
                    c.request_id,
                    _encode(msgspec.structs.replace(c, seq=0)),
                )
                for c in numbered
            ],
        )

    async def push_analytics(self, node: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Add this node's evaluation counts (flag, hour, variant, enabled, reason, count);
        `Unavailable` while Postgres cannot be reached (the `AnalyticsSink` contract)."""
        try:
            async with self.pool.acquire() as conn:
                await conn.executemany(
                    "INSERT INTO fpcd_analytics"
                    " (node, flag, hour, variant, enabled, reason, count)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (node, flag, hour, variant, enabled, reason)"
                    " DO UPDATE SET count = fpcd_analytics.count + excluded.count",
                    [(node, f, h, v, bool(e), r, n) for f, h, v, e, r, n in rows],
                )
        except UPSTREAM_ERRORS as error:
            raise Unavailable(f"the upstream is unreachable: {error.__class__.__name__}") from None

    async def analytics(
        self, flag: str, first_hour: int, last_hour: int
    ) -> list[tuple[int, str, int, str, int]]:
        """Every node's counts, summed: (hour, variant, enabled, reason, count);
        `Unavailable` while Postgres cannot be reached."""
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT hour, variant, enabled, reason, sum(count) AS n FROM fpcd_analytics"
                    " WHERE flag = $1 AND hour BETWEEN $2 AND $3"
                    " GROUP BY hour, variant, enabled, reason",
                    flag,
                    first_hour,
                    last_hour,
                )
        except UPSTREAM_ERRORS as error:
            raise Unavailable(f"the upstream is unreachable: {error.__class__.__name__}") from None
        return [
            (r["hour"], r["variant"], int(r["enabled"]), r["reason"], int(r["n"])) for r in rows
        ]
